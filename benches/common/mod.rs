//! The request fixture the benches share: what an agent's `GET https://api.github.com/...`
//! looks like to the policy stage (headers as sent, the `PolicyInput` built from them).
#![allow(dead_code)] // each bench uses its part

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

use serde_json::{Value as Json, json};
use tollgate::identity::{Caller, SpiffeId};
use tollgate::intent::parse_intent;
use tollgate::policy::input::{
    ConnectionFacts, DestinationFacts, PolicyInput, RequestFacts, SourceFacts, policy_headers,
};
use tollgate::policy::{BUNDLED_DATA, PolicyRevision};

/// The caller of every bench request (an agent of the bundled example data).
pub const CALLER: &str = "spiffe://tollgate.local/dev/agent";

/// An agent's request headers, a secret and an intent among them.
pub fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "api.github.com".parse().unwrap());
    h.insert("user-agent", "agent/1.0".parse().unwrap());
    h.insert("accept", "application/vnd.github+json".parse().unwrap());
    h.insert("authorization", "Bearer not-a-real-token".parse().unwrap());
    h.insert("x-agent-intent", "issues.read".parse().unwrap());
    h.insert("x-agent-task", "t-42".parse().unwrap());
    h
}

/// The policy input of `method https://api.github.com<path>?state=open` with `headers`.
pub fn input(method: &str, path: &str, headers: &HeaderMap) -> PolicyInput {
    PolicyInput {
        time: SystemTime::now(),
        source: SourceFacts {
            caller: Caller::Authenticated(SpiffeId::parse(CALLER).unwrap()),
            listener: Arc::from("agents"),
            address: "127.0.0.1:51234".into(),
        },
        intent: parse_intent(headers).unwrap(),
        request: Some(RequestFacts {
            method: method.into(),
            scheme: "https",
            host: "api.github.com".into(),
            port: 443,
            path: path.into(),
            query: Some("state=open".into()),
            headers: policy_headers(headers, &[]),
            protocol: "HTTP/1.1",
        }),
        destination: DestinationFacts {
            host: "api.github.com".into(),
            port: 443,
            ip: Some("140.82.112.6".parse().unwrap()),
        },
        connection: ConnectionFacts {
            mode: "forward",
            intercepted: true,
            tls_sni: Some("api.github.com".into()),
        },
    }
}

/// The bundled data plus synthetic agents (two rules each) up to `agents` entries in all.
pub fn bundled_data(agents: usize) -> Json {
    let mut data: Json = serde_json::from_str(BUNDLED_DATA).unwrap();
    let map = data["tollgate_config"]["agents"].as_object_mut().unwrap();
    let mut i = 0;
    while map.len() < agents {
        map.insert(
            format!("spiffe://tollgate.local/ns/agents/sa/agent-{i:05}"),
            json!({"rules": [
                {"id": "gh", "hosts": ["api.github.com"], "methods": ["GET"], "paths": [format!("/repos/org-{i}/")]},
                {"id": "ai", "hosts": ["api.openai.com"], "methods": ["POST"], "paths": ["/v1/"], "intents": ["chat"]}
            ]}),
        );
        i += 1;
    }
    data
}

/// p50 and p99 of one evaluation of `input`, in µs: 20,000 timed evaluations after 2,000
/// warm-up ones.
pub fn percentiles(revision: &PolicyRevision, input: &PolicyInput) -> (f64, f64) {
    let (p50, p99, _) = percentiles_and_cpu(revision, input);
    (p50, p99)
}

/// This thread's CPU time so far in ns (`/proc/thread-self/schedstat`): unlike wall-clock
/// percentiles it does not grow when other processes share the cores.
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// p50 and p99 wall-clock µs of 20,000 evaluations after 2,000 warm-up ones, and the mean
/// CPU µs per evaluation over the same 20,000.
pub fn percentiles_and_cpu(revision: &PolicyRevision, input: &PolicyInput) -> (f64, f64, f64) {
    for _ in 0..2_000 {
        black_box(revision.evaluate(input));
    }
    let cpu = thread_cpu_ns();
    let mut times: Vec<u32> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            black_box(revision.evaluate(black_box(input)));
            u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX)
        })
        .collect();
    let cpu = (thread_cpu_ns() - cpu) as f64 / 1000.0 / times.len() as f64;
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64) * q) as usize] as f64 / 1000.0;
    (at(0.50), at(0.99), cpu)
}

/// Steps per second on `threads` threads for `for_`: each thread runs `prepare` (its own
/// state, outside the timed window: an idle tokio worker makes its engine copy before it
/// serves), then `step` until the time is up. The one scaffold of the benches' 1-vs-2-thread
/// reports.
pub fn per_second<S, P, F>(threads: usize, for_: Duration, prepare: P, step: F) -> f64
where
    P: Fn() -> S + Send + Sync + 'static,
    F: Fn(&mut S) + Send + Sync + 'static,
{
    let (prepare, step) = (Arc::new(prepare), Arc::new(step));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(std::sync::Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (prepare, step) = (prepare.clone(), step.clone());
            let (stop, count, ready) = (stop.clone(), count.clone(), ready.clone());
            std::thread::spawn(move || {
                let mut state = prepare();
                ready.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    step(&mut state);
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    ready.wait();
    std::thread::sleep(for_);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a bench thread panicked");
    }
    count.load(Ordering::Relaxed) as f64 / for_.as_secs_f64()
}

/// Rounds per second of a loop that shares nothing, on `threads` threads for `for_`: what two
/// threads can get on this machine now, the yardstick of the benches' 1-vs-2-thread reports.
pub fn spin_rate(threads: usize, for_: Duration) -> f64 {
    per_second(
        threads,
        for_,
        || 0x2545_f491_4f6c_dd1du64,
        |x: &mut u64| {
            for _ in 0..1_000 {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
            }
            black_box(*x);
        },
    )
}
