//! The stand-in for SPIRE's agent: `tests/origins/workload_api_server.py`, a SPIFFE Workload API
//! server that speaks the real protocol (gRPC over a unix socket, stubs generated from SPIFFE's
//! `workload.proto`) — not SPIRE. [`WorkloadApiInputs`] holds the PEM files it serves; SIGHUP
//! makes it re-read them and push them on every open stream (a rotation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Streaming, TlsFiles, command, python, repo_root};

/// The server's input files: what it serves after the next SIGHUP. The folder is readable by
/// every UID (mode 0755), so a tollgate running as another UID can reach the socket in it.
pub struct WorkloadApiInputs {
    dir: tempfile::TempDir,
}

impl WorkloadApiInputs {
    /// An empty folder (with `federated/`) for the server's files and socket.
    pub fn new() -> WorkloadApiInputs {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-wlapi-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the Workload API folder");
        std::fs::create_dir(dir.path().join("federated")).expect("mkdir");
        WorkloadApiInputs { dir }
    }
    /// A file in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The SVID (chain and PKCS#8 key) served from the next (re)load on.
    pub fn set_svid(&self, svid: &TlsFiles) {
        std::fs::copy(&svid.cert, self.path("svid.pem")).expect("copy svid");
        std::fs::copy(&svid.key, self.path("key.pem")).expect("copy key");
    }
    /// The SVID's own trust domain's bundle.
    pub fn set_bundle(&self, ca: &Path) {
        std::fs::copy(ca, self.path("bundle.pem")).expect("copy bundle");
    }
    /// Adds (`Some`) or removes (`None`) a federated trust domain's bundle.
    pub fn set_federated(&self, trust_domain: &str, ca: Option<&Path>) {
        let p = self.path("federated").join(format!("{trust_domain}.pem"));
        match ca {
            Some(ca) => {
                std::fs::copy(ca, p).expect("copy federated bundle");
            }
            None => std::fs::remove_file(p).expect("remove federated bundle"),
        }
    }
    /// The server's socket.
    pub fn socket(&self) -> PathBuf {
        self.path("agent.sock")
    }
}

/// Starts the Python Workload API server on `inputs`, serving `spiffe_id` as the SVID's ID,
/// and waits for its "ready" line.
pub fn start_workload_api_server(inputs: &WorkloadApiInputs, spiffe_id: &str) -> Streaming {
    let script = repo_root().join("tests/origins/workload_api_server.py");
    let server = Streaming::spawn(
        command(python())
            .arg(script)
            .arg("--socket")
            .arg(inputs.socket())
            .args(["--spiffe-id", spiffe_id])
            .arg("--svid")
            .arg(inputs.path("svid.pem"))
            .arg("--key")
            .arg(inputs.path("key.pem"))
            .arg("--bundle")
            .arg(inputs.path("bundle.pem"))
            .arg("--federated-dir")
            .arg(inputs.path("federated")),
    );
    // Generating the stubs with grpcio-tools takes a moment on a cold machine.
    server.wait_line("ready", Duration::from_secs(60));
    server
}
