//! Per-request CPU cost of the decision path, without I/O: building the policy input, evaluating
//! the bundled policy on the native engine (RVM), and the request-preparation stages (target
//! normalization, intent parsing, header redaction) that run before it.
//!
//! Run: `cargo bench --bench policy`. Results and machine load go in docs/BENCHMARKS.md.

mod common;

use std::hint::black_box;

use common::{headers, input};
use criterion::{Criterion, criterion_group, criterion_main};

use tollgate::config::{DataSource, EngineKind, PolicyConfig, PolicySource};
use tollgate::intent::parse_intent;
use tollgate::policy::PolicyRevision;
use tollgate::policy::input::policy_headers;
use tollgate::proxy::target::forward_target;

fn bench(c: &mut Criterion) {
    let revision = PolicyRevision::load(&PolicyConfig {
        source: PolicySource::Bundled,
        data: DataSource::Bundled,
        engine: EngineKind::Rego,
        entrypoint: "tollgate/decision".into(),
        dry_run: false,
        watch: false,
    })
    .expect("bundled policy loads");
    let headers = headers();
    let allowed = input("GET", "/repos/acme/app/issues", &headers);
    let denied = input("DELETE", "/repos/acme/app", &headers);
    assert!(revision.evaluate(&allowed).outcome.unwrap().allow);
    assert!(!revision.evaluate(&denied).outcome.unwrap().allow);

    c.bench_function("prepare/target+intent+headers", |b| {
        let uri: http::Uri = "http://api.github.com/repos/acme/app/issues?state=open"
            .parse()
            .unwrap();
        b.iter(|| {
            let target = forward_target(black_box(&uri)).unwrap();
            let intent = parse_intent(black_box(&headers)).unwrap();
            let redacted = policy_headers(black_box(&headers), &[]);
            black_box((target, intent, redacted))
        })
    });
    c.bench_function("input/build_value", |b| {
        b.iter(|| black_box(black_box(&allowed).to_value()))
    });
    c.bench_function("policy/evaluate_allow (input + eval + decision)", |b| {
        b.iter(|| black_box(revision.evaluate(black_box(&allowed))))
    });
    c.bench_function("policy/evaluate_deny (input + eval + decision)", |b| {
        b.iter(|| black_box(revision.evaluate(black_box(&denied))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
