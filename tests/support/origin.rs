//! `tests/origins/echo_origin.py` as a child process: a Python HTTP/1.1 origin with `/echo`,
//! `/sse`, `/bytes`, `/status/<code>`, `/delay` and, with a JWKS URL, `/jwt/...` (see the
//! script's docstring).

use super::{ChildGuard, Lines, Pki, command, python, repo_root, run_checked};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A running echo origin on 127.0.0.1 (port chosen by the origin itself), killed on drop.
pub struct PyOrigin {
    child: ChildGuard,
    port: u16,
    tls: bool,
    stderr: Lines,
}

impl PyOrigin {
    /// Starts the origin, plain HTTP or TLS with the `Pki`'s `localhost` leaf, and waits
    /// (bounded: 20 s) for its `ready <port>` line.
    pub fn start(tls: Option<&Pki>) -> PyOrigin {
        Self::spawn(tls, None, None)
    }

    /// TLS origin that asks for a client certificate (optional) and verifies it against
    /// `client_ca`; `/echo` reports it as `client_cert` (`subject`, `san`).
    pub fn start_mtls(pki: &Pki, client_ca: &Path) -> PyOrigin {
        Self::spawn(Some(pki), Some(client_ca), None)
    }

    /// Plain-HTTP origin that also serves `/jwt/...`: a resource server that verifies the
    /// `Authorization: Bearer` JWT against the JWK Set at `jwks_url` (fetched on every
    /// request; tollgate's admin `/.well-known/jwks.json`) with Python joserfc, ES256 and
    /// EdDSA only. 200 `{"verified": true, "header", "claims", "path"}` or 401
    /// `{"verified": false, "error", "path"}`; claims are not checked, the test does that.
    pub fn start_with_jwks(jwks_url: &str) -> PyOrigin {
        Self::spawn(None, None, Some(jwks_url))
    }

    /// [`PyOrigin::start_with_jwks`] over TLS with the `Pki`'s `localhost` leaf.
    pub fn start_tls_with_jwks(pki: &Pki, jwks_url: &str) -> PyOrigin {
        Self::spawn(Some(pki), None, Some(jwks_url))
    }

    fn spawn(tls: Option<&Pki>, client_ca: Option<&Path>, jwks_url: Option<&str>) -> PyOrigin {
        let mut cmd = command(python());
        cmd.arg(script()).args(["--port", "0"]);
        if let Some(pki) = tls {
            cmd.arg("--cert")
                .arg(pki.server_cert())
                .arg("--key")
                .arg(pki.server_key());
        }
        if let Some(ca) = client_ca {
            cmd.arg("--client-ca").arg(ca);
        }
        if let Some(url) = jwks_url {
            cmd.arg("--jwks-url").arg(url);
        }
        let mut child = cmd
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = Lines::capture(child.stdout.take().unwrap(), "origin stdout");
        let stderr = Lines::capture(child.stderr.take().unwrap(), "origin stderr");
        let child = ChildGuard::new(child);
        let timeout = Duration::from_secs(20);
        let Some((_, line)) = stdout.wait_for(0, |l| l.starts_with("ready "), timeout) else {
            panic!(
                "echo_origin.py printed no `ready` line within {timeout:?}; stderr:\n{}",
                stderr.text()
            );
        };
        let port = line["ready ".len()..].trim().parse().expect("ready <port>");
        PyOrigin {
            child,
            port,
            tls: tls.is_some(),
            stderr,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    /// `http://127.0.0.1:PORT{path}`, or `https://localhost:PORT{path}` when started with TLS.
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}{path}", self.port)
        } else {
            format!("http://127.0.0.1:{}{path}", self.port)
        }
    }
    /// The origin's stderr so far (one line per request, and TLS handshake failures).
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().is_none()
    }

    /// SHA-256 hex of the body `/bytes?n=N` serves (computed by the same script).
    pub fn bytes_sha256(n: u64) -> String {
        let out = run_checked(
            command(python())
                .arg(script())
                .arg("--bytes-sha256")
                .arg(n.to_string()),
            Duration::from_secs(120),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn script() -> PathBuf {
    repo_root().join("tests/origins/echo_origin.py")
}

/// A file path for `/sse?release=<path>`: the origin sends its second event once the file
/// exists. Create it with [`SseRelease::release`].
pub struct SseRelease {
    dir: tempfile::TempDir,
}

impl SseRelease {
    pub fn new() -> SseRelease {
        SseRelease {
            dir: tempfile::Builder::new()
                .prefix("tollgate-sse-")
                .tempdir()
                .expect("tempdir"),
        }
    }
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("release")
    }
    /// The query string for `/sse`: `release=<percent-encoded path>`.
    pub fn query(&self) -> String {
        let p = self.path();
        let mut q = String::from("release=");
        for b in p.to_str().expect("utf-8 temp path").bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        q
    }
    /// Lets the origin send its second event.
    pub fn release(&self) {
        std::fs::write(self.path(), b"go").unwrap();
    }
}
