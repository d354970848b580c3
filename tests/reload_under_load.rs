//! Policy reload under load: while agents keep sending requests through tollgate, the policy
//! is rewritten 20 times (every fifth rewrite broken) and reloaded. Every request is answered,
//! none with a 5xx; each decision is made by exactly one revision, its reason matches that
//! revision, and the switch happens at the reload boundaries. Three times: Rego source, bare
//! Wasm modules, and OPA bundles (the Wasm ones are the hand-written ABI fixture of
//! tests/fixtures/wasm, not OPA output; broken rewrites: invalid bytes, a missing builtin, a
//! bundle without /policy.wasm, a file that is not a bundle).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const CLIENTS: usize = 4;
const REWRITES: usize = 20;

fn policy_text(n: usize) -> String {
    format!("package tollgate\ndecision := {{\"allow\": true, \"reason\": \"rev-{n}\"}}\n")
}

/// One keep-alive agent: GETs until `stop`, returns the status of every response.
fn agent(proxy: std::net::SocketAddr, url: String, stop: Arc<AtomicBool>) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut conn = KeepAlive::connect(proxy, WAIT);
    // Bounded in count and time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && statuses.len() < 100_000 && Instant::now() < deadline {
        statuses.push(conn.get(&url).0);
    }
    statuses
}

fn millis_since_epoch(text: &str) -> u128 {
    let t = humantime_parse(text);
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn humantime_parse(text: &str) -> SystemTime {
    // RFC 3339 UTC with milliseconds, as tollgate writes it.
    let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap();
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(secs as u64)
        + Duration::from_millis(ms.parse().unwrap())
}

const CALLER: &str = "spiffe://tollgate.local/test/agent";

/// The decision fixture allowing CALLER with reason `rev-N`.
fn module(n: usize) -> Vec<u8> {
    let path = repo_root().join("tests/fixtures/wasm/decision.wat");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("agent_listed", &format!("rev-{n}"));
    wat::parse_str(text).unwrap()
}

fn missing_builtin() -> Vec<u8> {
    wat::parse_file(repo_root().join("tests/fixtures/wasm/missing_builtin.wat")).unwrap()
}

fn data() -> String {
    format!(r#"{{"tollgate_config": {{"agents": {{"{CALLER}": {{"rules": []}}}}}}}}"#)
}

#[test]
fn answers_every_request_while_the_policy_is_reloaded_20_times() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    let file = policy.join("p.rego");
    reload_under_load(&format!("{{path: '{}'}}", policy.display()), |n| {
        if n % 5 == 0 && n > 0 {
            std::fs::write(&file, "package tollgate\ndecision := {\n").unwrap();
            true
        } else {
            std::fs::write(&file, policy_text(n)).unwrap();
            false
        }
    });
}

#[test]
fn answers_every_request_while_a_wasm_module_is_reloaded_20_times() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.wasm");
    let data_file = dir.path().join("data.json");
    std::fs::write(&data_file, data()).unwrap();
    let yaml = format!(
        "{{path: '{}', data: '{}', engine: wasm}}",
        file.display(),
        data_file.display()
    );
    reload_under_load(&yaml, |n| {
        let (bytes, broken) = match n {
            5 | 15 => (b"\0asm\x01\0\0\0 not really".to_vec(), true),
            10 | 20 => (missing_builtin(), true),
            _ => (module(n), false),
        };
        std::fs::write(&file, bytes).unwrap();
        broken
    });
}

#[test]
fn answers_every_request_while_an_opa_bundle_is_reloaded_20_times() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundle.tar.gz");
    let data = data();
    reload_under_load(&format!("{{path: '{}'}}", file.display()), |n| {
        let manifest = format!(r#"{{"revision": "bundle-{n}"}}"#);
        let (bytes, broken) = match n {
            5 => (
                opa_bundle(&[
                    ("/data.json", data.as_bytes()),
                    ("/policy.wasm", b"garbage"),
                ]),
                true,
            ),
            10 => (
                opa_bundle(&[
                    ("/data.json", data.as_bytes()),
                    ("/policy.wasm", &missing_builtin()),
                ]),
                true,
            ),
            15 => (opa_bundle(&[("/data.json", data.as_bytes())]), true),
            20 => (b"not a tarball".to_vec(), true),
            _ => (
                opa_bundle(&[
                    ("/.manifest", manifest.as_bytes()),
                    ("/data.json", data.as_bytes()),
                    ("/policy.wasm", &module(n)),
                ]),
                false,
            ),
        };
        std::fs::write(&file, bytes).unwrap();
        broken
    });
}

/// Starts tollgate on `policy_yaml` after `write(0)`, then rewrites with `write(1..=20)` (which
/// says whether that rewrite is broken) and reloads after each, under load.
fn reload_under_load(policy_yaml: &str, write: impl Fn(usize) -> bool) {
    assert!(!write(0));
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {policy_yaml}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n"
    ));
    let nginx = Nginx::start(&NginxOptions::plain());
    let url = nginx.url("/hello");
    let stop = Arc::new(AtomicBool::new(false));
    let agents: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (proxy, url, stop) = (tg.proxy_addr("agents"), url.clone(), stop.clone());
            std::thread::spawn(move || agent(proxy, url, stop))
        })
        .collect();

    // Rewrite and reload; remember when each good revision was in force.
    let mut boundaries: Vec<(usize, String, u128)> = Vec::new(); // (n, revision, ms when POST returned)
    let mut failures = 0;
    for n in 1..=REWRITES {
        let broken = write(n);
        let out = curl(&[
            "-s",
            "--max-time",
            "10",
            "-X",
            "POST",
            "-w",
            "\n%{http_code}",
            &tg.admin_url("/v1/reload"),
        ]);
        let returned = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap();
        let body: Value = serde_json::from_str(body).unwrap();
        if broken {
            assert_eq!(status, "422", "{body}");
            failures += 1;
        } else {
            assert_eq!(status, "200", "{body}");
            boundaries.push((n, body["revision"].as_str().unwrap().to_string(), returned));
        }
        // Let traffic run on this revision for a little while (bounded).
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = agents
        .into_iter()
        .flat_map(|a| a.join().expect("agent thread"))
        .collect();
    assert_eq!(failures, REWRITES / 5);
    assert!(statuses.len() > 200, "only {} requests", statuses.len());
    let bad: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests were not 200: {:?}",
        bad.len(),
        statuses.len(),
        &bad[..bad.len().min(10)]
    );

    // The decision log: one line per request, each decided by exactly one revision whose
    // reason is that revision's, switching at the reload boundaries.
    let deadline = Instant::now() + WAIT;
    while tg.decisions().len() < statuses.len() {
        assert!(
            Instant::now() < deadline,
            "{} decisions for {} requests",
            tg.decisions().len(),
            statuses.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let decisions = tg.decisions();
    assert_eq!(decisions.len(), statuses.len());
    let mut reason_of: HashMap<String, String> = HashMap::new();
    for d in &decisions {
        let revision = d["policy_revision"]
            .as_str()
            .expect("a revision")
            .to_string();
        let reason = d["decision"]["reason"].as_str().unwrap().to_string();
        let known = reason_of
            .entry(revision.clone())
            .or_insert_with(|| reason.clone());
        assert_eq!(
            *known, reason,
            "revision {revision} decided with two different reasons"
        );
    }
    // Every good revision's reason is rev-N with its N; broken rewrites never decided anything.
    for (n, revision, _) in &boundaries {
        if let Some(reason) = reason_of.get(revision) {
            assert_eq!(reason, &format!("rev-{n}"));
        }
    }
    assert!(
        reason_of.len() >= 2,
        "traffic saw several revisions: {reason_of:?}"
    );
    // A request that started after a reload returned is decided by that revision or a later one.
    let index_of: HashMap<&str, usize> = boundaries
        .iter()
        .map(|(n, r, _)| (r.as_str(), *n))
        .collect();
    for d in &decisions {
        let started = millis_since_epoch(d["time"].as_str().unwrap());
        let n = index_of
            .get(d["policy_revision"].as_str().unwrap())
            .copied()
            .unwrap_or(0);
        for (m, _, returned) in &boundaries {
            if started > *returned + 5 {
                assert!(
                    n >= *m,
                    "a request started at {started} after reload {m} returned at {returned} was decided by rev-{n}"
                );
            }
        }
    }
}
