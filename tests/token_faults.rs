//! Faulty OAuth 2.0 token endpoints (issue 14 item 4, token side): an endpoint that is down
//! (connection refused), slow (answers after the credential's `timeout`), answers 500,
//! answers garbage (not JSON, JSON without `access_token`, an `access_token` of the wrong
//! type) or hangs mid-body. Each request that needs the credential is refused 403
//! `credential_unavailable` within the credential's `timeout` + 1 s, never forwarded, and no
//! secret — the client secret, or anything the endpoint sent — appears in the response, the
//! decision log or tollgate's own log. tollgate's log says precisely what failed.
//!
//! The endpoint is a stand-in: `tests/origins/faulty_token_endpoint.py` (raw sockets; nginx
//! cannot misbehave on demand).

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
/// The credentials' `timeout`.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(1);
/// What the client secret file holds.
const CLIENT_SECRET: &str = "cs-LEAKMARK-client-secret";
/// What the stand-in puts in every body it sends (tokens, error descriptions).
const MARKER: &str = "LEAKMARK";

/// The stand-in token endpoint, killed on drop.
struct FaultyTokenEndpoint {
    _child: ChildGuard,
    port: u16,
    stderr: Lines,
}

impl FaultyTokenEndpoint {
    fn start() -> FaultyTokenEndpoint {
        let mut child = command(python())
            .arg(repo_root().join("tests/origins/faulty_token_endpoint.py"))
            .args(["--slow-seconds", "5"])
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the stand-in token endpoint");
        let stdout = Lines::capture(child.stdout.take().unwrap(), "token endpoint stdout");
        let stderr = Lines::capture(child.stderr.take().unwrap(), "token endpoint stderr");
        let child = ChildGuard::new(child);
        let (_, line) = stdout
            .wait_for(0, |l| l.starts_with("ready "), WAIT)
            .unwrap_or_else(|| panic!("no ready line; stderr:\n{}", stderr.text()));
        let port = line["ready ".len()..].trim().parse().expect("ready <port>");
        FaultyTokenEndpoint {
            _child: child,
            port,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The faults: (credential name, token endpoint URL, what tollgate's log must say).
fn faults(endpoint: &FaultyTokenEndpoint) -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "down",
            format!("http://127.0.0.1:{}/token", closed_port()),
            "the token endpoint could not be reached",
        ),
        (
            "slow",
            endpoint.url("/slow"),
            "the token endpoint did not answer within 1s",
        ),
        (
            "status500",
            endpoint.url("/status-500"),
            "the token endpoint answered 500 (server_error)",
        ),
        (
            "notjson",
            endpoint.url("/not-json"),
            "the token response is not usable: not JSON",
        ),
        (
            "notoken",
            endpoint.url("/no-token"),
            "the token response is not usable: no access_token",
        ),
        (
            "wrongtype",
            endpoint.url("/wrong-type"),
            "the token response is not usable: the access_token is not a string",
        ),
        (
            "hang",
            endpoint.url("/hang-mid-body"),
            "the token endpoint did not answer within 1s",
        ),
    ]
}

/// tollgate with one oauth2 credential per fault; the bundled policy's data gives each
/// credential its own path on the origin (`/fault/<name>`).
fn tollgate(endpoint: &FaultyTokenEndpoint) -> Tollgate {
    let builder = Tollgate::builder();
    let secret = builder.write_file("secrets/client-secret", CLIENT_SECRET);
    let faults = faults(endpoint);
    let rules: Vec<Value> = faults
        .iter()
        .map(|(name, _, _)| {
            json!({"id": name, "hosts": ["127.0.0.1"], "ports": ["*"], "methods": ["GET"],
                   "paths": [format!("/fault/{name}")], "credential": {"name": name}})
        })
        .collect();
    let mut agents = serde_json::Map::new();
    agents.insert(FIXTURE_CALLER.into(), json!({ "rules": rules }));
    let data = builder.write_file(
        "policy/data.json",
        serde_json::to_vec(&json!({"tollgate_config": {"agents": agents}})).unwrap(),
    );
    let credentials: String = faults
        .iter()
        .map(|(name, url, _)| {
            format!(
                "  {name}: {{kind: oauth2, token_endpoint: '{url}', client_id: tollgate, \
                 client_secret: {{file: '{}'}}, timeout: 1s}}\n",
                secret.display()
            )
        })
        .collect();
    builder
        .config(format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             admin: {{address: '127.0.0.1:0'}}\n\
             identity: {{workload_spiffe_id: '{FIXTURE_CALLER}'}}\n\
             policy: {{path: '{}', data: '{}'}}\n\
             upstream: {{allow_private: [127.0.0.0/8]}}\n\
             credentials:\n{credentials}",
            repo_root().join("policy-wasm").display(),
            data.display(),
        ))
        .start()
}

/// One GET through the forward listener; the status, the body and how long it took.
fn get(proxy: SocketAddr, url: &str) -> (u16, String, Duration) {
    let mut conn = KeepAlive::connect(proxy, WAIT);
    let started = Instant::now();
    let (status, body) = conn.get(url);
    (status, body, started.elapsed())
}

#[test]
fn every_token_endpoint_fault_is_a_prompt_fail_closed_deny_without_secrets() {
    let endpoint = FaultyTokenEndpoint::start();
    let tg = tollgate(&endpoint);
    let origin = PyOrigin::start(None);
    // The credential's timeout + 1 s is the longest a request waits for it; slack for a
    // loaded machine on top.
    let bound = TOKEN_TIMEOUT + Duration::from_secs(1) + Duration::from_millis(1500);
    for (name, _, says) in faults(&endpoint) {
        let (status, body, took) = get(
            tg.proxy_addr("agents"),
            &origin.url(&format!("/fault/{name}")),
        );
        assert_eq!(status, 403, "{name}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["reason"], "credential_unavailable", "{name}: {body}");
        eprintln!("{name}: 403 credential_unavailable after {took:?}");
        assert!(took < bound, "{name}: answered after {took:?}");
        assert!(!body.contains(MARKER), "{name}: {body}");
        // The decision log says why, and names the credential, never its value.
        let id = json["decision_id"].as_str().unwrap().to_string();
        let line = tg.wait_decision(|d| d["decision_id"] == id.as_str(), WAIT);
        assert_eq!(
            line["decision"]["reason"], "credential_unavailable",
            "{line}"
        );
        assert_eq!(line["decision"]["allow"], false, "{line}");
        // tollgate's own log says precisely what failed.
        let log = tg.wait_log(
            |l| l["decision_id"] == id.as_str() && l["credential"] == name,
            WAIT,
        );
        let error = log["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{name}: {log}");
    }
    // The origin was never called: nothing was forwarded without its credential.
    let origin_log = origin.stderr_text();
    assert!(!origin_log.contains("/fault/"), "{origin_log}");
    // The endpoint was asked (the client secret was sent to it, and only to it).
    let asked = endpoint.stderr.text();
    for path in [
        "/slow",
        "/status-500",
        "/not-json",
        "/no-token",
        "/wrong-type",
    ] {
        assert!(asked.contains(&format!("request {path}")), "{asked}");
    }
    // No secret in anything tollgate wrote.
    for (stream, text) in [("stdout", tg.stdout_text()), ("stderr", tg.stderr_text())] {
        assert!(!text.contains(MARKER), "{stream} carries a secret:\n{text}");
        assert!(!text.contains(CLIENT_SECRET), "{stream}:\n{text}");
    }
    // Each failure is counted for its credential.
    let (_, metrics) = tg.admin("GET", "/metrics", None);
    for (name, _, _) in faults(&endpoint) {
        let series = format!("tollgate_credential_errors_total{{credential=\"{name}\"}} 1");
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    }
}

#[test]
fn a_failed_credential_is_refused_fast_while_it_backs_off_and_never_hangs() {
    let endpoint = FaultyTokenEndpoint::start();
    let tg = tollgate(&endpoint);
    let origin = PyOrigin::start(None);
    let url = origin.url("/fault/hang");
    // The first request waits out the timeout; the next ones, during the backoff, are
    // refused at once, each the same fail-closed deny.
    let (status, _, first) = get(tg.proxy_addr("agents"), &url);
    assert_eq!(status, 403);
    assert!(first >= TOKEN_TIMEOUT, "{first:?}");
    let (status, body, again) = get(tg.proxy_addr("agents"), &url);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("credential_unavailable"), "{body}");
    assert!(again < TOKEN_TIMEOUT, "{again:?}");
    assert!(tg.is_running());
}
