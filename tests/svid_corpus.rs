//! X.509-SVID client verification against a bad-certificate corpus, through full TLS
//! handshakes with real clients.
//!
//! The corpus is made with the `openssl` CLI only (never with tollgate's rcgen code), so the
//! verifier is checked against certificates it had no hand in: two trust domains
//! (`example.org` with an intermediate CA, `other.test`), a rogue CA nobody trusts, and one leaf
//! per rule of the SPIFFE X.509-SVID specification. Validity windows in the past and the future
//! come from `openssl ca -startdate/-enddate` (OpenSSL 3.0 has no `-not_before` on `req`/`x509`).
//!
//! Each case is a real handshake: an in-process tokio-rustls server using
//! `SpiffeClientVerifier`, and curl (every case) or Python's `ssl` module (a subset, including
//! TLS 1.2) as the client. A test asserts the client's verdict, the TLS alert a refused client
//! receives, the reason the server got back from the handshake error (`rejection_of_io`) and,
//! when accepted, the SPIFFE ID the server read with `peer_spiffe_id`. The same server serves
//! every case of a test, so each test also shows that it keeps serving after refusals.
//!
//! The `the_tollgate_binary_…` tests run the same corpus through the real `tollgate` binary:
//! one TLS listener with `client_auth: required`, both trust domains, the bundled policy with
//! data allowing the corpus' valid IDs to `GET` 127.0.0.1, and a Python origin. curl
//! (`--proxy-cert`, every case) and Python's `ssl` (a subset, TLS 1.3 and 1.2) send an
//! absolute-form `GET` through the HTTPS proxy. An accepted case gets 200 and its decision-log
//! line names the leaf's SPIFFE ID; a refused one fails the handshake with a
//! `certificate_unknown` alert, `tollgate_identity_rejections_total{reason}` goes up by exactly
//! one under the expected reason (every series is compared after every request), and a valid
//! request right after it still succeeds.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    Pki, PyOrigin, Tollgate, command, python, repo_root, require_tool, run_with_timeout,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tollgate::identity::svid::{
    ClientAuthMode, SpiffeClientVerifier, SvidRejection, TrustBundles, load_bundle, peer_spiffe_id,
    rejection_of_io,
};

// ---------------------------------------------------------------------------------------------
// The corpus (openssl CLI)
// ---------------------------------------------------------------------------------------------

/// What the verifier must decide for one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Accepted, and the server reads exactly this SPIFFE ID from the connection.
    Accept(&'static str),
    /// Refused for exactly this reason.
    Reject(SvidRejection),
}

/// One leaf of the corpus.
struct Case {
    name: &'static str,
    /// Which CA signs it: `example`, `intermediate`, `other` or `rogue`.
    issuer: &'static str,
    /// The X.509v3 extensions, openssl extension-file syntax.
    ext: String,
    /// `openssl ca -startdate/-enddate`; `None`: from an hour ago for 30 days.
    dates: Option<(&'static str, &'static str)>,
    /// Send the intermediate CA after the leaf (curl and Python send the whole PEM file).
    with_chain: bool,
    verdict: Verdict,
}

/// Extensions of a well-formed leaf SVID with the given `subjectAltName` entries.
fn svid_ext(sans: &[&str]) -> String {
    leaf_ext(
        "critical, CA:FALSE",
        "critical, digitalSignature",
        "clientAuth, serverAuth",
        sans,
    )
}

fn leaf_ext(basic: &str, key_usage: &str, eku: &str, sans: &[&str]) -> String {
    let mut ext = format!(
        "[ext]\nbasicConstraints = {basic}\nkeyUsage = {key_usage}\nextendedKeyUsage = {eku}\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    );
    if !sans.is_empty() {
        // A section, so URIs with `?`, `:` or `,` reach the certificate verbatim.
        ext.push_str("subjectAltName = @san\n[san]\n");
        let mut uri = 0;
        let mut dns = 0;
        for san in sans {
            match san.split_once(':') {
                Some(("URI", value)) => {
                    uri += 1;
                    ext.push_str(&format!("URI.{uri} = {value}\n"));
                }
                Some(("DNS", value)) => {
                    dns += 1;
                    ext.push_str(&format!("DNS.{dns} = {value}\n"));
                }
                _ => panic!("unsupported SAN in the corpus: {san}"),
            }
        }
    }
    ext
}

/// The whole corpus: every rule of the verifier, plus the ones that must pass.
fn cases() -> Vec<Case> {
    use SvidRejection::*;
    use Verdict::*;
    let case = |name, issuer, ext: String, verdict| Case {
        name,
        issuer,
        ext,
        dates: None,
        with_chain: false,
        verdict,
    };
    vec![
        case(
            "valid-direct",
            "example",
            svid_ext(&["URI:spiffe://example.org/ns/agents/sa/triage"]),
            Accept("spiffe://example.org/ns/agents/sa/triage"),
        ),
        Case {
            with_chain: true,
            ..case(
                "valid-via-intermediate",
                "intermediate",
                svid_ext(&["URI:spiffe://example.org/ns/agents/sa/deep"]),
                Accept("spiffe://example.org/ns/agents/sa/deep"),
            )
        },
        case(
            "valid-other-domain",
            "other",
            svid_ext(&["URI:spiffe://other.test/agent/summarize"]),
            Accept("spiffe://other.test/agent/summarize"),
        ),
        case(
            "valid-with-dns-san",
            "example",
            svid_ext(&["DNS:agent.example.org", "URI:spiffe://example.org/with-dns"]),
            Accept("spiffe://example.org/with-dns"),
        ),
        case(
            "untrusted-ca",
            "rogue",
            svid_ext(&["URI:spiffe://example.org/ns/agents/sa/triage"]),
            Reject(UntrustedChain),
        ),
        case(
            "cross-domain-forgery",
            "other",
            svid_ext(&["URI:spiffe://example.org/ns/admin"]),
            Reject(UntrustedChain),
        ),
        case(
            // The intermediate is not sent and not in the bundle: no path to the root.
            "intermediate-missing",
            "intermediate",
            svid_ext(&["URI:spiffe://example.org/ns/agents/sa/deep"]),
            Reject(UntrustedChain),
        ),
        Case {
            dates: Some(("20200101000000Z", "20210101000000Z")),
            ..case(
                "expired",
                "example",
                svid_ext(&["URI:spiffe://example.org/old"]),
                Reject(Expired),
            )
        },
        Case {
            dates: Some(("20990101000000Z", "21000101000000Z")),
            ..case(
                "not-yet-valid",
                "example",
                svid_ext(&["URI:spiffe://example.org/future"]),
                Reject(NotYetValid),
            )
        },
        case(
            "two-uri-sans",
            "example",
            svid_ext(&["URI:spiffe://example.org/a", "URI:spiffe://example.org/b"]),
            Reject(MultipleUriSans),
        ),
        case(
            "no-uri-san",
            "example",
            svid_ext(&["DNS:agent.example.org"]),
            Reject(NoUriSan),
        ),
        case(
            "no-san-extension",
            "example",
            svid_ext(&[]),
            Reject(NoUriSan),
        ),
        case(
            "https-uri",
            "example",
            svid_ext(&["URI:https://example.org/agent"]),
            Reject(NotSpiffe),
        ),
        case(
            "query-in-id",
            "example",
            svid_ext(&["URI:spiffe://example.org/agent?admin=1"]),
            Reject(InvalidSpiffeId),
        ),
        case(
            "port-in-id",
            "example",
            svid_ext(&["URI:spiffe://example.org:8443/agent"]),
            Reject(InvalidSpiffeId),
        ),
        case(
            "upper-case-trust-domain",
            "example",
            svid_ext(&["URI:spiffe://EXAMPLE.org/agent"]),
            Reject(InvalidSpiffeId),
        ),
        case(
            "trust-domain-id-as-leaf",
            "example",
            svid_ext(&["URI:spiffe://example.org"]),
            Reject(InvalidSpiffeId),
        ),
        case(
            "unknown-trust-domain",
            "example",
            svid_ext(&["URI:spiffe://unknown.test/agent"]),
            Reject(UnknownTrustDomain),
        ),
        case(
            "ca-as-leaf",
            "example",
            leaf_ext(
                "critical, CA:TRUE",
                "critical, digitalSignature, keyCertSign, cRLSign",
                "clientAuth",
                &["URI:spiffe://example.org/ns/ca"],
            ),
            Reject(CaAsLeaf),
        ),
        case(
            "key-cert-sign-only",
            "example",
            leaf_ext(
                "critical, CA:FALSE",
                "critical, keyCertSign",
                "clientAuth",
                &["URI:spiffe://example.org/signer"],
            ),
            Reject(BadKeyUsage),
        ),
        case(
            "no-digital-signature",
            "example",
            leaf_ext(
                "critical, CA:FALSE",
                "critical, keyEncipherment, keyAgreement",
                "clientAuth",
                &["URI:spiffe://example.org/encipher"],
            ),
            Reject(BadKeyUsage),
        ),
        case(
            "crl-sign-beside-digital-signature",
            "example",
            leaf_ext(
                "critical, CA:FALSE",
                "critical, digitalSignature, cRLSign",
                "clientAuth",
                &["URI:spiffe://example.org/crl"],
            ),
            Reject(BadKeyUsage),
        ),
        case(
            "server-auth-only-eku",
            "example",
            leaf_ext(
                "critical, CA:FALSE",
                "critical, digitalSignature",
                "serverAuth",
                &["URI:spiffe://example.org/server-only"],
            ),
            Reject(BadExtendedKeyUsage),
        ),
    ]
}

/// The SPIFFE PKI and the corpus leaves, all files in one `TempDir`.
struct Corpus {
    dir: TempDir,
}

impl Corpus {
    fn generate() -> Corpus {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-svid-")
            .tempdir()
            .expect("tempdir");
        let corpus = Corpus { dir };
        corpus.root("example", "example.org");
        corpus.root("other", "other.test");
        corpus.root("rogue", "example.org"); // claims example.org; nobody configured it
        // The intermediate: a CA of example.org, signed by its root.
        corpus.make_ca_dir("intermediate");
        corpus.new_key_and_csr("intermediate/ca", "example.org intermediate CA");
        corpus.sign(
            "example",
            "intermediate/ca",
            "[ext]\nbasicConstraints = critical, CA:TRUE, pathlen:0\n\
             keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\nsubjectAltName = URI:spiffe://example.org\n",
            None,
        );
        for case in cases() {
            corpus.new_key_and_csr(case.name, case.name);
            corpus.sign(case.issuer, case.name, &case.ext, case.dates);
            if case.with_chain {
                let leaf = std::fs::read_to_string(corpus.path(&format!("{}.pem", case.name)))
                    .expect("read leaf");
                let intermediate = std::fs::read_to_string(corpus.path("intermediate/ca.pem"))
                    .expect("read intermediate");
                let chain = corpus.path(&format!("{}-chain.pem", case.name));
                std::fs::write(chain, leaf + &intermediate).expect("write chain");
            }
        }
        corpus
    }

    /// The PEM file a client presents (leaf, plus the intermediate for `with_chain` cases).
    fn cert(&self, name: &str) -> PathBuf {
        let chain = self.path(&format!("{name}-chain.pem"));
        if chain.exists() {
            chain
        } else {
            self.path(&format!("{name}.pem"))
        }
    }

    fn key(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}-key.pem"))
    }

    /// The configured bundles: example.org and other.test roots (not the rogue one), read
    /// through `load_bundle` as the proxy will.
    fn bundles(&self) -> TrustBundles {
        let mut bundles = TrustBundles::new();
        for (td, ca) in [("example.org", "example"), ("other.test", "other")] {
            let bundle = load_bundle(&self.path(&format!("{ca}/ca.pem"))).expect("load bundle");
            bundles.insert(td.to_string(), bundle);
        }
        bundles
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed root CA in `<name>/` with the `openssl ca` bookkeeping files.
    fn root(&self, name: &str, trust_domain: &str) {
        self.make_ca_dir(name);
        let cnf = self.path(&format!("{name}/root.cnf"));
        std::fs::write(
            &cnf,
            format!(
                "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = v3_ca\n\
                 [dn]\nCN = {trust_domain} root CA ({name})\n\
                 [v3_ca]\nbasicConstraints = critical, CA:TRUE\n\
                 keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n\
                 subjectAltName = URI:spiffe://{trust_domain}\n"
            ),
        )
        .expect("write root.cnf");
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
            "-config",
            s(&cnf),
            "-keyout",
            s(&self.path(&format!("{name}/ca-key.pem"))),
            "-out",
            s(&self.path(&format!("{name}/ca.pem"))),
        ]);
    }

    /// `<name>/` with an `openssl ca` config, database and serial file.
    fn make_ca_dir(&self, name: &str) {
        let dir = self.path(name);
        std::fs::create_dir_all(dir.join("newcerts")).expect("mkdir ca dir");
        std::fs::write(dir.join("index.txt"), "").expect("write index.txt");
        std::fs::write(dir.join("serial"), "1000\n").expect("write serial");
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = this\n\
                 [this]\ndir = {d}\ndatabase = {d}/index.txt\nnew_certs_dir = {d}/newcerts\n\
                 serial = {d}/serial\ncertificate = {d}/ca.pem\nprivate_key = {d}/ca-key.pem\n\
                 default_md = sha256\ndefault_days = 30\npolicy = anything\n\
                 unique_subject = no\nemail_in_dn = no\n\
                 [anything]\ncommonName = optional\n",
                d = dir.display()
            ),
        )
        .expect("write ca.cnf");
    }

    /// `<name>-key.pem` (P-256) and `<name>.csr` with subject `CN=<cn>`.
    fn new_key_and_csr(&self, name: &str, cn: &str) {
        let cnf = self.path(&format!("{name}.req.cnf"));
        std::fs::write(
            &cnf,
            format!("[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nCN = {cn}\n"),
        )
        .expect("write req.cnf");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-config",
            s(&cnf),
            "-keyout",
            s(&self.path(&format!("{name}-key.pem"))),
            "-out",
            s(&self.path(&format!("{name}.csr"))),
        ]);
    }

    /// Signs `<name>.csr` with CA `issuer` into `<name>.pem`, with exactly the extensions of
    /// section `[ext]` of `ext` and the given validity (default: from an hour ago, 30 days).
    fn sign(&self, issuer: &str, name: &str, ext: &str, dates: Option<(&str, &str)>) {
        let ext_file = self.path(&format!("{name}.ext"));
        std::fs::write(&ext_file, ext).expect("write ext");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let (start, end) = match dates {
            Some((start, end)) => (start.to_string(), end.to_string()),
            None => (
                generalized_time(now - 3600),
                generalized_time(now + 30 * 86_400),
            ),
        };
        openssl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            s(&self.path(&format!("{issuer}/ca.cnf"))),
            "-in",
            s(&self.path(&format!("{name}.csr"))),
            "-out",
            s(&self.path(&format!("{name}.pem"))),
            "-extfile",
            s(&ext_file),
            "-extensions",
            "ext",
            "-startdate",
            &start,
            "-enddate",
            &end,
        ]);
    }
}

/// `YYYYMMDDHHMMSSZ` for a UNIX time (civil-from-days, proleptic Gregorian).
fn generalized_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn openssl(args: &[&str]) {
    let out = run_with_timeout(
        command(require_tool("openssl")).args(args),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The server under test: tokio-rustls with SpiffeClientVerifier
// ---------------------------------------------------------------------------------------------

/// What the server saw of one connection.
#[derive(Debug)]
enum Seen {
    /// Handshake completed; `peer_spiffe_id` of the connection.
    Accepted(Option<String>),
    /// Handshake failed; the reason `rejection_of_io` recovered, and the error text.
    Refused(Option<SvidRejection>, String),
}

/// A TLS server on 127.0.0.1 that answers each accepted connection with one HTTP response
/// whose body is the client's SPIFFE ID (or `anonymous`), and reports every connection.
struct Server {
    port: u16,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
    /// The server's own PKI (the clients' `--cacert`), made with openssl by the harness.
    pki: Pki,
}

impl Server {
    async fn start(bundles: &TrustBundles, mode: ClientAuthMode) -> Server {
        tollgate::tls::install_crypto_provider();
        let pki = Pki::with_ca_name("svid corpus server CA");
        let verifier = SpiffeClientVerifier::new(bundles, mode).expect("build verifier");
        let chain = tollgate::tls::load_certs(&pki.server_cert()).expect("server cert");
        let key = tollgate::tls::load_key(&pki.server_key()).expect("server key");
        let config = rustls::ServerConfig::builder_with_provider(tollgate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            let id = peer_spiffe_id(tls.get_ref().1).map(|id| id.to_string());
                            let _ = tx.send(Seen::Accepted(id.clone()));
                            respond(&mut tls, id.as_deref().unwrap_or("anonymous")).await;
                        }
                        Err(e) => {
                            let reason = rejection_of_io(&e).map(|r| r.reason());
                            let _ = tx.send(Seen::Refused(reason, e.to_string()));
                        }
                    }
                });
            }
        });
        Server {
            port,
            seen,
            task,
            pki,
        }
    }

    /// The server's verdict on the next connection.
    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(15), self.seen.recv())
            .await
            .expect("the server reported no connection within 15 s")
            .expect("server task ended")
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }
}

/// Reads the request head (bounded), answers 200 with `body`, closes.
async fn respond<S: AsyncReadExt + AsyncWriteExt + Unpin>(tls: &mut S, body: &str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read_head).await;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(response.as_bytes()).await;
    let _ = tls.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// What a client reported.
#[derive(Debug)]
struct ClientResult {
    ok: bool,
    /// The response body (accepted) or the error text (refused).
    text: String,
}

/// `curl` with `--cert`/`--key` (none when `cert` is `None`), trusting the server's CA.
async fn curl(
    server: &Server,
    cert: Option<(PathBuf, PathBuf)>,
    extra: &[&'static str],
) -> ClientResult {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "15".into(),
        "--cacert".into(),
        s(&server.pki.ca_cert()).into(),
    ];
    if let Some((cert, key)) = cert {
        args.extend([
            "--cert".into(),
            s(&cert).into(),
            "--key".into(),
            s(&key).into(),
        ]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(server.url());
    let out = run(move || {
        run_with_timeout(
            command(require_tool("curl")).args(&args),
            Duration::from_secs(30),
        )
    })
    .await;
    ClientResult {
        ok: out.status.success(),
        text: if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::from_utf8_lossy(&out.stderr).into_owned()
        },
    }
}

/// Python's `ssl`: handshake with a client certificate, one HTTP request, the body back.
const PY_CLIENT: &str = r#"
import json, socket, ssl, sys
port, cafile, cert, key, max_version = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(cafile)
if cert != "-":
    ctx.load_cert_chain(cert, key)
if max_version == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
out = {"ok": False}
try:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=15) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            out["version"] = tls.version()
            tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.decode("latin-1").partition("\r\n\r\n")
    out.update(ok=head.startswith("HTTP/1.1 200"), text=body)
except (ssl.SSLError, OSError) as e:
    out["text"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"#;

/// Runs [`PY_CLIENT`]; `max_version` is `"1.2"` or `"1.3"`. Returns the result and the
/// negotiated TLS version (when the handshake got that far).
async fn python_client(
    server: &Server,
    cert: &Path,
    key: &Path,
    max_version: &'static str,
) -> (ClientResult, Option<String>) {
    let args: Vec<String> = vec![
        "-c".into(),
        PY_CLIENT.into(),
        server.port.to_string(),
        s(&server.pki.ca_cert()).into(),
        s(cert).into(),
        s(key).into(),
        max_version.into(),
    ];
    let out =
        run(move || run_with_timeout(command(python()).args(&args), Duration::from_secs(30))).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "python client printed no JSON ({e}): stdout {stdout}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        ClientResult {
            ok: json["ok"].as_bool() == Some(true),
            text: json["text"].as_str().unwrap_or_default().to_string(),
        },
        json["version"].as_str().map(str::to_string),
    )
}

async fn run(f: impl FnOnce() -> Output + Send + 'static) -> Output {
    tokio::task::spawn_blocking(f)
        .await
        .expect("client thread panicked")
}

/// The alert a refused SVID earns: rustls answers a verifier error with `certificate_unknown`.
fn got_certificate_unknown_alert(text: &str) -> bool {
    text.to_ascii_lowercase()
        .replace('_', " ")
        .contains("alert certificate unknown")
}

/// Asserts the client's and the server's verdicts on one case agree with `expected`.
async fn assert_verdict(
    server: &mut Server,
    client: &str,
    name: &str,
    expected: Verdict,
    result: ClientResult,
) {
    let seen = server.next_seen().await;
    match expected {
        Verdict::Accept(id) => {
            assert!(
                result.ok,
                "{client}: {name} must be accepted; client said: {}",
                result.text
            );
            assert_eq!(
                result.text, id,
                "{client}: {name}: the body is the peer's ID"
            );
            match seen {
                Seen::Accepted(Some(seen_id)) => assert_eq!(seen_id, id, "{client}: {name}"),
                other => panic!("{client}: {name}: server saw {other:?}, expected {id}"),
            }
        }
        Verdict::Reject(reason) => {
            assert!(
                !result.ok,
                "{client}: {name} must be refused ({}), but the client got: {}",
                reason.as_str(),
                result.text
            );
            assert!(
                got_certificate_unknown_alert(&result.text),
                "{client}: {name}: expected a certificate_unknown alert, client said: {}",
                result.text
            );
            match seen {
                Seen::Refused(Some(got), error) => {
                    assert_eq!(
                        got.as_str(),
                        reason.as_str(),
                        "{client}: {name}: wrong rejection reason; the server's error: {error}"
                    )
                }
                other => panic!(
                    "{client}: {name}: server saw {other:?}, expected refusal {}",
                    reason.as_str()
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary: `tollgate run` with a `client_auth: required` TLS listener
// ---------------------------------------------------------------------------------------------

/// The valid SVID used to show the proxy keeps serving.
const VALID: &str = "valid-direct";
const VALID_ID: &str = "spiffe://example.org/ns/agents/sa/triage";

/// How long to wait for a decision-log line or a metric to show up.
const WAIT: Duration = Duration::from_secs(15);

/// The response header that carries the decision ID back to the agent.
const DECISION_ID: &str = "x-tollgate-decision-id";

/// The header the policy sets on every allowed corpus request: the origin sees which agent
/// the policy matched.
const CALLER_HEADER: &str = "x-corpus-caller";

/// Data for the bundled policy: every SPIFFE ID the corpus accepts may `GET` anything on
/// 127.0.0.1, any port, only with a proven identity, and the policy tags the request with
/// [`CALLER_HEADER`].
fn corpus_policy_data() -> serde_json::Value {
    let mut agents = serde_json::Map::new();
    for case in cases() {
        if let Verdict::Accept(id) = case.verdict {
            agents.insert(
                id.to_string(),
                serde_json::json!({
                    "description": format!("corpus case {}", case.name),
                    "require_authenticated": true,
                    "rules": [{
                        "id": "corpus-local-read",
                        "hosts": ["127.0.0.1"],
                        "ports": ["*"],
                        "methods": ["GET"],
                        "headers": {"set": {CALLER_HEADER: id}},
                    }],
                }),
            );
        }
    }
    serde_json::json!({"tollgate_config": {"agents": agents}})
}

/// The tollgate binary with one TLS listener (`client_auth: required`), the corpus' two trust
/// domains, the bundled policy with [`corpus_policy_data`], and a Python origin; plus the
/// `tollgate_identity_rejections_total` series the test expects so far.
///
/// Fields drop in order: tollgate stops before the corpus directory (its trust bundles and
/// policy data, which it watches) is removed.
struct RealProxy {
    tg: Tollgate,
    origin: PyOrigin,
    /// The listener's PKI: `--proxy-cacert` for the agents (made with openssl by the harness).
    listener_pki: Pki,
    corpus: Corpus,
    /// `reason` → the count `/metrics` must show, across the whole test.
    expected_rejections: BTreeMap<String, u64>,
}

/// What an agent got through the proxy.
#[derive(Debug)]
struct ProxyReply {
    /// The client's exit code (curl), or `None` for the Python client.
    exit: Option<i32>,
    /// The HTTP status, when a response arrived.
    status: Option<u16>,
    decision_id: Option<String>,
    body: String,
    /// The client's error output (curl's stderr, Python's exception).
    error: String,
}

impl RealProxy {
    fn start(corpus: Corpus) -> RealProxy {
        let data = corpus.path("policy-data.json");
        std::fs::write(
            &data,
            serde_json::to_vec_pretty(&corpus_policy_data()).expect("policy data json"),
        )
        .expect("write policy data");
        let listener_pki = Pki::with_ca_name("svid corpus tollgate listener CA");
        let listener = listener_pki.issue_leaf("proxy", &["IP:127.0.0.1"]);
        let root = repo_root();
        let tg = Tollgate::start(&format!(
            "listeners:\n\
             - name: agents\n  address: '127.0.0.1:0'\n  tls: {{cert: '{}', key: '{}', client_auth: required}}\n\
             identity:\n  trust_domains:\n\
             \x20   example.org: {{bundle: '{}'}}\n\
             \x20   other.test: {{bundle: '{}'}}\n\
             policy: {{path: '{}', data: '{}'}}\n\
             upstream: {{allow_private: [127.0.0.0/8]}}\n",
            listener.cert.display(),
            listener.key.display(),
            corpus.path("example/ca.pem").display(),
            corpus.path("other/ca.pem").display(),
            root.join("policy-wasm").display(),
            data.display(),
        ));
        let origin = PyOrigin::start(None);
        let proxy = RealProxy {
            tg,
            origin,
            listener_pki,
            corpus,
            expected_rejections: BTreeMap::new(),
        };
        proxy.assert_rejections();
        proxy
    }

    /// `curl -x https://127.0.0.1:PORT --proxy-cert … http://127.0.0.1:ORIGIN/echo`; the
    /// proxy certificate file holds the intermediate after the leaf for `with_chain` cases,
    /// and curl sends the whole chain.
    fn curl(&self, cert: Option<(PathBuf, PathBuf)>) -> ProxyReply {
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "-i".into(),
            "--max-time".into(),
            "10".into(),
            "-x".into(),
            self.tg.proxy_url(),
            "--proxy-cacert".into(),
            s(&self.listener_pki.ca_cert()).into(),
        ];
        if let Some((cert, key)) = cert {
            args.extend([
                "--proxy-cert".into(),
                s(&cert).into(),
                "--proxy-key".into(),
                s(&key).into(),
            ]);
        }
        args.push(self.origin.url("/echo"));
        let out = support::curl(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (status, decision_id, body) = parse_response(&stdout);
        ProxyReply {
            exit: out.status.code(),
            status,
            decision_id,
            body,
            error: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }

    /// [`PY_PROXY_CLIENT`]: Python's `ssl` to the proxy with the client certificate, then an
    /// absolute-form `GET`. `max_version` is `"1.2"` or `"1.3"`.
    fn python(&self, cert: &Path, key: &Path, max_version: &str) -> ProxyReply {
        let port = self.tg.proxy_addr("agents").port().to_string();
        let out = run_with_timeout(
            command(python()).args([
                "-c",
                PY_PROXY_CLIENT,
                &port,
                s(&self.listener_pki.ca_cert()),
                s(cert),
                s(key),
                max_version,
                &self.origin.url("/echo"),
            ]),
            Duration::from_secs(30),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "python proxy client printed no JSON ({e}): stdout {stdout}, stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        if let Some(version) = json["version"].as_str() {
            let want = if max_version == "1.2" {
                "TLSv1.2"
            } else {
                "TLSv1.3"
            };
            assert_eq!(version, want, "python negotiated {version}: {json}");
        }
        let (status, decision_id, body) = parse_response(json["response"].as_str().unwrap_or(""));
        ProxyReply {
            exit: None,
            status,
            decision_id,
            body,
            error: json["error"].as_str().unwrap_or_default().to_string(),
        }
    }

    /// An accepted case: 200 from the origin, the decision log names exactly `id` as the
    /// caller, and the policy matched `id`'s entry (the origin got its header).
    fn assert_accepted(&self, client: &str, name: &str, id: &str, reply: &ProxyReply) {
        assert_eq!(
            reply.status,
            Some(200),
            "{client}: {name} must be accepted as {id}; got {reply:?}"
        );
        let decision_id = reply
            .decision_id
            .as_deref()
            .unwrap_or_else(|| panic!("{client}: {name}: no {DECISION_ID} header: {reply:?}"));
        let d = self
            .tg
            .wait_decision(|d| d["decision_id"] == decision_id, WAIT);
        assert_eq!(
            d["source"]["spiffe_id"], id,
            "{client}: {name}: the caller in the decision log: {d}"
        );
        assert_eq!(d["decision"]["allow"], true, "{client}: {name}: {d}");
        assert_eq!(d["request"]["method"], "GET", "{client}: {name}: {d}");
        assert_eq!(d["request"]["path"], "/echo", "{client}: {name}: {d}");
        let echoed: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| {
            panic!("{client}: {name}: origin body is not JSON ({e}): {reply:?}")
        });
        assert_eq!(
            echoed["headers"][CALLER_HEADER], id,
            "{client}: {name}: the policy matched another agent: {echoed}"
        );
    }

    /// A refused case: no HTTP response at all (the handshake failed), and
    /// `tollgate_identity_rejections_total{reason}` went up by exactly one, nothing else moved.
    fn assert_refused(&mut self, client: &str, name: &str, reason: &str, reply: &ProxyReply) {
        assert_eq!(
            reply.status, None,
            "{client}: {name} must be refused ({reason}), but got a response: {reply:?}"
        );
        if let Some(code) = reply.exit {
            // 35: TLS handshake error; 56: failure receiving (with TLS 1.3 the client has sent
            // its Finished and its request when the alert arrives). Not 28: a timeout would
            // mean the proxy hung instead of refusing.
            assert!(
                code == 35 || code == 56,
                "{client}: {name}: curl exit code {code}, expected 35 or 56: {reply:?}"
            );
        }
        // The refusal is a TLS alert, not a dropped connection.
        assert!(
            reply.error.to_ascii_lowercase().contains("alert"),
            "{client}: {name}: expected a TLS alert: {reply:?}"
        );
        *self
            .expected_rejections
            .entry(reason.to_string())
            .or_default() += 1;
        self.wait_rejections(&format!("{client}: {name}"));
    }

    /// One valid request after a refusal: the proxy keeps serving.
    fn assert_still_serving(&self, after: &str) {
        assert!(self.tg.is_running(), "tollgate exited after {after}");
        let reply = self.curl_case(VALID);
        self.assert_accepted(&format!("curl after {after}"), VALID, VALID_ID, &reply);
        // A valid request counts no rejection.
        self.assert_rejections();
    }

    /// [`curl`](Self::curl) with the corpus case's certificate (chain) and key.
    fn curl_case(&self, name: &str) -> ProxyReply {
        self.curl(Some((self.corpus.cert(name), self.corpus.key(name))))
    }

    /// [`python`](Self::python) with the corpus case's certificate (chain) and key.
    fn python_case(&self, name: &str, max_version: &str) -> ProxyReply {
        self.python(&self.corpus.cert(name), &self.corpus.key(name), max_version)
    }

    /// Asserts `reply` is what the corpus says of case `name`; after a refusal, shows the
    /// proxy still serves a valid agent.
    fn assert_verdict(&mut self, client: &str, name: &str, verdict: Verdict, reply: &ProxyReply) {
        match verdict {
            Verdict::Accept(id) => self.assert_accepted(client, name, id, reply),
            Verdict::Reject(reason) => {
                // rustls answers every verifier error with `certificate_unknown`.
                assert!(
                    got_certificate_unknown_alert(&reply.error),
                    "{client}: {name}: expected a certificate_unknown alert: {reply:?}"
                );
                self.assert_refused(client, name, reason.as_str(), reply);
                self.assert_still_serving(&format!("{client}: {name}"));
            }
        }
    }

    /// `tollgate_identity_rejections_total` by reason, as `/metrics` shows it now.
    fn rejections(&self) -> BTreeMap<String, u64> {
        let out = support::curl(&["-sS", "--max-time", "10", &self.tg.admin_url("/metrics")]);
        assert!(
            out.status.success(),
            "GET /metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_rejections(&String::from_utf8_lossy(&out.stdout))
    }

    /// Waits until `/metrics` shows exactly the expected rejections; fails at once if any
    /// series went beyond them (a refusal counted twice, or under another reason).
    fn wait_rejections(&self, what: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let now = self.rejections();
            if now == self.expected_rejections {
                return;
            }
            let over = now
                .iter()
                .any(|(k, v)| *v > self.expected_rejections.get(k).copied().unwrap_or(0));
            assert!(
                !over && std::time::Instant::now() < deadline,
                "{what}: tollgate_identity_rejections_total is {now:?}, expected {:?}",
                self.expected_rejections
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_rejections(&self) {
        assert_eq!(
            self.rejections(),
            self.expected_rejections,
            "tollgate_identity_rejections_total"
        );
    }
}

/// Splits a raw HTTP/1.1 response (`curl -i`, or what Python read) into the status, the
/// decision ID header and the body. Empty input: no response.
fn parse_response(raw: &str) -> (Option<u16>, Option<String>, String) {
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return (None, None, String::new());
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    let decision_id = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(DECISION_ID)
            .then(|| value.trim().to_string())
    });
    (status, decision_id, body.to_string())
}

/// The non-zero `tollgate_identity_rejections_total{reason="…"} N` lines of a Prometheus text
/// exposition (every reason's series exists from start-up, at zero).
fn parse_rejections(metrics: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("tollgate_identity_rejections_total{reason=\"")?;
            let (reason, rest) = rest.split_once("\"}")?;
            let value: f64 = rest.trim().parse().ok()?;
            (value > 0.0).then(|| (reason.to_string(), value as u64))
        })
        .collect()
}

/// Python's `ssl` through the HTTPS proxy: a TLS connection to the listener with the client
/// certificate (chain), then one absolute-form `GET`; prints the raw response (read to EOF,
/// `Connection: close`), the negotiated TLS version, or the error.
const PY_PROXY_CLIENT: &str = r#"
import json, socket, ssl, sys
port, cafile, cert, key, max_version, url = sys.argv[1:7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(cafile)
ctx.load_cert_chain(cert, key)
if max_version == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
host = url.split("/")[2]
out = {"response": "", "error": None, "version": None}
data = b""
try:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            out["version"] = tls.version()
            tls.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    if not data:
        out["error"] = "connection closed without a response"
except (ssl.SSLError, OSError) as e:
    out["error"] = f"{type(e).__name__}: {e}"
out["response"] = data.decode("latin-1")
print(json.dumps(out))
"#;

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_and_rejects_every_corpus_certificate_exactly_through_curl() {
    let corpus = Corpus::generate();
    let mut server = Server::start(&corpus.bundles(), ClientAuthMode::Required).await;
    let all = cases();
    for case in &all {
        let result = curl(
            &server,
            Some((corpus.cert(case.name), corpus.key(case.name))),
            &[],
        )
        .await;
        assert_verdict(&mut server, "curl", case.name, case.verdict, result).await;
    }
    // TLS 1.2 too: the client's CertificateVerify goes through verify_tls12_signature.
    let result = curl(
        &server,
        Some((corpus.cert("valid-direct"), corpus.key("valid-direct"))),
        &["--tls-max", "1.2"],
    )
    .await;
    let valid = Verdict::Accept("spiffe://example.org/ns/agents/sa/triage");
    assert_verdict(
        &mut server,
        "curl --tls-max 1.2",
        "valid-direct",
        valid,
        result,
    )
    .await;
    let result = curl(
        &server,
        Some((
            corpus.cert("cross-domain-forgery"),
            corpus.key("cross-domain-forgery"),
        )),
        &["--tls-max", "1.2"],
    )
    .await;
    let forged = Verdict::Reject(SvidRejection::UntrustedChain);
    assert_verdict(
        &mut server,
        "curl --tls-max 1.2",
        "cross-domain-forgery",
        forged,
        result,
    )
    .await;
    // Still serving after every refusal above.
    let result = curl(
        &server,
        Some((corpus.cert("valid-direct"), corpus.key("valid-direct"))),
        &[],
    )
    .await;
    assert_verdict(&mut server, "curl", "valid-direct (last)", valid, result).await;
    assert!(!server.task.is_finished(), "the accept loop stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_a_client_without_certificate_when_required() {
    let corpus = Corpus::generate();
    let mut server = Server::start(&corpus.bundles(), ClientAuthMode::Required).await;
    let result = curl(&server, None, &[]).await;
    assert!(!result.ok, "a certificate-less client got: {}", result.text);
    assert!(
        result.text.to_ascii_lowercase().contains("alert"),
        "expected a TLS alert, curl said: {}",
        result.text
    );
    match server.next_seen().await {
        Seen::Refused(Some(SvidRejection::NoCertificate), _) => {}
        other => panic!("server saw {other:?}, expected no_certificate"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_and_rejects_through_python_ssl_on_tls13_and_tls12() {
    use SvidRejection::*;
    let corpus = Corpus::generate();
    let mut server = Server::start(&corpus.bundles(), ClientAuthMode::Required).await;
    let subset: [(&str, Verdict, &str); 9] = [
        (
            "valid-direct",
            Verdict::Accept("spiffe://example.org/ns/agents/sa/triage"),
            "1.3",
        ),
        (
            "valid-via-intermediate",
            Verdict::Accept("spiffe://example.org/ns/agents/sa/deep"),
            "1.2",
        ),
        (
            "valid-other-domain",
            Verdict::Accept("spiffe://other.test/agent/summarize"),
            "1.3",
        ),
        (
            "cross-domain-forgery",
            Verdict::Reject(UntrustedChain),
            "1.3",
        ),
        ("expired", Verdict::Reject(Expired), "1.2"),
        ("not-yet-valid", Verdict::Reject(NotYetValid), "1.3"),
        ("two-uri-sans", Verdict::Reject(MultipleUriSans), "1.3"),
        ("ca-as-leaf", Verdict::Reject(CaAsLeaf), "1.2"),
        (
            "upper-case-trust-domain",
            Verdict::Reject(InvalidSpiffeId),
            "1.3",
        ),
    ];
    for (name, verdict, version) in subset {
        let (result, negotiated) =
            python_client(&server, &corpus.cert(name), &corpus.key(name), version).await;
        if result.ok {
            let want = if version == "1.2" {
                "TLSv1.2"
            } else {
                "TLSv1.3"
            };
            assert_eq!(negotiated.as_deref(), Some(want), "{name}");
        }
        assert_verdict(
            &mut server,
            &format!("python ssl {version}"),
            name,
            verdict,
            result,
        )
        .await;
    }
    assert!(!server.task.is_finished(), "the accept loop stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mode_accepts_anonymous_clients_but_still_rejects_bad_svids() {
    let corpus = Corpus::generate();
    let mut server = Server::start(&corpus.bundles(), ClientAuthMode::Optional).await;
    let result = curl(&server, None, &[]).await;
    assert!(result.ok, "anonymous client refused: {}", result.text);
    assert_eq!(result.text, "anonymous");
    match server.next_seen().await {
        Seen::Accepted(None) => {}
        other => panic!("server saw {other:?}, expected an anonymous connection"),
    }
    for (name, verdict) in [
        (
            "valid-direct",
            Verdict::Accept("spiffe://example.org/ns/agents/sa/triage"),
        ),
        (
            "untrusted-ca",
            Verdict::Reject(SvidRejection::UntrustedChain),
        ),
        ("https-uri", Verdict::Reject(SvidRejection::NotSpiffe)),
    ] {
        let result = curl(&server, Some((corpus.cert(name), corpus.key(name))), &[]).await;
        assert_verdict(&mut server, "curl (optional mode)", name, verdict, result).await;
    }
}

#[test]
fn generalized_time_matches_known_dates() {
    assert_eq!(generalized_time(0), "19700101000000Z");
    assert_eq!(generalized_time(951_782_400), "20000229000000Z");
    assert_eq!(generalized_time(1_700_000_000), "20231114221320Z");
}

#[test]
fn the_tollgate_binary_accepts_and_refuses_every_corpus_certificate_through_curl() {
    let started = Instant::now();
    let mut proxy = RealProxy::start(Corpus::generate());
    let ready = started.elapsed();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for case in cases() {
        let t = Instant::now();
        let reply = proxy.curl_case(case.name);
        proxy.assert_verdict("curl via tollgate", case.name, case.verdict, &reply);
        if let Verdict::Reject(reason) = case.verdict {
            *counted.entry(reason.as_str().to_string()).or_default() += 1;
        }
        eprintln!(
            "curl via tollgate: {:<34} {:<27} exit {:?}, status {:?}, {} ms {}",
            case.name,
            verdict_label(case.verdict),
            reply.exit,
            reply.status,
            t.elapsed().as_millis(),
            reply.error
        );
    }
    // No certificate at all: refused before any SVID rule applies.
    let reply = proxy.curl(None);
    let no_cert = SvidRejection::NoCertificate.as_str();
    proxy.assert_refused("curl via tollgate", "no certificate", no_cert, &reply);
    eprintln!(
        "curl via tollgate: {:<34} {:<27} exit {:?}, status {:?} {}",
        "(no client certificate)",
        format!("reject {no_cert}"),
        reply.exit,
        reply.status,
        reply.error
    );
    proxy.assert_still_serving("no certificate");
    *counted.entry(no_cert.to_string()).or_default() += 1;
    // Every refusal of the run, each under its own reason, and nothing else.
    assert_eq!(proxy.rejections(), counted);
    assert!(proxy.tg.is_running(), "tollgate exited");
    eprintln!(
        "curl via tollgate: corpus + tollgate ready in {} ms, whole test {} ms",
        ready.as_millis(),
        started.elapsed().as_millis()
    );
}

#[test]
fn the_tollgate_binary_accepts_and_refuses_through_python_ssl() {
    let started = Instant::now();
    let mut proxy = RealProxy::start(Corpus::generate());
    let all = cases();
    for (name, version) in [
        ("valid-direct", "1.3"),
        ("valid-via-intermediate", "1.2"),
        ("valid-other-domain", "1.3"),
        ("cross-domain-forgery", "1.3"),
        ("cross-domain-forgery", "1.2"),
        ("expired", "1.2"),
        ("not-yet-valid", "1.3"),
        ("ca-as-leaf", "1.3"),
        ("ca-as-leaf", "1.2"),
        ("intermediate-missing", "1.3"),
        ("two-uri-sans", "1.2"),
    ] {
        let verdict = all
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no corpus case {name}"))
            .verdict;
        let t = Instant::now();
        let reply = proxy.python_case(name, version);
        let client = format!("python ssl {version} via tollgate");
        proxy.assert_verdict(&client, name, verdict, &reply);
        eprintln!(
            "{client}: {name:<24} {:<27} status {:?}, {} ms {}",
            verdict_label(verdict),
            reply.status,
            t.elapsed().as_millis(),
            reply.error
        );
    }
    assert!(proxy.tg.is_running(), "tollgate exited");
    eprintln!(
        "python ssl via tollgate: whole test {} ms",
        started.elapsed().as_millis()
    );
}

fn verdict_label(verdict: Verdict) -> String {
    match verdict {
        Verdict::Accept(_) => "accept".to_string(),
        Verdict::Reject(reason) => format!("reject {}", reason.as_str()),
    }
}
