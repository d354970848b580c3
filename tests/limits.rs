//! Hostile and broken input on the agent side, sent as raw bytes over TCP: oversized headers,
//! slow clients, request smuggling (Content-Length + Transfer-Encoding), the connection limit.
//! After each, the proxy must go on serving.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";

fn tollgate(limits: &str) -> Tollgate {
    let root = repo_root();
    Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n\
         limits: {{{limits}}}\n",
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    ))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Sends a whole request in one write; the proxy may answer and close before reading it all,
/// so a write error is not a test failure (the response is what is asserted).
fn send(stream: &mut TcpStream, request: &str) {
    let _ = stream.write_all(request.as_bytes());
}

/// Reads until EOF (or the read timeout) and returns what arrived.
fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One ordinary call through the proxy succeeds.
fn assert_still_serving(tg: &Tollgate, origin: &PyOrigin) {
    let out = curl(&[
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &origin.url("/echo"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the proxy must keep serving"
    );
}

#[test]
fn rejects_oversized_headers_with_431() {
    let tg = tollgate("max_header_bytes: 4096");
    let origin = PyOrigin::start(None);
    let big = "a".repeat(6000);
    let mut stream = connect(tg.proxy_addr("agents"));
    send(
        &mut stream,
        &format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n",
            origin.url("/echo")
        ),
    );
    let response = read_all(&mut stream);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(
        response.contains("\"reason\":\"headers_too_large\""),
        "{response}"
    );
    assert!(response.contains("x-tollgate-decision-id"), "{response}");
    // Far beyond the limit hyper refuses before buffering it all: still a 431.
    let huge = "b".repeat(200_000);
    let mut stream = connect(tg.proxy_addr("agents"));
    send(
        &mut stream,
        &format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n",
            origin.url("/echo")
        ),
    );
    let response = read_all(&mut stream);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_still_serving(&tg, &origin);
}

#[test]
fn cuts_off_a_slow_client_after_the_header_read_timeout() {
    let tg = tollgate("header_read_timeout: 1s");
    let origin = PyOrigin::start(None);
    let mut stream = connect(tg.proxy_addr("agents"));
    let started = Instant::now();
    // Half a request head, then nothing (a slowloris client).
    stream
        .write_all(b"GET http://127.0.0.1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    let response = read_all(&mut stream);
    let elapsed = started.elapsed();
    assert!(!response.contains("200 OK"), "{response}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "not cut off: {elapsed:?}"
    );
    assert_still_serving(&tg, &origin);
}

#[test]
fn rejects_content_length_with_transfer_encoding_and_closes() {
    let tg = tollgate("");
    let origin = PyOrigin::start(None);
    for head in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ] {
        let mut stream = connect(tg.proxy_addr("agents"));
        // A smuggled second request hides behind the ambiguous body.
        send(
            &mut stream,
            &format!(
                "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Agent-Intent: files.write\r\n{head}\r\n\
             0\r\n\r\nGET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                origin.url("/echo"),
                origin.url("/echo?smuggled=1"),
            ),
        );
        let response = read_all(&mut stream);
        assert!(response.starts_with("HTTP/1.1 400"), "{head}: {response}");
        assert!(
            response.contains("\"reason\":\"ambiguous_framing\""),
            "{response}"
        );
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{response}"
        );
        assert_eq!(
            response.matches("HTTP/1.1").count(),
            1,
            "the smuggled request must not be answered: {response}"
        );
    }
    assert!(
        !origin.stderr_text().contains("smuggled"),
        "nothing reached the origin"
    );
    tg.wait_decision(|d| d["decision"]["reason"] == "ambiguous_framing", WAIT);
    assert_still_serving(&tg, &origin);
}

#[test]
fn rejects_smuggling_after_a_refused_connect_on_the_same_connection() {
    // A refused CONNECT leaves the connection in HTTP/1; the request after it is judged by the
    // framing guard like any other (the CONNECT counts as a request on the connection).
    let tg = tollgate("");
    let origin = PyOrigin::start(None);
    let mut stream = connect(tg.proxy_addr("agents"));
    send(
        &mut stream,
        &format!(
            "CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n\
             POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Agent-Intent: files.write\r\n\
             Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\nGET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            origin.url("/echo?ambiguous=1"),
            origin.url("/echo?smuggled=1"),
        ),
    );
    let response = read_all(&mut stream);
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &response[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["403", "400"], "{response}");
    assert!(
        response.contains("\"reason\":\"private_destination\""),
        "{response}"
    );
    assert!(
        response.contains("\"reason\":\"ambiguous_framing\""),
        "{response}"
    );
    let seen = origin.stderr_text();
    assert!(
        !seen.contains("ambiguous") && !seen.contains("smuggled"),
        "nothing reached the origin: {seen}"
    );
    assert_still_serving(&tg, &origin);
}

#[test]
fn rejects_conflicting_content_lengths() {
    let tg = tollgate("");
    let origin = PyOrigin::start(None);
    let mut stream = connect(tg.proxy_addr("agents"));
    send(
        &mut stream,
        &format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            origin.url("/echo")
        ),
    );
    let response = read_all(&mut stream);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert_still_serving(&tg, &origin);
}

#[test]
fn answers_503_beyond_max_connections_and_recovers() {
    let tg = tollgate("max_connections: 2");
    let origin = PyOrigin::start(None);
    let addr = tg.proxy_addr("agents");
    // Two idle connections hold both slots; the proxy answers a third with 503.
    let first = connect(addr);
    let second = connect(addr);
    let mut third = connect(addr);
    let response = read_all(&mut third);
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("\"reason\":\"overloaded\""), "{response}");
    drop(first);
    drop(second);
    // Slots come back once those connections are gone.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = curl(&[
            "-s",
            "--max-time",
            "20",
            "-x",
            &tg.proxy_url(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &origin.url("/echo"),
        ]);
        if String::from_utf8_lossy(&out.stdout) == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed");
        std::thread::yield_now();
    }
}

#[test]
fn survives_garbage_and_keeps_serving() {
    let tg = tollgate("");
    let origin = PyOrigin::start(None);
    for garbage in [
        &b"\x16\x03\x01\x00\xff garbage tls-looking bytes\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET http://127.0.0.1/ HTTP/9.9\r\n\r\n",
        b"CONNECT nohostport HTTP/1.1\r\n\r\n",
        b"GET http://127.0.0.1:99999/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\x03",
    ] {
        let mut stream = connect(tg.proxy_addr("agents"));
        let _ = stream.write_all(garbage);
        let response = read_all(&mut stream);
        assert!(!response.contains(" 200 "), "{garbage:?}: {response}");
    }
    assert!(tg.is_running());
    assert_still_serving(&tg, &origin);
}
