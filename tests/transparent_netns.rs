//! The transparent listener end to end, in real network namespaces (root; CI runs as root).
//!
//! As in a pod: the redirect rules are installed by `tollgate redirect install` running with
//! NET_ADMIN as its only capability; tollgate runs as [`PROXY_UID`] with no capability at all,
//! with two `mode: transparent` listeners (127.0.0.1 and [::1]) and the pod's SPIFFE ID as
//! `identity.workload_spiffe_id` (or, in one test, from the SVID that `identity.workload_api`
//! gives tollgate: the Workload API server in `tests/support`, the stand-in for SPIRE); the agent (curl, Python) runs as [`AGENT_UID`] and knows
//! nothing of a proxy. The origins (`tests/k8s/transparent_origin.py`: HTTP on 80, HTTPS on 443,
//! a server-speaks-first banner service on 2222) run in the origin namespace, IPv4 and IPv6.
//! The pod's names come from `/etc/netns/<pod>/hosts`, which `ip netns exec` mounts over
//! `/etc/hosts` for every process in the pod (tollgate and the agent see the same names).
//!
//! These tests fail, never skip, when they cannot create namespaces.

#[path = "support/netns.rs"]
mod netns;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use netns::*;
use serde_json::Value;
use support::*;

/// The transparent listeners' port (what `redirect install --proxy-port` sends traffic to).
const PROXY_PORT: u16 = 15001;
/// The pod's identity, as the sidecar is configured with it.
const POD_ID: &str = "spiffe://cluster.test/ns/agents/sa/triage";
/// The operator's identity: the only caller the admin API serves.
const OPS_ID: &str = "spiffe://cluster.test/ops";
/// tollgate's admin API in the pod (mTLS, [`OPS_ID`] only).
const ADMIN_URL: &str = "https://127.0.0.1:15000";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a decision-log line may take to appear.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// What the pod resolves: `api.test` and `tunnel.test` are the origin's first addresses;
/// `192.0.2.3` (the origin's second address) has no name.
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n\
                     192.0.2.2 api.test tunnel.test\n2001:db8::2 api.test tunnel.test\n";

/// The policy: TLS to `api.test` intercepted and each request decided (GET under `/public/`
/// only, for the pod's identity), TLS to `tunnel.test` tunnelled unread, the banner service
/// on the origin's first addresses tunnelled, everything else denied.
const POLICY: &str = r#"package tollgate

import rego.v1

pod := "spiffe://cluster.test/ns/agents/sa/triage"

default decision := {"allow": false, "reason": "destination_not_allowed"}

decision := {"allow": true, "mode": "intercept", "reason": "api.test intercepted"} if {
	input.request == null
	input.source.spiffe_id == pod
	input.connection.mode == "transparent"
	input.connection.tls_sni == "api.test"
	input.destination.host == "api.test"
}

decision := {"allow": true, "mode": "tunnel", "reason": "tunnel.test passed through"} if {
	input.request == null
	input.destination.host == "tunnel.test"
}

decision := {"allow": true, "mode": "tunnel", "reason": "banner service"} if {
	input.request == null
	input.connection.intercepted == false
	input.destination.port == 2222
	input.destination.ip in {"192.0.2.2", "2001:db8::2"}
}

decision := {"allow": true, "reason": "public read"} if {
	input.request.host == "api.test"
	input.source.spiffe_id == pod
	input.connection.mode == "transparent"
	input.request.method == "GET"
	startswith(input.request.path, "/public/")
}

decision := {"allow": false, "reason": "method_not_allowed"} if {
	input.request.host == "api.test"
	input.request.method != "GET"
}

decision := {"allow": false, "reason": "path_not_allowed"} if {
	input.request.host == "api.test"
	input.request.method == "GET"
	not startswith(input.request.path, "/public/")
}
"#;

fn tollgate() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
}

/// `/etc/netns/<pod>/hosts`, removed (with its folder) on drop.
struct PodHosts(PathBuf);

impl PodHosts {
    fn write(net: &PodNetwork) -> PodHosts {
        let dir = PathBuf::from("/etc/netns").join(net.pod.name());
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<pod>");
        std::fs::write(dir.join("hosts"), HOSTS).expect("write the pod's hosts file");
        PodHosts(dir)
    }
}

impl Drop for PodHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pod and the origin, with tollgate running and the redirect installed. Fields drop in
/// order: processes first, then the namespaces, then the files.
struct Scene {
    tollgate: Option<NetnsProcess>,
    _origin: NetnsProcess,
    net: PodNetwork,
    _hosts: PodHosts,
    /// Files every UID can read: tollgate, its configuration, the CAs, the origin script.
    staged: tempfile::TempDir,
    _origin_pki: Pki,
    _intercept_pki: Pki,
}

/// Where the sidecar learns the pod's identity.
enum PodIdentity<'a> {
    /// `identity.workload_spiffe_id: POD_ID`.
    Configured,
    /// `identity.workload_api` at this socket: the SPIFFE ID of the SVID the Workload API
    /// gives tollgate (no `workload_spiffe_id`).
    WorkloadApi(&'a std::path::Path),
}

impl Scene {
    fn new() -> Scene {
        Scene::with_identity(PodIdentity::Configured)
    }

    fn with_identity(identity: PodIdentity) -> Scene {
        let net = PodNetwork::new();
        let hosts = PodHosts::write(&net);
        let origin_pki = Pki::with_ca_name("transparent test origin CA");
        let origin_leaf = origin_pki.issue_leaf(
            "origin",
            &[
                "DNS:api.test",
                "DNS:tunnel.test",
                "IP:192.0.2.2",
                "IP:2001:db8::2",
            ],
        );
        let intercept_pki = Pki::with_ca_name("transparent test interception CA");
        // The operator's SVID: the one ID `admin.allowed_spiffe_ids` lets steer tollgate.
        let ops = origin_pki.issue_leaf("ops", &[&format!("URI:{OPS_ID}")]);
        let (staged, _) = stage_for_all_uids(&[
            &tollgate(),
            &repo_root().join("tests/k8s/transparent_origin.py"),
            &repo_root().join("tests/agents/kill_flows.py"),
            &repo_root().join("tests/agents/h2_attack.py"),
        ]);
        let dir = staged.path();
        for (from, to) in [
            (origin_pki.ca_cert(), "origin-ca.pem"),
            (origin_leaf.cert.clone(), "origin.pem"),
            (origin_leaf.key.clone(), "origin-key.pem"),
            (intercept_pki.ca_cert(), "intercept-ca.pem"),
            (intercept_pki.ca_key(), "intercept-ca-key.pem"),
            (origin_pki.server_cert(), "admin.pem"),
            (origin_pki.server_key(), "admin-key.pem"),
            (ops.cert.clone(), "ops.pem"),
            (ops.key.clone(), "ops-key.pem"),
        ] {
            std::fs::copy(&from, dir.join(to)).expect("stage a PKI file");
        }
        let identity = match identity {
            PodIdentity::Configured => format!("workload_spiffe_id: '{POD_ID}'"),
            PodIdentity::WorkloadApi(socket) => {
                format!("workload_api: 'unix://{}'", socket.display())
            }
        };
        std::fs::write(dir.join("policy.rego"), POLICY).unwrap();
        std::fs::write(dir.join("data.json"), "{}").unwrap();
        std::fs::write(
            dir.join("config.yaml"),
            format!(
                "listeners:\n\
                 \x20 - {{name: pod, address: '127.0.0.1:{PROXY_PORT}', mode: transparent, sniff_timeout: 200ms}}\n\
                 \x20 - {{name: pod-v6, address: '[::1]:{PROXY_PORT}', mode: transparent, sniff_timeout: 200ms}}\n\
                 admin: {{address: '127.0.0.1:15000', tls: {{cert: admin.pem, key: admin-key.pem}}, allowed_spiffe_ids: ['{OPS_ID}']}}\n\
                 identity: {{{identity}, trust_domains: {{cluster.test: {{bundle: origin-ca.pem}}}}}}\n\
                 intercept_ca: {{cert: intercept-ca.pem, key: intercept-ca-key.pem}}\n\
                 policy: {{path: policy.rego, data: data.json, watch: false}}\n\
                 upstream: {{allow_private: [192.0.2.0/24, '2001:db8::/32'], ca: origin-ca.pem, connect_timeout: 5s}}\n\
                 telemetry: {{decision_log: stdout}}\n"
            ),
        )
        .unwrap();
        for file in std::fs::read_dir(dir).unwrap() {
            use std::os::unix::fs::PermissionsExt;
            let path = file.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        let origin = start_transparent_origin(&net.origin, dir, READY_TIMEOUT);

        let installed = install_redirect(&net.pod, &tollgate(), PROXY_PORT, COMMAND_TIMEOUT);
        assert!(
            installed.contains("ipv4: installed") && installed.contains("ipv6: installed"),
            "{installed}"
        );

        let mut scene = Scene {
            tollgate: None,
            _origin: origin,
            net,
            _hosts: hosts,
            staged,
            _origin_pki: origin_pki,
            _intercept_pki: intercept_pki,
        };
        scene.start_tollgate();
        scene
    }

    /// Starts tollgate as the proxy's UID, with no capability, and waits for its two listeners
    /// and the admin API.
    fn start_tollgate(&mut self) {
        let dir = self.staged.path();
        let process = start_sidecar(
            &self.net.pod,
            &dir.join("tollgate"),
            &dir.join("config.yaml"),
            READY_TIMEOUT,
        );
        // Both listeners were ready before the admin API.
        let listeners = process
            .stderr
            .snapshot()
            .iter()
            .filter(|l| l.contains("listener ready"))
            .count();
        assert_eq!(listeners, 2, "stderr:\n{}", process.stderr.text());
        self.tollgate = Some(process);
    }

    fn stop_tollgate(&mut self) {
        if let Some(mut process) = self.tollgate.take() {
            process.child.kill();
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.staged.path().join(name)
    }

    /// `curl ARGS` in the pod as the agent.
    fn curl(&self, args: &[&str]) -> Curl {
        let mut cmd = self.net.pod.user(AGENT_UID, require_tool("curl"));
        cmd.args([
            "-sS",
            "-g",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args);
        Curl::run(&mut cmd)
    }

    /// The decision-log line (tollgate's stdout) for which `pred` holds, waiting for it.
    fn decision(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let process = self.tollgate.as_ref().expect("tollgate is running");
        let found = process.stdout.wait_for(
            0,
            |line| serde_json::from_str::<Value>(line).is_ok_and(|v| pred(&v)),
            LOG_TIMEOUT,
        );
        let Some((_, line)) = found else {
            panic!(
                "no decision-log line for {what} within {LOG_TIMEOUT:?}:\n{}\nstderr:\n{}",
                process.stdout.text(),
                process.stderr.text()
            );
        };
        serde_json::from_str(&line).expect("json")
    }

    /// Connects to `host` port 2222 as the agent with Python's socket module and reports what
    /// the banner service did: its banner and the echo of `ping`, or how the connection ended.
    fn banner(&self, host: &str) -> String {
        let script = "import socket, sys\n\
                      try:\n\
                      \x20   s = socket.create_connection((sys.argv[1], 2222), timeout=5)\n\
                      \x20   f = s.makefile('rwb')\n\
                      \x20   first = f.readline().decode().strip() or 'EOF'\n\
                      \x20   if first != 'EOF':\n\
                      \x20       f.write(b'ping\\n'); f.flush()\n\
                      \x20       first += ' / ' + (f.readline().decode().strip() or 'EOF')\n\
                      \x20   print(first)\n\
                      except OSError as e:\n\
                      \x20   print('ERR ' + type(e).__name__)\n";
        let out = run_with_timeout(
            self.net
                .pod
                .user(AGENT_UID, system_python())
                .args(["-I", "-c", script, host]),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `METHOD PATH` on the admin API as the operator (root in the pod, with the [`OPS_ID`]
    /// SVID): the status and the body.
    fn admin(&self, method: &str, path: &str) -> (u16, String) {
        let (ca, cert, key) = (
            self.file("origin-ca.pem"),
            self.file("ops.pem"),
            self.file("ops-key.pem"),
        );
        let out = run_with_timeout(
            self.net.pod.root(require_tool("curl")).args([
                "-sS",
                "--max-time",
                "10",
                "-X",
                method,
                "--cacert",
                ca.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "-w",
                "\n%{http_code}",
                &format!("{ADMIN_URL}{path}"),
            ]),
            COMMAND_TIMEOUT,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `tollgate_flows_killed_total{kind="…"}` from the admin API's `/metrics`.
    fn flows_killed(&self, kind: &str) -> u64 {
        let (status, text) = self.admin("GET", "/metrics");
        assert_eq!(status, 200, "{text}");
        let series = format!("tollgate_flows_killed_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    fn redirect(&self, args: &[&str]) -> String {
        let out = run_checked(
            self.net
                .pod
                .net_admin(tollgate())
                .arg("redirect")
                .args(args),
            COMMAND_TIMEOUT,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// One curl run: its exit code, the status and HTTP version it saw, the body.
#[derive(Debug)]
struct Curl {
    exit: Option<i32>,
    status: u16,
    version: String,
    body: String,
    stderr: String,
}

impl Curl {
    fn run(cmd: &mut Command) -> Curl {
        let out = run_with_timeout(cmd, COMMAND_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let mut tail = tail.split_whitespace();
        Curl {
            exit: out.status.code(),
            status: tail.next().and_then(|s| s.parse().ok()).unwrap_or(0),
            version: tail.next().unwrap_or_default().to_string(),
            body: body.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// An answer from the origin itself: status 200 and its JSON.
    fn origin_answer(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        let body = self.json();
        assert_eq!(body["via"], "origin", "{self:?}");
        body
    }

    /// tollgate's own refusal: the status and the JSON `reason`.
    fn refused(&self, status: u16, reason: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.json()["reason"], reason, "{self:?}");
        assert!(self.json()["decision_id"].is_string(), "{self:?}");
    }

    /// The connection failed: no HTTP answer at all.
    fn failed(&self) {
        assert_ne!(self.exit, Some(0), "{self:?}");
        assert_eq!(self.status, 0, "{self:?}");
        assert!(!self.stderr.is_empty(), "curl says why: {self:?}");
    }
}

#[test]
fn decides_each_request_in_plain_http_and_intercepted_tls_over_ipv4_and_ipv6() {
    let scene = Scene::new();
    let ca = scene.file("intercept-ca.pem");
    let ca = ca.to_str().unwrap();
    for (family, pod) in [("-4", "192.0.2.1"), ("-6", "[2001:db8::1]")] {
        // Plain HTTP: decided per request on the Host header.
        let allowed = scene.curl(&[family, "http://api.test/public/a?x=1"]);
        let body = allowed.origin_answer();
        assert_eq!(body["path"], "/public/a?x=1");
        assert_eq!(body["tls"], false);
        assert_eq!(body["host"], "api.test");
        // tollgate's own upstream connection left the pod directly (not redirected back).
        assert!(
            body["peer"].as_str().unwrap().starts_with(pod),
            "{family}: {body}"
        );
        scene
            .curl(&[family, "http://api.test/private"])
            .refused(403, "path_not_allowed");
        // HTTP/2 with prior knowledge (cleartext) is sniffed as HTTP too.
        let h2c = scene.curl(&[
            family,
            "--http2-prior-knowledge",
            "http://api.test/public/h2c",
        ]);
        assert_eq!(h2c.origin_answer()["path"], "/public/h2c");
        assert_eq!(h2c.version, "2", "{h2c:?}");
        scene
            .curl(&[family, "--http2-prior-knowledge", "http://api.test/private"])
            .refused(403, "path_not_allowed");
        scene
            .curl(&[family, "-X", "POST", "http://api.test/public/a"])
            .refused(403, "method_not_allowed");

        // HTTPS: intercepted with a leaf for the SNI from tollgate's interception CA, then
        // decided per request, HTTP/1.1 and HTTP/2 inside.
        for version in ["--http1.1", "--http2"] {
            let https = scene.curl(&[family, version, "--cacert", ca, "https://api.test/public/b"]);
            let body = https.origin_answer();
            assert_eq!(body["tls"], true, "the origin got TLS from tollgate");
            assert_eq!(body["path"], "/public/b");
            let expected = if version == "--http2" { "2" } else { "1.1" };
            assert_eq!(https.version, expected, "{https:?}");
            scene
                .curl(&[family, version, "--cacert", ca, "https://api.test/private"])
                .refused(403, "path_not_allowed");
            scene
                .curl(&[
                    family,
                    version,
                    "--cacert",
                    ca,
                    "-X",
                    "DELETE",
                    "https://api.test/public/b",
                ])
                .refused(403, "method_not_allowed");
        }
    }

    // Python's http.client, knowing nothing of any proxy, is decided the same way.
    let python = run_checked(
        scene.net.pod.user(AGENT_UID, system_python()).args([
            "-I",
            "-c",
            "import http.client\n\
             for path in ('/public/py', '/admin'):\n\
             \x20   c = http.client.HTTPConnection('api.test', 80, timeout=5)\n\
             \x20   c.request('GET', path)\n\
             \x20   r = c.getresponse()\n\
             \x20   print(r.status, r.read().decode())",
        ]),
        COMMAND_TIMEOUT,
    );
    let python = String::from_utf8_lossy(&python.stdout).into_owned();
    let lines: Vec<&str> = python.lines().collect();
    assert!(
        lines[0].starts_with("200 ") && lines[0].contains("\"/public/py\""),
        "{python}"
    );
    assert!(
        lines[1].starts_with("403 ") && lines[1].contains("path_not_allowed"),
        "{python}"
    );

    // The decision log names the pod's SPIFFE ID, per request and per TLS connection.
    let request = scene.decision("GET /public/a", |v| {
        v["request"]["path"] == "/public/a" && v["request"]["method"] == "GET"
    });
    assert_eq!(request["source"]["spiffe_id"], POD_ID, "{request}");
    assert_eq!(request["decision"]["allow"], true, "{request}");
    let connection = scene.decision("the TLS connection to api.test", |v| {
        v["request"]["method"] == "CONNECT" && v["request"]["host"] == "api.test"
    });
    assert_eq!(connection["source"]["spiffe_id"], POD_ID, "{connection}");
    assert_eq!(connection["request"]["port"], 443, "{connection}");
    assert_eq!(connection["decision"]["allow"], true, "{connection}");
}

#[test]
fn tunnels_closes_binds_destinations_and_guards_its_own_port() {
    let scene = Scene::new();
    let origin_ca = scene.file("origin-ca.pem");
    let intercept_ca = scene.file("intercept-ca.pem");

    // mode: tunnel — the agent's TLS reaches the origin unread: it sees the origin's own
    // certificate (an intercepted connection would show tollgate's leaf instead).
    for family in ["-4", "-6"] {
        let tunnelled = scene.curl(&[
            family,
            "--cacert",
            origin_ca.to_str().unwrap(),
            "https://tunnel.test/anything",
        ]);
        assert_eq!(tunnelled.origin_answer()["tls"], true);
        scene
            .curl(&[
                family,
                "--cacert",
                intercept_ca.to_str().unwrap(),
                "https://tunnel.test/anything",
            ])
            .failed();
    }

    // Bytes that are not TLS or HTTP (the server speaks first): tunnelled or closed by policy.
    assert_eq!(scene.banner("192.0.2.2"), "BANNER origin / ping");
    assert_eq!(scene.banner("2001:db8::2"), "BANNER origin / ping");
    let refused = scene.banner("192.0.2.3");
    assert!(
        refused == "EOF" || refused.starts_with("ERR "),
        "the banner of a denied destination must never arrive: {refused}"
    );
    let denied = scene.decision("the opaque connection to 192.0.2.3:2222", |v| {
        v["request"]["host"] == "192.0.2.3" && v["request"]["port"] == 2222
    });
    assert_eq!(denied["decision"]["allow"], false, "{denied}");
    assert_eq!(denied["source"]["spiffe_id"], POD_ID, "{denied}");

    // Destination binding: an allowed name, dialled at an address it does not resolve to.
    scene
        .curl(&[
            "--resolve",
            "api.test:80:192.0.2.3",
            "http://api.test/public/a",
        ])
        .refused(403, "destination_mismatch");
    scene
        .curl(&[
            "--resolve",
            "api.test:80:[2001:db8::3]",
            "http://api.test/public/a",
        ])
        .refused(403, "destination_mismatch");
    scene
        .curl(&[
            "--resolve",
            "api.test:443:192.0.2.3",
            "--cacert",
            intercept_ca.to_str().unwrap(),
            "https://api.test/public/a",
        ])
        .failed();
    let mismatch = scene.decision("the TLS connection to api.test at 192.0.2.3", |v| {
        v["request"]["method"] == "CONNECT"
            && v["request"]["host"] == "api.test"
            && v["error"] == "destination_mismatch"
    });
    assert_eq!(mismatch["request"]["port"], 443, "{mismatch}");

    // Loop guard: a connection to tollgate's own listener gets nothing.
    scene.curl(&["http://127.0.0.1:15001/public/a"]).failed();
    scene.curl(&["http://[::1]:15001/public/a"]).failed();
    // The admin API shares loopback with the agent: without an allowed SVID it gets nothing
    // (here: no client certificate, so no TLS session, so no way to lift a kill).
    scene
        .curl(&["-k", "-X", "DELETE", "https://127.0.0.1:15000/v1/kill/all"])
        .failed();
}

#[test]
fn never_bypasses_tollgate_and_redirect_remove_restores_direct_access() {
    let mut scene = Scene::new();
    scene
        .curl(&["http://api.test/private"])
        .refused(403, "path_not_allowed");

    // Without the rules the agent reaches the origin directly, past tollgate.
    let removed = scene.redirect(&["remove"]);
    assert!(
        removed.contains("ipv4: removed") && removed.contains("ipv6: removed"),
        "{removed}"
    );
    assert_eq!(
        scene.curl(&["http://api.test/private"]).origin_answer()["path"],
        "/private"
    );
    assert_eq!(scene.banner("192.0.2.3"), "BANNER origin / ping");

    // With the rules back and tollgate stopped, every connection fails: none goes around it.
    scene.redirect(&[
        "install",
        "--proxy-uid",
        &PROXY_UID.to_string(),
        "--proxy-port",
        &PROXY_PORT.to_string(),
    ]);
    scene
        .curl(&["-6", "http://api.test/private"])
        .refused(403, "path_not_allowed");
    scene.stop_tollgate();
    for family in ["-4", "-6"] {
        scene.curl(&[family, "http://api.test/public/a"]).failed();
        scene
            .curl(&[
                family,
                "--cacert",
                scene.file("origin-ca.pem").to_str().unwrap(),
                "https://tunnel.test/",
            ])
            .failed();
    }
    let banner = scene.banner("192.0.2.2");
    assert!(banner.starts_with("ERR ") || banner == "EOF", "{banner}");
}

#[test]
fn a_kill_by_the_pods_spiffe_id_cuts_its_transparent_connections_within_100_ms() {
    let scene = Scene::new();
    // The driver runs as root in the pod (it alone may reach the admin API, with the operator's
    // SVID); its two curl readers run as the agent, and knows nothing of a proxy.
    let dir = scene.staged.path();
    let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let out = run_with_timeout(
        scene.net.pod.root(python()).args([
            &file("kill_flows.py"),
            "transparent",
            "-",
            ADMIN_URL,
            &file("intercept-ca.pem"),
            POD_ID,
            &AGENT_UID.to_string(),
            &file("origin-ca.pem"),
            &file("ops.pem"),
            &file("ops-key.pem"),
        ]),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let process = scene.tollgate.as_ref().expect("tollgate is running");
    assert!(
        out.status.success(),
        "kill_flows.py transparent failed: {}\nstdout: {stdout}\nstderr: {}\ntollgate:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        process.stderr.text()
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not a report ({e}): {stdout}"));
    eprintln!("kill_flows.py transparent: {report}");

    // Each reader stopped: not one byte after the kill's answer + 100 ms, and curl saw the cut
    // as an error, never as a complete body.
    for name in ["http", "https"] {
        let reader = &report[name];
        assert!(
            reader["bytes_before_kill"].as_u64() >= Some(1 << 20),
            "{reader}"
        );
        assert_eq!(
            reader["bytes_after_100ms"], 0,
            "{name}: bytes after 100 ms: {reader}"
        );
        assert_eq!(reader["complete"], false, "{reader}");
        // The TLS connection carries an HTTP/2 stream: the kill ends both, so curl reports
        // whichever reached it first — the stream's RST_STREAM(CANCEL) (exit 92) or the
        // connection's TCP reset (exit 56). Either way an error, never a short "complete" body.
        let stderr = reader["stderr"].as_str().unwrap_or_default();
        let seen = match reader["code"].as_u64() {
            Some(56) => stderr.contains("reset"),
            Some(92) => name == "https" && stderr.contains("CANCEL"),
            _ => false,
        };
        assert!(seen, "{name}: curl did not see the cut: {reader}");
        assert!(reader["bytes"].as_u64() < Some(200 << 20), "{reader}");
    }

    // The kill named the pod and ended both connections and what streamed inside each.
    let kill = &report["answer"]["kill"];
    let kill_id = kill["id"].as_str().expect("the kill's id");
    assert_eq!(kill["flows_ended"], 4, "{report}");
    // Inside: an HTTP/1.1 request on the plain connection, an HTTP/2 stream in the TLS one.
    for (name, ip, port, inner) in [
        ("http", "192.0.2.2", 80, "request"),
        ("https", "2001:db8::2", 443, "http2_stream"),
    ] {
        let conn = scene.decision(&format!("the cut {name} connection"), |v| {
            v["kill_id"] == kill_id
                && v["flow"]["kind"] == "transparent_connection"
                && v["request"]["port"] == port
        });
        assert_eq!(conn["decision"]["reason"], "killed", "{conn}");
        assert_eq!(conn["decision"]["allow"], false, "{conn}");
        assert_eq!(conn["source"]["spiffe_id"], POD_ID, "{conn}");
        assert_eq!(conn["request"]["host"], ip, "{conn}");
        // The connection's bytes: the request went out, and what reached the agent is at
        // least what curl got (TLS adds its records on top).
        let to_agent = conn["flow"]["bytes_to_agent"].as_u64().unwrap();
        assert!(
            to_agent >= report[name]["bytes"].as_u64().unwrap(),
            "{conn}"
        );
        assert!(
            conn["flow"]["bytes_from_agent"].as_u64() > Some(0),
            "{conn}"
        );
        let request = scene.decision(&format!("the cut {name} request"), |v| {
            v["kill_id"] == kill_id && v["flow"]["kind"] == inner && v["request"]["scheme"] == name
        });
        assert_eq!(request["decision"]["reason"], "killed", "{request}");
        assert_eq!(request["request"]["host"], "api.test", "{request}");
        assert_eq!(request["request"]["path"], "/public/stream", "{request}");
        assert!(
            request["flow"]["bytes_to_agent"].as_u64() > Some(0),
            "{request}"
        );
    }
    assert_eq!(scene.flows_killed("transparent_connection"), 2);
    assert_eq!(scene.flows_killed("request"), 1);
    assert_eq!(scene.flows_killed("http2_stream"), 1);
    let (status, listed) = scene.admin("GET", "/v1/kill");
    assert_eq!(status, 200, "{listed}");
    let listed: Value = serde_json::from_str(&listed).expect("json");
    let listed_kill = listed["kills"]
        .as_array()
        .and_then(|kills| kills.iter().find(|k| k["id"] == kill_id))
        .unwrap_or_else(|| panic!("kill {kill_id} not listed: {listed}"));
    assert_eq!(listed_kill["flows_ended"], 4, "{listed}");

    // A new connection of the pod is served, and each request refused with the kill's 403
    // (not reset unexplained); intercepted TLS is refused at the connection, with its line.
    let refused = scene.curl(&["http://api.test/public/a"]);
    refused.refused(403, "killed");
    assert_eq!(refused.json()["kill_id"], kill_id, "{refused:?}");
    let ca = scene.file("intercept-ca.pem");
    scene
        .curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "https://api.test/public/a",
        ])
        .failed();
    let line = scene.decision("the refused TLS connection", |v| {
        v["request"]["method"] == "CONNECT"
            && v["request"]["host"] == "api.test"
            && v["decision"]["reason"] == "killed"
            && v["flow"].is_null()
    });
    assert_eq!(line["kill_id"], kill_id, "{line}");
    // Refusing new connections ended no flow: the counts are still the kill's own.
    assert_eq!(scene.flows_killed("transparent_connection"), 2);
}

#[test]
fn the_pod_is_the_spiffe_id_of_the_svid_from_the_workload_api() {
    // The stand-in for SPIRE's agent: a Workload API server speaking the real protocol (not
    // SPIRE), serving the pod's SVID, issued for POD_ID by the trust domain's CA.
    let ca = Pki::with_ca_name("cluster.test trust domain CA");
    let inputs = WorkloadApiInputs::new();
    inputs.set_svid(&ca.issue_leaf("pod", &[&format!("URI:{POD_ID}")]));
    inputs.set_bundle(&ca.ca_cert());
    let _spire = start_workload_api_server(&inputs, POD_ID);
    {
        // tollgate runs as the proxy's UID: it must be able to connect to the socket.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(inputs.socket(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod the Workload API socket");
    }
    let scene = Scene::with_identity(PodIdentity::WorkloadApi(&inputs.socket()));
    let config = std::fs::read_to_string(scene.file("config.yaml")).unwrap();
    assert!(
        config.contains("workload_api:") && !config.contains("workload_spiffe_id"),
        "{config}"
    );

    // The policy allows GET /public/ for POD_ID only: it saw the SVID's ID (an unknown caller
    // would be refused `destination_not_allowed` here), in plain HTTP and intercepted TLS.
    let ca_file = scene.file("intercept-ca.pem");
    let ca_file = ca_file.to_str().unwrap();
    assert_eq!(
        scene.curl(&["http://api.test/public/svid"]).origin_answer()["path"],
        "/public/svid"
    );
    assert_eq!(
        scene
            .curl(&["--cacert", ca_file, "https://api.test/public/svid-tls"])
            .origin_answer()["path"],
        "/public/svid-tls"
    );
    scene
        .curl(&["http://api.test/private"])
        .refused(403, "path_not_allowed");
    for (what, path) in [("plain", "/public/svid"), ("TLS", "/public/svid-tls")] {
        let line = scene.decision(what, |v| v["request"]["path"] == path);
        assert_eq!(line["source"]["spiffe_id"], POD_ID, "{line}");
        assert_eq!(line["decision"]["reason"], "public read", "{line}");
    }
    let connection = scene.decision("the TLS connection", |v| {
        v["request"]["method"] == "CONNECT" && v["request"]["host"] == "api.test"
    });
    assert_eq!(connection["source"]["spiffe_id"], POD_ID, "{connection}");
    assert_eq!(connection["decision"]["reason"], "api.test intercepted");
}

/// HTTP/2 abuse by prior knowledge (h2c) on the transparent listener (issue 14 item 2): the
/// same per-connection limits as inside interception, since both are served by the one
/// connection builder. An attacker in the pod (root there: the redirect takes every UID but
/// tollgate's, and the test's Python may live where the agent's UID cannot read) resets 25 streams a batch in a loop (CVE-2023-44487)
/// over cleartext HTTP/2 to `api.test:80`, which the kernel redirects to tollgate: the
/// connection ends with GOAWAY(ENHANCE_YOUR_CALM) within the first two batches, counted once in
/// `tollgate_h2_connection_errors_total{reason="enhance_your_calm"}`, and the pod's next h2c
/// request is served.
#[test]
fn rapid_reset_over_h2c_on_the_transparent_listener_ends_with_enhance_your_calm() {
    let scene = Scene::new();
    let attacker = scene.file("h2_attack.py");
    let out = run_with_timeout(
        scene
            .net
            .pod
            .root(python())
            .arg(&attacker)
            .args([
                "rapid_reset",
                "--plain",
                "--host",
                "192.0.2.2",
                "--port",
                "80",
            ])
            .args(["--authority", "api.test", "--path", "/public/reset"])
            .args(["--seconds", "10"]),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "h2_attack.py failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not a report ({e}): {stdout}"));
    assert_eq!(report["last"]["goaway"], 0xb, "{report}");
    let opened = report["streams_opened"].as_u64().expect("streams_opened");
    assert!(opened <= 50, "{report}");

    // Counted once, as the connection's task ends (just after the GOAWAY was written).
    let series = "tollgate_h2_connection_errors_total{reason=\"enhance_your_calm\"} ";
    let deadline = std::time::Instant::now() + LOG_TIMEOUT;
    let counted = loop {
        let (status, text) = scene.admin("GET", "/metrics");
        assert_eq!(status, 200, "{text}");
        let value: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if value >= 1 || std::time::Instant::now() >= deadline {
            break value;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(counted, 1);

    let h2c = scene.curl(&[
        "-4",
        "--http2-prior-knowledge",
        "http://api.test/public/after",
    ]);
    assert_eq!(h2c.origin_answer()["path"], "/public/after");
    assert_eq!(h2c.version, "2", "{h2c:?}");
}
