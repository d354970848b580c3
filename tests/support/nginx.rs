//! A real nginx as an origin: plain HTTP and optionally TLS with HTTP/2, a docroot the test
//! fills, and a JSON access log that shows what arrived at the origin.

use super::{
    ChildGuard, Pki, TlsFiles, command, is_root, require_tool, wait_for_port,
    write_pseudo_random_file,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The body of `GET /hello` on every [`Nginx`].
pub const NGINX_HELLO_BODY: &str = "hello from nginx\n";

/// Request headers the access log records, as `$http_<name>` (nginx cannot log "all headers";
/// this list covers what tollgate adds, removes or must pass through). Each appears in the
/// access-log JSON under `headers.<name with dashes>`, "" when absent.
pub const NGINX_LOGGED_HEADERS: &[&str] = &[
    "host",
    "user_agent",
    "accept",
    "accept_encoding",
    "authorization",
    "proxy_authorization",
    "proxy_connection",
    "cookie",
    "x_api_key",
    "x_agent_intent",
    "x_agent_task",
    "x_agent_purpose",
    "x_agent_delegation",
    "x_agent_intent_token",
    "x_tollgate_agent",
    "x_tollgate_decision_id",
    "x_request_source",
    "x_spiffe_id",
    "x_forwarded_for",
    "x_forwarded_proto",
    "forwarded",
    "via",
    "connection",
    "te",
    "upgrade",
    "content_type",
    "content_length",
    "transfer_encoding",
    "traceparent",
];

/// What [`Nginx::start`] sets up.
#[derive(Clone, Debug, Default)]
pub struct NginxOptions {
    /// Also listen for TLS on a second port with this certificate (see [`NginxOptions::tls`]).
    pub tls: Option<TlsFiles>,
    /// Offer HTTP/2 (ALPN h2) on the TLS port.
    pub http2: bool,
    /// Raw nginx directives appended inside every `server {}` block (e.g. extra locations).
    pub extra_server: String,
    /// Raw nginx directives appended inside `http {}`.
    pub extra_http: String,
}

impl NginxOptions {
    /// Plain HTTP only.
    pub fn plain() -> Self {
        Self::default()
    }
    /// Plain HTTP plus TLS with HTTP/2, using the `Pki`'s `localhost` leaf.
    pub fn tls(pki: &Pki) -> Self {
        Self {
            tls: Some(pki.server()),
            http2: true,
            ..Self::default()
        }
    }
}

/// A running nginx (single process, `daemon off; master_process off;`), killed on drop.
pub struct Nginx {
    child: ChildGuard,
    dir: TempDir,
    port: u16,
    tls_port: Option<u16>,
}

impl Nginx {
    /// Writes the config, starts nginx, and returns once every port accepts (bounded: 20 s).
    /// A port taken between choosing and binding it is retried with fresh ports.
    pub fn start(opts: &NginxOptions) -> Nginx {
        let bin = require_tool("nginx");
        let version = nginx_version(&bin);
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("tollgate-nginx-")
                .tempdir()
                .expect("tempdir");
            let port = super::free_port();
            let tls_port = opts.tls.as_ref().map(|_| super::free_port());
            for sub in ["www", "tmp"] {
                std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            }
            let conf = render_config(dir.path(), port, tls_port, opts, version);
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let child = command(&bin)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn nginx: {e}"));
            let mut nginx = Nginx {
                child: ChildGuard::new(child),
                dir,
                port,
                tls_port,
            };
            match nginx.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return nginx,
                Err(e) if e.contains("Address already in use") => last_err = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("nginx could not bind a free port after 5 attempts: {last_err}")
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        for port in ports {
            loop {
                if let Some(status) = self.child.try_wait() {
                    return Err(format!(
                        "nginx exited ({status}) while starting:\n{}",
                        self.error_log_text()
                    ));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "nginx port {port} not accepting in {timeout:?}:\n{}",
                        self.error_log_text()
                    ));
                }
                if wait_for_port(addr(port), left.min(Duration::from_millis(100))).is_ok() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The plain-HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn addr(&self) -> SocketAddr {
        addr(self.port)
    }
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    /// The TLS port, if configured.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }
    pub fn tls_addr(&self) -> SocketAddr {
        addr(self.tls_port.expect("nginx started without tls"))
    }
    /// `https://localhost:TLSPORT{path}` (the leaf's DNS SAN; the IP SAN 127.0.0.1 works too).
    pub fn https_url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.tls_port.expect("nginx started without tls")
        )
    }

    /// The temp folder (nginx.conf, logs, www/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The docroot: `GET /<name>` serves `<docroot>/<name>`.
    pub fn docroot(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Places a file in the docroot (subfolders created) and returns its path.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.docroot().join(name.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Places `size_bytes` deterministic pseudo-random bytes at `<docroot>/<name>` and returns
    /// their SHA-256 hex.
    pub fn write_large_file(&self, name: &str, size_bytes: u64) -> String {
        let p = self.docroot().join(name.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        write_pseudo_random_file(&p, size_bytes)
    }

    /// Every access-log entry so far, parsed. Fields: `time`, `remote_addr`, `method`, `uri`,
    /// `protocol` (`$server_protocol`: "HTTP/1.1", "HTTP/2.0"), `scheme`, `status` (number),
    /// `body_bytes_sent`, `request_length`, `ssl_protocol`, `ssl_server_name`, `server_port`,
    /// and `headers` (see [`NGINX_LOGGED_HEADERS`]; "" when absent).
    pub fn access_log_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad access log line {l:?}: {e}"))
            })
            .collect()
    }

    /// Waits (polling the file every 10 ms) for an access-log entry matching `pred`. nginx
    /// writes the entry after the response, so a client can finish before it is there.
    pub fn wait_access_log(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.access_log_lines().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no matching nginx access-log entry within {timeout:?}; log:\n{:#?}",
                    self.access_log_lines()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The error log (startup problems, TLS handshake failures at `notice` and above).
    pub fn error_log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// (major, minor, patch) from `nginx -v` (printed on stderr).
fn nginx_version(bin: &Path) -> (u32, u32, u32) {
    let out = command(bin).arg("-v").output().expect("nginx -v");
    let text = String::from_utf8_lossy(&out.stderr);
    let v = text
        .split("nginx/")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("0.0.0");
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

fn render_config(
    dir: &Path,
    port: u16,
    tls_port: Option<u16>,
    opts: &NginxOptions,
    version: (u32, u32, u32),
) -> String {
    let d = dir.display();
    let headers: Vec<String> = NGINX_LOGGED_HEADERS
        .iter()
        .map(|h| format!("\"{}\":\"$http_{h}\"", h.replace('_', "-")))
        .collect();
    let log_format = format!(
        "'{{\"time\":\"$time_iso8601\",\"remote_addr\":\"$remote_addr\",\"method\":\"$request_method\",\
         \"uri\":\"$request_uri\",\"protocol\":\"$server_protocol\",\"scheme\":\"$scheme\",\
         \"status\":$status,\"body_bytes_sent\":$body_bytes_sent,\"request_length\":$request_length,\
         \"ssl_protocol\":\"$ssl_protocol\",\"ssl_server_name\":\"$ssl_server_name\",\
         \"server_port\":\"$server_port\",\"headers\":{{{}}}}}'",
        headers.join(",")
    );
    let locations = format!(
        "        server_name localhost;\n\
         \x20       root {d}/www;\n\
         \x20       location = /hello {{ default_type text/plain; return 200 \"{}\"; }}\n\
         \x20       location / {{ }}\n{}\n",
        NGINX_HELLO_BODY.replace('\n', "\\n"),
        opts.extra_server
    );
    let mut servers =
        format!("    server {{\n        listen 127.0.0.1:{port};\n{locations}    }}\n");
    if let (Some(tls), Some(tls_port)) = (&opts.tls, tls_port) {
        // `http2 on;` exists from nginx 1.25.1; older ones (Debian 12 has 1.22) take it as a
        // `listen` parameter.
        let new_http2 = version >= (1, 25, 1);
        let listen_http2 = if opts.http2 && !new_http2 {
            " http2"
        } else {
            ""
        };
        let http2_on = if opts.http2 && new_http2 {
            "        http2 on;\n"
        } else {
            ""
        };
        servers += &format!(
            "    server {{\n        listen 127.0.0.1:{tls_port} ssl{listen_http2};\n{http2_on}\
             \x20       ssl_certificate {};\n        ssl_certificate_key {};\n\
             \x20       ssl_protocols TLSv1.2 TLSv1.3;\n{locations}    }}\n",
            tls.cert.display(),
            tls.key.display()
        );
    }
    format!(
        "# written by tests/support/nginx.rs\n\
         {user}daemon off;\nmaster_process off;\nworker_processes 1;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   types {{ text/plain txt; text/html html; application/json json; }}\n\
         \x20   default_type application/octet-stream;\n\
         \x20   client_body_temp_path {d}/tmp/client_body;\n    proxy_temp_path {d}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {d}/tmp/scgi;\n\
         \x20   log_format tollgate escape=json {log_format};\n\
         \x20   access_log {d}/access.log tollgate;\n\
         \x20   sendfile on;\n    keepalive_requests 100000;\n    client_max_body_size 0;\n\
         {extra_http}\n{servers}}}\n",
        user = if is_root() { "user root;\n" } else { "" },
        extra_http = opts.extra_http,
    )
}
