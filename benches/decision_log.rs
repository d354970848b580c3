//! What the decision log costs per request: the line's making on the request's thread
//! (RFC 3339 time, JSON) and, for the whole pipeline, the queue and the writer thread's append
//! to a file, in CPU µs per line of the whole process.
//!
//! issue 13 asks ≤ 5 µs per request; measured through the proxy (`benches/load.sh`,
//! tollgate − tollgate-nolog) the difference drowns in the run-to-run spread of ~20 µs, so
//! this bench measures it directly: the CPU time of every thread of this process (the
//! request's thread and the writer) over N lines, less the same loop without a log.
//!
//! Run: `cargo bench --bench decision_log` (criterion rows, then the per-line report);
//! `DECISION_LOG_ONLY=report` for the report alone. Results go in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus::IntCounter;

use tollgate::config::{DecisionLogQueue, DecisionLogTarget, OnFull};
use tollgate::policy::input::format_time;
use tollgate::telemetry::decision_log::{
    DecisionLog, DecisionRecord, IntentRecord, RequestRecord, SourceRecord, VerdictRecord,
};

/// Lines per report pass.
const LINES: u64 = 400_000;

/// An allowed, credential-injected request's line, as the proxy writes it.
fn record(time: String) -> DecisionRecord<'static> {
    DecisionRecord {
        decision_id: "01JD6Q3V9X8Y7Z6W5V4U3T2S1R",
        time,
        listener: "agents",
        source: SourceRecord {
            spiffe_id: Some("spiffe://tollgate.local/ns/agents/sa/research-agent"),
            address: "10.0.12.7:51234",
        },
        intent: IntentRecord {
            name: Some("issues.read"),
            task: Some("t-42"),
            verified: false,
        },
        request: RequestRecord {
            method: "GET",
            scheme: Some("https"),
            host: Some("api.github.com"),
            port: Some(443),
            path: Some("/repos/acme/app/issues"),
            stripped_headers: &[],
        },
        decision: VerdictRecord {
            allow: true,
            reason: "allowed",
            credential: Some("github"),
            enforced: true,
        },
        error: None,
        policy_revision: Some("sha256:3f2a9c0d1e4b"),
        engine: Some("rego"),
        eval_us: Some(41),
        upstream_status: Some(200),
        duration_ms: 12.318,
        kill_id: None,
        flow: None,
    }
}

/// CPU ns used so far by every live thread of this process (each `/proc/self/task/*/schedstat`).
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn queue() -> DecisionLogQueue {
    DecisionLogQueue {
        capacity: DecisionLogQueue::DEFAULT_CAPACITY,
        on_full: OnFull::Backpressure,
        max_wait: Duration::from_secs(5),
    }
}

fn start(target: &DecisionLogTarget) -> DecisionLog {
    let dropped = IntCounter::new("dropped", "lines dropped").unwrap();
    DecisionLog::start(target, queue(), dropped).unwrap()
}

/// CPU µs per line of the whole process for `LINES` lines through `log` (`None`: the same
/// loop without a line: what the log adds is the difference), and the wall time of the pass.
fn pass(runtime: &tokio::runtime::Runtime, log: Option<&DecisionLog>) -> (f64, Duration) {
    let cpu = process_cpu_ns();
    let wall = Instant::now();
    for _ in 0..LINES {
        // The time is read for every request; its text is made for the log's line only.
        let now = black_box(SystemTime::now());
        match log {
            Some(log) => {
                let slot = runtime.block_on(log.reserve()).unwrap();
                log.record(&record(format_time(now)), slot);
            }
            None => {
                black_box(runtime.block_on(async { black_box(now) }));
            }
        }
    }
    if let Some(log) = log {
        assert!(runtime.block_on(log.flush(Duration::from_secs(30))));
    }
    let used = process_cpu_ns() - cpu;
    (used as f64 / 1000.0 / LINES as f64, wall.elapsed())
}

fn report() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let file = start(&DecisionLogTarget::File(path.clone()));
    let off = start(&DecisionLogTarget::Off);
    let line = serde_json::to_vec(&record(format_time(SystemTime::now()))).unwrap();
    println!(
        "decision_log: {LINES} lines per pass, {} bytes per line; CPU µs per line of the whole process (this thread + the writer)",
        line.len() + 1
    );
    // Alternated passes, so a change in the machine's load falls on both.
    for round in 1..=3 {
        let (base, base_wall) = pass(&runtime, None);
        let (to_file, file_wall) = pass(&runtime, Some(&file));
        let (to_off, off_wall) = pass(&runtime, Some(&off));
        println!(
            "round {round}: no log {base:.3} ({base_wall:.2?}); log to a file {to_file:.3} ({file_wall:.2?}) → the log costs {:.3} µs per line; `decision_log: off` {to_off:.3} ({off_wall:.2?}) → {:.3}",
            to_file - base,
            to_off - base,
        );
    }
    let written = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        written,
        3 * LINES * (line.len() as u64 + 1),
        "every line was written"
    );
}

fn bench(c: &mut Criterion) {
    if std::env::var("DECISION_LOG_ONLY").as_deref() == Ok("report") {
        report();
        return;
    }
    let mut group = c.benchmark_group("decision_log");
    group.bench_function("time_rfc3339", |b| {
        b.iter(|| black_box(format_time(black_box(SystemTime::now()))))
    });
    let time = format_time(SystemTime::now());
    group.bench_function("line_json", |b| {
        b.iter(|| black_box(serde_json::to_vec(&record(black_box(time.clone()))).unwrap()))
    });
    group.finish();
    report();
}

criterion_group!(benches, bench);
criterion_main!(benches);
