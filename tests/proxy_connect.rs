//! HTTPS through CONNECT: connection-level decisions before any byte flows, TLS interception
//! with leaves minted from the development CA (each request inside the tunnel decided on its
//! own, HTTP/1.1 and HTTP/2), `mode: tunnel`, and TLS on the listener itself.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";

struct Setup {
    tg: Tollgate,
    pki: Pki,
}

impl Setup {
    /// The CA agents trust to accept tollgate's minted leaves.
    fn intercept_ca(&self) -> PathBuf {
        self.tg.dir().join("state/intercept-ca.pem")
    }
}

/// tollgate trusting the origin CA (made with openssl), loopback reachable.
fn setup(listener_extra: &str) -> Setup {
    let pki = Pki::new();
    let root = repo_root();
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'{listener_extra}}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8], ca: '{}'}}\n",
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
        pki.ca_cert().display(),
    ));
    Setup { tg, pki }
}

#[test]
fn intercepts_https_and_decides_each_request_inside_the_tunnel() {
    let s = setup("");
    let origin = PyOrigin::start(Some(&s.pki));
    let url = format!("https://127.0.0.1:{}/echo", origin.port());
    let ca = s.intercept_ca();
    // curl: one tunnel, an allowed GET then a denied DELETE on the same connection.
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        "X-Agent-Intent: files.read",
        &url,
        "--next",
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "--cacert",
        ca.to_str().unwrap(),
        "-X",
        "DELETE",
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (first, second) = text
        .split_once("}\n{")
        .map(|(a, b)| (format!("{a}}}"), format!("{{{b}")))
        .unwrap_or_else(|| panic!("two bodies: {text}\n{}", s.tg.stderr_text()));
    let echoed: Value = serde_json::from_str(&first).expect("echo json");
    assert_eq!(echoed["headers"]["x-policy-header"], "set-by-policy");
    assert!(echoed["headers"].get("x-agent-intent").is_none());
    let denied: Value = serde_json::from_str(&second).expect("deny json");
    assert_eq!(denied["reason"], "method_not_allowed");

    let connect =
        s.tg.wait_decision(|d| d["request"]["method"] == "CONNECT", WAIT);
    assert_eq!(connect["decision"]["allow"], true);
    assert_eq!(connect["request"]["host"], "127.0.0.1");
    let get =
        s.tg.wait_decision(|d| d["request"]["method"] == "GET", WAIT);
    assert_eq!(get["request"]["scheme"], "https");
    assert_eq!(get["upstream_status"], 200);
    let delete =
        s.tg.wait_decision(|d| d["request"]["method"] == "DELETE", WAIT);
    assert_eq!(delete["decision"]["allow"], false);
}

#[test]
fn python_and_node_agents_work_through_interception() {
    let s = setup("");
    let origin = PyOrigin::start(Some(&s.pki));
    let url = format!("https://127.0.0.1:{}/echo", origin.port());
    let request = AgentRequest::get(url.clone())
        .proxy(s.tg.proxy_url())
        .cacert(s.intercept_ca());
    for (name, response) in [
        ("httpx", python_agent(&request)),
        (
            "requests",
            python_agent(&request.clone().py_client(PyClient::Requests)),
        ),
        ("undici", node_agent(&request)),
    ] {
        assert_eq!(response.status, 200, "{name}: {:?}", response.raw);
        assert_eq!(
            response.json()["headers"]["x-policy-header"],
            "set-by-policy",
            "{name}"
        );
        assert!(
            response.header("x-tollgate-decision-id").is_some(),
            "{name}"
        );
    }
    let denied = node_agent(
        &AgentRequest::new("PUT", url)
            .proxy(s.tg.proxy_url())
            .cacert(s.intercept_ca()),
    );
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["reason"], "intent_required");
}

#[test]
fn speaks_http2_inside_the_tunnel_and_to_an_h2_origin() {
    let s = setup("");
    let nginx = Nginx::start(&NginxOptions::tls(&s.pki));
    nginx.write_file("h2.txt", b"over two protocols\n");
    // 127.0.0.1, not localhost: the test policy tunnels localhost unread.
    let url = format!(
        "https://127.0.0.1:{}/h2.txt",
        nginx.tls_port().expect("tls port")
    );
    let ca = s.intercept_ca();
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "--http2",
        "-x",
        &s.tg.proxy_url(),
        "--cacert",
        ca.to_str().unwrap(),
        "-w",
        "\\n%{http_version}",
        &url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "over two protocols\n\n2",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.tg.stderr_text()
    );
    let httpx = python_agent(
        &AgentRequest::get(url)
            .proxy(s.tg.proxy_url())
            .cacert(ca)
            .http2(),
    );
    assert_eq!(httpx.status, 200);
    assert_eq!(httpx.http_version, "HTTP/2");
    // tollgate chose HTTP/2 toward the origin by ALPN.
    let line = nginx.wait_access_log(|l| l.to_string().contains("h2.txt"), WAIT);
    assert!(line.to_string().contains("HTTP/2.0"), "{line}");
}

#[test]
fn refuses_a_connect_to_a_port_the_policy_does_not_allow_before_any_byte_flows() {
    let s = setup("");
    // api.github.com is allowed on 443 only; the name need not resolve for the policy to decide.
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        "https://api.github.com:8443/repos/x",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let d =
        s.tg.wait_decision(|d| d["request"]["method"] == "CONNECT", WAIT);
    assert_eq!(d["decision"]["reason"], "port_not_allowed");
    assert_eq!(d["request"]["port"], 8443);
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        "https://unlisted.example:443/",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
}

#[test]
fn passes_bytes_unread_when_the_policy_asks_for_a_tunnel() {
    let s = setup("");
    let origin = PyOrigin::start(Some(&s.pki));
    // localhost is `mode: tunnel`: the agent must see the origin's own certificate.
    let url = format!("https://localhost:{}/echo", origin.port());
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "--cacert",
        s.pki.ca_cert().to_str().unwrap(),
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echoed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        echoed["headers"].get("x-policy-header").is_none(),
        "unread: no policy headers"
    );
    let d =
        s.tg.wait_decision(|d| d["request"]["method"] == "CONNECT", WAIT);
    assert_eq!(d["decision"]["reason"], "allowed by rule local-tunnel");
    // Trusting only tollgate's CA fails: nobody intercepted.
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "--cacert",
        s.intercept_ca().to_str().unwrap(),
        &url,
    ]);
    assert!(!out.status.success());
}

#[test]
fn rejects_a_request_whose_host_differs_from_the_tunnel() {
    let s = setup("");
    let origin = PyOrigin::start(Some(&s.pki));
    let url = format!("https://127.0.0.1:{}/echo", origin.port());
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "--cacert",
        s.intercept_ca().to_str().unwrap(),
        "-H",
        "Host: api.github.com",
        "-i",
        &url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // First the CONNECT answer (200), then the inner response (curl speaks HTTP/2 inside).
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\nHTTP/2 400"), "{text}");
    assert!(text.contains("\"reason\":\"host_mismatch\""), "{text}");
}

#[test]
fn serves_agents_over_tls_on_the_listener_itself() {
    let pki = Pki::new();
    let listener_cert = pki.issue_leaf("proxy", &["IP:127.0.0.1", "DNS:localhost"]);
    let s = setup(&format!(
        ", tls: {{cert: '{}', key: '{}'}}",
        listener_cert.cert.display(),
        listener_cert.key.display()
    ));
    let origin = PyOrigin::start(Some(&s.pki));
    let url = format!("https://127.0.0.1:{}/echo", origin.port());
    let proxy = s.tg.proxy_url();
    assert!(proxy.starts_with("https://"), "{proxy}");
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &proxy,
        "--proxy-cacert",
        pki.ca_cert().to_str().unwrap(),
        "--cacert",
        s.intercept_ca().to_str().unwrap(),
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echoed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(echoed["headers"]["x-policy-header"], "set-by-policy");
    let httpx = python_agent(
        &AgentRequest::get(url)
            .proxy(proxy)
            .proxy_cacert(pki.ca_cert())
            .cacert(s.intercept_ca()),
    );
    assert_eq!(httpx.status, 200, "{:?}", httpx.raw);
    // A client that does not trust the listener's CA is refused during the handshake.
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "http://127.0.0.1:9/",
    ]);
    assert!(!out.status.success());
}

#[test]
fn refuses_an_sni_that_differs_from_the_connect_host() {
    let s = setup("");
    let origin = PyOrigin::start(Some(&s.pki));
    // --connect-to makes curl CONNECT to 127.0.0.1 while sending SNI api.github.com.
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &s.tg.proxy_url(),
        "--cacert",
        s.intercept_ca().to_str().unwrap(),
        "--connect-to",
        &format!("api.github.com:443:127.0.0.1:{}", origin.port()),
        "https://api.github.com/repos/x",
    ]);
    assert!(!out.status.success(), "handshake must fail");
    s.tg.wait_log(
        |l| l["message"] == "SNI does not match the CONNECT host; closing",
        WAIT,
    );
}
