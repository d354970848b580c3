//! Per-request cost of registering an open flow (issue 15): what every forwarded request pays
//! so that a kill can end it while it streams — the flow's shared state allocated, its entry
//! put in this thread's shard of the registry (one lock the thread almost always has alone),
//! the kill switch checked once more, and the entry removed when the request ends. Also what
//! a kill pays to walk the registry.
//!
//! Run: `cargo bench --bench flows`. Results go in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};

use tollgate::identity::SpiffeId;
use tollgate::intent::TaskName;
use tollgate::kill::flows::{ConnAbort, FlowKind, FlowRegistry, Stop};
use tollgate::kill::{Kill, KillSwitch, KillTarget};

fn bench(c: &mut Criterion) {
    let switch = KillSwitch::open(None).unwrap();
    let caller = SpiffeId::parse("spiffe://example.org/agent/triage").unwrap();
    let task = TaskName::parse("t-42").unwrap();
    let abort = ConnAbort::detached();
    let mut group = c.benchmark_group("flows");

    group.bench_function("open + drop a request flow (no kill in force)", |b| {
        b.iter(|| {
            let flow = switch.open_flow(
                FlowKind::Request,
                Some(black_box(&caller)),
                Some(black_box(&task)),
                Stop::Connection(abort.clone()),
            );
            black_box(&flow);
        })
    });

    group.bench_function("open + drop an HTTP/2 stream flow (own stop token)", |b| {
        b.iter(|| {
            let flow = switch.open_flow(
                FlowKind::Http2Stream,
                Some(black_box(&caller)),
                Some(black_box(&task)),
                Stop::stream(),
            );
            black_box(&flow);
        })
    });

    // 10,000 other flows open (on this thread's shard and the others): registering stays flat.
    let others: Vec<_> = (0..10_000)
        .map(|i| {
            let task = TaskName::parse(&format!("other-{i}")).unwrap();
            switch.open_flow(
                FlowKind::Tunnel,
                Some(&caller),
                Some(&task),
                Stop::Connection(abort.clone()),
            )
        })
        .collect();
    // A kill in force on someone else: the registration's check finds nothing.
    switch
        .kill(
            KillTarget::Task(TaskName::parse("someone-else").unwrap()),
            None,
        )
        .unwrap();
    group.bench_function(
        "open + drop a request flow (10,000 flows open, a kill in force on another task)",
        |b| {
            b.iter(|| {
                let flow = switch.open_flow(
                    FlowKind::Request,
                    Some(black_box(&caller)),
                    Some(black_box(&task)),
                    Stop::Connection(abort.clone()),
                );
                black_box(&flow);
            })
        },
    );

    // Two threads registering at once (this machine has 2 cores): time per flow per thread.
    group.bench_function(
        "open + drop a request flow, 2 threads at once (per flow)",
        |b| {
            b.iter_custom(|iters| {
                let switch = &switch;
                let (caller, task, abort) = (&caller, &task, &abort);
                let start = Barrier::new(2);
                std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..2)
                        .map(|_| {
                            let start = &start;
                            scope.spawn(move || {
                                start.wait();
                                let began = Instant::now();
                                for _ in 0..iters {
                                    let flow = switch.open_flow(
                                        FlowKind::Request,
                                        Some(black_box(caller)),
                                        Some(black_box(task)),
                                        Stop::Connection(abort.clone()),
                                    );
                                    black_box(&flow);
                                }
                                began.elapsed()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap())
                        .max()
                        .unwrap_or(Duration::ZERO)
                })
            })
        },
    );

    // What a kill pays: walking 10,000 open flows that it does not cover.
    let registry = FlowRegistry::new();
    let many: Vec<_> = (0..10_000)
        .map(|i| {
            let task = TaskName::parse(&format!("other-{i}")).unwrap();
            registry.open(
                FlowKind::Request,
                Some(&caller),
                Some(&task),
                Stop::stream(),
            )
        })
        .collect();
    let miss = Arc::new(Kill {
        id: "bench".into(),
        target: KillTarget::Task(TaskName::parse("nobody").unwrap()),
        created: SystemTime::now(),
        reason: None,
    });
    group.bench_function("a kill's walk over 10,000 open flows", |b| {
        b.iter(|| black_box(registry.cut(black_box(&miss))))
    });
    group.finish();
    drop((others, many));
}

criterion_group!(benches, bench);
criterion_main!(benches);
