//! Test PKI made with the `openssl` CLI (never with the code under test): an origin CA and
//! leaves it signs, all files in a `TempDir`.

use super::{command, require_tool, run_checked};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// A certificate and its private key (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An origin CA (`ca.pem`, `ca-key.pem`) and a server leaf for `localhost`
/// (`server.pem`, `server-key.pem`, SANs `DNS:localhost, IP:127.0.0.1`). Keys are ECDSA P-256,
/// certificates valid from now for 30 days.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Creates the CA and the `localhost` server leaf.
    pub fn new() -> Pki {
        Self::with_ca_name("tollgate test origin CA")
    }

    /// Like [`Pki::new`], with the CA's subject CN given (two `Pki`s are two unrelated CAs).
    pub fn with_ca_name(cn: &str) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-pki-")
            .tempdir()
            .expect("tempdir");
        let pki = Pki { dir };
        let cnf = pki.path("ca.cnf");
        std::fs::write(
            &cnf,
            format!(
                "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = v3_ca\n\
                 [dn]\nCN = {cn}\n\
                 [v3_ca]\nbasicConstraints = critical, CA:TRUE\n\
                 keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n"
            ),
        )
        .unwrap();
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
            s(&pki.ca_key()),
            "-out",
            s(&pki.ca_cert()),
        ]);
        pki.issue_leaf("server", &["DNS:localhost", "IP:127.0.0.1"]);
        pki
    }

    /// The folder holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// `ca.pem`: trust this to verify the origin's leaf.
    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.path("ca-key.pem")
    }
    /// `server.pem`: the `localhost` leaf.
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.path("server-key.pem")
    }
    /// The `localhost` leaf and its key together.
    pub fn server(&self) -> TlsFiles {
        TlsFiles {
            cert: self.server_cert(),
            key: self.server_key(),
        }
    }

    /// Issues `<name>.pem` / `<name>-key.pem` signed by this CA with the given SANs, written
    /// as openssl wants them (`DNS:host`, `IP:1.2.3.4`, `URI:spiffe://td/path`). EKU is
    /// serverAuth + clientAuth, so the same call makes origin certs and client certs (SVIDs).
    pub fn issue_leaf(&self, name: &str, sans: &[&str]) -> TlsFiles {
        let cn = sans
            .first()
            .map(|s| s.split_once(':').map_or(*s, |(_, v)| v))
            .unwrap_or(name);
        let ext = format!(
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth, clientAuth\nsubjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n{}",
            if sans.is_empty() {
                String::new()
            } else {
                format!("subjectAltName = {}\n", sans.join(", "))
            }
        );
        self.issue_with_extensions(name, cn, &ext)
    }

    /// Issues `<name>.pem` / `<name>-key.pem` with subject `CN=<cn>` and exactly the X.509v3
    /// extensions in `ext` (openssl extension-file syntax): for malformed-certificate tests.
    pub fn issue_with_extensions(&self, name: &str, cn: &str, ext: &str) -> TlsFiles {
        let files = TlsFiles {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}-key.pem")),
        };
        let csr = self.path(&format!("{name}.csr"));
        let ext_file = self.path(&format!("{name}.ext"));
        let req_cnf = self.path(&format!("{name}.req.cnf"));
        std::fs::write(&ext_file, ext).unwrap();
        std::fs::write(
            &req_cnf,
            format!("[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nCN = {cn}\n"),
        )
        .unwrap();
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-config",
            s(&req_cnf),
            "-keyout",
            s(&files.key),
            "-out",
            s(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&self.ca_cert()),
            "-CAkey",
            s(&self.ca_key()),
            "-CAserial",
            s(&self.path("ca.srl")),
            "-CAcreateserial",
            "-days",
            "30",
            "-sha256",
            "-extfile",
            s(&ext_file),
            "-out",
            s(&files.cert),
        ]);
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs `openssl ARGS…`, panicking with its stderr on failure.
pub fn openssl(args: &[&str]) -> std::process::Output {
    run_checked(
        command(require_tool("openssl")).args(args),
        Duration::from_secs(60),
    )
}
