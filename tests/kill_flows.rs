//! Kill means now (issue 15): a kill, or the end of a task, cuts the flows already open — a
//! slow reader of a large response, a server-sent-events stream, HTTP/2 streams inside an
//! intercepted connection, a blind tunnel, a request body being uploaded — within 100 ms.
//!
//! Each test runs `tests/agents/kill_flows.py`, which opens a "victim" flow (task `victim`)
//! and a "bystander" flow (task `other`, or another caller with its own SVID) with a real
//! client (httpx or curl) through its own origin, ends the victim's task once it flows, and reports what each client received and
//! when. The assertions: after the kill's answer + 100 ms not one more byte reached the victim
//! (or, for the upload, the origin); the victim's client saw an error, not a complete body;
//! the bystander's flow completed untouched; the decision log has the cut flow's line
//! (`reason: killed`, the kill's id, bytes each way); `GET /v1/kill` and
//! `tollgate_flows_killed_total{kind}` count it.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";
/// Another caller: a different SPIFFE ID, with its own SVID.
const OTHER_CALLER: &str = "spiffe://tollgate.local/test/other";

fn tollgate(dir: &Path, upstream_ca: Option<&Path>) -> Tollgate {
    start(
        dir,
        "{name: agents, address: '127.0.0.1:0'}",
        &format!("workload_spiffe_id: '{CALLER}'"),
        &repo_root().join("tests/fixtures/policy-data.json"),
        upstream_ca,
    )
}

/// tollgate with `listener` (a flow-style YAML map), `identity` (the identity map's inside),
/// the bundled policy on `data`, the admin API on loopback.
fn start(
    dir: &Path,
    listener: &str,
    identity: &str,
    data: &Path,
    upstream_ca: Option<&Path>,
) -> Tollgate {
    let root = repo_root();
    let ca = upstream_ca.map_or(String::new(), |ca| format!(", ca: '{}'", ca.display()));
    Tollgate::builder()
        .config(format!(
            "listeners: [{listener}]\n\
             admin: {{address: '127.0.0.1:0', kill_file: '{}'}}\n\
             identity: {{{identity}}}\n\
             policy: {{path: '{}', data: '{}'}}\n\
             upstream: {{allow_private: [127.0.0.0/8]{ca}}}\n",
            dir.join("kills.json").display(),
            root.join("policy-wasm").display(),
            data.display(),
        ))
        .config_as_is()
        .start()
}

/// Runs the driver in `mode` against `tg`; its JSON report.
fn drive(tg: &Tollgate, mode: &str, extra: &[&Path]) -> Value {
    require_tool("curl");
    let script = repo_root().join("tests/agents/kill_flows.py");
    let admin = tg.admin_url("");
    let mut cmd = command(python());
    cmd.arg(&script).args([mode, &tg.proxy_url(), &admin]);
    cmd.args(extra);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kill_flows.py {mode} failed: {}\nstdout: {stdout}\nstderr: {}\ntollgate:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tg.stderr_text()
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not a report ({e}): {stdout}"));
    eprintln!("kill_flows.py {mode}: {report}");
    report
}

/// The victim stopped: nothing after the kill's answer + 100 ms, an error, not complete.
fn assert_cut(victim: &Value) {
    assert_eq!(
        victim["bytes_after_100ms"], 0,
        "bytes passed after 100 ms: {victim}"
    );
    assert!(
        victim["error"].is_string(),
        "the client saw no error: {victim}"
    );
    assert_eq!(victim["complete"], false, "{victim}");
    assert!(victim["bytes_before_kill"].as_u64() > Some(0), "{victim}");
}

/// The bystander went on and finished.
fn assert_untouched(bystander: &Value) {
    assert_eq!(
        bystander["complete"], true,
        "the bystander was cut: {bystander}"
    );
    assert!(bystander["error"].is_null(), "{bystander}");
}

/// The decision-log line of a flow of `kind` cut by `kill_id`.
fn cut_line(tg: &Tollgate, kill_id: &str, kind: &str) -> Value {
    tg.wait_decision(
        |d| d["kill_id"] == kill_id && d["flow"]["kind"] == kind,
        WAIT,
    )
}

/// `tollgate_flows_killed_total{kind="…"}`.
fn flows_killed(tg: &Tollgate, kind: &str) -> u64 {
    let text = tg.admin("GET", "/metrics", None).1;
    let series = format!("tollgate_flows_killed_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// `flows_ended` of the kill with this id in `GET /v1/kill`.
fn listed_flows_ended(tg: &Tollgate, kill_id: &str) -> u64 {
    let (status, listed) = tg.admin_json("GET", "/v1/kill", None);
    assert_eq!(status, 200);
    listed["kills"]
        .as_array()
        .and_then(|kills| kills.iter().find(|k| k["id"] == kill_id))
        .and_then(|k| k["flows_ended"].as_u64())
        .unwrap_or_else(|| panic!("kill {kill_id} not listed: {listed}"))
}

#[test]
fn cuts_a_slow_reader_of_a_large_response_with_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path(), None);
    let report = drive(&tg, "slow", &[]);
    let victim = &report["victim"];
    assert_cut(victim);
    // The cut is a reset, not a clean end: the client never takes a short body for a whole.
    let error = victim["error"].as_str().unwrap_or("");
    assert!(
        error.contains("reset") || error.contains("Reset") || error.contains("104"),
        "{victim}"
    );
    assert!(victim["bytes"].as_u64() < Some(200 * 1024 * 1024));
    assert_untouched(&report["bystander"]);
    let kill = &report["answer"]["kill"];
    let kill_id = kill["id"].as_str().unwrap();
    assert_eq!(kill["flows_ended"], 1, "{report}");
    let line = cut_line(&tg, kill_id, "request");
    assert_eq!(line["decision"]["reason"], "killed");
    assert_eq!(line["decision"]["allow"], false);
    assert_eq!(line["intent"]["task"], "victim");
    assert_eq!(line["request"]["path"], "/stream");
    let sent = line["flow"]["bytes_to_agent"].as_u64().unwrap();
    assert!(sent >= victim["bytes"].as_u64().unwrap(), "{line} {victim}");
    assert_eq!(listed_flows_ended(&tg, kill_id), 1);
    assert_eq!(flows_killed(&tg, "request"), 1);
    // The next request of the task gets the kill's 403, which names the kill and its reason.
    let out = curl(&[
        "-s",
        "-x",
        &tg.proxy_url(),
        "-H",
        "X-Agent-Task: victim",
        "http://127.0.0.1:9/",
    ]);
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["reason"], "killed", "{body}");
    assert_eq!(body["kill_id"], kill_id, "{body}");
    assert_eq!(body["kill_reason"], "runaway loop", "{body}");
}

#[test]
fn ending_a_task_cuts_its_server_sent_events_stream() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path(), None);
    let report = drive(&tg, "sse", &[]);
    assert_cut(&report["victim"]);
    // The bystander's events kept coming after the task ended; it closed on its own.
    let bystander = &report["bystander"];
    assert!(bystander["error"].is_null(), "{bystander}");
    assert!(
        report["bystander_events_after_kill"].as_u64() >= Some(10),
        "{report}"
    );
    let answer = &report["answer"];
    assert_eq!(answer["task"], "victim");
    assert_eq!(answer["flows_ended"], 1, "{answer}");
    let ending_id = answer["ending_id"].as_str().unwrap();
    let line = cut_line(&tg, ending_id, "request");
    assert_eq!(line["decision"]["reason"], "killed");
    assert_eq!(line["request"]["path"], "/sse");
    assert!(line["flow"]["bytes_to_agent"].as_u64() > Some(0), "{line}");
    assert_eq!(flows_killed(&tg, "request"), 1);
}

#[test]
fn cuts_the_killed_tasks_http2_streams_and_spares_the_others_on_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let tg = tollgate(dir.path(), Some(&pki.ca_cert()));
    let ca = tg.dir().join("state/intercept-ca.pem");
    let report = drive(&tg, "h2", &[&ca, &pki.server_cert(), &pki.server_key()]);
    for victim in report["victims"].as_array().unwrap() {
        assert_cut(victim);
        assert_eq!(victim["http_version"], "HTTP/2", "{victim}");
        // RST_STREAM(CANCEL): error code 8 (RFC 9113 §7), as httpx reports it.
        assert!(
            victim["error"]
                .as_str()
                .unwrap_or("")
                .contains("error_code:8"),
            "{victim}"
        );
    }
    let bystander = &report["bystander"];
    assert_eq!(bystander["http_version"], "HTTP/2");
    assert_untouched(bystander);
    let kill_id = report["answer"]["kill"]["id"].as_str().unwrap();
    assert_eq!(report["answer"]["kill"]["flows_ended"], 2, "{report}");
    // One intercepted connection carried the three streams, and it was not cut.
    let connects = tg
        .decisions()
        .into_iter()
        .filter(|d| d["request"]["method"] == "CONNECT" && d["decision"]["allow"] == true)
        .count();
    assert_eq!(connects, 1, "{}", tg.stdout_text());
    let line = cut_line(&tg, kill_id, "http2_stream");
    assert_eq!(line["decision"]["reason"], "killed");
    assert!(line["flow"]["bytes_to_agent"].as_u64() > Some(0), "{line}");
    assert_eq!(listed_flows_ended(&tg, kill_id), 2);
    assert_eq!(flows_killed(&tg, "http2_stream"), 2);
    assert_eq!(flows_killed(&tg, "intercepted_connection"), 0);
}

#[test]
fn a_caller_kill_resets_its_intercepted_connection_and_the_request_inside() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let tg = tollgate(dir.path(), Some(&pki.ca_cert()));
    let ca = tg.dir().join("state/intercept-ca.pem");
    let report = drive(
        &tg,
        "intercept",
        &[
            &ca,
            &pki.server_cert(),
            &pki.server_key(),
            Path::new(CALLER),
        ],
    );
    let victim = &report["victim"];
    assert_cut(victim);
    assert_eq!(victim["http_version"], "HTTP/1.1", "{victim}");
    let kill_id = report["answer"]["kill"]["id"].as_str().unwrap();
    // Two flows: the intercepted connection and the request streaming inside it.
    assert_eq!(report["answer"]["kill"]["flows_ended"], 2, "{report}");
    let conn = cut_line(&tg, kill_id, "intercepted_connection");
    assert_eq!(conn["decision"]["reason"], "killed");
    assert_eq!(conn["request"]["method"], "CONNECT");
    assert_eq!(conn["source"]["spiffe_id"], CALLER);
    assert!(conn["flow"]["bytes_to_agent"].as_u64() > Some(0), "{conn}");
    let request = cut_line(&tg, kill_id, "request");
    assert_eq!(request["request"]["scheme"], "https");
    assert_eq!(listed_flows_ended(&tg, kill_id), 2);
    assert_eq!(flows_killed(&tg, "intercepted_connection"), 1);
    assert_eq!(flows_killed(&tg, "request"), 1);
}

#[test]
fn cuts_a_blind_tunnel_of_the_killed_task_with_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path(), None);
    let report = drive(&tg, "tunnel", &[]);
    assert_cut(&report["victim"]);
    assert_untouched(&report["bystander"]);
    let kill_id = report["answer"]["kill"]["id"].as_str().unwrap();
    assert_eq!(report["answer"]["kill"]["flows_ended"], 1, "{report}");
    let line = cut_line(&tg, kill_id, "tunnel");
    assert_eq!(line["decision"]["reason"], "killed");
    assert_eq!(line["request"]["method"], "CONNECT");
    assert_eq!(line["request"]["host"], "localhost");
    assert_eq!(line["intent"]["task"], "victim");
    assert!(
        line["flow"]["bytes_from_agent"].as_u64() > Some(0),
        "{line}"
    );
    assert!(line["flow"]["bytes_to_agent"].as_u64() > Some(0), "{line}");
    assert_eq!(listed_flows_ended(&tg, kill_id), 1);
    assert_eq!(flows_killed(&tg, "tunnel"), 1);
}

#[test]
fn cuts_an_upload_in_progress_so_nothing_more_reaches_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path(), None);
    let report = drive(&tg, "upload", &[]);
    let victim = &report["victim"];
    assert_eq!(
        victim["bytes_after_100ms"], 0,
        "upload bytes reached the origin after 100 ms: {victim}"
    );
    assert!(victim["bytes_before_kill"].as_u64() > Some(0), "{victim}");
    assert_ne!(victim["code"], 0, "curl did not see the cut: {victim}");
    let bystander = &report["bystander"];
    assert_eq!(bystander["code"], 0, "{bystander}");
    assert_eq!(bystander["bytes"], 8 * 1024 * 1024, "{bystander}");
    let kill_id = report["answer"]["kill"]["id"].as_str().unwrap();
    let line = cut_line(&tg, kill_id, "request");
    assert_eq!(line["decision"]["reason"], "killed");
    assert_eq!(line["request"]["method"], "PUT");
    let uploaded = line["flow"]["bytes_from_agent"].as_u64().unwrap();
    assert!(
        uploaded >= victim["bytes"].as_u64().unwrap(),
        "{line} {victim}"
    );
    assert_eq!(flows_killed(&tg, "request"), 1);
}

#[test]
fn a_caller_kill_spares_another_callers_flow_which_keeps_flowing_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    // One CA for the trust domain: the listener's certificate and the two callers' SVIDs.
    let pki = Pki::new();
    let victim = pki.issue_leaf("victim", &[&format!("URI:{CALLER}")]);
    let bystander = pki.issue_leaf("bystander", &[&format!("URI:{OTHER_CALLER}")]);
    // The policy data grants the other caller the same rules as the first.
    let fixture = repo_root().join("tests/fixtures/policy-data.json");
    let mut data: Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    let agents = &mut data["tollgate_config"]["agents"];
    agents[OTHER_CALLER] = agents[CALLER].clone();
    let data_file = dir.path().join("policy-data.json");
    std::fs::write(&data_file, data.to_string()).unwrap();
    let tg = start(
        dir.path(),
        &format!(
            "{{name: agents, address: '127.0.0.1:0', tls: {{cert: '{}', key: '{}', client_auth: required}}}}",
            pki.server_cert().display(),
            pki.server_key().display()
        ),
        &format!(
            "trust_domains: {{tollgate.local: {{bundle: '{}'}}}}",
            pki.ca_cert().display()
        ),
        &data_file,
        None,
    );
    assert!(tg.proxy_url().starts_with("https://"), "{}", tg.proxy_url());
    let report = drive(
        &tg,
        "callers",
        &[
            &pki.ca_cert(),
            &victim.cert,
            &victim.key,
            Path::new(CALLER),
            &bystander.cert,
            &bystander.key,
        ],
    );
    let victim = &report["victim"];
    assert_cut(victim);
    assert_eq!(victim["code"], 56, "curl did not see a reset: {victim}");
    // The other caller's bytes kept arriving after the kill (and after the victim's 100 ms),
    // and its response came whole: curl exit 0, every byte.
    let bystander = &report["bystander"];
    assert_untouched(bystander);
    assert_eq!(bystander["code"], 0, "{bystander}");
    assert_eq!(bystander["bytes"], 16 * 1024 * 1024, "{bystander}");
    assert!(
        bystander["bytes_after_100ms"].as_u64() >= Some(1024 * 1024),
        "the bystander stalled after the kill: {bystander}"
    );
    let kill = &report["answer"]["kill"];
    assert_eq!(kill["target"]["spiffe_id"], CALLER, "{report}");
    let kill_id = kill["id"].as_str().unwrap();
    assert_eq!(kill["flows_ended"], 1, "{report}");
    let line = cut_line(&tg, kill_id, "request");
    assert_eq!(line["source"]["spiffe_id"], CALLER, "{line}");
    assert_eq!(line["decision"]["reason"], "killed");
    assert!(
        line["flow"]["bytes_to_agent"].as_u64() >= victim["bytes"].as_u64(),
        "{line} {victim}"
    );
    // The bystander's own line: allowed, its caller, not cut.
    let spared = tg.wait_decision(
        |d| d["source"]["spiffe_id"] == OTHER_CALLER && d["request"]["path"] == "/stream",
        WAIT,
    );
    assert_eq!(spared["decision"]["allow"], true, "{spared}");
    assert!(spared["kill_id"].is_null(), "{spared}");
    assert_eq!(listed_flows_ended(&tg, kill_id), 1);
    assert_eq!(flows_killed(&tg, "request"), 1);
}
