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

/// `tollgate check -c` on `yaml` (written into `dir` with the files it names): exit code and
/// standard error.
fn check(dir: &Path, yaml: &str) -> (Option<i32>, String) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Tollgate::run_cli(&["check", "-c", path.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_catches_what_it_can_know_before_the_first_request() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    let rego = policy.join("p.rego");
    let secret = dir.path().join("secrets/gh");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, "gh-token\n").unwrap();
    let yaml = |decision_log: &str, secret: &Path| {
        format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             policy: {{path: '{}'}}\n\
             telemetry: {{decision_log: '{decision_log}'}}\n\
             credentials:\n  gh: {{kind: static, source: {{file: '{}'}}}}\n",
            policy.display(),
            secret.display()
        )
    };
    let good_log = dir.path().join("logs/decisions.jsonl");
    let good_log = good_log.to_str().unwrap();

    // A good configuration passes, and check creates nothing.
    std::fs::write(&rego, POLICY).unwrap();
    let (code, stderr) = check(dir.path(), &yaml(good_log, &secret));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!dir.path().join("logs").exists(), "check wrote nothing");

    // The entrypoint's rule missing: named, with the packages found.
    std::fs::write(&rego, "package authz\ndecision := {\"allow\": true}\n").unwrap();
    let (code, stderr) = check(dir.path(), &yaml(good_log, &secret));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no rule at the entrypoint tollgate/decision")
            && stderr.contains("data.tollgate.decision")
            && stderr.contains("packages found: authz"),
        "{stderr}"
    );

    // A decision of the wrong type on the probe inputs (every request would be policy_error).
    std::fs::write(&rego, "package tollgate\ndecision := true\n").unwrap();
    let (code, stderr) = check(dir.path(), &yaml(good_log, &secret));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the policy's decision has the wrong type")
            && stderr.contains("tollgate/decision on the probe inputs"),
        "{stderr}"
    );

    // A decision log that is a directory, and a secret file that is not there: by path.
    std::fs::write(&rego, POLICY).unwrap();
    let missing = dir.path().join("secrets/absent");
    let (code, stderr) = check(dir.path(), &yaml(dir.path().to_str().unwrap(), &missing));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "telemetry.decision_log: {} is a directory, not a file",
            dir.path().display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "credentials.gh: cannot read the secret file {}: No such file or directory",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("entity not found"), "{stderr}");
}

#[test]
fn a_misspelt_listener_key_gives_no_spurious_second_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = check(
        dir.path(),
        "listeners: [{name: agents, adress: '127.0.0.1:0'}]\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("listeners[0].adress: unknown key"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("at least one listener is required"),
        "{stderr}"
    );
    // With no listener at all, that is still the error.
    let (code, stderr) = check(dir.path(), "listeners: []\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("at least one listener is required"),
        "{stderr}"
    );
}

#[test]
fn policy_eval_prints_the_policys_own_value_and_explains_the_applied_decision() {
    let dir = tempfile::tempdir().unwrap();
    let rego = dir.path().join("p.rego");
    std::fs::write(
        &rego,
        "package tollgate\n\
         decision := {\"allow\": true, \"reason\": \"mine\", \"credential\": {\"name\": \"gh\"}, \"note\": 7}\n",
    )
    .unwrap();
    let input = repo_root().join("policy-wasm/examples/request.json");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "eval",
            "-p",
            rego.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Tollgate::run_cli(&args)
    };
    let out = eval(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let own: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Exactly what the policy returned: no "mode", no "ttl": null added.
    assert_eq!(
        own,
        serde_json::json!({"allow": true, "reason": "mine", "credential": {"name": "gh"}, "note": 7})
    );

    let out = eval(&["--explain"]);
    assert!(out.status.success());
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["value"], own);
    assert_eq!(shown["applied"]["allow"], true);
    assert_eq!(shown["applied"]["credential"]["name"], "gh");
    assert!(
        shown["applied"]["credential"]
            .as_object()
            .unwrap()
            .contains_key("ttl"),
        "the applied decision is tollgate's normalized one: {shown}"
    );
}

#[test]
fn every_sample_input_is_decided_by_the_bundled_policy() {
    let root = repo_root();
    for (sample, connection_level, reason) in [
        ("request.json", false, "allowed by rule github-read"),
        ("connection.json", true, "allowed by rule github-read"),
        ("transparent.json", true, "allowed by rule openai-api"),
    ] {
        let input = root.join("policy-wasm/examples").join(sample);
        let out = Tollgate::run_cli(&[
            "policy",
            "eval",
            "-p",
            root.join("policy-wasm").to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
            "--explain",
        ]);
        assert!(
            out.status.success(),
            "{sample}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown["value"]["allow"], true, "{sample}: {shown}");
        assert_eq!(shown["value"]["reason"], reason, "{sample}: {shown}");
        // A connection-level allow names how the connection is carried; a request's does not.
        assert_eq!(
            shown["value"].get("mode").is_some(),
            connection_level,
            "{sample}: {shown}"
        );
    }
}

#[test]
fn start_up_names_the_interception_ca_and_an_unknown_ca_handshake_is_a_counted_warning() {
    let tg = start("127.0.0.1:0", "127.0.0.0/8");
    // With -c and no intercept_ca: the development CA, created under the state folder, named.
    let line = tg.wait_log(
        |l| l["message"] == "TLS interception on: agents must trust this CA",
        WAIT,
    );
    let ca = line["ca"].as_str().unwrap().to_string();
    assert!(Path::new(&ca).is_file(), "{line}");
    assert!(
        ca.starts_with(tg.dir().join("state").to_str().unwrap()),
        "{line}"
    );
    let env = line["agent_env"].as_str().unwrap();
    for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
        assert!(env.contains(&format!("{var}={ca}")), "{line}");
    }
    assert!(
        env.contains(&format!("HTTPS_PROXY={}", tg.proxy_url())),
        "{line}"
    );

    // An agent that does not trust it (OpenSSL answers with the unknown_ca alert).
    let pki = Pki::new();
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo").replace("http://", "https://");
    let out = curl(&[
        "-s",
        "--max-time",
        "10",
        "--proxy",
        &tg.proxy_url(),
        "--cacert",
        pki.ca_cert().to_str().unwrap(),
        &url,
    ]);
    assert_eq!(out.status.code(), Some(60), "curl: certificate not trusted");
    let warned = tg.wait_log(
        |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the agent does not trust the interception CA"))
        },
        WAIT,
    );
    assert_eq!(warned["level"], "WARN");
    assert_eq!(warned["ca"], ca.as_str());
    let text = metrics(&tg);
    assert!(
        text.contains("tollgate_tls_agent_unknown_ca_total 1"),
        "{text}"
    );
    // The first-day agent: Python httpx, trusting another CA.
    let failed = try_python_agent(
        &AgentRequest::get(&url)
            .proxy(tg.proxy_url())
            .cacert(pki.ca_cert()),
    )
    .expect_err("httpx must refuse the interception leaf");
    assert!(
        failed.error.contains("CERTIFICATE_VERIFY_FAILED"),
        "{failed:?}"
    );
    let counted = |n: u32| {
        let want = format!("tollgate_tls_agent_unknown_ca_total {n}");
        (0..100).any(|_| {
            if metrics(&tg).contains(&want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
            false
        })
    };
    assert!(counted(2), "the httpx refusal is counted too");

    // Trusting it, the same call goes through the tunnel's TLS (the origin is plain HTTP, so
    // the call itself fails upstream, after the agent's handshake succeeded).
    let out = curl(&[
        "-s",
        "--max-time",
        "10",
        "--proxy",
        &tg.proxy_url(),
        "--cacert",
        &ca,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert_ne!(
        out.status.code(),
        Some(60),
        "the CA named is the one to trust"
    );
    assert!(
        metrics(&tg).contains("tollgate_tls_agent_unknown_ca_total 2"),
        "a trusted handshake is not counted"
    );
}
