//! Both policy engines at scale: evaluation of one allowed request with 10, 100, 1,000 and
//! 10,000 agents in the data, input building included (`PolicyRevision::evaluate` from a
//! `PolicyInput`, exactly as the proxy calls it); p50 and p99 from per-iteration timings; one
//! vs two threads evaluating; and the Wasm engine's first-evaluation cost on a new thread.
//!
//! - `rego`: the bundled policy (`policy-wasm/tollgate.rego`) on regorus' RVM.
//! - `wasm`: the hand-written ABI fixture `tests/fixtures/wasm/decision.wat` (NOT OPA output:
//!   no opa binary was available) on wasmtime through tollgate's ABI host. It looks the caller
//!   up in a hash index of the data, built once per instance; it does much less than the bundled
//!   policy, so the two rows measure each engine's overhead, not the same policy twice.
//!
//! Run: `cargo bench --bench engines`. Results and machine load go in docs/BENCHMARKS.md.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use common::{bundled_data as data, headers, input, per_second, percentiles, spin_rate};

use tollgate::policy::{BUNDLED_MODULES, PolicyRevision};

const AGENTS: [usize; 4] = [10, 100, 1_000, 10_000];

fn rego(agents: usize) -> PolicyRevision {
    let modules: Vec<(String, String)> = BUNDLED_MODULES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    PolicyRevision::compile(&modules, &data(agents).to_string(), "tollgate/decision").unwrap()
}

fn wasm(agents: usize) -> PolicyRevision {
    let module = wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/wasm/decision.wat"
    ))
    .unwrap();
    PolicyRevision::from_wasm(&module, data(agents), "tollgate/decision", "bench".into()).unwrap()
}

/// Evaluations per second with `threads` threads evaluating for `for_`.
fn rate(revision: &Arc<PolicyRevision>, threads: usize, for_: Duration) -> f64 {
    let (prepared, evaluated) = (revision.clone(), revision.clone());
    per_second(
        threads,
        for_,
        move || {
            // What an idle tokio worker does through the park hook (policy::on_worker_park).
            prepared.prepare_thread();
            let headers = headers();
            input("GET", "/repos/acme/app/issues", &headers)
        },
        move |input| {
            black_box(evaluated.evaluate(input));
        },
    )
}

fn report() {
    if std::env::var("ENGINES_ONLY").is_ok_and(|v| v == "threads") {
        return threads_report();
    }
    let request_headers = headers();
    let request = input("GET", "/repos/acme/app/issues", &request_headers);
    println!("\n# per-iteration percentiles (20,000 evaluations after 2,000 warm-up; µs)");
    println!("engine agents     p50      p99");
    for agents in AGENTS {
        for (name, revision) in [("rego", rego(agents)), ("wasm", wasm(agents))] {
            let decision = revision.evaluate(&request).outcome.unwrap();
            assert!(decision.allow, "{name} at {agents}");
            let (p50, p99) = percentiles(&revision, &request);
            println!("{name:6} {agents:6} {p50:8.2} {p99:8.2}");
        }
    }
    threads_report();
    println!("\n# rego at 10,000 agents: load, and a worker's own copy made while idle (ms)");
    let started = Instant::now();
    let revision = Arc::new(rego(10_000));
    println!(
        "load (generate + parse data, compile, serialize for copies): {:.2}",
        started.elapsed().as_secs_f64() * 1000.0
    );
    for thread in 1..=2 {
        let revision = revision.clone();
        let prepare = std::thread::spawn(move || {
            let t = Instant::now();
            revision.prepare_thread();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .join()
        .unwrap();
        println!("thread {thread}: own copy (on the park hook, off the request path) {prepare:.3}");
    }
    println!("\n# wasm: load and first evaluation on a new thread at 10,000 agents (ms)");
    let started = Instant::now();
    let revision = Arc::new(wasm(10_000));
    println!(
        "load (compile, check, pooled instances with data): {:.2}",
        started.elapsed().as_secs_f64() * 1000.0
    );
    // The pool holds one instance per CPU, at least 4 and at most 32 (src/policy/wasm).
    let pool = std::thread::available_parallelism()
        .map_or(4, usize::from)
        .clamp(4, 32);
    for thread in 1..=pool + 2 {
        let revision = revision.clone();
        let first = std::thread::spawn(move || {
            let headers = headers();
            let input = input("GET", "/repos/acme/app/issues", &headers);
            let t = Instant::now();
            black_box(revision.evaluate(&input));
            t.elapsed().as_secs_f64() * 1000.0
        })
        .join()
        .unwrap();
        let source = if thread <= pool {
            "pooled instance"
        } else {
            "instantiated on the thread"
        };
        println!("thread {thread}: first evaluation {first:.3} ({source})");
    }
}

fn threads_report() {
    println!("\n# the machine: a shared-nothing arithmetic loop, 1 vs 2 threads (3 s each)");
    let one = spin_rate(1, Duration::from_secs(3));
    let two = spin_rate(2, Duration::from_secs(3));
    println!(
        "spin   1 thread {one:10.0}/s  2 threads {two:10.0}/s  ratio {:.2}",
        two / one
    );
    println!("\n# one vs two threads at 1,000 agents (evaluations/s over 3 s each)");
    for (name, revision) in [("rego", rego(1_000)), ("wasm", wasm(1_000))] {
        let revision = Arc::new(revision);
        rate(&revision, 2, Duration::from_millis(500));
        let one = rate(&revision, 1, Duration::from_secs(3));
        let two = rate(&revision, 2, Duration::from_secs(3));
        println!(
            "{name:6} 1 thread {one:10.0}/s  2 threads {two:10.0}/s  ratio {:.2}",
            two / one
        );
    }
}

fn bench(c: &mut Criterion) {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs each benchmark once without
    // it, where the long report would only slow the test run down.
    if std::env::args().any(|a| a == "--bench") {
        report();
    }
    if std::env::var("ENGINES_ONLY").is_ok() {
        return;
    }
    let headers = headers();
    let input = input("GET", "/repos/acme/app/issues", &headers);
    let mut group = c.benchmark_group("engines");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for agents in AGENTS {
        let rego = rego(agents);
        group.bench_with_input(BenchmarkId::new("rego", agents), &input, |b, input| {
            b.iter(|| black_box(rego.evaluate(black_box(input))))
        });
        let wasm = wasm(agents);
        group.bench_with_input(BenchmarkId::new("wasm", agents), &input, |b, input| {
            b.iter(|| black_box(wasm.evaluate(black_box(input))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
