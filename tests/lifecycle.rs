//! Lifecycle: SIGTERM drains — requests in flight finish, new connections are refused,
//! readiness turns false, exit code 0 — bounded by `limits.drain_timeout`.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn tollgate(drain_timeout: &str) -> Tollgate {
    let root = repo_root();
    Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         identity: {{workload_spiffe_id: 'spiffe://tollgate.local/test/agent'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n\
         limits: {{drain_timeout: {drain_timeout}}}\n",
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    ))
}

/// Polls (bounded) until connecting to `addr` fails.
fn wait_until_refused(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn finishes_a_request_in_flight_after_sigterm_refuses_new_ones_and_exits_0() {
    let tg = tollgate("30s");
    let origin = PyOrigin::start(None);
    let release = SseRelease::new();
    let url = origin.url(&format!("/sse?{}", release.query()));
    // A streamed request is in flight: its first event has crossed the proxy.
    let mut stream = curl_stream(&["-s", "-N", "--max-time", "40", "-x", &tg.proxy_url(), &url]);
    stream.wait_line("data: first", WAIT);

    tg.signal("TERM");
    tg.wait_log(
        |l| l["message"] == "draining: no new connections; finishing requests in flight",
        WAIT,
    );
    wait_until_refused(tg.proxy_addr("agents"));
    let out = curl(&[
        "-s",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &tg.admin_url("/readyz"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "503",
        "not ready while draining"
    );
    assert!(
        tg.is_running(),
        "still draining while the request is in flight"
    );

    // The origin finishes; so do the request and the process.
    release.release();
    stream.wait_line("data: second", WAIT);
    assert!(stream.wait_exit(WAIT).success());
    let status = tg.wait_exit(WAIT).expect("tollgate exits after the drain");
    assert_eq!(status.code(), Some(0));
    let decision = tg.wait_decision(|d| d["request"]["path"] == "/sse", WAIT);
    assert_eq!(decision["upstream_status"], 200);
}

#[test]
fn stops_waiting_at_the_drain_deadline() {
    let tg = tollgate("1s");
    let origin = PyOrigin::start(None);
    let release = SseRelease::new();
    let url = origin.url(&format!("/sse?{}", release.query()));
    let mut stream = curl_stream(&["-s", "-N", "--max-time", "40", "-x", &tg.proxy_url(), &url]);
    stream.wait_line("data: first", WAIT);
    let started = Instant::now();
    tg.signal("TERM");
    let status = tg.wait_exit(WAIT).expect("tollgate exits at the deadline");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    tg.wait_log(
        |l| l["message"] == "drain deadline passed; closing what is left",
        WAIT,
    );
    release.release();
    let _ = stream.wait_exit(WAIT);
}
