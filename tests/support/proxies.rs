//! Reference forward proxies (Debian's squid and tinyproxy) as real peers: they prove the
//! agents' proxy options work before tollgate is involved, and give tests a baseline to
//! compare tollgate's behaviour with. Both run in the foreground from a temp dir, no caching.

use super::{ChildGuard, Pki, command, free_port, is_root, require_tool, wait_for_port};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// squid (`squid -N`), plain HTTP or an HTTPS proxy (TLS on the listener, `https_port`).
pub struct Squid {
    child: ChildGuard,
    dir: TempDir,
    port: u16,
    tls: bool,
}

impl Squid {
    /// Starts squid; with a `Pki` the listener speaks TLS with its `localhost` leaf. Waits
    /// (bounded: 30 s) until the port accepts.
    pub fn start(tls: Option<&Pki>) -> Squid {
        let bin = require_tool("squid");
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("tollgate-squid-")
                .tempdir()
                .expect("tempdir");
            // squid drops to cache_effective_user (`proxy`) when started as root: let it write.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            let port = free_port();
            let d = dir.path().display();
            let listen = match tls {
                None => format!("http_port 127.0.0.1:{port}"),
                Some(pki) => {
                    // Copies readable by the unprivileged user squid re-reads them as.
                    std::fs::copy(pki.server_cert(), dir.path().join("proxy.pem")).unwrap();
                    std::fs::copy(pki.server_key(), dir.path().join("proxy-key.pem")).unwrap();
                    for f in ["proxy.pem", "proxy-key.pem"] {
                        std::fs::set_permissions(
                            dir.path().join(f),
                            std::fs::Permissions::from_mode(0o644),
                        )
                        .unwrap();
                    }
                    format!(
                        "https_port 127.0.0.1:{port} tls-cert={d}/proxy.pem tls-key={d}/proxy-key.pem"
                    )
                }
            };
            let conf = format!(
                "# written by tests/support/proxies.rs\n{listen}\n\
                 pid_filename {d}/squid.pid\ncache_log {d}/cache.log\naccess_log stdio:{d}/access.log\n\
                 cache_store_log none\ncache deny all\ncache_mem 0 MB\ncoredump_dir {d}\n\
                 netdb_filename none\npinger_enable off\ndns_nameservers 127.0.0.1\n\
                 http_access allow localhost\nhttp_access deny all\nshutdown_lifetime 0 seconds\n{}",
                if is_root() {
                    "cache_effective_user proxy\n"
                } else {
                    ""
                }
            );
            let conf_path = dir.path().join("squid.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let child = command(&bin)
                .arg("-N")
                .arg("-f")
                .arg(&conf_path)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn squid: {e}"));
            let mut squid = Squid {
                child: ChildGuard::new(child),
                dir,
                port,
                tls: tls.is_some(),
            };
            match wait_child_port(&mut squid.child, port, Duration::from_secs(30)) {
                Ok(()) => return squid,
                Err(e) => {
                    let log = squid.cache_log_text();
                    if !log.contains("Address already in use") {
                        panic!("squid did not start: {e}\n{log}");
                    }
                    last = log;
                }
            }
        }
        panic!("squid could not bind a free port after 5 attempts: {last}")
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` for the TLS listener.
    pub fn proxy_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// squid's native access log lines (`… TCP_TUNNEL/200 … CONNECT host:port …`).
    pub fn access_log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    pub fn cache_log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }
}

/// tinyproxy (`tinyproxy -d`), plain HTTP; CONNECT to any port.
pub struct Tinyproxy {
    child: ChildGuard,
    dir: TempDir,
    port: u16,
}

impl Tinyproxy {
    /// Starts tinyproxy and waits (bounded: 20 s) until its port accepts.
    pub fn start() -> Tinyproxy {
        let bin = require_tool("tinyproxy");
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("tollgate-tinyproxy-")
                .tempdir()
                .expect("tempdir");
            let port = free_port();
            let d = dir.path().display();
            // No ConnectPort lines: CONNECT is allowed to every port.
            let conf = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 256\nAllow 127.0.0.1\n\
                 LogLevel Info\nLogFile \"{d}/tinyproxy.log\"\nPidFile \"{d}/tinyproxy.pid\"\n"
            );
            let conf_path = dir.path().join("tinyproxy.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let child = command(&bin)
                .arg("-d")
                .arg("-c")
                .arg(&conf_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn tinyproxy: {e}"));
            let mut tp = Tinyproxy {
                child: ChildGuard::new(child),
                dir,
                port,
            };
            match wait_child_port(&mut tp.child, port, Duration::from_secs(20)) {
                Ok(()) => return tp,
                Err(e) => {
                    let log = tp.log_text();
                    if !log.contains("in use") {
                        panic!("tinyproxy did not start: {e}\n{log}");
                    }
                    last = log;
                }
            }
        }
        panic!("tinyproxy could not bind a free port after 5 attempts: {last}")
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `http://127.0.0.1:PORT`.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }
}

/// Polls `port` until it accepts, failing early if the child exits.
fn wait_child_port(child: &mut ChildGuard, port: u16, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait() {
            return Err(format!("exited ({status}) before port {port} accepted"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("port {port} not accepting within {timeout:?}"));
        }
        if wait_for_port(addr, left.min(Duration::from_millis(100))).is_ok() {
            return Ok(());
        }
    }
}
