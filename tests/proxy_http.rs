//! Plain-HTTP forward proxying through real agents (curl, Python httpx/requests, Node undici)
//! to real origins (Python echo origin, nginx): per-request policy decisions, the headers the
//! origin receives, the decision log, private destinations, intent validation, streaming.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";

/// tollgate with the bundled policy, the test data, loopback reachable.
fn tollgate() -> Tollgate {
    tollgate_with("upstream: {allow_private: [127.0.0.0/8]}")
}

fn tollgate_with(extra: &str) -> Tollgate {
    let root = repo_root();
    Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n{extra}\n",
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    ))
}

fn decision_for(tg: &Tollgate, id: &str) -> Value {
    tg.wait_decision(|d| d["decision_id"] == id, WAIT)
}

#[test]
fn forwards_an_allowed_call_with_intent_headers_removed_and_policy_headers_set() {
    let tg = tollgate();
    let origin = PyOrigin::start(None);
    let response = python_agent(
        &AgentRequest::get(origin.url("/echo?q=secret-query"))
            .proxy(tg.proxy_url())
            .header("X-Agent-Intent", "files.read")
            .header("X-Agent-Task", "t-42")
            .header("X-Agent-Purpose", "integration test")
            .header("X-Remove-Me", "should-not-arrive")
            .header("Connection", "keep-alive, x-hop")
            .header("X-Hop", "hop-by-hop"),
    );
    assert_eq!(response.status, 200, "{:?}", response.raw);
    let echoed = response.json();
    let headers = &echoed["headers"];
    assert_eq!(headers["x-policy-header"], "set-by-policy");
    for absent in [
        "x-agent-intent",
        "x-agent-task",
        "x-agent-purpose",
        "x-remove-me",
        "x-hop",
        "proxy-connection",
    ] {
        assert!(
            headers.get(absent).is_none(),
            "{absent} reached the origin: {headers}"
        );
    }
    assert_eq!(echoed["query"], "q=secret-query");
    let id = response
        .header("x-tollgate-decision-id")
        .expect("decision id header")
        .to_string();

    let decision = decision_for(&tg, &id);
    assert_eq!(decision["source"]["spiffe_id"], CALLER);
    assert_eq!(decision["decision"]["allow"], true);
    assert_eq!(decision["decision"]["reason"], "allowed by rule local-read");
    assert_eq!(decision["intent"]["name"], "files.read");
    assert_eq!(decision["intent"]["task"], "t-42");
    assert_eq!(decision["intent"]["verified"], false);
    assert_eq!(decision["request"]["method"], "GET");
    assert_eq!(decision["request"]["host"], "127.0.0.1");
    assert_eq!(decision["request"]["path"], "/echo");
    assert_eq!(decision["upstream_status"], 200);
    assert_eq!(decision["engine"], "rego");
    assert!(decision["eval_us"].as_u64().is_some());
    assert!(
        decision["policy_revision"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    // No query values and no header values in the decision log.
    let line = decision.to_string();
    assert!(
        !line.contains("secret-query") && !line.contains("integration test"),
        "{line}"
    );
}

#[test]
fn denies_with_json_403_reason_and_decision_id_for_each_agent() {
    let tg = tollgate();
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    let request = AgentRequest::new("DELETE", url.clone()).proxy(tg.proxy_url());
    for response in [
        python_agent(&request),
        python_agent(&request.clone().py_client(PyClient::Requests)),
        node_agent(&request.clone().no_tunnel()),
    ] {
        assert_eq!(response.status, 403, "{:?}", response.raw);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body = response.json();
        assert_eq!(body["error"], "forbidden");
        assert_eq!(body["reason"], "method_not_allowed");
        let id = body["decision_id"]
            .as_str()
            .expect("decision_id")
            .to_string();
        assert_eq!(response.header("x-tollgate-decision-id"), Some(id.as_str()));
        let decision = decision_for(&tg, &id);
        assert_eq!(decision["decision"]["allow"], false);
        assert_eq!(decision["decision"]["reason"], "method_not_allowed");
        assert_eq!(decision["upstream_status"], Value::Null);
    }
    // Nothing reached the origin.
    assert!(
        !origin.stderr_text().contains("DELETE"),
        "{}",
        origin.stderr_text()
    );
}

#[test]
fn decides_each_request_on_a_keep_alive_connection() {
    let tg = tollgate();
    let origin = PyOrigin::start(None);
    // One curl, one connection, two requests: the first allowed, the second denied.
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
        &origin.url("/echo"),
        "--next",
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{num_connects}\\n",
        &origin.url("/echo"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec!["200", "403 0"],
        "second request reused the connection and was denied"
    );
    tg.wait_decision(
        |d| d["request"]["method"] == "POST" && d["decision"]["reason"] == "intent_required",
        WAIT,
    );
}

#[test]
fn posts_a_body_intact_when_the_intent_allows_it() {
    let tg = tollgate();
    let origin = PyOrigin::start(None);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.bin");
    let sha = write_pseudo_random_file(&body, 3 * 1024 * 1024 + 17);
    for (name, response) in [
        (
            "httpx",
            python_agent(
                &AgentRequest::new("POST", origin.url("/echo"))
                    .proxy(tg.proxy_url())
                    .header("X-Agent-Intent", "files.write")
                    .data_file(&body),
            ),
        ),
        (
            "undici",
            node_agent(
                &AgentRequest::new("POST", origin.url("/echo"))
                    .proxy(tg.proxy_url())
                    .no_tunnel()
                    .header("X-Agent-Intent", "files.write")
                    .data_file(&body),
            ),
        ),
    ] {
        assert_eq!(response.status, 200, "{name}: {:?}", response.raw);
        let echoed = response.json();
        assert_eq!(echoed["body_len"], 3 * 1024 * 1024 + 17, "{name}");
        assert_eq!(echoed["body_sha256"], sha.as_str(), "{name}");
    }
}

#[test]
fn refuses_a_write_without_the_required_intent() {
    let tg = tollgate();
    let origin = PyOrigin::start(None);
    let response =
        python_agent(&AgentRequest::new("POST", origin.url("/echo")).proxy(tg.proxy_url()));
    assert_eq!(response.status, 403);
    assert_eq!(response.json()["reason"], "intent_required");
    let wrong_path = python_agent(
        &AgentRequest::new("POST", origin.url("/elsewhere"))
            .proxy(tg.proxy_url())
            .header("X-Agent-Intent", "files.write"),
    );
    assert_eq!(wrong_path.status, 403);
    assert_eq!(wrong_path.json()["reason"], "path_not_allowed");
}

#[test]
fn decides_on_the_normalized_path_and_forwards_it() {
    let tg = tollgate();
    let origin = PyOrigin::start(None);
    // Dot segments cannot smuggle a write past the /echo prefix, and the origin sees what the
    // policy saw.
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "--path-as-is",
        "-x",
        &tg.proxy_url(),
        "-X",
        "POST",
        "-H",
        "X-Agent-Intent: files.write",
        "-d",
        "x",
        &origin.url("/echo/../admin"),
    ]);
    let body: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body["reason"], "path_not_allowed", "{body}");
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "--path-as-is",
        "-x",
        &tg.proxy_url(),
        &origin.url("/a/%2e%2e//echo"),
    ]);
    let echoed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(echoed["path"], "/echo", "{echoed}");
}

#[test]
fn refuses_private_destinations_after_resolution_unless_allowed() {
    let tg = tollgate_with("");
    let origin = PyOrigin::start(None);
    let port = origin.port();
    for url in [
        format!("http://127.0.0.1:{port}/echo"),
        format!("http://localhost:{port}/echo"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]:9/".to_string(),
        "http://10.0.0.1/".to_string(),
    ] {
        let out = curl(&["-s", "--max-time", "20", "-x", &tg.proxy_url(), "-i", &url]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("HTTP/1.1 403"), "{url}: {text}");
        assert!(
            text.contains("\"reason\":\"private_destination\""),
            "{url}: {text}"
        );
    }
    let decision = tg.wait_decision(|d| d["request"]["host"] == "169.254.169.254", WAIT);
    assert_eq!(decision["decision"]["reason"], "private_destination");
    assert_eq!(
        decision["policy_revision"],
        Value::Null,
        "the policy never saw it"
    );
    // The proxy keeps serving.
    let ok = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://127.0.0.2:9/",
    ]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "403");
}

#[test]
fn rejects_malformed_intent_headers_with_400() {
    let tg = tollgate();
    let origin = PyOrigin::start(None);
    let long_purpose = "p".repeat(513);
    let nine = ["spiffe://e.org/a"; 9].join(",");
    for (name, value, field) in [
        ("X-Agent-Intent", "issues read", "X-Agent-Intent"),
        ("X-Agent-Intent", "drop;table", "X-Agent-Intent"),
        ("X-Agent-Task", "", "X-Agent-Task"),
        ("X-Agent-Purpose", long_purpose.as_str(), "X-Agent-Purpose"),
        ("X-Agent-Delegation", nine.as_str(), "X-Agent-Delegation"),
        (
            "X-Agent-Intent-Token",
            &"a".repeat(8 * 1024 + 1),
            "X-Agent-Intent-Token",
        ),
    ] {
        let response = python_agent(
            &AgentRequest::get(origin.url("/echo"))
                .proxy(tg.proxy_url())
                .header(name, value),
        );
        assert_eq!(response.status, 400, "{name}: {:?}", response.raw);
        let body = response.json();
        assert_eq!(body["error"], "bad_request");
        assert_eq!(body["reason"], "bad_intent");
        assert!(
            body["message"].as_str().unwrap_or("").contains(field),
            "{body}"
        );
        assert!(body["decision_id"].is_string());
    }
    // An unsigned token is not a malformed header but a refused intent: 403 with the token's
    // reason, never a fall-back to the plain headers.
    let unsigned = python_agent(
        &AgentRequest::get(origin.url("/echo"))
            .proxy(tg.proxy_url())
            .header("X-Agent-Intent", "files.read")
            .header("X-Agent-Intent-Token", "eyJhbGciOiJub25lIn0.e30."),
    );
    assert_eq!(unsigned.status, 403, "{:?}", unsigned.raw);
    assert_eq!(unsigned.json()["reason"], "token_alg_not_allowed");
    let ok = python_agent(&AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url()));
    assert_eq!(ok.status, 200, "the proxy keeps serving");
}

#[test]
fn streams_a_50_mb_response_intact_from_nginx() {
    let tg = tollgate();
    let nginx = Nginx::start(&NginxOptions::plain());
    let sha = nginx.write_large_file("big.bin", 50 * 1024 * 1024);
    for response in [
        python_agent(&AgentRequest::get(nginx.url("/big.bin")).proxy(tg.proxy_url())),
        node_agent(
            &AgentRequest::get(nginx.url("/big.bin"))
                .proxy(tg.proxy_url())
                .no_tunnel(),
        ),
    ] {
        assert_eq!(response.status, 200, "{:?}", response.raw);
        assert_eq!(response.body_len, 50 * 1024 * 1024);
        assert_eq!(response.raw["body_sha256"], sha.as_str());
    }
    let out = curl(&[
        "-s",
        "--max-time",
        "60",
        "-x",
        &tg.proxy_url(),
        &nginx.url("/big.bin"),
        "-o",
        "-",
    ]);
    assert_eq!(out.stdout.len(), 50 * 1024 * 1024);
}

#[test]
fn delivers_the_first_server_sent_event_before_the_origin_finishes() {
    let tg = tollgate();
    let origin = PyOrigin::start(None);
    let release = SseRelease::new();
    let url = origin.url(&format!("/sse?{}", release.query()));
    let mut stream = curl_stream(&["-s", "-N", "--max-time", "40", "-x", &tg.proxy_url(), &url]);
    // The origin is blocked until `release`; the first event must already be through.
    stream.wait_line("data: first", WAIT);
    assert!(!release.path().exists());
    release.release();
    stream.wait_line("data: second", WAIT);
    assert!(stream.wait_exit(WAIT).success());
}

#[test]
fn answers_502_when_the_origin_refuses_and_keeps_serving() {
    let tg = tollgate();
    let port = free_port();
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "-i",
        &format!("http://127.0.0.1:{port}/echo"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(text.contains("\"reason\":\"upstream_connect\""), "{text}");
    let decision = tg.wait_decision(|d| d["error"] == "upstream_connect", WAIT);
    assert_eq!(
        decision["decision"]["allow"], true,
        "allowed by policy, failed upstream"
    );
}

#[test]
fn denies_by_policy_even_when_the_name_does_not_resolve() {
    let tg = tollgate();
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "-X",
        "DELETE",
        "http://api.github.com/repos/acme/app",
    ]);
    let body: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body["reason"], "method_not_allowed", "{body}");
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "http://no-such-host.invalid/repos/x",
    ]);
    let body: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body["reason"], "destination_not_allowed", "{body}");
}

#[test]
fn refuses_origin_form_requests_to_the_proxy_itself() {
    let tg = tollgate();
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-i",
        &format!("{}/hello", tg.proxy_url()),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("not a proxy request"), "{text}");
}

#[test]
fn dry_run_logs_the_deny_but_forwards() {
    let root = repo_root();
    let tg = Tollgate::builder()
        .config(format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             admin: {{address: '127.0.0.1:0'}}\n\
             identity: {{workload_spiffe_id: '{CALLER}'}}\n\
             policy: {{path: '{}', data: '{}', dry_run: true}}\n\
             upstream: {{allow_private: [127.0.0.0/8]}}\n",
            root.join("policy-wasm").display(),
            root.join("tests/fixtures/policy-data.json").display(),
        ))
        .start();
    let origin = PyOrigin::start(None);
    let response =
        python_agent(&AgentRequest::new("DELETE", origin.url("/echo")).proxy(tg.proxy_url()));
    assert_eq!(response.status, 200, "dry run enforces nothing");
    let id = response
        .header("x-tollgate-decision-id")
        .unwrap()
        .to_string();
    let decision = decision_for(&tg, &id);
    assert_eq!(decision["decision"]["allow"], false);
    assert_eq!(decision["decision"]["reason"], "method_not_allowed");
    assert_eq!(decision["decision"]["enforced"], false);
}

#[test]
fn answers_502_when_the_origin_certificate_is_not_trusted() {
    // The origin's CA (made with openssl) is not in upstream.ca: verification must fail.
    let tg = tollgate();
    let pki = Pki::new();
    let origin = PyOrigin::start(Some(&pki));
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "-i",
        &format!("https://127.0.0.1:{}/echo", origin.port()),
        "--proxytunnel",
        "--insecure",
    ]);
    // Through the tunnel curl sees tollgate's answer to the inner request: 502 upstream_tls.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 502"), "{text}");
    assert!(text.contains("\"reason\":\"upstream_tls\""), "{text}");
    let decision = tg.wait_decision(|d| d["error"] == "upstream_tls", WAIT);
    assert_eq!(decision["decision"]["allow"], true);
}

#[test]
fn answers_504_when_the_origin_is_too_slow() {
    let tg = tollgate_with("upstream: {allow_private: [127.0.0.0/8], request_timeout: 1s}");
    let origin = PyOrigin::start(None);
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "-i",
        &origin.url("/delay?ms=5000"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("\"reason\":\"upstream_timeout\""), "{text}");
    let ok = python_agent(&AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url()));
    assert_eq!(ok.status, 200, "the proxy keeps serving");
}

#[test]
fn fails_closed_when_the_policy_returns_no_valid_decision() {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in [
        (
            "mistyped",
            "package tollgate\ndecision := {\"allow\": \"yes\"}\n",
        ),
        (
            "undefined",
            "package tollgate\ndecision := {\"allow\": true} if { input.never }\n",
        ),
        (
            "erroring",
            "package tollgate\ndecision := {\"allow\": 1 / 0 == 1}\n",
        ),
    ] {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("policy.rego"), source).unwrap();
        let tg = Tollgate::start(&format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             identity: {{workload_spiffe_id: '{CALLER}'}}\n\
             policy: {{path: '{}'}}\n\
             upstream: {{allow_private: [127.0.0.0/8]}}\n",
            folder.display()
        ));
        let origin = PyOrigin::start(None);
        let response = python_agent(&AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url()));
        assert_eq!(response.status, 403, "{name}: {:?}", response.raw);
        assert_eq!(response.json()["reason"], "policy_error", "{name}");
        let id = response
            .header("x-tollgate-decision-id")
            .unwrap()
            .to_string();
        assert_eq!(
            decision_for(&tg, &id)["decision"]["reason"],
            "policy_error",
            "{name}"
        );
    }
}

#[test]
fn writes_the_decision_log_to_a_file_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/decisions.jsonl");
    let tg = tollgate_with(&format!(
        "upstream: {{allow_private: [127.0.0.0/8]}}\ntelemetry: {{decision_log: '{}'}}",
        log.display()
    ));
    let origin = PyOrigin::start(None);
    let response = python_agent(&AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url()));
    let id = response
        .header("x-tollgate-decision-id")
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&id)) {
            let record: Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["decision"]["allow"], true);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line for {id} in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        tg.decisions().is_empty(),
        "nothing on stdout when the log goes to a file"
    );
}
