//! The proxy's per-request work on one and two threads: parse → target + intent → input →
//! decision → headers, with the library's own functions, for one absolute-form request an
//! agent sends to a forward listener (plain HTTP, keep-alive connection):
//!
//! 1. **parse**: the request head's bytes (9 headers, one of them `X-Agent-Intent`) parsed by
//!    `httparse` — hyper's parser underneath, not public — into an `http::Request`, as hyper
//!    hands it to the proxy;
//! 2. **target + intent**: `proxy::target::forward_target` (host and path normalized), the
//!    name's resolution as the resolver's cache returns it (an address list, no DNS), the
//!    secrets stage's look for secret headers, `intent::parse_intent` (no intent token);
//! 3. **input**: `proxy::authorize::request_input`, the `PolicyInput` the authorize stage builds;
//! 4. **decision**: the revision in force read as a request reads it (`PolicyStore::current`),
//!    then `PolicyRevision::evaluate` — the input's engine value built, evaluated on the
//!    default engine (regorus' interpreter), the decision checked;
//! 5. **headers**: for an allowed request, `proxy::inject::origin_headers` (hop-by-hop, intent
//!    and `Host` removed, the policy's header changes, `via`) and the origin URI.
//!
//! With the proxy's allocator (mimalloc, as src/main.rs sets it). Not included: the socket
//! reads and writes, the decision-log line, the metrics, the kill switch, the in-flight count
//! and the forwarding itself.
//!
//! Two policies: `bundled` (policy-wasm/tollgate.rego with its bundled data) and `glob-regex`
//! (benches/load/policies/glob-regex: 1,000 agents, a `glob.match` and a `regex.match` per rule;
//! its data written by its own make-data.py). Two requests for each: `allow`
//! (`GET http://127.0.0.1:8080/hello?page=2`, the load bench's request: both policies allow it,
//! the bundled one setting a header) and `deny` (`GET http://api.example.test/v1/items?limit=20`,
//! no rule matches: `destination_not_allowed`, so the headers stage does not run).
//!
//! The threads report: whole per-request iterations per second with 1 and 2 threads for 3 s
//! each, each thread having called `prepare_thread()` first (as an idle tokio worker does
//! through the park hook), beside a shared-nothing arithmetic loop measured just before and
//! just after (what two threads can get on this machine at that moment). The caller, the
//! listener name and the revision are shared between the threads as they are between the
//! proxy's workers; each thread has its own connection context.
//!
//! Run: `cargo bench --bench request_path`; `REQUEST_PATH_ONLY=threads` runs only the threads
//! report. Under `cargo test --all-targets` (no `--bench`) each criterion row runs once.

mod common;

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Request, Version};

use common::{CALLER, per_second, spin_rate};

use tollgate::config::ListenerMode;
use tollgate::credentials::inject::AgentSecrets;
use tollgate::identity::{Caller, SpiffeId};
use tollgate::intent::{intent_token, parse_intent};
use tollgate::kill::flows::ConnAbort;
use tollgate::policy::{BUNDLED_DATA, BUNDLED_MODULES, PolicyRevision, PolicyStore};
use tollgate::proxy::authorize::request_input;
use tollgate::proxy::ctx::ConnCtx;
use tollgate::proxy::inject::origin_headers;
use tollgate::proxy::target::{Destination, Resolution, forward_target};

/// The proxy's allocator (src/main.rs): the per-request work allocates and frees many small
/// values, so the bench measures it with the allocator the binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A request head as an agent's HTTP client sends it through the proxy: the request line, then
/// nine headers (hop-by-hop ones among them, one intent header).
macro_rules! head {
    ($line:literal, $host:literal) => {
        concat!(
            $line,
            "\r\nHost: ",
            $host,
            "\r\nUser-Agent: python-httpx/0.28.1\r\n\
             Accept: application/json\r\n\
             Accept-Encoding: gzip, deflate\r\n\
             Connection: keep-alive\r\n\
             Proxy-Connection: keep-alive\r\n\
             traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
             X-Request-Id: 6f1c2a9e-3b7d-4e58-9a41-0c2d5e8f7b13\r\n\
             X-Agent-Intent: items.read\r\n\r\n"
        )
        .as_bytes()
    };
}

/// The request both policies allow (the load bench's `GET /hello` through the proxy).
const ALLOW: &[u8] = head!(
    "GET http://127.0.0.1:8080/hello?page=2 HTTP/1.1",
    "127.0.0.1:8080"
);

/// The request no rule of either policy matches (`destination_not_allowed`).
const DENY: &[u8] = head!(
    "GET http://api.example.test/v1/items?limit=20 HTTP/1.1",
    "api.example.test"
);

/// What the resolver's cache answers for either name (no DNS in the bench).
const ADDRESS: &str = "127.0.0.1";

/// The glob/regex policy of the load bench, and the script that writes its data.
const GLOB_REGEX_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/load/policies/glob-regex"
);

/// What one request came to.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Allowed: the origin request's header count (after the inject stage).
    Allowed(usize),
    /// Denied, with the policy's reason.
    Denied(String),
}

/// What the threads share, as the proxy's workers do: the revision in force, the configured
/// caller, the listener's name and the agent-secret rules.
struct Shared {
    policy: PolicyStore,
    caller: Caller,
    listener: Arc<str>,
    secrets: AgentSecrets,
}

impl Shared {
    fn new(revision: PolicyRevision) -> Shared {
        Shared {
            policy: PolicyStore::new(revision),
            caller: Caller::Authenticated(SpiffeId::parse(CALLER).expect("a SPIFFE ID")),
            listener: Arc::from("agents"),
            secrets: AgentSecrets::default(),
        }
    }

    /// One agent connection on a forward listener (each thread has its own, as each
    /// connection does).
    fn connection(&self) -> Connection {
        Connection {
            ctx: ConnCtx::new(
                self.listener.clone(),
                ListenerMode::Forward,
                false,
                "127.0.0.1:51234".parse().expect("an address"),
                self.caller.clone(),
                ConnAbort::detached(),
            ),
            resolved: Arc::from([ADDRESS.parse::<IpAddr>().expect("an address")]),
        }
    }
}

/// A connection's own state: its context and what the resolver returns for its requests.
struct Connection {
    ctx: ConnCtx,
    resolved: Arc<[IpAddr]>,
}

/// 1. parse: the head's bytes into the `http::Request` hyper would hand over.
fn parse(head: &[u8]) -> anyhow::Result<Request<()>> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut slots);
    if !parsed.parse(head)?.is_complete() {
        bail!("incomplete request head");
    }
    let mut request = Request::new(());
    *request.method_mut() =
        http::Method::from_bytes(parsed.method.context("no method")?.as_bytes())?;
    *request.uri_mut() = parsed.path.context("no target")?.parse()?;
    *request.version_mut() = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let headers = request.headers_mut();
    headers.reserve(parsed.headers.len());
    for header in parsed.headers.iter() {
        headers.append(
            HeaderName::from_bytes(header.name.as_bytes())?,
            HeaderValue::from_bytes(header.value)?,
        );
    }
    Ok(request)
}

/// The whole per-request work for one request head (see the module documentation).
fn per_request(head: &[u8], shared: &Shared, conn: &Connection) -> anyhow::Result<Verdict> {
    // 1. parse
    let request = parse(head)?;
    // 2. target + intent (and the secrets stage's look)
    let destination = Destination {
        target: forward_target(request.uri())?,
        resolution: Resolution::Resolved(conn.resolved.clone()),
    };
    if !shared.secrets.present(request.headers()).is_empty() {
        bail!("the bench request carries a secret header");
    }
    if intent_token(request.headers())?.is_some() {
        bail!("the bench request carries an intent token");
    }
    let intent = parse_intent(request.headers())?;
    // 3. input
    let input = request_input(
        &conn.ctx,
        &request,
        &destination,
        intent,
        shared.secrets.names(),
    );
    // 4. decision
    let revision = shared.policy.current();
    let decision = revision
        .evaluate(&input)
        .outcome
        .map_err(|failure| anyhow::anyhow!("policy failure: {failure:?}"))?;
    if !decision.allow {
        return Ok(Verdict::Denied(decision.reason.unwrap_or_default()));
    }
    // 5. headers
    let (mut parts, ()) = request.into_parts();
    origin_headers(&mut parts.headers, &decision, &shared.secrets);
    parts.uri = destination.target.upstream_uri()?;
    Ok(Verdict::Allowed(black_box(parts).headers.len()))
}

fn bundled() -> PolicyRevision {
    let modules: Vec<(String, String)> = BUNDLED_MODULES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    PolicyRevision::compile(&modules, BUNDLED_DATA, "tollgate/decision")
        .expect("the bundled policy loads")
}

/// The glob/regex policy with the data its make-data.py writes (1,000 agents).
fn glob_regex() -> PolicyRevision {
    let dir = Path::new(GLOB_REGEX_DIR);
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data = scratch.path().join("data.json");
    let status = std::process::Command::new("python3")
        .arg(dir.join("make-data.py"))
        .arg(&data)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "make-data.py: {status}");
    let data = std::fs::read_to_string(&data).expect("make-data.py wrote data.json");
    let policy = std::fs::read_to_string(dir.join("policy.rego")).expect("policy.rego");
    PolicyRevision::compile(
        &[("policy.rego".to_string(), policy)],
        &data,
        "tollgate/decision",
    )
    .expect("the glob/regex policy loads")
}

/// Both policies, each with the verdicts its two requests must get (checked before measuring,
/// so a row never measures an error path).
fn policies() -> Vec<(&'static str, Arc<Shared>, Verdict)> {
    let checked = |name: &'static str, revision: PolicyRevision| {
        let shared = Arc::new(Shared::new(revision));
        let conn = shared.connection();
        let allowed = per_request(ALLOW, &shared, &conn).expect("the allow request");
        assert!(
            matches!(allowed, Verdict::Allowed(_)),
            "{name}: {allowed:?}"
        );
        let denied = per_request(DENY, &shared, &conn).expect("the deny request");
        assert_eq!(
            denied,
            Verdict::Denied("destination_not_allowed".into()),
            "{name}"
        );
        (name, shared, allowed)
    };
    vec![
        checked("bundled", bundled()),
        checked("glob-regex", glob_regex()),
    ]
}

/// Whole per-request iterations per second of `head` with `threads` threads for `for_`; each
/// thread prepares its own engine copy first, as an idle tokio worker does. Every iteration's
/// verdict is checked against `expected`.
fn rate(
    shared: &Arc<Shared>,
    head: &'static [u8],
    expected: &Verdict,
    threads: usize,
    for_: Duration,
) -> f64 {
    let wrong = Arc::new(AtomicU64::new(0));
    let expected = Arc::new(match expected {
        Verdict::Allowed(n) => Verdict::Allowed(*n),
        Verdict::Denied(reason) => Verdict::Denied(reason.clone()),
    });
    let (prepared, served, counted) = (shared.clone(), shared.clone(), wrong.clone());
    let rate = per_second(
        threads,
        for_,
        move || {
            // What an idle tokio worker does through the park hook (policy::on_worker_park).
            prepared.policy.current().prepare_thread();
            prepared.connection()
        },
        move |conn| match per_request(head, &served, conn) {
            Ok(verdict) if verdict == *expected => {}
            _ => {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        },
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "iterations with another verdict"
    );
    rate
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn spin_line(when: &str) {
    let one = spin_rate(1, Duration::from_secs(3));
    let two = spin_rate(2, Duration::from_secs(3));
    println!(
        "spin ({when:6})      1 thread {one:10.0}/s  2 threads {two:10.0}/s  ratio {:.2}",
        two / one
    );
}

fn threads_report(policies: &[(&'static str, Arc<Shared>, Verdict)]) {
    println!(
        "\n# the whole per-request work (allow request), 1 vs 2 threads, 3 s each; load average {}",
        load_average()
    );
    spin_line("before");
    for (name, shared, allowed) in policies {
        rate(shared, ALLOW, allowed, 2, Duration::from_millis(500));
        let one = rate(shared, ALLOW, allowed, 1, Duration::from_secs(3));
        let two = rate(shared, ALLOW, allowed, 2, Duration::from_secs(3));
        println!(
            "{name:18} 1 thread {one:10.0}/s  2 threads {two:10.0}/s  ratio {:.2}",
            two / one
        );
    }
    spin_line("after");
    println!("load average after: {}", load_average());
}

fn bench(c: &mut Criterion) {
    let policies = policies();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs each row once without it,
    // where the threads report would only slow the test run down.
    if std::env::args().any(|a| a == "--bench") {
        threads_report(&policies);
    }
    if std::env::var("REQUEST_PATH_ONLY").is_ok_and(|v| v == "threads") {
        return;
    }
    let mut group = c.benchmark_group("request_path");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, shared, _) in &policies {
        let conn = shared.connection();
        shared.policy.current().prepare_thread();
        for (request, head) in [("allow", ALLOW), ("deny", DENY)] {
            group.bench_with_input(BenchmarkId::new(*name, request), head, |b, head| {
                b.iter(|| black_box(per_request(black_box(head), shared, &conn)))
            });
        }
    }
    // The stages without the decision, on the allow request (policy-independent).
    let (_, shared, _) = &policies[0];
    let conn = shared.connection();
    group.bench_function("stage/parse", |b| {
        b.iter(|| black_box(parse(black_box(ALLOW))))
    });
    let request = parse(ALLOW).expect("the allow request parses");
    group.bench_function("stage/target+intent", |b| {
        b.iter(|| {
            let target = forward_target(black_box(&request).uri());
            black_box((target, parse_intent(request.headers())))
        })
    });
    let destination = Destination {
        target: forward_target(request.uri()).expect("a target"),
        resolution: Resolution::Resolved(conn.resolved.clone()),
    };
    let intent = parse_intent(request.headers()).expect("an intent");
    group.bench_function("stage/input+value", |b| {
        b.iter(|| {
            let input = request_input(
                &conn.ctx,
                black_box(&request),
                &destination,
                intent.clone(),
                shared.secrets.names(),
            );
            black_box(input.to_value())
        })
    });
    let decision = shared
        .policy
        .current()
        .evaluate(&request_input(
            &conn.ctx,
            &request,
            &destination,
            intent.clone(),
            shared.secrets.names(),
        ))
        .outcome
        .expect("a decision");
    group.bench_function("stage/headers", |b| {
        b.iter(|| {
            let mut headers = black_box(&request).headers().clone();
            origin_headers(&mut headers, &decision, &shared.secrets);
            black_box((headers, destination.target.upstream_uri()))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
