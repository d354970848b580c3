//! The admin API's transports (issue 17): `admin.address: unix:///…` (mode 0600, owned by
//! tollgate's UID, a stale socket replaced, a live one never, each peer's UID checked against
//! `admin.allowed_uids`), `admin.metrics_address` (only `/metrics`, `/healthz`, `/readyz`),
//! and the refusal, at `check` and at start-up, of a transparent listener next to a plain TCP
//! admin API. The real binary, driven with curl; the namespace test with other UIDs is
//! `tests/trust_boundary_netns.rs`.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use support::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `curl` to `url`, through the Unix socket when given: (status, body).
fn call(socket: Option<&Path>, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let out = curl(&admin_curl_args(socket, method, url, body));
    let (body, status) = split_status(&out.stdout);
    assert_ne!(status, 0, "{url}: {}", text(&out.stderr));
    (status, body)
}

fn sidecar_config(admin: &str) -> String {
    format!(
        "listeners: [{{name: pod, address: '127.0.0.1:0', mode: transparent}}]\n\
         admin: {admin}\n\
         identity: {{workload_spiffe_id: 'spiffe://cluster.test/ns/agents/sa/triage'}}\n"
    )
}

#[test]
fn a_transparent_listener_next_to_a_plain_tcp_admin_api_is_refused_by_check_and_run_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.yaml");
    std::fs::write(&file, sidecar_config("{address: '127.0.0.1:0'}")).unwrap();
    let file = file.to_str().unwrap();
    for command in ["check", "run"] {
        let out = Tollgate::run_cli(&[command, "-c", file]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{command}: {stderr}");
        assert!(
            lines[0].starts_with(&format!(
                "{file}: admin.address: a transparent listener exists"
            )),
            "{command}: {stderr}"
        );
        assert!(
            lines[0].contains("use a unix:// admin.address")
                && lines[0].contains("(missing: admin.tls, admin.allowed_spiffe_ids)"),
            "{command}: {stderr}"
        );
    }
    // The same sidecar with a Unix admin socket and a metrics address passes.
    let ok = dir.path().join("ok.yaml");
    std::fs::write(
        &ok,
        sidecar_config(
            "{address: 'unix:///run/tollgate/admin.sock', metrics_address: '0.0.0.0:15020'}",
        ),
    )
    .unwrap();
    let out = Tollgate::run_cli(&["check", "-c", ok.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_unix_admin_socket_is_0600_owned_by_tollgate_replaces_a_stale_socket_and_serves_its_uid() {
    let run = tempfile::tempdir().unwrap();
    let socket = run.path().join("admin.sock");
    // A stale socket, as a crashed tollgate leaves it: bound, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let tg = Tollgate::builder()
        .config(sidecar_config(&format!(
            "{{address: 'unix://{}', metrics_address: '127.0.0.1:0'}}",
            socket.display()
        )))
        .start();
    assert_eq!(tg.admin_socket(), Some(socket.as_path()));
    let metadata = std::fs::symlink_metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.mode() & 0o777, 0o600);
    let own_uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(metadata.uid(), own_uid, "owned by tollgate's UID");

    // tollgate's own UID (the default admin.allowed_uids) steers it through the socket.
    let (status, body) = call(
        Some(&socket),
        "POST",
        "http://admin/v1/kill",
        Some(r#"{"all": true}"#),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(Some(&socket), "GET", "http://admin/v1/kill", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"all\""), "{body}");
    let (status, _) = call(Some(&socket), "GET", "http://admin/metrics", None);
    assert_eq!(status, 200);

    // A second tollgate on the same path finds a live socket: exit 1, the first one untouched.
    let second = Tollgate::builder()
        .config(sidecar_config(&format!(
            "{{address: 'unix://{}'}}",
            socket.display()
        )))
        .try_start()
        .err()
        .expect("a second tollgate on a live socket must not start");
    assert!(
        second.contains("a live socket is already there"),
        "{second}"
    );
    let (status, _) = call(Some(&socket), "GET", "http://admin/v1/kill", None);
    assert_eq!(status, 200);

    // Something that is not a socket at the path is never replaced.
    let file = run.path().join("not-a-socket");
    std::fs::write(&file, "keep").unwrap();
    let refused = Tollgate::builder()
        .config(sidecar_config(&format!(
            "{{address: 'unix://{}'}}",
            file.display()
        )))
        .try_start()
        .err()
        .expect("tollgate must not replace a regular file");
    assert!(
        refused.contains("is not a socket; refusing to replace it"),
        "{refused}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[test]
fn a_peer_uid_outside_admin_allowed_uids_gets_403_on_every_route_and_is_counted() {
    let run = tempfile::tempdir().unwrap();
    let socket = run.path().join("admin.sock");
    // Only UID 4242 may steer: this test's own UID is refused.
    let tg = Tollgate::builder()
        .config(sidecar_config(&format!(
            "{{address: 'unix://{}', allowed_uids: [4242], metrics_address: '127.0.0.1:0'}}",
            socket.display()
        )))
        .start();
    let own_uid = std::fs::metadata("/proc/self").unwrap().uid();
    let metrics = format!(
        "http://{}/metrics",
        tg.metrics_addr().expect("metrics ready")
    );
    let refusals = || {
        let (status, body) = call(None, "GET", &metrics, None);
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix("tollgate_admin_refusals_total{reason=\"peer_uid\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no peer_uid refusal series in:\n{body}"))
    };
    assert_eq!(refusals(), 0);
    for (i, (method, path, body)) in ADMIN_STEERING.iter().enumerate() {
        let (status, answer) = call(Some(&socket), method, &format!("http://admin{path}"), *body);
        assert_eq!(status, 403, "{method} {path}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"], "forbidden");
        assert_eq!(
            answer["message"],
            format!("peer UID {own_uid} is not in admin.allowed_uids")
        );
        assert_eq!(refusals(), i as u64 + 1, "one per refused connection");
    }
    // Health and metrics are refused on the socket too: the caller is not allowed at all.
    let (status, _) = call(Some(&socket), "GET", "http://admin/healthz", None);
    assert_eq!(status, 403);
    let log = tg.wait_log(
        |v| v["message"] == "admin caller refused: peer UID not in admin.allowed_uids",
        Duration::from_secs(10),
    );
    assert_eq!(log["peer_uid"], own_uid, "{log}");
}

#[test]
fn the_metrics_address_serves_only_metrics_and_health() {
    let run = tempfile::tempdir().unwrap();
    let socket = run.path().join("admin.sock");
    let tg = Tollgate::builder()
        .config(sidecar_config(&format!(
            "{{address: 'unix://{}', metrics_address: '127.0.0.1:0'}}",
            socket.display()
        )))
        .start();
    let base = format!("http://{}", tg.metrics_addr().expect("metrics ready"));
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, body) = call(None, "GET", &format!("{base}{path}"), None);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, metrics) = call(None, "GET", &format!("{base}/metrics"), None);
    assert!(metrics.contains("tollgate_kills_active 0"), "{metrics}");
    for (method, path, body) in ADMIN_STEERING {
        let (status, answer) = call(None, method, &format!("{base}{path}"), *body);
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert!(
            answer.contains("serves only /metrics, /healthz and /readyz"),
            "{answer}"
        );
    }
    let (status, _) = call(None, "POST", &format!("{base}/metrics"), None);
    assert_eq!(status, 405);
    // Nothing above changed anything: no kill was engaged through the metrics address.
    let (status, body) = call(Some(&socket), "GET", "http://admin/v1/kill", None);
    assert_eq!(status, 200);
    assert!(!body.contains("\"all\""), "{body}");
}
