//! Proves the test harness (tests/support) against real peers, without tollgate: if one of
//! these fails, a failure elsewhere may be the harness's, not the proxy's.

mod support;

use std::net::TcpStream;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn nginx_serves_50mb_file_intact_to_curl() {
    let nginx = Nginx::start(&NginxOptions::plain());
    let want = nginx.write_large_file("big.bin", 50 * 1024 * 1024);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("got.bin");
    let o = curl(&[
        "-sS",
        "--fail",
        "--max-time",
        "60",
        "-o",
        out.to_str().unwrap(),
        &nginx.url("/big.bin"),
    ]);
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 50 * 1024 * 1024);
    assert_eq!(sha256_file(&out), want);
    let entry = nginx.wait_access_log(|e| e["uri"] == "/big.bin", T);
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["body_bytes_sent"], 50 * 1024 * 1024);
}

#[test]
fn nginx_tls_speaks_http2_to_curl_and_logs_it() {
    let pki = Pki::new();
    let nginx = Nginx::start(&NginxOptions::tls(&pki));
    let o = curl(&[
        "-sS",
        "--fail",
        "--max-time",
        "20",
        "--http2",
        "--cacert",
        pki.ca_cert().to_str().unwrap(),
        "-w",
        "\n%{http_version}",
        &nginx.https_url("/hello"),
    ]);
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{NGINX_HELLO_BODY}\n2")
    );
    let entry = nginx.wait_access_log(|e| e["uri"] == "/hello", T);
    assert_eq!(entry["protocol"], "HTTP/2.0");
    assert_eq!(entry["scheme"], "https");
    assert_eq!(entry["ssl_server_name"], "localhost");
}

#[test]
fn nginx_tls_rejects_client_that_trusts_another_ca() {
    let pki = Pki::new();
    let other = Pki::with_ca_name("some other CA");
    let nginx = Nginx::start(&NginxOptions::tls(&pki));
    let o = curl(&[
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        other.ca_cert().to_str().unwrap(),
        &nginx.https_url("/hello"),
    ]);
    assert_eq!(
        o.status.code(),
        Some(60),
        "curl should fail verification: {o:?}"
    );
}

#[test]
fn nginx_access_log_records_agent_headers() {
    let nginx = Nginx::start(&NginxOptions::plain());
    let o = curl(&[
        "-sS",
        "--fail",
        "--max-time",
        "20",
        "-H",
        "X-Agent-Intent: issues.read",
        "-H",
        "X-Tollgate-Agent: a1",
        "-H",
        "Authorization: Bearer not-a-secret",
        &nginx.url("/hello?q=1"),
    ]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), NGINX_HELLO_BODY);
    let e = nginx.wait_access_log(|e| e["uri"] == "/hello?q=1", T);
    assert_eq!(e["protocol"], "HTTP/1.1");
    assert_eq!(e["headers"]["x-agent-intent"], "issues.read");
    assert_eq!(e["headers"]["x-tollgate-agent"], "a1");
    assert_eq!(e["headers"]["authorization"], "Bearer not-a-secret");
    // Absent headers are logged as "" (escape=json), so "removed" is assertable.
    assert_eq!(e["headers"]["x-agent-task"], "");
}

#[test]
fn httpx_negotiates_http2_with_nginx_tls() {
    let pki = Pki::new();
    let nginx = Nginx::start(&NginxOptions::tls(&pki));
    let r = python_agent(
        &AgentRequest::get(nginx.https_url("/hello"))
            .cacert(pki.ca_cert())
            .http2(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.http_version, "HTTP/2");
    assert_eq!(r.body_text.as_deref(), Some(NGINX_HELLO_BODY));
    nginx.wait_access_log(|e| e["uri"] == "/hello" && e["protocol"] == "HTTP/2.0", T);
}

/// POSTs a 3 MB file with a header to the TLS echo origin and checks what the origin saw.
fn assert_echo_over_tls(run: impl Fn(&AgentRequest) -> AgentResponse) {
    let pki = Pki::new();
    let origin = PyOrigin::start(Some(&pki));
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.bin");
    let body_sha = write_pseudo_random_file(&body, 3 * 1024 * 1024 + 7);
    let req = AgentRequest::new("POST", origin.url("/echo?x=1&y=two"))
        .cacert(pki.ca_cert())
        .header("X-Agent-Intent", "issues.read")
        .data_file(&body);
    let r = run(&req);
    assert_eq!(r.status, 200, "{:?}", r.raw);
    assert_eq!(r.http_version, "HTTP/1.1");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let echo = r.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["query"], "x=1&y=two");
    assert_eq!(echo["tls"], true);
    assert_eq!(echo["headers"]["x-agent-intent"], "issues.read");
    assert_eq!(echo["body_len"], 3 * 1024 * 1024 + 7);
    assert_eq!(echo["body_sha256"], body_sha.as_str());
}

#[test]
fn python_origin_echoes_over_tls_to_httpx() {
    assert_echo_over_tls(python_agent);
}

#[test]
fn python_origin_echoes_over_tls_to_requests() {
    assert_echo_over_tls(|r| python_agent(&r.clone().py_client(PyClient::Requests)));
}

#[test]
fn python_origin_echoes_over_tls_to_undici() {
    assert_echo_over_tls(node_agent);
}

#[test]
fn python_origin_echo_reads_chunked_bodies() {
    let origin = PyOrigin::start(None);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.bin");
    let want = write_pseudo_random_file(&body, 200_000);
    // curl sends a chunked body when told to with a Transfer-Encoding header.
    let o = curl(&[
        "-sS",
        "--fail",
        "--max-time",
        "20",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", body.display()),
        &origin.url("/echo"),
    ]);
    assert!(o.status.success(), "{o:?}");
    let echo: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(echo["headers"]["transfer-encoding"], "chunked");
    assert_eq!(echo["body_len"], 200_000);
    assert_eq!(echo["body_sha256"], want.as_str());
}

#[test]
fn python_origin_bytes_match_their_announced_sha256() {
    let origin = PyOrigin::start(None);
    let n = 5 * 1024 * 1024 + 3;
    let want = PyOrigin::bytes_sha256(n);
    for chunked in ["0", "1"] {
        let url = origin.url(&format!("/bytes?n={n}&chunked={chunked}"));
        let py = python_agent(&AgentRequest::get(&url));
        let node = node_agent(&AgentRequest::get(&url));
        for r in [py, node] {
            assert_eq!(r.status, 200);
            assert_eq!(r.body_len, n);
            assert_eq!(r.body_sha256, want);
            assert_eq!(r.body_text, None, "random bytes are not UTF-8");
        }
    }
}

#[test]
fn python_origin_status_endpoint_returns_that_status() {
    let origin = PyOrigin::start(None);
    let r = python_agent(&AgentRequest::get(origin.url("/status/418")));
    assert_eq!(r.status, 418);
    assert_eq!(r.json()["status"], 418);
    let r = node_agent(&AgentRequest::get(origin.url("/status/204")));
    assert_eq!((r.status, r.body_len), (204, 0));
}

#[test]
fn sse_first_event_arrives_before_the_origin_is_released() {
    let origin = PyOrigin::start(None);
    let release = SseRelease::new();
    let mut stream = curl_stream(&[
        "-sS",
        "-N",
        "--max-time",
        "40",
        &origin.url(&format!("/sse?{}", release.query())),
    ]);
    let first = stream.wait_line("data: first", T);
    // The origin is now blocked on the release file: the second event cannot have been sent.
    assert!(
        !stream
            .stdout
            .snapshot()
            .iter()
            .any(|l| l.starts_with("data: second"))
    );
    assert!(
        stream.child.try_wait().is_none(),
        "curl finished before the release"
    );
    release.release();
    let second = stream.wait_line("data: second", T);
    assert!(second > first);
    assert!(stream.wait_exit(T).success());
}

#[test]
fn agents_report_refused_connections_as_json_errors() {
    let port = free_port(); // nothing listens there
    let req =
        AgentRequest::get(format!("http://127.0.0.1:{port}/")).timeout(Duration::from_secs(5));
    for (name, e) in [
        ("httpx", try_python_agent(&req).unwrap_err()),
        (
            "requests",
            try_python_agent(&req.clone().py_client(PyClient::Requests)).unwrap_err(),
        ),
        ("undici", try_node_agent(&req).unwrap_err()),
    ] {
        assert_eq!(e.status.code(), Some(1), "{name}: {e:?}");
        assert!(
            e.error.contains("onnect") || e.error.contains("ECONNREFUSED"),
            "{name}: {e:?}"
        );
    }
}

#[test]
fn agents_reject_an_origin_signed_by_an_untrusted_ca() {
    let pki = Pki::new();
    let other = Pki::with_ca_name("not the origin's CA");
    let origin = PyOrigin::start(Some(&pki));
    let req = AgentRequest::get(origin.url("/echo")).cacert(other.ca_cert());
    let py = try_python_agent(&req).unwrap_err();
    assert!(py.error.contains("CERTIFICATE_VERIFY_FAILED"), "{py:?}");
    let node = try_node_agent(&req).unwrap_err();
    assert!(
        node.error.contains("UNABLE_TO_VERIFY_LEAF_SIGNATURE")
            || node.error.contains("certificate"),
        "{node:?}"
    );
}

/// The three agents, by name, for tests that run each of them.
fn each_agent(req: &AgentRequest) -> Vec<(&'static str, Result<AgentResponse, AgentError>)> {
    vec![
        ("httpx", try_python_agent(req)),
        (
            "requests",
            try_python_agent(&req.clone().py_client(PyClient::Requests)),
        ),
        ("undici", try_node_agent(req)),
    ]
}

#[test]
fn agents_tunnel_to_a_tls_origin_through_an_https_proxy() {
    let origin_pki = Pki::new();
    let proxy_pki = Pki::with_ca_name("proxy CA");
    let squid = Squid::start(Some(&proxy_pki));
    let origin = PyOrigin::start(Some(&origin_pki));
    let req = AgentRequest::get(origin.url("/echo"))
        .proxy(squid.proxy_url())
        .proxy_cacert(proxy_pki.ca_cert())
        .cacert(origin_pki.ca_cert());
    for (name, r) in each_agent(&req) {
        let r = r.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.json()["tls"], true, "{name}");
    }
    let tunnels = squid
        .access_log_lines()
        .iter()
        .filter(|l| l.contains("CONNECT localhost:"))
        .count();
    assert_eq!(tunnels, 3, "{:?}", squid.access_log_lines());
}

#[test]
fn agents_refuse_an_https_proxy_signed_by_an_untrusted_ca() {
    let proxy_pki = Pki::new();
    let other = Pki::with_ca_name("not the proxy's CA");
    let squid = Squid::start(Some(&proxy_pki));
    let origin = PyOrigin::start(None);
    // A plain-http target too: requests would otherwise skip verifying the proxy.
    let req = AgentRequest::get(origin.url("/echo"))
        .proxy(squid.proxy_url())
        .proxy_cacert(other.ca_cert());
    for (name, r) in each_agent(&req) {
        let e = r.expect_err(name);
        assert!(
            e.error.to_lowercase().contains("certificate") || e.error.contains("UNABLE_TO_VERIFY"),
            "{name}: {e:?}"
        );
    }
}

#[test]
fn agents_forward_plain_http_through_a_forward_proxy() {
    let tinyproxy = Tinyproxy::start();
    let origin = PyOrigin::start(None);
    let req = AgentRequest::get(origin.url("/echo?via=proxy"))
        .proxy(tinyproxy.proxy_url())
        .header("X-Agent-Intent", "x.y");
    for (name, r) in each_agent(&req) {
        let r = r.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let echo = r.json();
        assert_eq!(echo["query"], "via=proxy", "{name}");
        assert_eq!(echo["headers"]["x-agent-intent"], "x.y", "{name}");
        // Python clients send absolute-form (tinyproxy adds Via); undici tunnels with CONNECT.
        let via = echo["headers"].get("via").is_some();
        assert_eq!(via, name != "undici", "{name}: {echo}");
    }
    let r = node_agent(&req.clone().no_tunnel());
    assert!(
        r.json()["headers"].get("via").is_some(),
        "--no-tunnel sends absolute-form"
    );
}

#[test]
fn agents_present_their_client_certificate_to_the_origin() {
    let pki = Pki::new();
    let clients = Pki::with_ca_name("client CA");
    let svid = clients.issue_leaf("agent", &["URI:spiffe://example.org/ns/agents/sa/triage"]);
    let origin = PyOrigin::start_mtls(&pki, &clients.ca_cert());
    let req = AgentRequest::get(origin.url("/echo"))
        .cacert(pki.ca_cert())
        .client_cert(svid);
    for (name, r) in each_agent(&req) {
        let echo = r.unwrap_or_else(|e| panic!("{name}: {e:?}")).json();
        assert_eq!(
            echo["client_cert"]["san"],
            serde_json::json!(["URI:spiffe://example.org/ns/agents/sa/triage"]),
            "{name}"
        );
    }
    let without = python_agent(&AgentRequest::get(origin.url("/echo")).cacert(pki.ca_cert()));
    assert_eq!(without.json()["client_cert"], serde_json::Value::Null);
}

#[test]
fn pki_leaf_verifies_against_its_own_ca_only() {
    let pki = Pki::new();
    let other = Pki::with_ca_name("unrelated CA");
    let ok = openssl(&[
        "verify",
        "-CAfile",
        pki.ca_cert().to_str().unwrap(),
        pki.server_cert().to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&ok.stdout).contains(": OK"));
    let bad = run_with_timeout(
        command("openssl").args([
            "verify",
            "-CAfile",
            other.ca_cert().to_str().unwrap(),
            pki.server_cert().to_str().unwrap(),
        ]),
        T,
    );
    assert!(!bad.status.success());
    let text = String::from_utf8_lossy(
        &openssl(&[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            pki.server_cert().to_str().unwrap(),
        ])
        .stdout,
    )
    .to_string();
    assert!(
        text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    let svid = pki.issue_leaf("agent", &["URI:spiffe://example.org/ns/agents/sa/triage"]);
    let text = String::from_utf8_lossy(
        &openssl(&[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            svid.cert.to_str().unwrap(),
        ])
        .stdout,
    )
    .to_string();
    assert!(
        text.contains("URI:spiffe://example.org/ns/agents/sa/triage"),
        "{text}"
    );
}

#[test]
fn servers_stop_accepting_once_dropped() {
    let nginx = Nginx::start(&NginxOptions::plain());
    let origin = PyOrigin::start(None);
    let addrs = [nginx.addr(), origin.addr()];
    for a in addrs {
        TcpStream::connect(a).expect("accepting while alive");
    }
    drop(nginx);
    drop(origin);
    for a in addrs {
        assert!(
            TcpStream::connect(a).is_err(),
            "{a} still accepts after drop"
        );
    }
}

#[test]
fn listener_names_come_from_the_block_style_listeners_list() {
    let y = "# c\nlisteners:\n  - name: agents\n    address: 127.0.0.1:0\n  - address: 127.0.0.1:0 # x\n    name: \"tls\"\nadmin:\n  address: 127.0.0.1:0\n";
    assert_eq!(listener_names(y), vec!["agents", "tls"]);
    assert!(listener_names("admin:\n  address: x\n").is_empty());
}
