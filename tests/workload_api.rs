//! `identity.workload_api`: tollgate's Workload API client (`WorkloadApiSource`) against a
//! server that speaks the real protocol.
//!
//! SPIRE cannot be installed on these machines (no registry reachable here carries it), so
//! **nothing here runs against SPIRE itself**. The peer is `tests/origins/workload_api_server.py`:
//! Python `grpcio`, stubs generated at start-up from SPIFFE's published `workload.proto`
//! (`tests/origins/workload.proto`), gRPC over a unix socket, the `workload.spiffe.io: true`
//! header required as SPIRE requires it. Certificates are made with the `openssl` CLI
//! (`support::Pki`), never with tollgate's own certificate code.
//!
//! Shown: the first SVID (chain, PKCS#8 key, SPIFFE ID) and bundle arrive on `connect`; a
//! rotated SVID pushed on the open `FetchX509SVID` stream bumps the `subscribe()` watch and
//! becomes current; a federated trust domain added by the agent appears in `bundles()` next to
//! the own one, and disappears again when the agent drops it; connecting to a socket nobody
//! listens on fails within the bound. Not shown: JWT-SVIDs, several SVIDs with hints, the agent
//! withdrawing permission, reconnection after the agent restarts, the `FetchX509Bundles` stream
//! (served by the test server, not consumed by tollgate).

mod support;

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio::sync::watch;
use tollgate::identity::workload_api::{WorkloadApiError, WorkloadApiSource};

const ID: &str = "spiffe://example.org/tollgate";

fn certs_der(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).expect("read PEM");
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .expect("parse PEM certificates")
}

fn key_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read key PEM");
    match rustls_pemfile::private_key(&mut pem.as_slice()).expect("parse key") {
        Some(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
        other => panic!("expected a PKCS#8 key in {}, got {other:?}", path.display()),
    }
}

/// SIGHUP: the server re-reads its inputs and pushes them; waits for its "generation N" line.
fn rotate(server: &Streaming, generation: u64) {
    server.child.signal("HUP");
    server.wait_line(&format!("generation {generation}"), Duration::from_secs(20));
}

/// Waits (bounded) for `pred` on the source, re-checking after every bump of the watch.
/// Returns how many bumps were seen.
/// Waits until `pred` holds; returns how often the watch was bumped since `start` (its value
/// read before the change was triggered, so an update that lands at once is still counted).
async fn wait_until(
    start: u64,
    rx: &mut watch::Receiver<u64>,
    source: &WorkloadApiSource,
    what: &str,
    pred: impl Fn(&WorkloadApiSource) -> bool,
) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pred(source) {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("update channel closed while waiting for {what}"),
            Err(_) => panic!("no update within 20 s while waiting for {what}"),
        }
    }
    rx.borrow().wrapping_sub(start)
}

fn svid_leaf(source: &WorkloadApiSource) -> Option<CertificateDer<'static>> {
    source
        .svid()
        .and_then(|(chain, _, _)| chain.first().cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_svid_rotation_and_bundle_changes_pushed_by_the_agent() {
    let example = Pki::with_ca_name("example.org CA");
    let other = Pki::with_ca_name("other.test CA");
    let svid1 = example.issue_leaf("svid1", &[&format!("URI:{ID}")]);
    let svid2 = example.issue_leaf("svid2", &[&format!("URI:{ID}")]);

    let inputs = WorkloadApiInputs::new();
    inputs.set_svid(&svid1);
    inputs.set_bundle(&example.ca_cert());
    let server = start_workload_api_server(&inputs, ID);

    let endpoint = format!("unix://{}", inputs.socket().display());
    let source = WorkloadApiSource::connect(&endpoint)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\nserver:\n{}", server.stdout.text()));
    // SPIRE's header was sent (the server refuses calls without it).
    assert!(
        !server.stdout.text().contains("rejected"),
        "{}",
        server.stdout.text()
    );

    // SVID #1 and the own trust domain's bundle.
    let (chain, key, id) = source.svid().expect("first SVID");
    assert_eq!(chain, certs_der(&svid1.cert));
    match key {
        PrivateKeyDer::Pkcs8(k) => assert_eq!(k.secret_pkcs8_der(), key_der(&svid1.key)),
        other => panic!("expected PKCS#8, got {other:?}"),
    }
    assert_eq!(id.as_str(), ID);
    let bundles = source.bundles();
    assert_eq!(
        bundles.keys().collect::<Vec<_>>(),
        ["example.org"],
        "{bundles:?}"
    );
    assert_eq!(bundles["example.org"], certs_der(&example.ca_cert()));

    let mut rx = source.subscribe();

    // Rotation: SVID #2 pushed on the open stream.
    let start = *rx.borrow_and_update();
    inputs.set_svid(&svid2);
    rotate(&server, 2);
    let svid2_leaf = certs_der(&svid2.cert).remove(0);
    let bumps = wait_until(start, &mut rx, &source, "SVID #2", |s| {
        svid_leaf(s).as_ref() == Some(&svid2_leaf)
    })
    .await;
    assert!(bumps >= 1, "the watch was not bumped for the rotation");
    let (chain, key, id) = source.svid().expect("rotated SVID");
    assert_eq!(chain, certs_der(&svid2.cert));
    match key {
        PrivateKeyDer::Pkcs8(k) => assert_eq!(k.secret_pkcs8_der(), key_der(&svid2.key)),
        other => panic!("expected PKCS#8, got {other:?}"),
    }
    assert_eq!(id.as_str(), ID);
    assert_eq!(source.bundles().len(), 1);
    // (Not asserted right after connect: the crate documents a short window before its
    // background task first runs in which it reports unhealthy.)
    assert!(source.is_healthy());

    // Bundle change: the agent starts federating with other.test.
    let start = *rx.borrow_and_update();
    inputs.set_federated("other.test", Some(&other.ca_cert()));
    rotate(&server, 3);
    wait_until(start, &mut rx, &source, "the other.test bundle", |s| {
        s.bundles().contains_key("other.test")
    })
    .await;
    let bundles = source.bundles();
    assert_eq!(
        bundles.keys().collect::<Vec<_>>(),
        ["example.org", "other.test"]
    );
    assert_eq!(bundles["example.org"], certs_der(&example.ca_cert()));
    assert_eq!(bundles["other.test"], certs_der(&other.ca_cert()));
    assert_eq!(svid_leaf(&source).as_ref(), Some(&svid2_leaf));

    // …and stops: the removed trust domain is no longer trusted.
    let start = *rx.borrow_and_update();
    inputs.set_federated("other.test", None);
    rotate(&server, 4);
    wait_until(start, &mut rx, &source, "other.test to go", |s| {
        !s.bundles().contains_key("other.test")
    })
    .await;
    assert_eq!(source.bundles().keys().collect::<Vec<_>>(), ["example.org"]);

    source.shutdown(Duration::from_secs(5)).await;
    server.child.signal("TERM");
}

/// A Python client calling `FetchX509SVID` with or without SPIRE's security header, through stubs
/// generated from the same proto by the server's own `generate_stubs`; prints the outcome.
const PROBE: &str = r#"
import sys
sys.path.insert(0, sys.argv[1])
import grpc, workload_api_server as s
pb, pb_grpc = s.generate_stubs(sys.argv[2])
stub = pb_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel("unix://" + sys.argv[3]))
md = [("workload.spiffe.io", "true")] if sys.argv[4] == "with" else []
try:
    first = next(iter(stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=md, timeout=10)))
    print("svid", first.svids[0].spiffe_id)
except grpc.RpcError as e:
    print("error", e.code().name, e.details())
"#;

/// The test server is only a fair stand-in if it refuses what SPIRE refuses: a call without
/// the `workload.spiffe.io: true` header gets INVALID_ARGUMENT, as from SPIRE's agent.
#[test]
fn the_test_server_requires_the_workload_api_security_header() {
    let example = Pki::with_ca_name("example.org CA");
    let svid = example.issue_leaf("svid", &[&format!("URI:{ID}")]);
    let inputs = WorkloadApiInputs::new();
    inputs.set_svid(&svid);
    inputs.set_bundle(&example.ca_cert());
    let _server = start_workload_api_server(&inputs, ID);
    let origins = repo_root().join("tests/origins");
    let probe = |header: &str| {
        let out = run_checked(
            command(python())
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .args(["-c", PROBE])
                .arg(&origins)
                .arg(origins.join("workload.proto"))
                .arg(inputs.socket())
                .arg(header),
            Duration::from_secs(60),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        probe("without"),
        "error INVALID_ARGUMENT security header missing from request"
    );
    assert_eq!(probe("with"), format!("svid {ID}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_within_the_bound_when_nobody_listens() {
    let inputs = WorkloadApiInputs::new();
    let endpoint = format!("unix://{}", inputs.socket().display());
    let started = std::time::Instant::now();
    let result = WorkloadApiSource::connect_with_timeout(&endpoint, Duration::from_secs(1)).await;
    assert!(
        matches!(result, Err(WorkloadApiError::Source { .. })),
        "{:?}",
        result.err()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn refuses_endpoints_other_than_an_absolute_unix_path() {
    for bad in [
        "tcp://127.0.0.1:8081",
        "unix:relative.sock",
        "/run/agent.sock",
    ] {
        assert!(
            matches!(
                WorkloadApiSource::connect(bad).await,
                Err(WorkloadApiError::Endpoint(_))
            ),
            "{bad}"
        );
    }
}

/// Through the real proxy: `identity.workload_api` supplies the trust bundle that verifies
/// agents' SVIDs on a `client_auth: required` listener, and a bundle the agent pushes later
/// takes effect for new handshakes without a restart.
#[test]
fn the_proxy_verifies_agents_with_bundles_pushed_over_the_workload_api() {
    let ca_a = Pki::with_ca_name("workload-api-ca-a");
    let ca_b = Pki::with_ca_name("workload-api-ca-b");
    let inputs = WorkloadApiInputs::new();
    inputs.set_svid(&ca_a.issue_leaf("tollgate", &[&format!("URI:{ID}")]));
    inputs.set_bundle(&ca_a.ca_cert());
    let server = start_workload_api_server(&inputs, ID);
    let agent_a = ca_a.issue_leaf("agent-a", &["URI:spiffe://example.org/agent"]);
    let agent_b = ca_b.issue_leaf("agent-b", &["URI:spiffe://example.org/agent"]);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package tollgate\ndecision := {\"allow\": input.source.authenticated}\n",
    )
    .unwrap();
    let listener = Pki::new();
    let leaf = listener.issue_leaf("proxy", &["IP:127.0.0.1"]);
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0', tls: {{cert: '{}', key: '{}', client_auth: required}}}}]\n\
         identity: {{workload_api: 'unix://{}'}}\n\
         policy: {{path: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n",
        leaf.cert.display(),
        leaf.key.display(),
        inputs.socket().display(),
        dir.path().display(),
    ));
    tg.wait_log(
        |l| l["message"] == "connected to the SPIFFE Workload API",
        Duration::from_secs(20),
    );
    let origin = PyOrigin::start(None);
    let works = |svid: &TlsFiles| {
        curl(&[
            "-s",
            "--max-time",
            "10",
            "-x",
            &tg.proxy_url(),
            "--proxy-cacert",
            listener.ca_cert().to_str().unwrap(),
            "--proxy-cert",
            svid.cert.to_str().unwrap(),
            "--proxy-key",
            svid.key.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &origin.url("/echo"),
        ])
        .stdout
            == b"200"
    };
    assert!(works(&agent_a), "CA A comes from the Workload API");
    assert!(!works(&agent_b));

    inputs.set_bundle(&ca_b.ca_cert());
    rotate(&server, 2);
    tg.wait_log(
        |l| l["message"] == "trust bundles reloaded",
        Duration::from_secs(20),
    );
    assert!(works(&agent_b), "the pushed bundle is in force");
    assert!(
        !works(&agent_a),
        "the withdrawn CA is refused on new handshakes"
    );
}

/// Prints the SHA-256 of the certificate a TLS server presents (chain verified against the CA
/// file; no host-name check: an SVID names a SPIFFE ID, not a host).
const PEER_CERT: &str = r#"
import hashlib, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="tollgate") as s:
    print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())
"#;

fn sha256_of_pem(path: &Path) -> String {
    let der = certs_der(path).remove(0);
    // Hash the DER through a file with the harness' sha256sum helper (no extra crates).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leaf.der");
    std::fs::write(&file, der.as_ref()).unwrap();
    sha256_file(&file)
}

/// tollgate's own SVID from the Workload API serves as a listener certificate (a `tls` block
/// without files) and follows the agent's rotations.
#[test]
fn the_listener_serves_tollgates_own_svid_from_the_workload_api() {
    let ca = Pki::with_ca_name("workload-api-ca");
    let inputs = WorkloadApiInputs::new();
    let svid1 = ca.issue_leaf("svid1", &[&format!("URI:{ID}")]);
    let svid2 = ca.issue_leaf("svid2", &[&format!("URI:{ID}")]);
    inputs.set_svid(&svid1);
    inputs.set_bundle(&ca.ca_cert());
    let server = start_workload_api_server(&inputs, ID);
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0', tls: {{client_auth: none}}}}]\n\
         identity: {{workload_api: 'unix://{}'}}\n",
        inputs.socket().display(),
    ));
    let port = tg.proxy_addr("agents").port().to_string();
    let presented = || {
        let out = run_checked(
            command(python()).args(["-c", PEER_CERT, &port, ca.ca_cert().to_str().unwrap()]),
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(presented(), sha256_of_pem(&svid1.cert));

    inputs.set_svid(&svid2);
    rotate(&server, 2);
    let want = sha256_of_pem(&svid2.cert);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while presented() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated SVID was never served"
        );
    }
}
