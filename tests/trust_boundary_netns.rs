//! The sidecar's trust boundary (issue 17), in real network namespaces (root; CI runs as root).
//!
//! The pod as the injector builds it: the redirect installed by `tollgate redirect install`
//! (NET_ADMIN only), tollgate as [`PROXY_UID`] with no capability, two transparent listeners,
//! its admin API on a Unix socket and `/metrics`, `/healthz`, `/readyz` alone on
//! `admin.metrics_address` (0.0.0.0:15020). The interception CA's key and a credential file
//! belong to the proxy UID (0600 in a 0700 folder): on one host, file permissions stand in for
//! Kubernetes mounting them into the tollgate container alone. The agent is [`AGENT_UID`],
//! switched to with `setpriv` and holding no capability. Shown:
//! - every admin route, on every address tollgate listens on, is refused to the agent: the
//!   socket (permission denied; with the mode loosened, 403 by its peer UID, counted), the
//!   metrics address (404 but for the three read-only routes, which stay scrapeable from the
//!   pod and from outside it), the transparent listeners (the loop guard), the old TCP port
//!   (nothing listens); a kill engaged by the proxy UID is still in force afterwards;
//! - the agent cannot read the CA key or the credential (permission denied) but can read the
//!   CA certificate;
//! - the agent cannot reach an origin directly: its connections land on tollgate and are
//!   decided; it cannot take the proxy's UID (`setpriv` refuses), while a process that does
//!   run as the proxy UID goes straight out — the hole the injector closes by refusing agent
//!   containers with that UID.
//!
//! These tests fail, never skip, when they cannot create namespaces.

#[path = "support/netns.rs"]
mod netns;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netns::*;
use support::*;

const PROXY_PORT: u16 = 15001;
const METRICS_PORT: u16 = 15020;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POD_ID: &str = "spiffe://cluster.test/ns/agents/sa/triage";

/// What Prometheus and the kubelet need.
const SCRAPE: &[&str] = &["/metrics", "/healthz", "/readyz"];

/// Denies everything: whatever the agent reaches, it is tollgate that answers.
const POLICY: &str = r#"package tollgate

import rego.v1

default decision := {"allow": false, "reason": "destination_not_allowed"}
"#;

fn tollgate() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
}

/// A file or folder owned by the proxy UID with `mode`.
fn own_by_proxy(path: &Path, mode: u32) {
    std::os::unix::fs::chown(path, Some(PROXY_UID), Some(PROXY_UID)).expect("chown");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// One curl's outcome: exit code, HTTP status (0: none), body, stderr.
#[derive(Debug)]
struct Answer {
    exit: Option<i32>,
    status: u16,
    body: String,
    stderr: String,
}

fn curl_as(
    mut cmd: Command,
    socket: Option<&Path>,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Answer {
    cmd.args(admin_curl_args(socket, method, url, body));
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
    let (body, status) = split_status(&out.stdout);
    Answer {
        exit: out.status.code(),
        status,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Scene {
    tollgate: NetnsProcess,
    _origin: NetnsProcess,
    net: PodNetwork,
    staged: tempfile::TempDir,
    /// The proxy UID's own files (0700): CA key, credential, and the run folder.
    private: tempfile::TempDir,
    socket: PathBuf,
    _pki: Pki,
}

impl Scene {
    fn new() -> Scene {
        let net = PodNetwork::new();
        let pki = Pki::with_ca_name("trust boundary interception CA");
        let (staged, _) = stage_for_all_uids(&[
            &tollgate(),
            &repo_root().join("tests/k8s/transparent_origin.py"),
        ]);
        let origin_leaf = pki.issue_leaf("origin", &["IP:192.0.2.2"]);
        let dir = staged.path();
        for (from, to) in [
            (origin_leaf.cert.clone(), "origin.pem"),
            (origin_leaf.key.clone(), "origin-key.pem"),
            (pki.ca_cert(), "intercept-ca.pem"),
        ] {
            std::fs::copy(&from, dir.join(to)).expect("stage a PKI file");
            std::fs::set_permissions(dir.join(to), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::write(dir.join("policy.rego"), POLICY).unwrap();
        std::fs::write(dir.join("data.json"), "{}").unwrap();

        // The proxy UID's private folder: the CA key and a credential, 0600 in 0700.
        let private = tempfile::Builder::new()
            .prefix("tollgate-private-")
            .tempdir()
            .unwrap();
        let key = private.path().join("intercept-ca-key.pem");
        std::fs::copy(pki.ca_key(), &key).unwrap();
        own_by_proxy(&key, 0o600);
        let token = private.path().join("github-token");
        std::fs::write(&token, "ghp_trustboundarytesttoken\n").unwrap();
        own_by_proxy(&token, 0o600);
        own_by_proxy(private.path(), 0o700);
        // The admin socket's folder: the agent may look (0755) but the socket is 0600.
        let run = staged.path().join("run");
        std::fs::create_dir(&run).unwrap();
        own_by_proxy(&run, 0o755);
        let socket = run.join("admin.sock");

        std::fs::write(
            dir.join("config.yaml"),
            format!(
                "listeners:\n\
                 \x20 - {{name: pod, address: '127.0.0.1:{PROXY_PORT}', mode: transparent, sniff_timeout: 200ms}}\n\
                 \x20 - {{name: pod-v6, address: '[::1]:{PROXY_PORT}', mode: transparent, sniff_timeout: 200ms}}\n\
                 admin: {{address: 'unix://{}', metrics_address: '0.0.0.0:{METRICS_PORT}'}}\n\
                 identity: {{workload_spiffe_id: '{POD_ID}'}}\n\
                 intercept_ca: {{cert: intercept-ca.pem, key: '{}'}}\n\
                 credentials: {{github: {{kind: static, source: {{file: '{}'}}}}}}\n\
                 policy: {{path: policy.rego, data: data.json, watch: false}}\n\
                 upstream: {{allow_private: [192.0.2.0/24, '2001:db8::/32'], connect_timeout: 5s}}\n\
                 telemetry: {{decision_log: stdout}}\n",
                socket.display(),
                key.display(),
                token.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            dir.join("config.yaml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let origin = start_transparent_origin(&net.origin, dir, READY_TIMEOUT);
        install_redirect(&net.pod, &tollgate(), PROXY_PORT, COMMAND_TIMEOUT);
        let tollgate = start_sidecar(
            &net.pod,
            &dir.join("tollgate"),
            &dir.join("config.yaml"),
            READY_TIMEOUT,
        );
        Scene {
            tollgate,
            _origin: origin,
            net,
            staged,
            private,
            socket,
            _pki: pki,
        }
    }

    fn as_agent(&self, program: impl AsRef<Path>) -> Command {
        self.net.pod.user(AGENT_UID, program)
    }

    fn agent_curl(
        &self,
        socket: Option<&Path>,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> Answer {
        curl_as(
            self.as_agent(require_tool("curl")),
            socket,
            method,
            url,
            body,
        )
    }

    /// The operator: `kubectl exec` into the tollgate container runs as the proxy UID.
    fn operator_curl(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        curl_as(
            self.net.pod.user(PROXY_UID, require_tool("curl")),
            Some(&self.socket),
            method,
            &format!("http://admin{path}"),
            body,
        )
    }

    /// `tollgate_admin_refusals_total{reason="peer_uid"}`, scraped from the metrics address.
    fn peer_uid_refusals(&self) -> u64 {
        let answer = self.agent_curl(
            None,
            "GET",
            &format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
            None,
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        answer
            .body
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_admin_refusals_total{reason=\"peer_uid\"} "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no refusal series:\n{}", answer.body))
    }
}

#[test]
fn the_agent_cannot_steer_tollgate_read_its_secrets_or_leave_the_pod_past_it() {
    require_netns_support();
    let scene = Scene::new();
    let socket = scene.socket.clone();
    let metadata = std::fs::symlink_metadata(&socket).expect("the admin socket exists");
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(metadata.file_type().is_socket());
        assert_eq!(metadata.mode() & 0o777, 0o600);
        assert_eq!(metadata.uid(), PROXY_UID, "owned by tollgate's UID");
    }

    // The operator (the proxy UID, the default admin.allowed_uids) engages a kill.
    let engaged = scene.operator_curl(
        "POST",
        "/v1/kill",
        Some(r#"{"all": true, "reason": "drill"}"#),
    );
    assert_eq!(engaged.status, 201, "{engaged:?}");

    // 1. The socket: the agent cannot even connect (mode 0600, another owner).
    let every: Vec<(&str, &str, Option<&str>)> = ADMIN_STEERING
        .iter()
        .copied()
        .chain(SCRAPE.iter().map(|p| ("GET", *p, None)))
        .collect();
    for (method, path, body) in every {
        let answer = scene.agent_curl(Some(&socket), method, &format!("http://admin{path}"), body);
        assert_eq!(
            (answer.exit, answer.status),
            (Some(7), 0),
            "{method} {path}: {answer:?}"
        );
    }
    let connect = run_with_timeout(
        scene
            .as_agent(system_python())
            .args([
                "-I",
                "-c",
                "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             try:\n    s.connect(sys.argv[1]); print('connected')\n\
             except OSError as e:\n    print(type(e).__name__)\n",
            ])
            .arg(&socket),
        COMMAND_TIMEOUT,
    );
    assert_eq!(
        String::from_utf8_lossy(&connect.stdout).trim(),
        "PermissionError"
    );

    // With the socket's mode loosened (a mistake, or root in the pod), the peer UID check
    // still refuses the agent — and root, which is not in admin.allowed_uids either.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let before = scene.peer_uid_refusals();
    for (i, (method, path, body)) in ADMIN_STEERING.iter().enumerate() {
        let answer = scene.agent_curl(Some(&socket), method, &format!("http://admin{path}"), *body);
        assert_eq!(answer.status, 403, "{method} {path}: {answer:?}");
        assert!(
            answer.body.contains(&format!(
                "peer UID {AGENT_UID} is not in admin.allowed_uids"
            )),
            "{answer:?}"
        );
        assert_eq!(scene.peer_uid_refusals(), before + i as u64 + 1, "counted");
    }
    let root = curl_as(
        scene.net.pod.root(require_tool("curl")),
        Some(&socket),
        "DELETE",
        "http://admin/v1/kill/all",
        None,
    );
    assert_eq!(root.status, 403, "{root:?}");
    assert!(
        root.body
            .contains("peer UID 0 is not in admin.allowed_uids"),
        "{root:?}"
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    // 2. The metrics address, on loopback and on the pod's address: read-only routes only.
    for host in ["127.0.0.1", "192.0.2.1"] {
        for (method, path, body) in ADMIN_STEERING {
            let answer = scene.agent_curl(
                None,
                method,
                &format!("http://{host}:{METRICS_PORT}{path}"),
                *body,
            );
            assert_eq!(answer.status, 404, "{host} {method} {path}: {answer:?}");
        }
        for path in SCRAPE {
            let answer = scene.agent_curl(
                None,
                "GET",
                &format!("http://{host}:{METRICS_PORT}{path}"),
                None,
            );
            assert_eq!(answer.status, 200, "{host} {path}: {answer:?}");
        }
    }
    // Prometheus and the kubelet, from outside the pod, still scrape and probe.
    for path in SCRAPE {
        let answer = curl_as(
            scene.net.origin.root(require_tool("curl")),
            None,
            "GET",
            &format!("http://192.0.2.1:{METRICS_PORT}{path}"),
            None,
        );
        assert_eq!(answer.status, 200, "from outside {path}: {answer:?}");
    }
    let outside = curl_as(
        scene.net.origin.root(require_tool("curl")),
        None,
        "DELETE",
        &format!("http://192.0.2.1:{METRICS_PORT}/v1/kill/all"),
        None,
    );
    assert_eq!(outside.status, 404, "{outside:?}");

    // 3. The transparent listeners: an admin request sent to them is a connection to
    //    tollgate's own port, which it closes (the loop guard).
    for host in ["127.0.0.1", "[::1]"] {
        for (method, path, body) in ADMIN_STEERING {
            let answer = scene.agent_curl(
                None,
                method,
                &format!("http://{host}:{PROXY_PORT}{path}"),
                *body,
            );
            // The loop guard closes the connection without an HTTP answer.
            assert!(
                answer.status == 0 && matches!(answer.exit, Some(52 | 56)),
                "{host} {method} {path}: {answer:?}"
            );
        }
    }
    // 4. The SPEC's default admin port: nothing listens.
    let old = scene.agent_curl(None, "DELETE", "http://127.0.0.1:15000/v1/kill/all", None);
    assert_eq!((old.exit, old.status), (Some(7), 0), "{old:?}");
    assert!(old.stderr.contains("curl: (7)"), "{old:?}");

    // Nothing the agent tried lifted the kill.
    let listed = scene.operator_curl("GET", "/v1/kill", None);
    assert_eq!(listed.status, 200, "{listed:?}");
    assert!(listed.body.contains("drill"), "{listed:?}");

    // 5. The secrets: permission denied; the CA certificate is readable.
    for file in ["intercept-ca-key.pem", "github-token"] {
        let out = run_with_timeout(
            scene
                .as_agent("/bin/cat")
                .arg(scene.private.path().join(file)),
            COMMAND_TIMEOUT,
        );
        assert!(!out.status.success(), "{file} was readable");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Permission denied"), "{file}: {stderr}");
    }
    let cert = run_with_timeout(
        scene
            .as_agent("/bin/cat")
            .arg(scene.staged.path().join("intercept-ca.pem")),
        COMMAND_TIMEOUT,
    );
    assert!(String::from_utf8_lossy(&cert.stdout).contains("BEGIN CERTIFICATE"));
}

#[test]
fn the_agent_cannot_reach_an_origin_directly_nor_take_the_proxy_uid_that_could() {
    require_netns_support();
    let scene = Scene::new();
    let direct = scene.agent_curl(None, "GET", "http://192.0.2.2/direct", None);
    assert_eq!(direct.status, 403, "{direct:?}");
    assert!(
        !direct.body.contains("\"via\""),
        "the origin answered the agent: {direct:?}"
    );
    let (_, line) = scene
        .tollgate
        .stdout
        .wait_for(
            0,
            |l| l.contains("/direct") && l.contains("destination_not_allowed"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| {
            panic!(
                "no decision for the agent's request:\n{}",
                scene.tollgate.stdout.text()
            )
        });
    assert!(line.contains(POD_ID), "{line}");
    // A raw TCP connection to a server-speaks-first port: the origin's banner never arrives.
    let banner = run_with_timeout(
        scene.as_agent(system_python()).args([
            "-I",
            "-c",
            "import socket\n\
             try:\n    s = socket.create_connection(('192.0.2.2', 2222), timeout=5)\n    \
             print(s.recv(100).decode() or 'EOF')\n\
             except OSError as e:\n    print('ERR', type(e).__name__)\n",
        ]),
        COMMAND_TIMEOUT,
    );
    let banner = String::from_utf8_lossy(&banner.stdout);
    assert!(!banner.contains("BANNER"), "{banner}");

    // The agent cannot become the proxy UID: setpriv as the agent is refused.
    let switch = run_with_timeout(
        scene.as_agent(require_tool("setpriv")).args([
            &format!("--reuid={PROXY_UID}"),
            "--",
            "/bin/true",
        ]),
        COMMAND_TIMEOUT,
    );
    assert!(!switch.status.success(), "the agent took the proxy UID");
    assert!(
        String::from_utf8_lossy(&switch.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&switch.stderr)
    );
    // The hole, shown: any process with the proxy UID is exempt from the redirect and reaches
    // the origin unseen. That is why the injector refuses agent containers with that UID.
    let exempt = curl_as(
        scene.net.pod.user(PROXY_UID, require_tool("curl")),
        None,
        "GET",
        "http://192.0.2.2/exempt",
        None,
    );
    assert_eq!(exempt.status, 200, "{exempt:?}");
    assert!(exempt.body.contains("\"via\": \"origin\""), "{exempt:?}");
}
