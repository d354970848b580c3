//! Who is calling: X.509-SVIDs on a TLS listener (`client_auth: required` and `optional`),
//! verified against `identity.trust_domains`, decide the caller the policy and the decision log
//! see — never a header. The admin API bound beyond loopback requires mTLS and an allowed ID.
//! SVIDs come from `tollgate certs` and from openssl (tests/svid_corpus.rs has the full
//! bad-certificate corpus).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const AGENT: &str = "spiffe://tollgate.local/test/agent";
const OTHER: &str = "spiffe://tollgate.local/test/other";

struct Pkis {
    dir: tempfile::TempDir,
    listener: Pki,
}

impl Pkis {
    fn new() -> Pkis {
        let dir = tempfile::tempdir().unwrap();
        let out = Tollgate::run_cli(&[
            "certs",
            "init",
            "--dir",
            dir.path().to_str().unwrap(),
            "--trust-domain",
            "tollgate.local",
        ]);
        assert!(out.status.success());
        for (id, name) in [(AGENT, "agent"), (OTHER, "other")] {
            let out = Tollgate::run_cli(&[
                "certs",
                "issue",
                "--dir",
                dir.path().to_str().unwrap(),
                "--spiffe-id",
                id,
                "--name",
                name,
            ]);
            assert!(out.status.success());
        }
        Pkis {
            dir,
            listener: Pki::new(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn bundle(&self) -> PathBuf {
        self.path("tollgate.local.bundle.pem")
    }
}

fn start(pkis: &Pkis, client_auth: &str, extra: &str) -> Tollgate {
    start_with_identity(pkis, client_auth, "", extra)
}

/// `identity_extra` goes inside `identity:` (e.g. `, workload_spiffe_id: '…'`).
fn start_with_identity(
    pkis: &Pkis,
    client_auth: &str,
    identity_extra: &str,
    extra: &str,
) -> Tollgate {
    let root = repo_root();
    let leaf = pkis.listener.issue_leaf("proxy", &["IP:127.0.0.1"]);
    // `extra` may bring its own upstream section.
    let upstream = if extra.contains("upstream:") {
        ""
    } else {
        "upstream: {allow_private: [127.0.0.0/8]}\n"
    };
    Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0', tls: {{cert: '{}', key: '{}', client_auth: {client_auth}}}}}]\n\
         identity: {{trust_domains: {{tollgate.local: {{bundle: '{}'}}}}{identity_extra}}}\n\
         policy: {{path: '{}', data: '{}'}}\n{upstream}{extra}",
        leaf.cert.display(),
        leaf.key.display(),
        pkis.bundle().display(),
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    ))
}

fn via(
    tg: &Tollgate,
    pkis: &Pkis,
    cert: Option<(&Path, &Path)>,
    url: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = [
        "-s",
        "--max-time",
        "20",
        "-x",
        &tg.proxy_url(),
        "--proxy-cacert",
        pkis.listener.ca_cert().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((c, k)) = cert {
        args.extend([
            "--proxy-cert".into(),
            c.display().to_string(),
            "--proxy-key".into(),
            k.display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.to_string());
    curl(&args)
}

#[test]
fn takes_the_caller_from_the_verified_svid_not_from_headers() {
    let pkis = Pkis::new();
    let tg = start(&pkis, "required", "");
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    let agent = (pkis.path("agent.pem"), pkis.path("agent-key.pem"));
    let out = via(
        &tg,
        &pkis,
        Some((&agent.0, &agent.1)),
        &url,
        &["-H", "X-Spiffe-Id: spiffe://tollgate.local/test/other"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echoed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(echoed["headers"]["x-policy-header"], "set-by-policy");
    let d = tg.wait_decision(|d| d["request"]["path"] == "/echo", WAIT);
    assert_eq!(
        d["source"]["spiffe_id"], AGENT,
        "the SVID decides, not the header"
    );

    // Another valid SVID of the trust domain is a different caller: the policy does not know it.
    let other = (pkis.path("other.pem"), pkis.path("other-key.pem"));
    let out = via(&tg, &pkis, Some((&other.0, &other.1)), &url, &[]);
    let body: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body["reason"], "unknown_agent", "{body}");
}

#[test]
fn refuses_agents_without_a_trusted_svid_when_required_and_counts_why() {
    let pkis = Pkis::new();
    let tg = start(&pkis, "required", "");
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    // No certificate at all.
    let out = via(&tg, &pkis, None, &url, &[]);
    assert!(!out.status.success());
    // A certificate from a CA nobody configured (made with openssl).
    let rogue_ca = Pki::new();
    let rogue = rogue_ca.issue_leaf("rogue", &["URI:spiffe://tollgate.local/test/agent"]);
    let out = via(&tg, &pkis, Some((&rogue.cert, &rogue.key)), &url, &[]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tg.wait_log(|l| l["reason"] == "untrusted_chain", WAIT);
    let metrics =
        String::from_utf8_lossy(&curl(&["-s", &tg.admin_url("/metrics")]).stdout).into_owned();
    assert!(
        metrics.contains("tollgate_identity_rejections_total{reason=\"untrusted_chain\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_identity_rejections_total{reason=\"no_certificate\"} 1"),
        "{metrics}"
    );
    // The proxy keeps serving a valid caller.
    let agent = (pkis.path("agent.pem"), pkis.path("agent-key.pem"));
    assert!(
        via(&tg, &pkis, Some((&agent.0, &agent.1)), &url, &[])
            .status
            .success()
    );
}

#[test]
fn falls_back_to_the_workload_identity_when_the_svid_is_optional() {
    let pkis = Pkis::new();
    let tg = start(&pkis, "optional", "");
    let origin = PyOrigin::start(None);
    let out = via(&tg, &pkis, None, &origin.url("/echo"), &[]);
    let body: Value = serde_json::from_slice(&out.stdout).expect("json");
    // No SVID and no workload_spiffe_id: unauthenticated.
    assert_eq!(body["reason"], "unauthenticated", "{body}");
    let d = tg.wait_decision(|d| d["request"]["path"] == "/echo", WAIT);
    assert_eq!(d["source"]["spiffe_id"], Value::Null);
}

#[test]
fn the_admin_api_beyond_loopback_requires_an_allowed_svid() {
    let pkis = Pkis::new();
    let admin_leaf = pkis.listener.issue_leaf("admin", &["IP:127.0.0.1"]);
    let port = free_port();
    let root = repo_root();
    let tg = Tollgate::builder()
        .config(format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             admin: {{address: '0.0.0.0:{port}', tls: {{cert: '{}', key: '{}'}}, allowed_spiffe_ids: ['{AGENT}']}}\n\
             identity: {{trust_domains: {{tollgate.local: {{bundle: '{}'}}}}}}\n\
             policy: {{path: '{}'}}\n",
            admin_leaf.cert.display(),
            admin_leaf.key.display(),
            pkis.bundle().display(),
            root.join("policy-wasm").display(),
        ))
        .config_as_is()
        .start();
    tg.wait_log(
        |l| l["message"] == "admin API requires mTLS with an X.509-SVID",
        WAIT,
    );
    let url = format!("https://127.0.0.1:{port}/v1/kill");
    let ca = pkis.listener.ca_cert();
    let admin = |cert: Option<&str>| {
        let mut args = vec![
            "-s".to_string(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            ca.display().to_string(),
            "-w".into(),
            "%{http_code}".into(),
            "-o".into(),
            "/dev/null".into(),
        ];
        if let Some(name) = cert {
            args.extend([
                "--cert".into(),
                pkis.path(&format!("{name}.pem")).display().to_string(),
                "--key".into(),
                pkis.path(&format!("{name}-key.pem")).display().to_string(),
            ]);
        }
        args.push(url.clone());
        let out = curl(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(admin(Some("agent")), "200", "allowed SVID");
    assert_eq!(admin(Some("other")), "403", "trusted but not allowed");
    // The refusal is counted (once per connection).
    let metrics = curl(&[
        "-s".to_string(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "--cert".into(),
        pkis.path("agent.pem").display().to_string(),
        "--key".into(),
        pkis.path("agent-key.pem").display().to_string(),
        format!("https://127.0.0.1:{port}/metrics"),
    ]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("tollgate_admin_refusals_total{reason=\"spiffe_id\"} 1"),
        "{metrics}"
    );
    assert_eq!(admin(None), "000", "no certificate: the handshake fails");
    // Without mTLS configuration, a non-loopback admin address is a configuration error.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "listeners: [{name: a, address: '127.0.0.1:0'}]\nadmin: {address: '0.0.0.0:15999'}\n",
    )
    .unwrap();
    let out = Tollgate::run_cli(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.tls") && stderr.contains("admin.allowed_spiffe_ids"),
        "{stderr}"
    );
}

/// Keeps one TLS connection (with a client SVID) to the proxy open and sends an absolute-form
/// GET each time a line arrives on stdin, printing the status.
const KEEP_ALIVE_AGENT: &str = r#"
import socket, ssl, sys
proxy_port, ca, cert, key, url = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(proxy_port))), server_hostname="127.0.0.1")
reader = sock.makefile("rb")
for _ in sys.stdin:
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    status = reader.readline().split()[1].decode()
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    reader.read(length)
    print(status, flush=True)
"#;

#[test]
fn rotates_the_trust_bundle_without_a_restart_or_a_lost_connection() {
    use std::io::{BufRead, BufReader, Write};
    let ca1 = Pkis::new();
    let ca2 = Pkis::new();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::copy(ca1.bundle(), &bundle).unwrap();
    let root = repo_root();
    let leaf = ca1.listener.issue_leaf("proxy", &["IP:127.0.0.1"]);
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0', tls: {{cert: '{}', key: '{}', client_auth: required}}}}]\n\
         identity: {{trust_domains: {{tollgate.local: {{bundle: '{}'}}}}}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n",
        leaf.cert.display(),
        leaf.key.display(),
        bundle.display(),
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    ));
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    let svid = |pkis: &Pkis| (pkis.path("agent.pem"), pkis.path("agent-key.pem"));
    let works = |pkis: &Pkis| {
        let (c, k) = svid(pkis);
        via(&tg, &ca1, Some((&c, &k)), &url, &[]).status.success()
    };
    assert!(works(&ca1));
    assert!(!works(&ca2));

    // A keep-alive connection authenticated with the CA1 SVID, open across the rotation.
    let (c1, k1) = svid(&ca1);
    let port = tg.proxy_addr("agents").port().to_string();
    let mut child = command(python())
        .args([
            "-c",
            KEEP_ALIVE_AGENT,
            &port,
            ca1.listener.ca_cert().to_str().unwrap(),
            c1.to_str().unwrap(),
            k1.to_str().unwrap(),
            &url,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _guard = ChildGuard::new(child);
    writeln!(stdin).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "200");

    // Rotate: CA2 replaces CA1 (atomically, as a secret mount would).
    let staged = dir.path().join("bundle.pem.new");
    std::fs::copy(ca2.bundle(), &staged).unwrap();
    std::fs::rename(&staged, &bundle).unwrap();
    tg.wait_log(|l| l["message"] == "trust bundles reloaded", WAIT);
    assert!(works(&ca2), "the new CA is accepted");
    assert!(!works(&ca1), "the removed CA is refused on new handshakes");
    writeln!(stdin).unwrap();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "200",
        "the connection opened before the rotation goes on"
    );

    // A broken bundle keeps the last good one.
    std::fs::write(&bundle, "not a certificate").unwrap();
    tg.wait_log(
        |l| l["message"] == "trust bundle reload failed; the last good bundles stay in force",
        WAIT,
    );
    assert!(works(&ca2));
    assert!(tg.is_running());
}

/// SPEC §3.1: the caller's SVID may also come "inside intercepted TLS when the listener requests
/// client certificates": a listener with `tls.client_auth` asks for one in the TLS inside each
/// CONNECT too. An inner SVID names the caller; it may not contradict the listener's.
#[test]
fn verifies_an_svid_presented_inside_intercepted_tls() {
    let pkis = Pkis::new();
    let origin_pki = Pki::new();
    let origin = PyOrigin::start(Some(&origin_pki));
    // The sidecar setting: the pod's identity is the default caller (so the CONNECT is decided
    // for it); an SVID presented inside the tunnel replaces it.
    let tg = start_with_identity(
        &pkis,
        "optional",
        &format!(", workload_spiffe_id: '{AGENT}'"),
        &format!(
            "upstream: {{allow_private: [127.0.0.0/8], ca: '{}'}}\n",
            origin_pki.ca_cert().display()
        ),
    );
    let intercept_ca = tg.dir().join("state/intercept-ca.pem");
    let url = format!("https://127.0.0.1:{}/echo", origin.port());
    let inner = |cert: Option<(&Path, &Path)>, outer: Option<(&Path, &Path)>| {
        let mut extra: Vec<String> = vec![
            "-S".into(),
            "--cacert".into(),
            intercept_ca.display().to_string(),
        ];
        if let Some((c, k)) = cert {
            extra.extend([
                "--cert".into(),
                c.display().to_string(),
                "--key".into(),
                k.display().to_string(),
            ]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        via(&tg, &pkis, outer, &url, &extra)
    };
    let agent = (pkis.path("agent.pem"), pkis.path("agent-key.pem"));
    let other = (pkis.path("other.pem"), pkis.path("other-key.pem"));

    // The SVID inside the tunnel names the caller: `other` is a verified caller the policy
    // does not know.
    let out = inner(Some((&other.0, &other.1)), None);
    let body: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body["reason"], "unknown_agent", "{body}");
    tg.wait_decision(
        |d| d["request"]["scheme"] == "https" && d["source"]["spiffe_id"] == OTHER,
        WAIT,
    );
    let out = inner(Some((&agent.0, &agent.1)), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echoed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(echoed["headers"]["x-policy-header"], "set-by-policy");

    // Without one, the workload identity stays the caller.
    let out = inner(None, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An untrusted SVID inside the tunnel fails the inner handshake and is counted.
    let rogue_ca = Pki::new();
    let rogue = rogue_ca.issue_leaf("rogue", &["URI:spiffe://tollgate.local/test/agent"]);
    let out = inner(Some((&rogue.cert, &rogue.key)), None);
    assert!(!out.status.success());
    tg.wait_log(|l| l["reason"] == "untrusted_chain", WAIT);

    // An inner SVID that contradicts the listener's is refused.
    let out = inner(Some((&other.0, &other.1)), Some((&agent.0, &agent.1)));
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    tg.wait_log(
        |l| l["message"] == "the SVID inside the tunnel differs from the listener's; closing",
        WAIT,
    );
    // The same SVID inside and outside is fine.
    let out = inner(Some((&agent.0, &agent.1)), Some((&agent.0, &agent.1)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The listener's own certificate is a PEM source too: replacing its files takes effect for new
/// handshakes without a restart.
#[test]
fn rotates_the_listener_certificate_from_its_files() {
    let pki_a = Pki::with_ca_name("listener-ca-a");
    let pki_b = Pki::with_ca_name("listener-ca-b");
    let a = pki_a.issue_leaf("a", &["IP:127.0.0.1"]);
    let b = pki_b.issue_leaf("b", &["IP:127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("proxy.pem"),
        dir.path().join("proxy-key.pem"),
    );
    std::fs::copy(&a.cert, &cert).unwrap();
    std::fs::copy(&a.key, &key).unwrap();
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0', tls: {{cert: '{}', key: '{}'}}}}]\n\
         identity: {{workload_spiffe_id: '{AGENT}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n",
        cert.display(),
        key.display(),
        repo_root().join("policy-wasm").display(),
        repo_root()
            .join("tests/fixtures/policy-data.json")
            .display(),
    ));
    let origin = PyOrigin::start(None);
    let trusts = |ca: &Path| {
        curl(&[
            "-s",
            "--max-time",
            "10",
            "-x",
            &tg.proxy_url(),
            "--proxy-cacert",
            ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &origin.url("/echo"),
        ])
        .stdout
            == b"200"
    };
    assert!(trusts(&pki_a.ca_cert()));
    assert!(!trusts(&pki_b.ca_cert()));
    // Replace key and certificate (each atomically, as a secret mount does).
    for (from, to) in [(&b.key, &key), (&b.cert, &cert)] {
        let staged = dir.path().join("staged.pem");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }
    tg.wait_log(|l| l["message"] == "TLS configuration rebuilt", WAIT);
    let deadline = std::time::Instant::now() + WAIT;
    while !trusts(&pki_b.ca_cert()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
    }
    assert!(!trusts(&pki_a.ca_cert()));
}
