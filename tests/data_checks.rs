//! The policy's data check (`data_errors`, docs/POLICY.md "Data checks") through the real
//! binary. With the bundled policy, data with a bad key refuses start-up, `tollgate check` and
//! `tollgate policy eval` (exit 2, the message naming the key); a reload with such data answers
//! 422 and the last good revision goes on deciding; fixing the data and reloading works. A
//! policy that does not define the rule loads the same data as before. Wasm: a module with the
//! `tollgate/data_errors` entrypoint refuses bad data the same way; one without it loads, and
//! the log says its data is not checked.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";

/// The key path the bundled policy names for the bad port below.
const BAD_KEY: &str = "tollgate_config.agents[\"spiffe://tollgate.local/test/agent\"].rules[1].ports: must be a list of ports (1-65535) or \"*\"";

/// The integration tests' policy data (tests/fixtures/policy-data.json), as it is.
fn good_data() -> Value {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/policy-data.json"))
        .expect("read tests/fixtures/policy-data.json");
    serde_json::from_str(&text).expect("policy-data.json is JSON")
}

/// The same data with one typo: rules[1] (`local-read`) lists its port as a string.
fn bad_data() -> Value {
    let mut data = good_data();
    let rule = &mut data["tollgate_config"]["agents"][CALLER]["rules"][1];
    assert_eq!(rule["id"], "local-read", "the fixture's rules[1] moved");
    rule["ports"] = json!(["8080"]);
    data
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

fn config(policy: &Path, data: &Path, engine: &str) -> String {
    format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'{engine}}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n",
        policy.display(),
        data.display(),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn bad_data_refuses_start_up_and_check_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_json(dir.path(), "data.json", &bad_data());
    let yaml = config(&repo_root().join("policy-wasm"), &data, "");

    let config_file = dir.path().join("tollgate.yaml");
    std::fs::write(&config_file, &yaml).unwrap();
    let out = Tollgate::run_cli(&["check", "-c", config_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(BAD_KEY), "{stderr}");
    assert!(
        stderr.contains("data.tollgate.data_errors refuses the data (1 problem)"),
        "{stderr}"
    );

    let refused = Tollgate::builder()
        .config(yaml)
        .config_as_is()
        .ready_timeout(WAIT)
        .try_start()
        .err()
        .expect("tollgate must not start with data its policy refuses");
    assert!(refused.contains("exit status: 2"), "{refused}");
    assert!(refused.contains(BAD_KEY), "{refused}");

    // The same data, fixed: check passes.
    write_json(dir.path(), "data.json", &good_data());
    let out = Tollgate::run_cli(&["check", "-c", config_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn bad_data_refuses_policy_eval_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_json(dir.path(), "data.json", &bad_data());
    let input = write_json(
        dir.path(),
        "input.json",
        &json!({"version": 1, "time": "2026-11-23T10:00:00.000Z",
                "source": {"spiffe_id": CALLER, "authenticated": true},
                "intent": {"name": null, "verified": false},
                "request": null, "destination": {"host": "127.0.0.1", "port": 8080}}),
    );
    let policy = repo_root().join("policy-wasm");
    let args = |data: &Path| {
        vec![
            "policy".to_string(),
            "eval".into(),
            "-p".into(),
            policy.display().to_string(),
            "-d".into(),
            data.display().to_string(),
            "-i".into(),
            input.display().to_string(),
        ]
    };
    let out = Tollgate::run_cli(&args(&data));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(BAD_KEY), "{}", text(&out.stderr));

    let good = write_json(dir.path(), "good.json", &good_data());
    let out = Tollgate::run_cli(&args(&good));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("allowed by rule local-read"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_reload_with_bad_data_is_refused_and_the_last_good_revision_keeps_deciding() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_json(dir.path(), "data.json", &good_data());
    let tg = Tollgate::builder()
        .config(config(&repo_root().join("policy-wasm"), &data, ""))
        .config_as_is()
        .start();
    let origin = PyOrigin::start(None);
    let decide = || {
        let response = python_agent(&AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url()));
        let id = response
            .header("x-tollgate-decision-id")
            .expect("a decision id")
            .to_string();
        let record = tg.wait_decision(|d| d["decision_id"] == id, WAIT);
        (
            response.status,
            record["decision"]["reason"].clone(),
            record["policy_revision"].clone(),
        )
    };
    let (status, reason, before) = decide();
    assert_eq!((status, reason), (200, json!("allowed by rule local-read")));
    assert!(before.is_string(), "the decision log names the revision");

    write_json(dir.path(), "data.json", &bad_data());
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 422, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(BAD_KEY), "{body}");
    assert_eq!(
        decide(),
        (200, json!("allowed by rule local-read"), before.clone()),
        "the last good revision stays in force"
    );

    // Fixed, with a change: the reload goes through and the new revision decides.
    let mut fixed = good_data();
    fixed["tollgate_config"]["agents"][CALLER]["rules"][1]["reason"] = json!("fixed data");
    write_json(dir.path(), "data.json", &fixed);
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    let (status, reason, after) = decide();
    assert_eq!((status, reason), (200, json!("fixed data")));
    assert_ne!(after, before);
}

#[test]
fn a_policy_without_the_rule_loads_the_same_data_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(
        policy.join("p.rego"),
        "package tollgate\ndecision := {\"allow\": true, \"reason\": \"no data check\"}\n",
    )
    .unwrap();
    let data = write_json(dir.path(), "data.json", &bad_data());
    let config_file = dir.path().join("tollgate.yaml");
    std::fs::write(&config_file, config(&policy, &data, "")).unwrap();
    let out = Tollgate::run_cli(&["check", "-c", config_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_wasm_module_checks_its_data_when_built_with_the_entrypoint_and_says_so_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = |name: &str| {
        let module = wat::parse_file(repo_root().join(format!("tests/fixtures/wasm/{name}.wat")))
            .expect("assemble the fixture");
        let path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, module).unwrap();
        path
    };
    // The fixture's data check reports a problem when the data holds a "!".
    let bad = write_json(
        dir.path(),
        "bad.json",
        &json!({"tollgate_config": {"x": "oops!"}}),
    );
    let fine = write_json(
        dir.path(),
        "fine.json",
        &json!({"tollgate_config": {"x": "ok"}}),
    );
    let checked = wasm("data_errors");
    let config_file = dir.path().join("tollgate.yaml");
    std::fs::write(&config_file, config(&checked, &bad, ", engine: wasm")).unwrap();
    let out = Tollgate::run_cli(&["check", "-c", config_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tollgate/data_errors refuses the data (1 problem)")
            && stderr.contains("tollgate_config.fixture: the data holds a \"!\""),
        "{stderr}"
    );
    std::fs::write(&config_file, config(&checked, &fine, ", engine: wasm")).unwrap();
    let out = Tollgate::run_cli(&["check", "-c", config_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A module built with only tollgate/decision: it loads with this data, and says so.
    let unchecked = wasm("decision");
    let tg = Tollgate::builder()
        .config(config(&unchecked, &bad, ", engine: wasm"))
        .config_as_is()
        .start();
    let line = tg.wait_log(
        |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the Wasm module has no data-check entrypoint"))
        },
        WAIT,
    );
    let entrypoint = line
        .get("entrypoint")
        .or_else(|| line.get("fields").and_then(|f| f.get("entrypoint")));
    assert_eq!(entrypoint, Some(&json!("tollgate/data_errors")), "{line}");
}
