//! TLS abuse inside an intercepted CONNECT tunnel (issue 14 item 3), sent as raw bytes: a
//! garbage ClientHello, a truncated one, a handshake that never finishes (bounded by
//! `limits.header_read_timeout`), no SNI, an IP-literal SNI, an SNI that is not the CONNECT
//! host (domain fronting). Each failure is closed and counted in
//! `tollgate_tls_handshake_errors_total{side="agent"}`, and the proxy keeps serving.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";

fn tollgate(pki: &Pki) -> Tollgate {
    let root = repo_root();
    Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8], ca: '{}'}}\n\
         limits: {{header_read_timeout: 2s}}\n",
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
        pki.ca_cert().display(),
    ))
}

/// `tollgate_tls_handshake_errors_total{side="agent"}` now.
fn agent_tls_errors(tg: &Tollgate) -> u64 {
    let (status, text) = tg.admin("GET", "/metrics", None);
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tollgate_tls_handshake_errors_total{side=\"agent\"} ")
                .and_then(|v| v.trim().parse().ok())
        })
        .expect("the agent series exists from start-up")
}

/// Waits until the counter reaches `at_least` (it is bumped as the server task ends).
fn wait_agent_tls_errors(tg: &Tollgate, at_least: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = agent_tls_errors(tg);
        if now >= at_least || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens an intercepted tunnel to `authority` (the policy intercepts 127.0.0.1).
fn tunnel(proxy: SocketAddr, authority: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        stream.read_exact(&mut byte).expect("the CONNECT answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// What the server sends back before closing (or until the read timeout).
fn read_reply(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// The first bytes the server sends, waiting at most 3 s (a ServerHello does not close).
fn read_reply_briefly(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// The first flight of a real TLS client for `name` (a DNS name, or an IP: then no SNI).
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// The origin's `/echo` through the proxy, intercepted (no SNI: an IP URL): 200, the proxy
/// still serves.
fn assert_still_serving(tg: &Tollgate, origin: &PyOrigin) {
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &tg.proxy_url(),
        "--cacert",
        tg.dir().join("state/intercept-ca.pem").to_str().unwrap(),
        &format!("https://127.0.0.1:{}/echo", origin.port()),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

/// TLS record type of an alert.
const ALERT: u8 = 0x15;
/// TLS record type of a handshake message (the ServerHello).
const HANDSHAKE: u8 = 0x16;

#[test]
fn closes_garbage_and_truncated_client_hellos_and_counts_each() {
    let pki = Pki::new();
    let tg = tollgate(&pki);
    let origin = PyOrigin::start(Some(&pki));
    let authority = format!("127.0.0.1:{}", origin.port());
    let before = agent_tls_errors(&tg);

    // A handshake record of garbage.
    let mut stream = tunnel(tg.proxy_addr("agents"), &authority);
    let mut garbage = vec![HANDSHAKE, 0x03, 0x01, 0x00, 0x40];
    garbage.extend((0u8..0x40).map(|i| i.wrapping_mul(37)));
    stream.write_all(&garbage).unwrap();
    let reply = read_reply(&mut stream);
    assert!(
        reply.is_empty() || reply[0] == ALERT,
        "an alert or a close, not a ServerHello: {reply:?}"
    );
    assert_eq!(wait_agent_tls_errors(&tg, before + 1), before + 1);

    // Half a real ClientHello, then the agent closes its side.
    let hello = client_hello("localhost");
    let mut stream = tunnel(tg.proxy_addr("agents"), &authority);
    stream.write_all(&hello[..hello.len() / 2]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = read_reply(&mut stream);
    assert!(reply.is_empty() || reply[0] == ALERT, "{reply:?}");
    assert_eq!(wait_agent_tls_errors(&tg, before + 2), before + 2);

    // A record header that announces more than TLS allows (2^14 + 2048 bytes).
    let mut stream = tunnel(tg.proxy_addr("agents"), &authority);
    stream
        .write_all(&[HANDSHAKE, 0x03, 0x03, 0xff, 0xff])
        .unwrap();
    let reply = read_reply(&mut stream);
    assert!(reply.is_empty() || reply[0] == ALERT, "{reply:?}");
    assert_eq!(wait_agent_tls_errors(&tg, before + 3), before + 3);

    assert_still_serving(&tg, &origin);
}

#[test]
fn times_out_a_handshake_that_never_finishes_and_counts_it() {
    let pki = Pki::new();
    let tg = tollgate(&pki);
    let origin = PyOrigin::start(Some(&pki));
    let before = agent_tls_errors(&tg);
    let hello = client_hello("localhost");
    let mut stream = tunnel(
        tg.proxy_addr("agents"),
        &format!("127.0.0.1:{}", origin.port()),
    );
    let started = Instant::now();
    // The first bytes of a ClientHello, then silence with the connection held open.
    stream.write_all(&hello[..20]).unwrap();
    let reply = read_reply(&mut stream);
    let waited = started.elapsed();
    assert!(reply.is_empty() || reply[0] == ALERT, "{reply:?}");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "closed after header_read_timeout (2s), bounded: {waited:?}"
    );
    assert_eq!(wait_agent_tls_errors(&tg, before + 1), before + 1);
    tg.wait_log(
        |l| l["message"] == "TLS handshake with agent timed out",
        WAIT,
    );
    assert_still_serving(&tg, &origin);
}

#[test]
fn intercepts_a_client_hello_without_sni_as_the_connect_host() {
    let pki = Pki::new();
    let tg = tollgate(&pki);
    let origin = PyOrigin::start(Some(&pki));
    let before = agent_tls_errors(&tg);
    // curl sends no SNI for an IP literal: the CONNECT host alone names the leaf.
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &tg.proxy_url(),
        "--cacert",
        tg.dir().join("state/intercept-ca.pem").to_str().unwrap(),
        &format!("https://127.0.0.1:{}/echo", origin.port()),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let line = tg.wait_decision(
        |d| d["request"]["method"] == "GET" && d["request"]["host"] == "127.0.0.1",
        WAIT,
    );
    assert_eq!(line["decision"]["allow"], true, "{line}");
    assert_eq!(agent_tls_errors(&tg), before);
}

#[test]
fn ignores_an_ip_literal_sni_and_binds_the_connect_host() {
    let pki = Pki::new();
    let tg = tollgate(&pki);
    let origin = PyOrigin::start(Some(&pki));
    // A ClientHello for "localhost" with its SNI bytes replaced by "127.0.0.1" (same length):
    // RFC 6066 forbids IP literals in SNI; rustls treats one as no SNI, so the leaf is minted
    // for the CONNECT host and nothing the agent's SNI says can redirect the tunnel.
    let mut hello = client_hello("localhost");
    let at = hello
        .windows(9)
        .position(|w| w == b"localhost")
        .expect("the SNI in the ClientHello");
    hello[at..at + 9].copy_from_slice(b"127.0.0.1");
    let mut stream = tunnel(
        tg.proxy_addr("agents"),
        &format!("127.0.0.1:{}", origin.port()),
    );
    stream.write_all(&hello).unwrap();
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).expect("a reply");
    assert_eq!(first[0], HANDSHAKE, "a ServerHello: the handshake goes on");

    // Another IP literal than the CONNECT host's: had it counted as an SNI, it would be
    // refused as fronting; it does not count, so the handshake goes on for the CONNECT host.
    hello[at..at + 9].copy_from_slice(b"127.0.0.2");
    let mut stream = tunnel(
        tg.proxy_addr("agents"),
        &format!("127.0.0.1:{}", origin.port()),
    );
    stream.write_all(&hello).unwrap();
    let reply = read_reply_briefly(&mut stream);
    assert_eq!(reply.first(), Some(&HANDSHAKE), "a ServerHello: {reply:?}");
    let before = agent_tls_errors(&tg);
    // The tunnel is bound to the CONNECT host: a request inside naming another host is
    // refused (tests/proxy_connect.rs, `rejects_a_request_whose_host_differs_from_the_tunnel`).
    assert_still_serving(&tg, &origin);
    assert_eq!(agent_tls_errors(&tg), before);
}

#[test]
fn refuses_an_sni_that_is_not_the_connect_host_and_counts_it() {
    let pki = Pki::new();
    let tg = tollgate(&pki);
    let origin = PyOrigin::start(Some(&pki));
    let before = agent_tls_errors(&tg);
    // CONNECT 127.0.0.1, then a ClientHello for another name: domain fronting.
    let mut stream = tunnel(
        tg.proxy_addr("agents"),
        &format!("127.0.0.1:{}", origin.port()),
    );
    stream.write_all(&client_hello("api.github.com")).unwrap();
    let reply = read_reply(&mut stream);
    assert!(
        reply.is_empty() || reply[0] == ALERT,
        "no ServerHello for a fronted name: {reply:?}"
    );
    assert_eq!(wait_agent_tls_errors(&tg, before + 1), before + 1);
    tg.wait_log(
        |l| {
            l["message"] == "SNI does not match the CONNECT host; closing"
                && l["sni"] == "api.github.com"
        },
        WAIT,
    );
    assert_still_serving(&tg, &origin);
}

/// Handshakes with `tg`'s mTLS listener presenting `chain` (leaf first) and `key`; whether it
/// completed.
fn mtls_handshake(
    addr: SocketAddr,
    server_ca: &std::path::Path,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &std::fs::read(server_ca).unwrap()[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    // TLS 1.3: the client's certificate is judged after the client finishes; a request and
    // its answer prove the server accepted it.
    if tls
        .write_all(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut first = [0u8; 5];
    tls.read_exact(&mut first).is_ok() && &first == b"HTTP/"
}

#[test]
fn refuses_a_huge_client_certificate_chain_on_an_mtls_listener_and_counts_it() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap();
    let cli = |args: &[&str]| assert!(Tollgate::run_cli(args).status.success(), "{args:?}");
    cli(&[
        "certs",
        "init",
        "--dir",
        dir,
        "--trust-domain",
        "tollgate.local",
    ]);
    cli(&[
        "certs",
        "issue",
        "--dir",
        dir,
        "--spiffe-id",
        CALLER,
        "--name",
        "agent",
    ]);
    let listener = Pki::new();
    let leaf = listener.issue_leaf("proxy", &["IP:127.0.0.1"]);
    let root = repo_root();
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0', tls: {{cert: '{}', key: '{}', client_auth: required}}}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{trust_domains: {{tollgate.local: {{bundle: '{}'}}}}}}\n\
         policy: {{path: '{}', data: '{}'}}\n",
        leaf.cert.display(),
        leaf.key.display(),
        certs.path().join("tollgate.local.bundle.pem").display(),
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    ));
    let read_chain = || -> Vec<rustls::pki_types::CertificateDer<'static>> {
        rustls_pemfile::certs(&mut &std::fs::read(certs.path().join("agent.pem")).unwrap()[..])
            .map(Result::unwrap)
            .collect()
    };
    let key = || {
        rustls_pemfile::private_key(
            &mut &std::fs::read(certs.path().join("agent-key.pem")).unwrap()[..],
        )
        .unwrap()
        .unwrap()
    };
    let addr = tg.proxy_addr("agents");
    // The SVID as issued: accepted (the proof the client side works).
    assert!(mtls_handshake(
        addr,
        &listener.ca_cert(),
        read_chain(),
        key()
    ));
    let before = agent_tls_errors(&tg);

    // The same leaf followed by 400 copies of the bundle (about 200 KiB): over TLS's 64 KiB
    // handshake-message limit, refused before any certificate is parsed, quickly.
    let bundle: Vec<_> = rustls_pemfile::certs(
        &mut &std::fs::read(certs.path().join("tollgate.local.bundle.pem")).unwrap()[..],
    )
    .map(Result::unwrap)
    .collect();
    let mut huge = read_chain();
    for _ in 0..400 {
        huge.extend(bundle.iter().cloned());
    }
    let started = Instant::now();
    assert!(!mtls_handshake(addr, &listener.ca_cert(), huge, key()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(wait_agent_tls_errors(&tg, before + 1), before + 1);

    // 60 copies (about 30 KiB, under TLS's 64 KiB message limit): webpki's path building is
    // bounded (a signature budget), the extra copies are never needed, and the SVID chains to
    // the bundle directly: accepted, in bounded time, and not counted as a failure.
    let mut long = read_chain();
    for _ in 0..60 {
        long.extend(bundle.iter().cloned());
    }
    let started = Instant::now();
    assert!(mtls_handshake(addr, &listener.ca_cert(), long, key()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(agent_tls_errors(&tg), before + 1);

    // And the listener still serves the honest SVID.
    assert!(mtls_handshake(
        addr,
        &listener.ca_cert(),
        read_chain(),
        key()
    ));
}
