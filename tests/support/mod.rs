//! Test harness shared by tollgate's integration tests: real peers, no mocks.
//!
//! Include it with `mod support;` from a file in `tests/`. It owns starting and stopping the
//! processes a test talks to, and nothing about what a test asserts:
//!
//! - [`Pki`]: an origin CA and a `localhost` server leaf, made with the `openssl` CLI.
//! - [`Nginx`]: a real nginx (HTTP, optional TLS + HTTP/2) with a docroot and a JSON access log.
//! - [`PyOrigin`]: `tests/origins/echo_origin.py`, a Python HTTP/1.1 origin (echo, SSE, bytes).
//! - [`Tollgate`]: the binary under test, `tollgate run -c <temp config>`, its decision log
//!   (stdout) and operational log (stderr) captured line by line.
//! - [`Squid`], [`Tinyproxy`]: reference forward proxies (baselines, and proof the agents'
//!   proxy options work).
//! - [`python_agent`], [`node_agent`], [`curl`]: real clients (httpx/requests, undici, curl).
//! - [`start_workload_api_server`]: the stand-in for SPIRE's agent, a SPIFFE Workload API
//!   server speaking the real protocol (`tests/origins/workload_api_server.py`).
//! - [`AuthzServer`]: a real OAuth 2.0 authorization server (node-oidc-provider) for the
//!   `oauth2` credentials, with counters and a failure switch; [`http_request`] talks to it.
//!
//! Rules every helper keeps: everything listens on 127.0.0.1 only; every file lives in a
//! `TempDir`; every child process is killed when its owner drops (also while a test panics);
//! readiness is a connect that succeeds or a log line that appears, polled against a deadline,
//! never a fixed sleep. Missing tools fail with the command that installs them (`.ci/run`).
//!
//! See docs/TESTING.md for how the suites are organised.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

mod agents;
mod authz;
mod http;
mod nginx;
mod origin;
mod pki;
mod proxies;
mod tollgate;
mod workload_api;

pub use agents::*;
pub use authz::*;
pub use http::*;
pub use nginx::*;
pub use origin::*;
pub use pki::*;
pub use proxies::*;
pub use tollgate::*;
pub use workload_api::*;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port on 127.0.0.1 that was free a moment ago (bind :0, read, drop). Only for servers we
/// start ourselves and that cannot report their own port; callers retry on a bind race.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// Polls a TCP connect to `addr` every 10 ms until it succeeds or `timeout` passes.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{addr} did not accept within {timeout:?}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Finds an executable on PATH (plus /usr/sbin and /sbin, where nginx and squid live), or
/// panics with how to install it.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed; the tests need it. Run `bash .ci/run` once (it installs \
         nginx-light squid tinyproxy wrk nghttp2-client prometheus curl openssl, the Python \
         agents' packages and the Node agent's), or install `{name}` by hand"
    )
}

/// Environment variables no child inherits: proxy settings and ambient CA-bundle overrides
/// (a CI machine or a developer's shell may set them), so a test trusts exactly the CAs and
/// uses exactly the proxies it names.
pub const SCRUBBED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
];

/// A `Command` for `program` without [`SCRUBBED_ENV`] and with stdin from /dev/null.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    for v in SCRUBBED_ENV {
        c.env_remove(v);
    }
    c.stdin(Stdio::null());
    c
}

/// The Python interpreter the tests use: `$TOLLGATE_TEST_PYTHON` or `python3`.
pub fn python() -> String {
    std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// True when running as root (then nginx gets `user root;`, squid `cache_effective_user`).
pub fn is_root() -> bool {
    command("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// SHA-256 (hex) of a file, computed by `sha256sum`.
pub fn sha256_file(path: &Path) -> String {
    let out = run_checked(
        command(require_tool("sha256sum")).arg(path),
        Duration::from_secs(120),
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Writes `size` deterministic pseudo-random bytes (xorshift64*, fixed seed) to `path` and
/// returns their SHA-256 hex (via `sha256sum`).
pub fn write_pseudo_random_file(path: &Path, size: u64) -> String {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).expect("create file"),
    );
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ size;
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for word in buf[..n].chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        f.write_all(&buf[..n]).expect("write file");
        left -= n as u64;
    }
    f.flush().expect("flush file");
    drop(f);
    sha256_file(path)
}

/// Runs a command to completion with a deadline (killed when it passes), output captured.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let out = spawn_reader(child.stdout.take().unwrap());
    let err = spawn_reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{desc} did not finish within {timeout:?}; killed. stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// [`run_with_timeout`], and panics (with stderr) unless it exited 0.
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn spawn_reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self { child }
    }
    pub fn id(&self) -> u32 {
        self.child.id()
    }
    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
    /// Sends a signal by name (`TERM`, `HUP`, `INT`, …) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let _ = command("kill")
            .arg(format!("-{sig}"))
            .arg(self.id().to_string())
            .status();
    }
    /// Waits for exit up to `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines of a child's output pipe, captured by a background thread as they arrive, so a test
/// can wait for one with a deadline. Clones share the same buffer.
#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<(Mutex<LinesState>, Condvar)>,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    /// Starts a thread that reads `r` line by line into the buffer until EOF. With
    /// `TOLLGATE_TEST_VERBOSE=1` each line is also printed to stderr, prefixed by `label`.
    pub fn capture(r: impl Read + Send + 'static, label: &str) -> Lines {
        let lines = Lines::default();
        let inner = lines.inner.clone();
        let label = label.to_string();
        let verbose = std::env::var_os("TOLLGATE_TEST_VERBOSE").is_some_and(|v| v != "0");
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        if verbose {
                            eprintln!("[{label}] {line}");
                        }
                        let (m, cv) = &*inner;
                        m.lock().unwrap().lines.push(line);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*inner;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        lines
    }

    /// All lines so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().lines.clone()
    }

    /// All lines so far, joined with newlines.
    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    pub fn len(&self) -> usize {
        self.inner.0.lock().unwrap().lines.len()
    }

    /// True once the pipe reached EOF (the process closed it or exited).
    pub fn is_closed(&self) -> bool {
        self.inner.0.lock().unwrap().closed
    }

    /// Waits until the pipe reaches EOF; false if `timeout` passes first.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.inner;
        let mut st = m.lock().unwrap();
        while !st.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        true
    }

    /// Waits for the first line at index >= `from` that matches `pred`; returns its index and
    /// text, or `None` when `timeout` passes or the pipe closes first.
    pub fn wait_for(
        &self,
        from: usize,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.inner;
        let mut st = m.lock().unwrap();
        let mut next = from;
        loop {
            while next < st.lines.len() {
                if pred(&st.lines[next]) {
                    return Some((next, st.lines[next].clone()));
                }
                next += 1;
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

/// A long-running client (e.g. `curl -N` on an SSE stream) whose stdout is read line by line
/// while it runs. Killed on drop.
pub struct Streaming {
    pub child: ChildGuard,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Streaming {
    /// Spawns `cmd` with stdout/stderr captured.
    pub fn spawn(cmd: &mut Command) -> Streaming {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = Lines::capture(child.stdout.take().unwrap(), "stream stdout");
        let stderr = Lines::capture(child.stderr.take().unwrap(), "stream stderr");
        Streaming {
            child: ChildGuard::new(child),
            stdout,
            stderr,
        }
    }

    /// Waits for a stdout line equal to `line`; panics with what was seen otherwise.
    pub fn wait_line(&self, line: &str, timeout: Duration) -> usize {
        match self.stdout.wait_for(0, |l| l == line, timeout) {
            Some((i, _)) => i,
            None => panic!(
                "no line {line:?} within {timeout:?}; stdout so far:\n{}\nstderr:\n{}",
                self.stdout.text(),
                self.stderr.text()
            ),
        }
    }

    /// Waits for the process to exit; panics if it does not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = self.child.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "still running after {timeout:?}; stdout:\n{}",
                self.stdout.text()
            )
        });
        // The reader threads reach EOF right after exit (unless a grandchild holds the pipe).
        self.stdout.wait_closed(Duration::from_secs(5));
        status
    }
}

/// One HTTP/1.1 keep-alive connection driven by hand (raw request bytes in, status and body
/// out), for tests that must control exactly which connection a request travels on.
pub struct KeepAlive {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    /// Connects (TCP_NODELAY, bounded reads).
    pub fn connect(addr: SocketAddr, timeout: Duration) -> KeepAlive {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        KeepAlive { stream, reader }
    }

    /// Sends an absolute-form GET of `url` and reads the whole response (Content-Length bodies).
    pub fn get(&mut self, url: &str) -> (u16, String) {
        use std::io::Write;
        let request = format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.stream.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("a response for every request");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line: {line:?}"));
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// An OPA-style bundle (`.tar.gz`) holding `files`, named as OPA names them (`/policy.wasm`,
/// `/data.json`, `/.manifest`).
pub fn opa_bundle(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Set raw: `set_path` refuses the leading `/` that OPA writes.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}
