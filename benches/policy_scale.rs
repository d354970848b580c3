//! What a decision costs on the default native engine (`PolicyRevision::compile`, as the proxy
//! loads a Rego policy) for two policies, at 10, 1,000 and 10,000 agents in the data, input
//! building included (`PolicyRevision::evaluate` from a `PolicyInput`, as the proxy calls it):
//!
//! - `bundled`: policy-wasm/tollgate.rego with the bundled data plus synthetic agents (two rules
//!   each). The caller is the bundled development agent (four rules): `allow` is
//!   `GET https://api.github.com/repos/acme/app/issues` (its first rule matches), `deny` is
//!   `DELETE` on the same URL (`method_not_allowed`, every rule checked).
//! - `glob+regex`: a policy that looks the caller up by key and, for each of its four rules,
//!   calls `glob.match` on the host and `regex.match` on the path (both, in every rule); the
//!   third rule matches.
//!
//! p50 and p99 come from 20,000 timed evaluations after 2,000 warm-up ones; criterion's own
//! rows follow. The `interpreter` rows run the same policies, data and inputs on regorus'
//! interpreter directly (`Engine::eval_rule` on one engine, the input built and set per
//! evaluation), whatever the default engine is. Also the one-off cost of loading each revision (the bundled policy's data check,
//! `data.tollgate.data_errors`, runs then).
//!
//! A last table splits the bundled policy's cost by rule: each rule the decision consults,
//! evaluated alone (with what it depends on) on regorus' interpreter, with the heap
//! allocations each evaluation makes — where the time goes when a decision costs more than a
//! one-line policy.
//!
//! With the proxy's allocator (mimalloc, as src/main.rs sets it): the figures are what the proxy
//! pays, not what glibc's allocator would.
//!
//! Run: `cargo bench --bench policy_scale` (`POLICY_SCALE_AGENTS=1000` runs one agent count). Under `cargo test --all-targets` (no `--bench`)
//! only the 10-agent rows run, once each.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value as Json, json};

use common::{CALLER, bundled_data, headers, input, percentiles_and_cpu, thread_cpu_ns};

use tollgate::policy::input::PolicyInput;
use tollgate::policy::{BUNDLED_MODULES, PolicyRevision};

const AGENTS: [usize; 3] = [10, 1_000, 10_000];

/// The proxy's allocator, counting allocations for the per-rule table.
struct CountingMimalloc;

thread_local! {
    /// Allocations made by this thread: a plain per-thread count, so that counting adds no
    /// atomic instruction to the timed rows.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Counts one allocation on the calling thread (not at all while the thread is being torn down).
fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations this thread has made so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is passed on unchanged to mimalloc, which upholds GlobalAlloc's contract.
unsafe impl GlobalAlloc for CountingMimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingMimalloc = CountingMimalloc;

/// The rules of the bundled policy that an allow decision consults, in the order the decision
/// reaches them; each row includes the rules it depends on.
const BUNDLED_RULES: [&str; 14] = [
    "has_spiffe_id",
    "valid_input",
    "host",
    "port",
    "agent",
    "rules",
    "authentication_required",
    "default_ports",
    "naming_host",
    "progress",
    "first_match",
    "closest",
    "allowed",
    "decision",
];

/// The glob+regex policy: first rule (in list order) whose host glob and path regex match.
const GLOB_REGEX_POLICY: &str = r#"package tollgate

import rego.v1

default decision := {"allow": false, "reason": "no_rule"}

decision := {"allow": true, "reason": matching[0]} if count(matching) > 0

matching := [rule.id |
	some rule in data.scale.agents[input.source.spiffe_id].rules
	host_ok := glob.match(rule.host, ["."], input.request.host)
	path_ok := regex.match(rule.path, input.request.path)
	host_ok
	path_ok
]
"#;

/// `agents` agents, each with four glob+regex rules; the caller is one of them.
fn glob_regex_data(agents: usize) -> Json {
    let rules = |i: usize| {
        json!([
            {"id": "openai", "host": "api.openai.com", "path": "^/v1/"},
            {"id": "gists", "host": "*.github.com", "path": "^/gists/[0-9a-f]+$"},
            {"id": "repos", "host": "*.github.com", "path": format!("^/repos/(acme|org-{i})/")},
            {"id": "any-s3", "host": "s3.*.amazonaws.com", "path": "^/"}
        ])
    };
    let mut map = serde_json::Map::new();
    map.insert(CALLER.to_string(), json!({"rules": rules(0)}));
    for i in 1..agents {
        map.insert(
            format!("spiffe://tollgate.local/ns/agents/sa/agent-{i:05}"),
            json!({"rules": rules(i)}),
        );
    }
    json!({"scale": {"agents": map}})
}

fn bundled(agents: usize) -> PolicyRevision {
    PolicyRevision::compile(
        &bundled_modules(),
        &bundled_data(agents).to_string(),
        "tollgate/decision",
    )
    .expect("the bundled policy loads")
}

fn glob_regex(agents: usize) -> PolicyRevision {
    PolicyRevision::compile(
        &[("scale.rego".to_string(), GLOB_REGEX_POLICY.to_string())],
        &glob_regex_data(agents).to_string(),
        "tollgate/decision",
    )
    .expect("the glob+regex policy loads")
}

/// One regorus interpreter engine with `modules` and `data` loaded.
fn interpreter(modules: &[(String, String)], data: &Json) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    for (name, source) in modules {
        engine
            .add_policy(name.clone(), source.clone())
            .expect("the policy parses");
    }
    engine
        .add_data(regorus::Value::from_json_str(&data.to_string()).expect("data is JSON"))
        .expect("data loads");
    engine
}

/// p50 and p99 of one evaluation on the interpreter, input building included, in µs.
fn interpreter_percentiles(engine: &mut regorus::Engine, input: &PolicyInput) -> (f64, f64, f64) {
    let evaluate = |engine: &mut regorus::Engine| {
        engine.set_input(input.to_value());
        black_box(engine.eval_rule("data.tollgate.decision".to_string()))
    };
    for _ in 0..2_000 {
        let _ = evaluate(engine);
    }
    let cpu = thread_cpu_ns();
    let mut times: Vec<Duration> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            let _ = evaluate(engine);
            t.elapsed()
        })
        .collect();
    let cpu = (thread_cpu_ns() - cpu) as f64 / 1000.0 / times.len() as f64;
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64) * q) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99), cpu)
}

/// Mean µs and heap allocations per evaluation of each of [`BUNDLED_RULES`] alone, on one
/// interpreter engine (input set per evaluation, as the proxy does), 20,000 after 2,000 warm-up.
fn bundled_rule_costs(agents: usize, input: &PolicyInput) {
    // The same engine as the `interpreter` rows.
    let mut engine = interpreter(&bundled_modules(), &bundled_data(agents));
    let input = input.to_value();
    println!(
        "\n# bundled policy, each rule alone ({agents} agents; its dependencies included): mean µs and allocations per evaluation"
    );
    println!("rule                         µs  allocations");
    for rule in BUNDLED_RULES {
        let path = format!("data.tollgate.{rule}");
        let mut evaluate = || {
            engine.set_input(input.clone());
            black_box(engine.eval_rule(path.clone()))
        };
        for _ in 0..2_000 {
            let _ = evaluate();
        }
        let n = 20_000;
        let before = allocations();
        let started = Instant::now();
        for _ in 0..n {
            let _ = evaluate();
        }
        let micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        let allocations = (allocations() - before) as f64 / f64::from(n);
        println!("{rule:24} {micros:8.2} {allocations:12.1}");
    }
}

fn bundled_modules() -> Vec<(String, String)> {
    BUNDLED_MODULES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// The reason of the decision, checked to be what the row claims to measure.
fn reason(revision: &PolicyRevision, input: &PolicyInput) -> String {
    let decision = revision
        .evaluate(input)
        .outcome
        .expect("a decision, not a policy failure");
    decision.reason.unwrap_or_default()
}

/// The agent counts to run: all of [`AGENTS`], or those named in `POLICY_SCALE_AGENTS`
/// (comma-separated, e.g. `1000`) when profiling or comparing one row.
fn agent_counts() -> Vec<usize> {
    match std::env::var("POLICY_SCALE_AGENTS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().expect("POLICY_SCALE_AGENTS: numbers"))
            .collect(),
        Err(_) => AGENTS.to_vec(),
    }
}

fn report() {
    let headers = headers();
    let allow = input("GET", "/repos/acme/app/issues", &headers);
    let deny = input("DELETE", "/repos/acme/app/issues", &headers);
    println!(
        "\n# default engine: per-evaluation percentiles (20,000 after 2,000 warm-up; µs), mean CPU µs per evaluation (this thread's, same 20,000) and load (ms)"
    );
    println!("engine      policy      request agents      p50      p99      cpu     load");
    for agents in agent_counts() {
        let started = Instant::now();
        let revision = bundled(agents);
        let load = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(reason(&revision, &allow), "allowed by rule github-read");
        assert_eq!(reason(&revision, &deny), "method_not_allowed");
        for (name, request) in [("allow", &allow), ("deny", &deny)] {
            let (p50, p99, cpu) = percentiles_and_cpu(&revision, request);
            println!(
                "default     bundled     {name:7} {agents:6} {p50:8.2} {p99:8.2} {cpu:8.2} {load:8.1}"
            );
        }
        let mut engine = interpreter(&bundled_modules(), &bundled_data(agents));
        for (name, request) in [("allow", &allow), ("deny", &deny)] {
            let (p50, p99, cpu) = interpreter_percentiles(&mut engine, request);
            println!(
                "interpreter bundled     {name:7} {agents:6} {p50:8.2} {p99:8.2} {cpu:8.2}        -"
            );
        }
        let started = Instant::now();
        let revision = glob_regex(agents);
        let load = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(reason(&revision, &allow), "repos");
        let (p50, p99, cpu) = percentiles_and_cpu(&revision, &allow);
        println!(
            "default     glob+regex  allow   {agents:6} {p50:8.2} {p99:8.2} {cpu:8.2} {load:8.1}"
        );
        let modules = [("scale.rego".to_string(), GLOB_REGEX_POLICY.to_string())];
        let mut engine = interpreter(&modules, &glob_regex_data(agents));
        let (p50, p99, cpu) = interpreter_percentiles(&mut engine, &allow);
        println!(
            "interpreter glob+regex  allow   {agents:6} {p50:8.2} {p99:8.2} {cpu:8.2}        -"
        );
    }
    let breakdown_agents = agent_counts().contains(&1_000).then_some(1_000);
    bundled_rule_costs(breakdown_agents.unwrap_or(AGENTS[0]), &allow);
}

fn bench(c: &mut Criterion) {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs each benchmark once without
    // it, where the long report and the large revisions would only slow the test run down.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if benchmarking {
        report();
    }
    let agents = if benchmarking {
        agent_counts()
    } else {
        AGENTS[..1].to_vec()
    };
    let headers = headers();
    let allow = input("GET", "/repos/acme/app/issues", &headers);
    let mut group = c.benchmark_group("policy_scale");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &n in &agents {
        let revision = bundled(n);
        group.bench_with_input(BenchmarkId::new("bundled", n), &allow, |b, input| {
            b.iter(|| black_box(revision.evaluate(black_box(input))))
        });
        let revision = glob_regex(n);
        group.bench_with_input(BenchmarkId::new("glob+regex", n), &allow, |b, input| {
            b.iter(|| black_box(revision.evaluate(black_box(input))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
