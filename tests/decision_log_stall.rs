//! The decision log's sink stalls (issue 14 item 5): a FIFO that the test holds open but does
//! not read, so tollgate's writer blocks once the pipe and its own buffer are full.
//!
//! - `backpressure` (the default): a request that finds no room within
//!   `telemetry.decision_log_max_wait` gets a 503 `decision_log_unavailable` and is not
//!   forwarded; every forwarded request's line reaches the log once the sink drains.
//! - `drop`: requests are served; every line is either written or counted in
//!   `tollgate_decision_log_dropped_total` (written + dropped == requests, exactly), and memory
//!   stays bounded while thousands of long lines find the queue full.

mod support;

use std::collections::HashSet;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const CALLER: &str = "spiffe://tollgate.local/test/agent";
/// Linux `O_NONBLOCK` (x86_64 and aarch64): the test's end of the FIFO never blocks a read.
const O_NONBLOCK: i32 = 0o4000;
/// A path this long makes each decision-log line about 16 KiB, so the pipe and the writer's
/// buffer fill after a handful of requests, and an unbounded queue would show in the RSS.
const LONG: usize = 16 * 1024;

/// Makes a FIFO in `dir` and opens it read-write and non-blocking: tollgate's open for writing
/// does not wait for a reader, and nothing is read until the test says so.
fn stalled_fifo(dir: &Path) -> (std::path::PathBuf, File) {
    let path = dir.join("decisions.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(&path)
        .expect("open the FIFO");
    (path, fifo)
}

fn start(queue: &str) -> (Tollgate, File) {
    let root = repo_root();
    let builder = Tollgate::builder();
    let (fifo_path, fifo) = stalled_fifo(builder.dir());
    let tg = builder
        .config(format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             admin: {{address: '127.0.0.1:0'}}\n\
             identity: {{workload_spiffe_id: '{CALLER}'}}\n\
             policy: {{path: '{}', data: '{}'}}\n\
             upstream: {{allow_private: [127.0.0.0/8]}}\n\
             telemetry: {{decision_log: '{}', {queue}}}\n",
            root.join("policy-wasm").display(),
            root.join("tests/fixtures/policy-data.json").display(),
            fifo_path.display(),
        ))
        .start();
    (tg, fifo)
}

/// One request on its own connection: (status, decision id, body).
fn get(proxy: SocketAddr, url: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(proxy).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(
            format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("send the request");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let id = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-tollgate-decision-id:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, id, body.to_owned())
}

/// Reads what the FIFO holds now (non-blocking), appending whole lines' decision ids.
fn read_lines(fifo: &mut File, partial: &mut Vec<u8>, ids: &mut Vec<String>) {
    let mut buf = vec![0u8; 256 * 1024];
    for _ in 0..10_000 {
        match fifo.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => partial.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("read the FIFO: {e}"),
        }
    }
    while let Some(end) = partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = partial.drain(..=end).collect();
        let value: Value = serde_json::from_slice(&line).expect("a decision-log line is JSON");
        ids.push(value["decision_id"].as_str().unwrap_or_default().to_owned());
    }
}

/// Reads the FIFO until `done(ids)` holds or `timeout` passes; returns the ids read.
fn drain_until(
    fifo: &mut File,
    partial: &mut Vec<u8>,
    ids: &mut Vec<String>,
    timeout: Duration,
    done: impl Fn(&[String]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        read_lines(fifo, partial, ids);
        if done(ids) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sum of a metric's samples whose labels contain `labels` (`""`: all), from the
/// Prometheus text.
fn metric_where(tg: &Tollgate, name: &str, labels: &str) -> u64 {
    let (status, text) = tg.admin("GET", "/metrics", None);
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']) && rest.contains(labels))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum()
}

fn metric(tg: &Tollgate, name: &str) -> u64 {
    metric_where(tg, name, "")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn backpressure_refuses_with_503_when_the_log_stalls_and_never_forwards_without_a_line() {
    let (tg, mut fifo) = start(
        "decision_log_capacity: 4, decision_log_on_full: backpressure, decision_log_max_wait: 300ms",
    );
    let origin = PyOrigin::start(None);
    let proxy = tg.proxy_addr("agents");
    let url = origin.url(&format!("/echo?{}", "q".repeat(8)));
    let long = origin.url(&format!("/{}", "p".repeat(LONG)));
    // The stall: pipe (64 KiB) + writer buffer (64 KiB) + 4 queued lines of ~16 KiB each fill
    // after a few dozen requests; each one before that is forwarded and keeps its id.
    let mut forwarded = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        let started = Instant::now();
        let (status, id, body) = get(proxy, &long);
        if status == 503 {
            refused = Some((started.elapsed(), id, body));
            break;
        }
        assert_ne!(status, 0);
        forwarded.push(id);
    }
    let (waited, refused_id, body) =
        refused.expect("a stalled decision log must end in a 503 within 200 requests");
    let body: Value = serde_json::from_str(&body).expect("a JSON 503");
    assert_eq!(body["reason"], "decision_log_unavailable", "{body}");
    assert_eq!(body["error"], "service_unavailable", "{body}");
    assert_eq!(body["decision_id"], refused_id.as_str());
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
        "the 503 comes after decision_log_max_wait (300ms), bounded: {waited:?}"
    );
    // Still stalled: the next request is refused too, and counted under its reason.
    let (status, _, _) = get(proxy, &url);
    assert_eq!(status, 503);
    assert!(
        metric_where(
            &tg,
            "tollgate_requests_total",
            "reason=\"decision_log_unavailable\""
        ) >= 2
    );
    // The sink drains: requests are served again, and every forwarded one has its line.
    let mut partial = Vec::new();
    let mut ids = Vec::new();
    let mut served = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while served.is_none() && Instant::now() < deadline {
        read_lines(&mut fifo, &mut partial, &mut ids);
        let (status, id, _) = get(proxy, &url);
        if status == 200 {
            served = Some(id);
        }
    }
    forwarded.push(served.expect("served again once the sink drains"));
    let all_logged = drain_until(
        &mut fifo,
        &mut partial,
        &mut ids,
        Duration::from_secs(20),
        |ids| {
            let seen: HashSet<&String> = ids.iter().collect();
            forwarded.iter().all(|id| seen.contains(id))
        },
    );
    let seen: HashSet<&String> = ids.iter().collect();
    let missing: Vec<&String> = forwarded.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        all_logged,
        "{} forwarded requests without a line: {missing:?}",
        missing.len()
    );
    assert!(
        !seen.contains(&refused_id),
        "the 503's own line found no room"
    );
    assert!(metric(&tg, "tollgate_decision_log_dropped_total") >= 1);
}

#[test]
fn drop_mode_serves_counts_every_dropped_line_and_keeps_memory_bounded() {
    let (tg, mut fifo) = start("decision_log_capacity: 8, decision_log_on_full: drop");
    let origin = PyOrigin::start(None);
    let proxy = tg.proxy_addr("agents");
    let long = origin.url(&format!("/{}", "p".repeat(3 * LONG)));
    let mut sent = Vec::new();
    // Fill the pipe, the writer's buffer and the queue.
    for _ in 0..20 {
        let (status, id, _) = get(proxy, &long);
        assert_eq!(status, 404, "served (the origin has no such path)");
        sent.push(id);
    }
    let settle = Instant::now() + Duration::from_secs(10);
    while metric(&tg, "tollgate_decision_log_dropped_total") == 0 && Instant::now() < settle {
        let (_, id, _) = get(proxy, &long);
        sent.push(id);
    }
    let before = rss_kib(tg.pid());
    // 1,000 more 48 KiB lines (about 47 MiB) find the queue full: all served, none kept.
    for _ in 0..1_000 {
        let (status, id, _) = get(proxy, &long);
        assert_eq!(status, 404);
        sent.push(id);
    }
    let after = rss_kib(tg.pid());
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB while the sink was stalled"
    );
    let dropped_log = tg.wait_log(
        |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("lines dropped"))
        },
        Duration::from_secs(10),
    );
    assert!(
        dropped_log["lines"].as_u64().unwrap_or(0) >= 1,
        "{dropped_log}"
    );
    // Drain: every request is either a line or a drop, exactly.
    let total = sent.len() as u64;
    let mut partial = Vec::new();
    let mut ids = Vec::new();
    let balanced = drain_until(
        &mut fifo,
        &mut partial,
        &mut ids,
        Duration::from_secs(30),
        |ids| ids.len() as u64 + metric(&tg, "tollgate_decision_log_dropped_total") == total,
    );
    let dropped = metric(&tg, "tollgate_decision_log_dropped_total");
    assert!(
        balanced,
        "{} lines + {dropped} dropped != {total} requests",
        ids.len()
    );
    assert!(dropped >= 1_000, "dropped {dropped}");
    let sent: HashSet<&String> = sent.iter().collect();
    assert!(
        ids.iter().all(|id| sent.contains(id)),
        "lines are of the requests sent"
    );
}

#[test]
fn refuses_queue_settings_out_of_range_naming_each_key() {
    let root = repo_root();
    let err = Tollgate::builder()
        .config(format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             policy: {{path: '{}', data: '{}'}}\n\
             telemetry: {{decision_log_capacity: 0, decision_log_on_full: sometimes, decision_log_max_wait: 0s}}\n",
            root.join("policy-wasm").display(),
            root.join("tests/fixtures/policy-data.json").display(),
        ))
        .try_start()
        .err()
        .expect("a configuration error");
    assert!(err.contains("exit status: 2"), "{err}");
    for key in [
        "telemetry.decision_log_capacity",
        "telemetry.decision_log_on_full",
        "telemetry.decision_log_max_wait",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
}
