//! The kill file under crashes and contention (issue 14 item 6, issue 18 point 2):
//!
//! - `kill -9` while kills and lifts are being written, in a bounded loop of rounds: every
//!   restart starts (the file is never half-written) with every acknowledged kill in force and
//!   no acknowledged lift undone;
//! - a second instance naming the same `admin.kill_file` refuses to start (exit 2, a clear
//!   error), and the first keeps its kills.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";
/// Rounds of start, write, `kill -9`, restart.
const ROUNDS: u64 = 8;
/// Writes one round may make at most (the loop also stops when the process dies).
const MAX_WRITES_PER_ROUND: usize = 2_000;

fn config(kill_file: &Path) -> String {
    let root = repo_root();
    format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0', kill_file: '{}'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n",
        kill_file.display(),
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    )
}

fn start(kill_file: &Path) -> Result<Tollgate, String> {
    Tollgate::builder()
        .config(config(kill_file))
        .config_as_is()
        .try_start()
}

/// One admin call on its own connection: the status, or `None` when no answer came (the
/// process died mid-call: the outcome is unknown).
fn call(admin: SocketAddr, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

/// The tasks killed now, from `GET /v1/kill`.
fn killed_tasks(tg: &Tollgate) -> BTreeSet<String> {
    let (status, listed) = tg.admin_json("GET", "/v1/kill", None);
    assert_eq!(status, 200, "{listed}");
    listed["kills"]
        .as_array()
        .expect("kills")
        .iter()
        .filter_map(|k| k["target"]["task"].as_str().map(str::to_owned))
        .collect()
}

/// What the test knows about the kill file's content after a crash.
#[derive(Default)]
struct Ledger {
    /// Kills acknowledged (201) and not lifted by an acknowledged lift.
    in_force: BTreeSet<String>,
    /// Lifts acknowledged (200): must stay lifted.
    lifted: BTreeSet<String>,
    /// The one write whose answer never came: it may or may not have happened.
    unknown: Option<String>,
}

#[test]
fn restarts_after_kill_9_during_writes_with_every_acknowledged_kill_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let kill_file = dir.path().join("kills.json");
    let ledger = Mutex::new(Ledger::default());
    let mut writes_total = 0usize;
    for round in 0..ROUNDS {
        let tg = start(&kill_file).unwrap_or_else(|e| panic!("round {round}: restart: {e}"));
        // The restart restored exactly what was acknowledged (give or take the unknown write).
        {
            let mut book = ledger.lock().unwrap();
            let listed = killed_tasks(&tg);
            let unknown = book.unknown.clone();
            let settled = |t: &&String| unknown.as_ref() != Some(*t);
            let missing: Vec<_> = book.in_force.difference(&listed).filter(settled).collect();
            assert!(missing.is_empty(), "round {round}: kills lost: {missing:?}");
            let unlifted: Vec<_> = book.lifted.intersection(&listed).filter(settled).collect();
            assert!(
                unlifted.is_empty(),
                "round {round}: lifts undone: {unlifted:?}"
            );
            let extra: Vec<_> = listed.difference(&book.in_force).filter(settled).collect();
            assert!(
                extra.is_empty(),
                "round {round}: kills from nowhere: {extra:?}"
            );
            // The unknown write settled one way or the other; the file says which.
            if let Some(task) = book.unknown.take() {
                if listed.contains(&task) {
                    book.lifted.remove(&task);
                    book.in_force.insert(task);
                } else {
                    book.in_force.remove(&task);
                    book.lifted.insert(task);
                }
            }
        }
        let admin = tg.admin_addr().expect("admin listener");
        let stop = AtomicBool::new(false);
        // A different moment of the write stream each round: 40 ms to about 600 ms in.
        let kill_after = Duration::from_millis(40 + (round * 83) % 560);
        let writes = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let mut writes = 0usize;
                for i in 0..MAX_WRITES_PER_ROUND {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Mostly kills; every third write lifts the previous kill of this round.
                    let (task, method, path, body, ok) = if i % 3 == 2 {
                        let task = format!("t-{round}-{}", i - 1);
                        let path = format!("/v1/kill/task/{task}");
                        (task, "DELETE", path, String::new(), 200)
                    } else {
                        let task = format!("t-{round}-{i}");
                        let body = format!(r#"{{"task": "{task}", "reason": "crash test"}}"#);
                        (task, "POST", "/v1/kill".to_owned(), body, 201)
                    };
                    writes += 1;
                    match call(admin, method, &path, &body) {
                        Some(status) => {
                            assert_eq!(status, ok, "{method} {path}");
                            let mut book = ledger.lock().unwrap();
                            if method == "POST" {
                                book.in_force.insert(task);
                            } else {
                                book.in_force.remove(&task);
                                book.lifted.insert(task);
                            }
                        }
                        None => {
                            ledger.lock().unwrap().unknown = Some(task);
                            break;
                        }
                    }
                }
                writes
            });
            let started = Instant::now();
            while started.elapsed() < kill_after && !writer.is_finished() {
                std::thread::sleep(Duration::from_millis(5));
            }
            tg.signal("KILL");
            let status = tg.wait_exit(WAIT).expect("kill -9 ends the process");
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9)
            );
            stop.store(true, Ordering::Relaxed);
            writer.join().expect("the writer thread")
        });
        writes_total += writes;
        // No temp files pile up across crashes beyond the one a crash may leave.
        let temps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .count();
        assert!(temps <= round as usize + 1, "{temps} temp files");
    }
    // The last restart: every kill in force also stops a request.
    let tg = start(&kill_file).expect("final restart");
    let listed = killed_tasks(&tg);
    let book = ledger.lock().unwrap();
    // The last round's unanswered write may have landed either way.
    let lost: Vec<_> = book
        .in_force
        .difference(&listed)
        .filter(|t| book.unknown.as_ref() != Some(*t))
        .collect();
    assert!(lost.is_empty(), "kills lost at the end: {lost:?}");
    assert!(
        writes_total >= ROUNDS as usize * 5,
        "only {writes_total} writes in {ROUNDS} rounds"
    );
    let origin = PyOrigin::start(None);
    if let Some(task) = book
        .in_force
        .iter()
        .find(|t| book.unknown.as_ref() != Some(*t))
    {
        let out = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &tg.proxy_url(),
            "-H",
            &format!("X-Agent-Task: {task}"),
            &origin.url("/echo"),
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    }
    eprintln!(
        "kill -9 rounds: {ROUNDS}, writes: {writes_total}, kills in force at the end: {}",
        book.in_force.len()
    );
}

#[test]
fn refuses_a_second_instance_on_the_same_kill_file() {
    let dir = tempfile::tempdir().unwrap();
    let kill_file = dir.path().join("kills.json");
    let first = start(&kill_file).expect("the first instance");
    assert_eq!(
        first
            .admin_json("POST", "/v1/kill", Some(r#"{"task": "t-1"}"#))
            .0,
        201
    );
    let err = match start(&kill_file) {
        Ok(_) => panic!("a second instance on the same kill file must not start"),
        Err(err) => err,
    };
    assert!(
        err.contains("exit status: 2"),
        "exit 2 (configuration): {err}"
    );
    assert!(
        err.contains(&format!(
            "the kill file {} is in use by another running tollgate",
            kill_file.display()
        )),
        "{err}"
    );
    assert!(err.contains("admin.kill_file"), "{err}");
    // The first instance is untouched: its kills stand, and it still writes.
    assert_eq!(killed_tasks(&first), BTreeSet::from(["t-1".to_owned()]));
    assert_eq!(
        first
            .admin_json("POST", "/v1/kill", Some(r#"{"task": "t-2"}"#))
            .0,
        201
    );
    let text = std::fs::read_to_string(&kill_file).unwrap();
    assert!(text.contains("t-1") && text.contains("t-2"), "{text}");
    // Once the owner is gone, the file can be owned again, with both kills.
    assert_eq!(first.terminate(WAIT).code(), Some(0));
    let second = start(&kill_file).expect("the file is free once its owner exited");
    assert_eq!(
        killed_tasks(&second),
        BTreeSet::from(["t-1".to_owned(), "t-2".to_owned()])
    );
}
