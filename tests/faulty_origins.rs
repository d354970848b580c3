//! Faulty origins (issue 14 item 4, the origin half): a raw TCP origin answers each request
//! with canned bytes — a bad status line, oversized headers, no head at all, a body cut by a
//! reset, a body that never ends, a 1xx before the answer, trailers, CL+TE. The agent gets a
//! precise status and reason (502 `upstream_protocol`, 504 `upstream_timeout`) or the
//! response cut where the origin broke, never a hang past `upstream.request_timeout`, and the
//! decision log says what happened.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";

fn tollgate() -> Tollgate {
    let root = repo_root();
    Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8], request_timeout: 2s}}\n",
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    ))
}

/// How the raw origin ends its answer.
#[derive(Clone, Copy)]
enum End {
    /// Close the connection normally.
    Close,
    /// Reset it (SO_LINGER 0).
    Reset,
    /// Keep it open, sending nothing more, until the peer goes (at most 30 s).
    Hold,
}

/// A one-connection origin on 127.0.0.1 that reads a request head, writes `bytes`, and ends
/// as `end` says. Returns its port.
fn raw_origin(bytes: Vec<u8>, end: End) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
            if stream.read_exact(&mut byte).is_err() {
                return;
            }
            head.push(byte[0]);
        }
        let _ = stream.write_all(&bytes);
        match end {
            End::Close => {}
            End::Reset => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
            End::Hold => {
                let _ = stream.read(&mut [0u8; 1]);
            }
        }
    });
    port
}

/// `GET http://127.0.0.1:port/x` through the proxy: (status, response text, elapsed).
fn get(tg: &Tollgate, port: u16) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(tg.proxy_addr("agents")).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text, started.elapsed())
}

/// The decision-log line of the request to `port`.
fn decision(tg: &Tollgate, port: u16) -> Value {
    tg.wait_decision(|d| d["request"]["port"] == port, WAIT)
}

fn assert_refused(tg: &Tollgate, port: u16, status: u16, reason: &str) {
    let (got, text, elapsed) = get(tg, port);
    assert_eq!(got, status, "{text}");
    assert!(text.contains(&format!("\"reason\":\"{reason}\"")), "{text}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(decision(tg, port)["error"], reason);
}

#[test]
fn answers_malformed_origin_heads_with_502_upstream_protocol() {
    let tg = tollgate();
    // A status line that is not one.
    let port = raw_origin(
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        End::Close,
    );
    assert_refused(&tg, port, 502, "upstream_protocol");
    // Not HTTP at all.
    let port = raw_origin(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), End::Close);
    assert_refused(&tg, port, 502, "upstream_protocol");
    // Headers far larger than any client accepts (1 MiB).
    let mut huge = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let port = raw_origin(huge, End::Close);
    assert_refused(&tg, port, 502, "upstream_protocol");
    // The connection closes before any head.
    let port = raw_origin(Vec::new(), End::Close);
    assert_refused(&tg, port, 502, "upstream_protocol");
    // Content-Length and Transfer-Encoding together (response smuggling): refused, not
    // forwarded with a length that does not match the body.
    let port = raw_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec(),
        End::Close,
    );
    assert_refused(&tg, port, 502, "upstream_protocol");
}

#[test]
fn answers_an_origin_that_never_answers_with_504_after_request_timeout() {
    let tg = tollgate();
    let port = raw_origin(Vec::new(), End::Hold);
    let (status, text, elapsed) = get(&tg, port);
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("\"reason\":\"upstream_timeout\""), "{text}");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(10),
        "after upstream.request_timeout (2s): {elapsed:?}"
    );
    assert_eq!(decision(&tg, port)["error"], "upstream_timeout");
}

#[test]
fn cuts_a_body_that_breaks_off_or_never_ends_and_logs_why() {
    let tg = tollgate();
    // A reset after 1,000 of 100,000 announced bytes.
    let mut cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    cut.extend(std::iter::repeat_n(b'x', 1000));
    let port = raw_origin(cut, End::Reset);
    let (status, text, elapsed) = get(&tg, port);
    assert_eq!(status, 200, "the head was forwarded: {text}");
    assert!(text.len() < 100_000, "the body is cut, not padded");
    assert!(elapsed < Duration::from_secs(10));
    let line = decision(&tg, port);
    assert_eq!(line["error"], "upstream_protocol", "{line}");
    assert_eq!(line["upstream_status"], 200);

    // A body that never ends: cut at upstream.request_timeout.
    let mut endless = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    endless.extend(std::iter::repeat_n(b'y', 10));
    let port = raw_origin(endless, End::Hold);
    let (status, _, elapsed) = get(&tg, port);
    assert_eq!(status, 200);
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert_eq!(decision(&tg, port)["error"], "upstream_timeout");
}

#[test]
fn forwards_the_final_answer_after_1xx_and_a_body_with_trailers() {
    let tg = tollgate();
    let port = raw_origin(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            .to_vec(),
        End::Close,
    );
    let (status, text, _) = get(&tg, port);
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    assert_eq!(decision(&tg, port)["decision"]["allow"], true);

    let port = raw_origin(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n"
            .to_vec(),
        End::Close,
    );
    let (status, text, _) = get(&tg, port);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("hello"), "{text}");
    let line = decision(&tg, port);
    assert_eq!(line["error"], Value::Null, "{line}");
}
