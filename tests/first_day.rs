//! The operator's first day (issue 18), each problem reproduced through the real binary:
//! a reload applies upstream settings live and names the keys that need a restart; every
//! operational log line is a JSON object with unique keys (kills, credentials, reloads); the
//! decision-log line of a request names the secret headers the agent sent that were stripped;
//! the interception CA's path is printed at start-up and an agent's `UnknownCA` is a counted
//! WARN naming it; `tollgate check` catches what it can know before the first request; and
//! `policy eval` prints the policy's own value.

mod support;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.test/ns/agents/sa/firstday";

/// Allows everything, naming the `gh` credential for intent `use.gh`.
const POLICY: &str = r#"package tollgate

import rego.v1

default decision := {"allow": true, "reason": "open"}

decision := {"allow": true, "reason": "with gh", "credential": {"name": "gh"}} if {
	input.intent.name == "use.gh"
}
"#;

/// A configuration with one listener at `address`, `allow_private` CIDRs, and a static `gh`
/// credential read from `secret`.
fn config(address: &str, allow_private: &str, policy: &Path, secret: &Path) -> String {
    format!(
        "listeners: [{{name: agents, address: '{address}'}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}'}}\n\
         upstream: {{allow_private: [{allow_private}]}}\n\
         credentials:\n  gh: {{kind: static, source: {{file: '{}'}}}}\n",
        policy.display(),
        secret.display()
    )
}

fn start(address: &str, allow_private: &str) -> Tollgate {
    let builder = Tollgate::builder();
    let policy = builder.write_file("policy/p.rego", POLICY);
    let secret = builder.write_file("secrets/gh", "gh-token-value-1\n");
    builder
        .config(config(address, allow_private, &policy, &secret))
        .start()
}

/// Rewrites the running configuration file with another listener address and allow list.
fn rewrite(tg: &Tollgate, address: &str, allow_private: &str) {
    let dir = tg.dir();
    let yaml = config(
        address,
        allow_private,
        &dir.join("policy/p.rego"),
        &dir.join("secrets/gh"),
    );
    std::fs::write(tg.config_path().unwrap(), yaml).unwrap();
}

fn get(tg: &Tollgate, url: &str, headers: &[(&str, &str)]) -> AgentResponse {
    let mut request = AgentRequest::get(url).proxy(tg.proxy_url());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    python_agent(&request)
}

fn metrics(tg: &Tollgate) -> String {
    String::from_utf8_lossy(&curl(&["-s", &tg.admin_url("/metrics")]).stdout).into_owned()
}

#[test]
fn reload_applies_upstream_settings_live_and_names_the_keys_needing_a_restart() {
    let tg = start("127.0.0.1:0", "127.0.0.0/8");
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    assert_eq!(get(&tg, &url, &[]).status, 200);

    // The first-day change: egress tightened and the listener moved, then a reload.
    let moved = format!("127.0.0.1:{}", free_port());
    rewrite(&tg, &moved, "");
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "partial", "never a bare success: {body}");
    assert_eq!(
        body["pending_restart"],
        serde_json::json!(["listeners[0].address"])
    );
    // The tightened egress is in force at once, on the listener still bound.
    let denied = get(&tg, &url, &[]);
    assert_eq!(denied.status, 403, "{:?}", denied.raw);
    assert_eq!(denied.json()["reason"], "private_destination");
    let warned = tg.wait_log(
        |l| l["message"] == "reloaded, but these changed keys need a restart to take effect",
        WAIT,
    );
    assert_eq!(warned["level"], "WARN");
    assert_eq!(warned["pending_restart"], "listeners[0].address");
    let text = metrics(&tg);
    assert!(
        text.contains("tollgate_config_pending_restart{key=\"listeners[0].address\"} 1"),
        "{text}"
    );

    // Back to the address running: nothing pending, the metric series gone.
    rewrite(&tg, "127.0.0.1:0", "127.0.0.0/8");
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "success", "{body}");
    assert_eq!(body["pending_restart"], serde_json::json!([]));
    assert_eq!(
        get(&tg, &url, &[]).status,
        200,
        "allow_private applied again"
    );
    assert!(
        !metrics(&tg).contains("tollgate_config_pending_restart{"),
        "no key pending"
    );
}

#[test]
fn decision_log_names_the_stripped_secret_headers() {
    let tg = start("127.0.0.1:0", "127.0.0.0/8");
    let origin = PyOrigin::start(None);
    let response = get(
        &tg,
        &origin.url("/echo"),
        &[
            ("Authorization", "Bearer agent-own-secret-1"),
            ("X-Agent-Intent", "use.gh"),
        ],
    );
    assert_eq!(response.status, 200, "{:?}", response.raw);
    let id = response
        .header("x-tollgate-decision-id")
        .unwrap()
        .to_string();
    let line = tg.wait_decision(|d| d["decision_id"] == id.as_str(), WAIT);
    assert_eq!(
        line["request"]["stripped_headers"],
        serde_json::json!(["authorization"]),
        "{line}"
    );
    assert!(
        !tg.stdout_text().contains("agent-own-secret-1"),
        "names only, never values"
    );
    // A request that sent none has no such field.
    let plain = get(&tg, &origin.url("/echo"), &[]);
    let id = plain.header("x-tollgate-decision-id").unwrap().to_string();
    let line = tg.wait_decision(|d| d["decision_id"] == id.as_str(), WAIT);
    assert!(line["request"].get("stripped_headers").is_none(), "{line}");
}

#[test]
fn every_log_line_is_a_json_object_with_unique_keys() {
    let tg = start("127.0.0.1:0", "127.0.0.0/8");
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    // Credentials: injected, and the agent's own secret dropped.
    let r = get(
        &tg,
        &url,
        &[
            ("Authorization", "Bearer agent-own"),
            ("X-Agent-Intent", "use.gh"),
        ],
    );
    assert_eq!(r.status, 200, "{:?}", r.raw);
    // Kills: engaged (cached credentials dropped), enforced, lifted.
    let (status, body) = tg.admin_json(
        "POST",
        "/v1/kill",
        Some(&format!(
            r#"{{"spiffe_id": "{CALLER}", "reason": "day one"}}"#
        )),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(get(&tg, &url, &[]).status, 403);
    let (_, listed) = tg.admin_json("GET", "/v1/kill", None);
    let id = listed["kills"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = tg.admin_json("DELETE", &format!("/v1/kill/{id}"), None);
    assert_eq!(status, 200);
    // Reloads: one pending a restart, one broken, one by SIGHUP.
    rewrite(&tg, &format!("127.0.0.1:{}", free_port()), "127.0.0.0/8");
    assert_eq!(tg.admin_json("POST", "/v1/reload", None).0, 200);
    std::fs::write(
        tg.dir().join("policy/p.rego"),
        "package tollgate\ndecision := {\n",
    )
    .unwrap();
    assert_eq!(tg.admin_json("POST", "/v1/reload", None).0, 422);
    std::fs::write(tg.dir().join("policy/p.rego"), POLICY).unwrap();
    tg.signal("HUP");
    let engaged = tg.wait_log(|l| l["message"] == "kill switch engaged", WAIT);
    tg.wait_log(|l| l["message"] == "kill lifted", WAIT);
    tg.wait_log(|l| l["message"] == "kill: cached credentials dropped", WAIT);
    tg.wait_log(
        |l| l["message"] == "the agent sent secret headers; removed",
        WAIT,
    );
    tg.wait_log(|l| l["message"].as_str() == Some("SIGHUP: reloading"), WAIT);

    // Who was killed is in the line, under a key of its own.
    assert!(
        engaged["kill_target"]
            .as_str()
            .unwrap_or("")
            .contains(CALLER),
        "{engaged}"
    );
    assert_ne!(engaged["target"], engaged["kill_target"]);
    let text = tg.stderr_text();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        if let Err(e) = parse_unique(line) {
            panic!("not a JSON object with unique keys ({e}): {line}");
        }
    }
    assert!(lines >= 10, "the run logged {lines} lines:\n{text}");
}

/// Parses `line` as JSON, refusing duplicate keys at any depth (serde_json keeps the last).
fn parse_unique(line: &str) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(line);
    let object = Unique.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    if object {
        Ok(())
    } else {
        Err("not an object".into())
    }
}

/// Walks one JSON value; the returned bool says whether it is an object.
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value_seed(Unique)?;
        }
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(false)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[test]
fn the_duplicate_key_parser_refuses_what_serde_json_accepts() {
    let line = r#"{"target":"tollgate::kill","target":{"spiffe_id":"x"}}"#;
    assert!(serde_json::from_str::<Value>(line).is_ok());
    assert!(parse_unique(line).is_err());
    assert!(parse_unique(r#"{"a":{"b":1,"c":[{"d":2}]}}"#).is_ok());
    assert!(parse_unique("[1]").is_err());
}
