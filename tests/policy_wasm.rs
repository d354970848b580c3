//! The Wasm policy engine through the real binary, with the hand-written OPA Wasm ABI fixtures
//! of tests/fixtures/wasm (NOT OPA output; see the README there): allow and deny through the
//! proxy, a runaway and a memory-exhausting policy ending as denies while the proxy keeps
//! serving, a missing builtin refused at `check` and at reload, an OPA bundle's `.manifest`
//! revision in the metrics and the decision log, `engine: auto`, data-only reloads,
//! `tollgate policy eval` on a module and a bundle, `sprintf` as a host builtin with Go's `fmt`
//! output, `opa_abort`'s message as the logged detail and on `policy eval`'s standard error, and
//! an allow reached after a failed builtin refused.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";

/// A fixture compiled to binary Wasm, with optional text replacements.
fn wasm(name: &str, replace: &[(&str, &str)]) -> Vec<u8> {
    let path = repo_root().join(format!("tests/fixtures/wasm/{name}.wat"));
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    wat::parse_str(text).unwrap()
}

/// Data listing `agents` under `tollgate_config.agents`, as the bundled policy reads it.
fn data(agents: &[&str]) -> String {
    let agents: serde_json::Map<String, Value> = agents
        .iter()
        .map(|id| (id.to_string(), serde_json::json!({"rules": []})))
        .collect();
    serde_json::json!({"tollgate_config": {"agents": agents}}).to_string()
}

/// Writes `bytes` to `path` atomically (a reader never sees half a file).
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(policy_yaml: &str) -> Tollgate {
    Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {policy_yaml}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n"
    ))
}

/// One request through the proxy: (status, decision log line).
fn call(tg: &Tollgate, origin: &PyOrigin) -> (u16, Value) {
    let r = python_agent(&AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url()));
    let id = r.header("x-tollgate-decision-id").unwrap().to_string();
    let decision = tg.wait_decision(|d| d["decision_id"] == id, WAIT);
    if r.status == 403 {
        assert_eq!(r.json()["reason"], decision["decision"]["reason"]);
    }
    (r.status, decision)
}

fn reason(decision: &Value) -> &str {
    decision["decision"]["reason"].as_str().unwrap()
}

fn metrics(tg: &Tollgate) -> String {
    String::from_utf8_lossy(&curl(&["-s", &tg.admin_url("/metrics")]).stdout).into_owned()
}

fn wait_reloads(tg: &Tollgate, count: usize) {
    let deadline = Instant::now() + WAIT;
    while tg
        .logs()
        .iter()
        .filter(|l| l["message"] == "reloaded: policy revision in force")
        .count()
        < count
    {
        assert!(
            Instant::now() < deadline,
            "no reload #{count}:\n{}",
            tg.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn allows_and_denies_through_the_proxy_and_reloads_on_a_data_only_change() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    let data_file = dir.path().join("data.json");
    std::fs::write(&module, wasm("decision", &[])).unwrap();
    std::fs::write(&data_file, data(&[CALLER, "spiffe://tollgate.local/other"])).unwrap();
    // No `engine:` key: auto picks wasm for a .wasm path.
    let tg = start(&format!(
        "{{path: '{}', data: '{}', watch: true}}",
        module.display(),
        data_file.display()
    ));
    let origin = PyOrigin::start(None);
    let (status, allowed) = call(&tg, &origin);
    assert_eq!(status, 200, "{allowed}");
    assert_eq!(reason(&allowed), "agent_listed");
    assert_eq!(allowed["engine"], "wasm");
    let first = allowed["policy_revision"].as_str().unwrap().to_string();
    let text = metrics(&tg);
    assert!(
        text.contains(&format!(
            "tollgate_policy_info{{engine=\"wasm\",revision=\"{first}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("tollgate_policy_eval_duration_seconds_count{engine=\"wasm\"} 1"),
        "{text}"
    );

    // A data-only change (the caller removed) reloads through the watcher and denies.
    replace_file(
        &data_file,
        data(&["spiffe://tollgate.local/other"]).as_bytes(),
    );
    wait_reloads(&tg, 1);
    let (status, denied) = call(&tg, &origin);
    assert_eq!(status, 403, "{denied}");
    assert_eq!(reason(&denied), "unknown_agent");
    assert_ne!(denied["policy_revision"].as_str().unwrap(), first);

    // A module change reloads through the watcher too: a rebuilt module whose deny says
    // something else (same length, so the fixture's memory layout is unchanged).
    replace_file(
        &module,
        &wasm("decision", &[("unknown_agent", "unlisted_agnt")]),
    );
    wait_reloads(&tg, 2);
    let (status, rebuilt) = call(&tg, &origin);
    assert_eq!(status, 403, "{rebuilt}");
    assert_eq!(reason(&rebuilt), "unlisted_agnt");
    assert_ne!(rebuilt["policy_revision"], denied["policy_revision"]);
}

#[test]
fn a_runaway_policy_is_a_policy_timeout_and_the_proxy_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    std::fs::write(&module, wasm("never_returns", &[])).unwrap();
    let tg = start(&format!("{{path: '{}', engine: wasm}}", module.display()));
    let origin = PyOrigin::start(None);
    for _ in 0..3 {
        let started = Instant::now();
        let (status, decision) = call(&tg, &origin);
        assert_eq!(status, 403, "{decision}");
        assert_eq!(reason(&decision), "policy_timeout");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let eval_us = decision["eval_us"].as_u64().unwrap();
        assert!((50_000..2_000_000).contains(&eval_us), "eval_us {eval_us}");
    }
    assert_eq!(tg.admin_json("GET", "/healthz", None).0, 200);
    // The same process then serves a working policy.
    let data_file = dir.path().join("data.json");
    std::fs::write(&data_file, data(&[CALLER])).unwrap();
    std::fs::write(&module, wasm("decision", &[])).unwrap();
    let config = std::fs::read_to_string(tg.config_path().unwrap()).unwrap();
    let config = config.replace(
        "engine: wasm}",
        &format!("engine: wasm, data: '{}'}}", data_file.display()),
    );
    std::fs::write(tg.config_path().unwrap(), config).unwrap();
    assert_eq!(tg.admin_json("POST", "/v1/reload", None).0, 200);
    let (status, decision) = call(&tg, &origin);
    assert_eq!((status, reason(&decision)), (200, "agent_listed"));
}

#[test]
fn a_policy_that_exhausts_memory_is_a_policy_error_and_the_proxy_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    std::fs::write(&module, wasm("exhausts_memory", &[])).unwrap();
    let tg = start(&format!("{{path: '{}'}}", module.display()));
    let origin = PyOrigin::start(None);
    for _ in 0..3 {
        let (status, decision) = call(&tg, &origin);
        assert_eq!(status, 403, "{decision}");
        assert_eq!(reason(&decision), "policy_error");
    }
    assert!(tg.is_running());
    assert_eq!(tg.admin_json("GET", "/healthz", None).0, 200);
    let logs = tg.stderr_text();
    assert!(logs.contains("out of memory"), "{logs}");
}

#[test]
fn a_missing_builtin_fails_check_and_a_reload_to_it_keeps_the_old_revision() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, wasm("missing_builtin", &[])).unwrap();
    let config = dir.path().join("check.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\npolicy: {{path: '{}'}}\n",
            broken.display()
        ),
    )
    .unwrap();
    let out = Tollgate::run_cli(&["check", "-c", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`custom.nobody_provides`"), "{stderr}");

    let module = dir.path().join("policy.wasm");
    let data_file = dir.path().join("data.json");
    std::fs::write(&module, wasm("decision", &[])).unwrap();
    std::fs::write(&data_file, data(&[CALLER])).unwrap();
    let tg = start(&format!(
        "{{path: '{}', data: '{}'}}",
        module.display(),
        data_file.display()
    ));
    let origin = PyOrigin::start(None);
    let (status, before) = call(&tg, &origin);
    assert_eq!(status, 200);
    replace_file(&module, &wasm("missing_builtin", &[]));
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("`custom.nobody_provides`"),
        "{body}"
    );
    let (status, after) = call(&tg, &origin);
    assert_eq!(status, 200);
    assert_eq!(after["policy_revision"], before["policy_revision"]);
    // Unusable data keeps the running revision too.
    replace_file(&module, &wasm("decision", &[]));
    replace_file(&data_file, b"{not json");
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("data"), "{body}");
    let (status, after) = call(&tg, &origin);
    assert_eq!(status, 200);
    assert_eq!(after["policy_revision"], before["policy_revision"]);
    assert!(metrics(&tg).contains("tollgate_policy_reloads_total{result=\"failure\"} 2"));
}

#[test]
fn an_opa_bundle_carries_its_data_and_its_manifest_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    let module = wasm("decision", &[]);
    let agents = data(&[CALLER]);
    std::fs::write(
        &path,
        opa_bundle(&[
            (
                "/.manifest",
                br#"{"revision": "bundle-rev-7", "roots": [""]}"#,
            ),
            ("/data.json", agents.as_bytes()),
            ("/policy.wasm", &module),
        ]),
    )
    .unwrap();
    let tg = start(&format!("{{path: '{}', engine: auto}}", path.display()));
    let origin = PyOrigin::start(None);
    let (status, decision) = call(&tg, &origin);
    assert_eq!(status, 200, "{decision}");
    assert_eq!(decision["policy_revision"], "bundle-rev-7");
    assert_eq!(decision["engine"], "wasm");
    let text = metrics(&tg);
    assert!(
        text.contains("tollgate_policy_info{engine=\"wasm\",revision=\"bundle-rev-7\"} 1"),
        "{text}"
    );

    // A bundle without /policy.wasm is refused; the manifest's revision stays in force.
    replace_file(&path, &opa_bundle(&[("/data.json", agents.as_bytes())]));
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no /policy.wasm"),
        "{body}"
    );
    // SIGHUP reloads a fixed bundle.
    replace_file(
        &path,
        &opa_bundle(&[
            ("/.manifest", br#"{"revision": "bundle-rev-8"}"#),
            ("/data.json", agents.as_bytes()),
            ("/policy.wasm", &module),
        ]),
    );
    tg.signal("HUP");
    wait_reloads(&tg, 1);
    let (_, decision) = call(&tg, &origin);
    assert_eq!(decision["policy_revision"], "bundle-rev-8");
}

#[test]
fn policy_eval_runs_a_module_and_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    std::fs::write(&module, wasm("decision", &[])).unwrap();
    let data_file = dir.path().join("data.json");
    std::fs::write(&data_file, data(&["spiffe://example.org/a"])).unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"source": {"spiffe_id": "spiffe://example.org/a"}}"#,
    )
    .unwrap();
    let out = Tollgate::run_cli(&[
        "policy",
        "eval",
        "-p",
        module.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "-d",
        data_file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decision: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["allow"], true);
    assert_eq!(decision["reason"], "agent_listed");

    // Without data the same input is denied: the -d file really reached the module.
    let out = Tollgate::run_cli(&[
        "policy",
        "eval",
        "-p",
        module.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
    ]);
    let decision: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["reason"], "unknown_agent");

    let path = dir.path().join("b.tar.gz");
    let agents = data(&["spiffe://example.org/a"]);
    let module_bytes = wasm("decision", &[]);
    std::fs::write(
        &path,
        opa_bundle(&[
            ("/data.json", agents.as_bytes()),
            ("/policy.wasm", &module_bytes),
        ]),
    )
    .unwrap();
    let out = Tollgate::run_cli(&[
        "policy",
        "eval",
        "-p",
        path.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decision: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["reason"], "agent_listed");

    // A runaway module: `--explain` shows the deny applied, a non-zero exit, in bounded time.
    let runaway = dir.path().join("runaway.wasm");
    std::fs::write(&runaway, wasm("never_returns", &[])).unwrap();
    let started = Instant::now();
    let out = Tollgate::run_cli(&[
        "policy",
        "eval",
        "-p",
        runaway.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--explain",
    ]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success());
    // No value of the policy's own; the decision tollgate applies is the timeout's deny.
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown.get("value").is_none(), "{shown}");
    assert_eq!(shown["applied"]["reason"], "policy_timeout");
}

/// A field of an operational-log line (tracing's JSON puts event fields at the top level or
/// under `fields`).
fn log_field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line.get(name)
        .or_else(|| line.get("fields").and_then(|f| f.get(name)))
        .and_then(Value::as_str)
}

/// The operational-log detail of the policy failure behind decision `id`.
fn failure_detail(tg: &Tollgate, id: &str) -> String {
    let line = tg.wait_log(
        |l| {
            log_field(l, "message") == Some("policy evaluation failed; denying")
                && log_field(l, "decision_id") == Some(id)
        },
        WAIT,
    );
    log_field(&line, "detail").unwrap_or_default().to_string()
}

#[test]
fn a_sprintf_reason_and_an_opa_abort_message_reach_the_proxy_and_its_logs() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    std::fs::write(&module, wasm("sprintf", &[])).unwrap();
    let tg = start(&format!("{{path: '{}'}}", module.display()));
    let origin = PyOrigin::start(None);
    // The fixture's decision: {"allow": false, "reason": sprintf("%q has %d rules",
    // [<the caller's SPIFFE ID>, 3])}, formatted by Go's rules on the host.
    let (status, decision) = call(&tg, &origin);
    assert_eq!(status, 403, "{decision}");
    assert_eq!(
        reason(&decision),
        format!("\"{CALLER}\" has 3 rules"),
        "{decision}"
    );

    // A module that aborts: 403 policy_error, and OPA's message is the logged detail.
    replace_file(&module, &wasm("aborts", &[]));
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (status, decision) = call(&tg, &origin);
        assert_eq!(status, 403, "{decision}");
        assert_eq!(reason(&decision), "policy_error");
        let id = decision["decision_id"].as_str().unwrap();
        assert_eq!(
            failure_detail(&tg, id),
            "opa_abort: tollgate.rego:12:5: var assignment conflict"
        );
    }
    assert!(!tg.stderr_text().contains("backtrace"));
    assert_eq!(tg.admin_json("GET", "/healthz", None).0, 200);
}

#[test]
fn an_allow_reached_after_a_failed_builtin_is_a_policy_error() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    std::fs::write(&module, wasm("sprintf", &[])).unwrap();
    // This entrypoint calls sprintf with one argument (a builtin error, so undefined, as in
    // OPA's Go SDK) and then returns {"allow": true}.
    let tg = start(&format!(
        "{{path: '{}', entrypoint: cases/allow_after_error}}",
        module.display()
    ));
    let origin = PyOrigin::start(None);
    let (status, decision) = call(&tg, &origin);
    assert_eq!(status, 403, "{decision}");
    assert_eq!(reason(&decision), "policy_error");
    let detail = failure_detail(&tg, decision["decision_id"].as_str().unwrap());
    assert!(detail.starts_with("builtin `sprintf` failed ("), "{detail}");
    assert!(
        detail.ends_with("an allow reached after a builtin error is refused"),
        "{detail}"
    );
}

#[test]
fn policy_eval_prints_go_formatted_reasons_and_opa_abort_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, "{}").unwrap();
    let module = dir.path().join("sprintf.wasm");
    std::fs::write(&module, wasm("sprintf", &[])).unwrap();
    for (entrypoint, expected) in [
        ("cases/q", "\"x\\\"y\"|'*'"),
        ("cases/sets", "{1, 2} set()"),
        ("cases/t", "%!t(string=true)|%!t(string=false)"),
        ("cases/bad_verb_missing", "%!z(int=1) %!d(MISSING)"),
    ] {
        let out = Tollgate::run_cli(&[
            "policy",
            "eval",
            "-p",
            module.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
            "-e",
            entrypoint,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let decision: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(decision["reason"], expected, "{entrypoint}");
    }
    let aborts = dir.path().join("aborts.wasm");
    std::fs::write(&aborts, wasm("aborts", &[])).unwrap();
    let out = Tollgate::run_cli(&[
        "policy",
        "eval",
        "-p",
        aborts.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--explain",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({
            "applied": {"allow": false, "reason": "policy_error"},
            "error": "opa_abort: tollgate.rego:12:5: var assignment conflict",
        })
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "policy_error: opa_abort: tollgate.rego:12:5: var assignment conflict \
         (tollgate would apply {\"allow\":false,\"reason\":\"policy_error\"})"
    );
}
