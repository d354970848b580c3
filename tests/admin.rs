//! The admin API (SPEC §7) and the kill switch: kills take effect on the next request of an
//! open HTTP/1.1 keep-alive connection and of an open HTTP/2 connection, close blind tunnels,
//! survive a restart through `admin.kill_file`, and lift with DELETE. Also reload (POST and
//! SIGHUP; a broken policy keeps the running one), recent decisions, tasks and JWKS.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.local/test/agent";

fn config(kill_file: &Path, policy: &Path, extra: &str) -> String {
    let root = repo_root();
    format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0', kill_file: '{}'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n{extra}",
        kill_file.display(),
        policy.display(),
        root.join("tests/fixtures/policy-data.json").display(),
    )
}

fn tollgate(dir: &Path) -> Tollgate {
    Tollgate::builder()
        .config(config(
            &dir.join("kills.json"),
            &repo_root().join("policy-wasm"),
            "",
        ))
        .config_as_is()
        .start()
}

#[test]
fn kills_the_next_request_on_an_open_keep_alive_connection_and_lifts() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path());
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    let mut conn = KeepAlive::connect(tg.proxy_addr("agents"), WAIT);
    assert_eq!(conn.get(&url).0, 200);

    let (status, body) = tg.admin_json(
        "POST",
        "/v1/kill",
        Some(&format!(
            r#"{{"spiffe_id": "{CALLER}", "reason": "incident 7"}}"#
        )),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = conn.get(&url);
    assert_eq!(status, 403, "same connection, next request: {body}");
    assert!(body.contains("\"reason\":\"killed\""), "{body}");
    tg.wait_decision(|d| d["decision"]["reason"] == "killed", WAIT);
    let metrics =
        String::from_utf8_lossy(&curl(&["-s", &tg.admin_url("/metrics")]).stdout).into_owned();
    assert!(metrics.contains("tollgate_kills_active 1"), "{metrics}");

    let (status, listed) = tg.admin_json("GET", "/v1/kill", None);
    assert_eq!(status, 200);
    assert_eq!(listed["kills"][0]["target"]["spiffe_id"], CALLER);
    let id = listed["kills"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = tg.admin_json("DELETE", &format!("/v1/kill/{id}"), None);
    assert_eq!(status, 200);
    assert_eq!(
        conn.get(&url).0,
        200,
        "lifted: allowed again on the same connection"
    );
}

#[test]
fn kills_by_task_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path());
    let origin = PyOrigin::start(None);
    let get = |task: Option<&str>| {
        let mut request = AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url());
        if let Some(task) = task {
            request = request.header("X-Agent-Task", task);
        }
        python_agent(&request).status
    };
    assert_eq!(
        tg.admin_json("POST", "/v1/kill", Some(r#"{"task": "t-42"}"#))
            .0,
        201
    );
    assert_eq!(get(Some("t-42")), 403);
    assert_eq!(get(Some("t-43")), 200);
    assert_eq!(
        tg.admin_json("POST", "/v1/kill", Some(r#"{"all": true}"#))
            .0,
        201
    );
    assert_eq!(get(Some("t-43")), 403);
    assert_eq!(get(None), 403);
    assert_eq!(tg.admin_json("DELETE", "/v1/kill/all", None).0, 200);
    assert_eq!(get(None), 200);
    // Bad kill requests are refused precisely.
    for bad in [
        r#"{"task": "no spaces allowed"}"#,
        r#"{"spiffe_id": "https://x"}"#,
        "not json",
        r#"{"task": "a", "all": true}"#,
    ] {
        let (status, body) = tg.admin_json("POST", "/v1/kill", Some(bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
}

#[test]
fn kills_the_next_request_on_an_open_http2_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let nginx = Nginx::start(&NginxOptions::tls(&pki));
    nginx.write_file("x.txt", b"x");
    // tollgate trusts the origin CA (made with openssl) through upstream.ca.
    let tg = Tollgate::builder()
        .config(
            config(
                &dir.path().join("kills.json"),
                &repo_root().join("policy-wasm"),
                "",
            )
            .replace(
                "upstream: {allow_private: [127.0.0.0/8]}",
                &format!(
                    "upstream: {{allow_private: [127.0.0.0/8], ca: '{}'}}",
                    pki.ca_cert().display()
                ),
            ),
        )
        .config_as_is()
        .start();
    let ca = tg.dir().join("state/intercept-ca.pem");
    let url = format!("https://127.0.0.1:{}/x.txt", nginx.tls_port().unwrap());
    // One httpx client, one HTTP/2 connection through the tunnel, two requests of task t-h2
    // with a kill of the task in between (the script waits for a line on stdin before the
    // second). The connection itself declared no task, so the kill leaves it open (a kill of
    // the caller resets it: tests/kill_flows.rs); the next request on it is refused.
    let script = r#"
import sys, httpx
client = httpx.Client(http2=True, proxy=sys.argv[1], verify=sys.argv[2], headers={"x-agent-task": "t-h2"})
r = client.get(sys.argv[3]); print(r.http_version, r.status_code, flush=True)
sys.stdin.readline()
r = client.get(sys.argv[3]); print(r.http_version, r.status_code, r.json().get("reason"), flush=True)
"#;
    let mut child = command(python())
        .args(["-c", script, &tg.proxy_url(), ca.to_str().unwrap(), &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _guard = ChildGuard::new(child);
    assert_eq!(lines.next().unwrap().unwrap(), "HTTP/2 200");
    assert_eq!(
        tg.admin_json("POST", "/v1/kill", Some(r#"{"task": "t-h2"}"#))
            .0,
        201
    );
    writeln!(stdin).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "HTTP/2 403 killed");
}

#[test]
fn closes_a_blind_tunnel_of_a_killed_caller() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path());
    let origin = PyOrigin::start(None);
    // localhost is `mode: tunnel` in the test policy: bytes pass unread.
    let mut stream = TcpStream::connect(tg.proxy_addr("agents")).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "CONNECT localhost:{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        origin.port()
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut rest = vec![0u8; 4096];
    let _ = stream.read(&mut rest);
    // The tunnel is open: a plain request through it reaches the origin.
    write!(stream, "GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let n = stream.read(&mut rest).unwrap();
    assert!(
        String::from_utf8_lossy(&rest[..n]).starts_with("HTTP/1.0 200")
            || String::from_utf8_lossy(&rest[..n]).starts_with("HTTP/1.1 200")
    );
    // Drain whatever is left of that response, then kill: the tunnel must close.
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
    assert_eq!(
        tg.admin_json(
            "POST",
            "/v1/kill",
            Some(&format!(r#"{{"spiffe_id": "{CALLER}"}}"#))
        )
        .0,
        201
    );
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let n = stream.read(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "the tunnel was closed");
    tg.wait_log(
        |l| l["message"] == "tunnel closed: caller or task killed",
        WAIT,
    );
}

#[test]
fn keeps_kills_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let origin = PyOrigin::start(None);
    {
        let tg = tollgate(dir.path());
        assert_eq!(
            tg.admin_json("POST", "/v1/kill", Some(r#"{"task": "t-9"}"#))
                .0,
            201
        );
        assert_eq!(tg.terminate(WAIT).code(), Some(0));
    }
    let tg = tollgate(dir.path());
    let (_, listed) = tg.admin_json("GET", "/v1/kill", None);
    assert_eq!(listed["kills"][0]["target"]["task"], "t-9");
    let killed = python_agent(
        &AgentRequest::get(origin.url("/echo"))
            .proxy(tg.proxy_url())
            .header("X-Agent-Task", "t-9"),
    );
    assert_eq!(killed.status, 403);
    assert_eq!(killed.json()["reason"], "killed");
    assert_eq!(tg.admin_json("DELETE", "/v1/kill/task/t-9", None).0, 200);
    let allowed = python_agent(
        &AgentRequest::get(origin.url("/echo"))
            .proxy(tg.proxy_url())
            .header("X-Agent-Task", "t-9"),
    );
    assert_eq!(allowed.status, 200);
}

#[test]
fn reloads_the_policy_and_keeps_the_running_one_when_the_new_one_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(
        policy.join("p.rego"),
        "package tollgate\ndecision := {\"allow\": true, \"reason\": \"v1\"}\n",
    )
    .unwrap();
    let tg = Tollgate::builder()
        .config(config(&dir.path().join("kills.json"), &policy, "").replace(
            &format!(", data: '{}'", repo_root().join("tests/fixtures/policy-data.json").display()),
            "",
        ))
        .config_as_is()
        .start();
    let origin = PyOrigin::start(None);
    let reason = || {
        let r = python_agent(&AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url()));
        let id = r.header("x-tollgate-decision-id").unwrap().to_string();
        tg.wait_decision(|d| d["decision_id"] == id, WAIT)["decision"]["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(reason(), "v1");

    std::fs::write(
        policy.join("p.rego"),
        "package tollgate\ndecision := {\"allow\": true, \"reason\": \"v2\"}\n",
    )
    .unwrap();
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(reason(), "v2");

    std::fs::write(policy.join("p.rego"), "package tollgate\ndecision := {\n").unwrap();
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not compile"),
        "{body}"
    );
    assert_eq!(reason(), "v2", "the last good revision stays in force");

    // A type error in the decision (defined, but not a decision) is refused on reload too.
    std::fs::write(
        policy.join("p.rego"),
        "package tollgate\ndecision := {\"allow\": \"yes\", \"reason\": \"v-typo\"}\n",
    )
    .unwrap();
    let (status, body) = tg.admin_json("POST", "/v1/reload", None);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the policy's decision has the wrong type"),
        "{body}"
    );
    assert_eq!(reason(), "v2", "the last good revision stays in force");

    std::fs::write(
        policy.join("p.rego"),
        "package tollgate\ndecision := {\"allow\": true, \"reason\": \"v3\"}\n",
    )
    .unwrap();
    tg.signal("HUP");
    tg.wait_log(
        |l| l["message"] == "reloaded: policy revision in force",
        WAIT,
    );
    assert_eq!(reason(), "v3");
    let metrics =
        String::from_utf8_lossy(&curl(&["-s", &tg.admin_url("/metrics")]).stdout).into_owned();
    assert!(
        metrics.contains("tollgate_policy_reloads_total{result=\"success\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_policy_reloads_total{result=\"failure\"} 2"),
        "{metrics}"
    );
}

#[test]
fn lists_recent_decisions_newest_first_and_answers_tasks_and_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path());
    let origin = PyOrigin::start(None);
    let mut ids = Vec::new();
    for method in ["GET", "DELETE", "HEAD"] {
        let r = python_agent(&AgentRequest::new(method, origin.url("/echo")).proxy(tg.proxy_url()));
        ids.push(r.header("x-tollgate-decision-id").unwrap().to_string());
    }
    let last = ids[2].clone();
    tg.wait_decision(|d| d["decision_id"] == last, WAIT);
    let (status, body) = tg.admin_json("GET", "/v1/decisions?limit=2", None);
    assert_eq!(status, 200);
    let got: Vec<&str> = body["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(
        tg.admin_json("GET", "/v1/decisions?limit=zero", None).0,
        400
    );
    let (status, body) = tg.admin_json("DELETE", "/v1/tasks/t-42", None);
    assert_eq!(status, 200);
    assert_eq!(body["task"], "t-42");
    assert_eq!(tg.admin_json("DELETE", "/v1/tasks/bad%20task", None).0, 400);
    let (status, body) = tg.admin_json("GET", "/.well-known/jwks.json", None);
    assert_eq!(status, 200);
    assert_eq!(body["keys"], serde_json::json!([]));
    assert_eq!(tg.admin_json("GET", "/v1/nope", None).0, 404);
}

#[test]
fn reloads_on_policy_and_data_file_changes_when_watching() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(
        policy.join("p.rego"),
        "package tollgate\ndecision := {\"allow\": true, \"reason\": data.label}\n",
    )
    .unwrap();
    std::fs::write(policy.join("data.json"), r#"{"label": "d1"}"#).unwrap();
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', watch: true}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n",
        policy.display()
    ));
    let origin = PyOrigin::start(None);
    let reason = || {
        let r = python_agent(&AgentRequest::get(origin.url("/echo")).proxy(tg.proxy_url()));
        let id = r.header("x-tollgate-decision-id").unwrap().to_string();
        tg.wait_decision(|d| d["decision_id"] == id, WAIT)["decision"]["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(reason(), "d1");
    let reloaded = |count: usize| {
        let deadline = std::time::Instant::now() + WAIT;
        while tg
            .logs()
            .iter()
            .filter(|l| l["message"] == "reloaded: policy revision in force")
            .count()
            < count
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no reload #{count}:\n{}",
                tg.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A data-only change.
    std::fs::write(policy.join("data.json"), r#"{"label": "d2"}"#).unwrap();
    reloaded(1);
    assert_eq!(reason(), "d2");
    // A broken policy keeps the running revision.
    std::fs::write(policy.join("p.rego"), "package tollgate\ndecision := {\n").unwrap();
    tg.wait_log(
        |l| l["message"] == "reload failed; the running configuration and policy stay in force",
        WAIT,
    );
    assert_eq!(reason(), "d2");
    // Fixed again.
    std::fs::write(
        policy.join("p.rego"),
        "package tollgate\ndecision := {\"allow\": true, \"reason\": \"fixed\"}\n",
    )
    .unwrap();
    reloaded(2);
    assert_eq!(reason(), "fixed");
}

/// The threads of the process, by name, sorted.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect();
    names.sort();
    names
}

/// Every reload runs on the one `rebuild` thread: overlapping `POST /v1/reload`s and SIGHUPs,
/// with the polling loop running meanwhile, start no thread. (On tokio's blocking pool, each
/// overlapping reload started a thread, and the pool kept them: the 30-minute soak's step in
/// resident memory, docs/TESTING.md.)
#[test]
fn reloads_run_on_the_one_rebuild_thread_and_start_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let tg = tollgate(dir.path());
    // A new thread takes its name when it first runs; until then it shows its parent's.
    let deadline = std::time::Instant::now() + WAIT;
    let mut before = thread_names(tg.pid());
    while !before.iter().any(|n| n == "rebuild") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        before = thread_names(tg.pid());
    }
    assert_eq!(
        before.iter().filter(|n| *n == "rebuild").count(),
        1,
        "{before:?}"
    );
    std::thread::scope(|s| {
        let reloads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| tg.admin("POST", "/v1/reload", None).0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for _ in 0..3 {
            tg.signal("HUP");
        }
        for reload in reloads {
            assert_eq!(reload.join().unwrap(), [200, 200, 200]);
        }
    });
    // Signals sent close together may arrive as one: count the reloads they started.
    let hups = || {
        tg.logs()
            .iter()
            .filter(|l| l["message"] == "SIGHUP: reloading")
            .count()
    };
    let reloads = || {
        let metrics = curl(&["-s", &tg.admin_url("/metrics")]).stdout;
        String::from_utf8_lossy(&metrics)
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_policy_reloads_total{result=\"success\"} "))
            .and_then(|n| n.parse::<usize>().ok())
    };
    let deadline = std::time::Instant::now() + WAIT;
    while reloads() != Some(12 + hups()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(hups() >= 1);
    assert_eq!(reloads(), Some(12 + hups()), "every reload counted");
    assert_eq!(thread_names(tg.pid()), before);
}
