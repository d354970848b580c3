//! The binary under test as a child process: `tollgate run -c <config in a temp dir>`.
//!
//! stdout (the decision log, SPEC §9) and stderr (the JSON operational log) are read on
//! threads as they arrive. Readiness follows docs/INTERFACES.md: one `"listener ready"` stderr
//! line per listener (fields `listener`, `address`, `mode`, `tls`) and `"admin ready"` (field
//! `address`) when an admin listener is configured.

use super::{ChildGuard, Lines, command, run_with_timeout};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long [`TollgateBuilder::start`] waits for the ready lines unless told otherwise.
pub const TOLLGATE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `listener ready` line.
#[derive(Clone, Debug)]
pub struct ListenerInfo {
    pub name: String,
    pub address: SocketAddr,
    pub mode: Option<String>,
    pub tls: bool,
}

/// Sets up a [`Tollgate`]. The temp dir exists from [`TollgateBuilder::new`] on, so a test can
/// put files there and reference them (by absolute path) from its config.
pub struct TollgateBuilder {
    dir: TempDir,
    config: Option<String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    expect_listeners: Option<usize>,
    expect_admin: Option<bool>,
    ephemeral_admin: bool,
    ready_timeout: Duration,
}

impl TollgateBuilder {
    pub fn new() -> Self {
        TollgateBuilder {
            dir: tempfile::Builder::new()
                .prefix("tollgate-run-")
                .tempdir()
                .expect("tempdir"),
            config: None,
            args: Vec::new(),
            envs: Vec::new(),
            expect_listeners: None,
            expect_admin: None,
            ephemeral_admin: true,
            ready_timeout: TOLLGATE_READY_TIMEOUT,
        }
    }
    /// The temp dir: `config.yaml` goes here, `state/` is `TOLLGATE_STATE_DIR`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// Writes a file into the temp dir (subfolders created) and returns its absolute path.
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        write_into(self.dir.path(), name, contents.as_ref())
    }
    /// The YAML configuration (written to `<dir>/config.yaml`, run with `-c`). A config with
    /// no top-level `admin:` key gets `admin: {address: 127.0.0.1:0}` appended, because the
    /// default admin port (15000) would collide between tests running in parallel; see
    /// [`config_as_is`](Self::config_as_is). Without any config, `tollgate run` starts with
    /// its built-in development configuration on fixed ports (15001, 15000): such tests cannot
    /// run in parallel with each other.
    pub fn config(mut self, yaml: impl Into<String>) -> Self {
        self.config = Some(yaml.into());
        self
    }
    /// Writes the config exactly as given (no ephemeral admin listener appended).
    pub fn config_as_is(mut self) -> Self {
        self.ephemeral_admin = false;
        self
    }
    /// An extra argument after `run -c <file>` (e.g. `--dry-run`).
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }
    /// How many `listener ready` lines to wait for. Default: the number of `- name:` entries
    /// under a top-level `listeners:` key in the config (block style), else 1.
    pub fn expect_listeners(mut self, n: usize) -> Self {
        self.expect_listeners = Some(n);
        self
    }
    /// Whether to wait for `admin ready`. Default: yes, unless the config was kept as is and
    /// has no top-level `admin:` key.
    pub fn expect_admin(mut self, yes: bool) -> Self {
        self.expect_admin = Some(yes);
        self
    }
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Starts tollgate and waits until it is ready; panics (with its stderr) if it exits or
    /// is not ready in time.
    pub fn start(self) -> Tollgate {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start`](Self::start), returning the failure (stderr included) instead.
    pub fn try_start(self) -> Result<Tollgate, String> {
        let state = self.dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut cmd = command(Tollgate::bin());
        cmd.arg("run")
            .current_dir(self.dir.path())
            .env("TOLLGATE_STATE_DIR", &state);
        let mut names = Vec::new();
        let has_admin = |y: &str| y.lines().any(|l| l.starts_with("admin:"));
        let config = self.config.clone().map(|mut y| {
            if self.ephemeral_admin && !has_admin(&y) {
                if !y.ends_with('\n') {
                    y.push('\n');
                }
                y.push_str("admin:\n  address: 127.0.0.1:0\n");
            }
            y
        });
        let config_path = match &config {
            Some(yaml) => {
                let p = write_into(self.dir.path(), "config.yaml", yaml.as_bytes());
                cmd.arg("-c").arg(&p);
                names = listener_names(yaml);
                Some(p)
            }
            None => None,
        };
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let expect_listeners = self.expect_listeners.unwrap_or(names.len().max(1));
        let expect_admin = self
            .expect_admin
            .unwrap_or_else(|| config.as_deref().is_none_or(has_admin));
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {desc}: {e}"))?;
        let stdout = Lines::capture(child.stdout.take().unwrap(), "tollgate stdout");
        let stderr = Lines::capture(child.stderr.take().unwrap(), "tollgate stderr");
        let mut tg = Tollgate {
            child: Mutex::new(ChildGuard::new(child)),
            dir: self.dir,
            config_path,
            stdout,
            stderr,
            listeners: Vec::new(),
            admin: None,
            admin_socket: None,
            metrics: None,
        };

        // Wait for the ready lines, watching for an early exit.
        let deadline = Instant::now() + self.ready_timeout;
        let mut next = 0;
        let mut found: Vec<ListenerInfo> = Vec::new();
        loop {
            if found.len() >= expect_listeners
                && (!expect_admin || tg.admin.is_some() || tg.admin_socket.is_some())
            {
                break;
            }
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if let Some((i, line)) = tg.stderr.wait_for(next, is_ready_line, slice) {
                next = i + 1;
                let v: Value = serde_json::from_str(&line).unwrap();
                match field(&v, "message").and_then(Value::as_str) {
                    Some("listener ready") => {
                        found.push(parse_listener(&v).map_err(|e| format!("{e}: {line}"))?)
                    }
                    Some("metrics ready") => {
                        tg.metrics = Some(parse_addr(&v).map_err(|e| format!("{e}: {line}"))?)
                    }
                    _ => match unix_socket(&v) {
                        Some(path) => tg.admin_socket = Some(path),
                        None => {
                            tg.admin = Some(parse_addr(&v).map_err(|e| format!("{e}: {line}"))?)
                        }
                    },
                }
                continue;
            }
            if let Some(status) = tg.child.lock().unwrap().try_wait() {
                tg.stderr.wait_closed(Duration::from_secs(2));
                return Err(format!(
                    "tollgate exited ({status}) before it was ready; stderr:\n{}",
                    tg.stderr.text()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "tollgate not ready within {:?} (saw {} of {expect_listeners} listener(s), admin {}); stderr:\n{}",
                    self.ready_timeout,
                    found.len(),
                    if expect_admin {
                        format!("{:?}", tg.admin)
                    } else {
                        "not expected".into()
                    },
                    tg.stderr.text()
                ));
            }
        }
        // Config order when the names are known, else the order the lines came in.
        found.sort_by_key(|l| {
            names
                .iter()
                .position(|n| *n == l.name)
                .unwrap_or(usize::MAX)
        });
        tg.listeners = found;
        Ok(tg)
    }
}

impl Default for TollgateBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Every admin route that reads or steers the proxy (SPEC §7), as (method, path, body): what
/// an agent must never reach.
pub const ADMIN_STEERING: &[(&str, &str, Option<&str>)] = &[
    ("POST", "/v1/reload", None),
    ("GET", "/v1/kill", None),
    ("POST", "/v1/kill", Some(r#"{"all": true}"#)),
    ("DELETE", "/v1/kill", Some(r#"{"all": true}"#)),
    ("DELETE", "/v1/kill/all", None),
    ("DELETE", "/v1/tasks/t-1", None),
    ("GET", "/v1/decisions", None),
    ("GET", "/.well-known/jwks.json", None),
];

/// curl's arguments for one admin call, `-g` and a 10 s limit, through the Unix `socket` when
/// given, with a JSON `body`; the HTTP status is printed on stdout's last line (0: none), see
/// [`split_status`].
pub fn admin_curl_args(
    socket: Option<&Path>,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "-sS",
        "-g",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]
    .map(Into::into)
    .to_vec();
    if let Some(socket) = socket {
        args.extend(["--unix-socket".into(), socket.as_os_str().to_owned()]);
    }
    if let Some(body) = body {
        args.extend(["-H", "content-type: application/json", "-d", body].map(Into::into));
    }
    args.push(url.into());
    args
}

/// The body and the status of an [`admin_curl_args`] call's stdout.
pub fn split_status(stdout: &[u8]) -> (String, u16) {
    let text = String::from_utf8_lossy(stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (body.to_string(), status.trim().parse().unwrap_or(0))
}

/// A running tollgate, killed on drop.
pub struct Tollgate {
    child: Mutex<ChildGuard>,
    dir: TempDir,
    config_path: Option<PathBuf>,
    stdout: Lines,
    stderr: Lines,
    listeners: Vec<ListenerInfo>,
    admin: Option<SocketAddr>,
    admin_socket: Option<PathBuf>,
    metrics: Option<SocketAddr>,
}

impl Tollgate {
    /// `tollgate run -c <config>` with defaults; waits until ready.
    pub fn start(config_yaml: &str) -> Tollgate {
        TollgateBuilder::new().config(config_yaml).start()
    }
    pub fn builder() -> TollgateBuilder {
        TollgateBuilder::new()
    }

    /// The binary: `$TOLLGATE_BIN` if set (e.g. a release build), else cargo's test build.
    pub fn bin() -> PathBuf {
        std::env::var_os("TOLLGATE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tollgate")))
    }

    /// Runs a one-shot command (`check -c F`, `version`, `certs init …`) to completion
    /// (bounded: 120 s) with a clean proxy environment.
    pub fn run_cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
        Self::run_cli_with(args, &[], None)
    }

    /// [`run_cli`](Self::run_cli) with extra environment and a working directory.
    pub fn run_cli_with<S: AsRef<OsStr>>(
        args: &[S],
        envs: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> Output {
        let mut cmd = command(Self::bin());
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        run_with_timeout(&mut cmd, Duration::from_secs(120))
    }

    /// Listeners in config order (when the config lists them in block style).
    pub fn listeners(&self) -> &[ListenerInfo] {
        &self.listeners
    }
    /// The bound address of the named listener.
    pub fn proxy_addr(&self, listener: &str) -> SocketAddr {
        self.listener(listener).address
    }
    /// `http://127.0.0.1:PORT` of the first listener (`https://` for a TLS listener).
    pub fn proxy_url(&self) -> String {
        url_of(&self.listeners[0])
    }
    /// `http(s)://127.0.0.1:PORT` of the named listener.
    pub fn proxy_url_for(&self, listener: &str) -> String {
        url_of(self.listener(listener))
    }
    fn listener(&self, name: &str) -> &ListenerInfo {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no listener {name:?}; have {:?}", self.listeners))
    }
    /// The admin listener's address, if an `admin ready` line appeared.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }
    /// The admin API's Unix socket (`admin.address: unix://…`), once ready.
    pub fn admin_socket(&self) -> Option<&Path> {
        self.admin_socket.as_deref()
    }
    /// `admin.metrics_address` as bound, once ready.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }
    /// `http://ADMIN{path}`; panics without an admin listener.
    /// `curl` against the admin API: (status, body text). A JSON `body` is sent with its
    /// content type.
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let url = self.admin_url(path);
        let mut args = vec![
            "-s",
            "--max-time",
            "20",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            url.as_str(),
        ];
        if let Some(body) = body {
            args.extend(["-H", "content-type: application/json", "-d", body]);
        }
        let out = super::curl(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').expect("curl's status line");
        (status.parse().expect("an HTTP status"), body.to_string())
    }

    /// [`admin`](Tollgate::admin) with the body parsed as JSON (`Null` when it is not JSON).
    pub fn admin_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self.admin(method, path, body);
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("no admin listener was ready")
        )
    }

    /// The temp dir (config.yaml, state/, files the test wrote).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }
    /// Writes a file into the temp dir and returns its absolute path (e.g. to rotate a secret).
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        write_into(self.dir.path(), name, contents.as_ref())
    }

    /// Every decision-log line (stdout) so far that parses as JSON.
    pub fn decisions(&self) -> Vec<Value> {
        parse_json_lines(&self.stdout.snapshot())
    }
    /// Waits for a decision-log line matching `pred` (searching from the first line); panics
    /// with the decisions and stderr seen so far when `timeout` passes.
    pub fn wait_decision(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        wait_json(&self.stdout, pred, timeout).unwrap_or_else(|| {
            panic!(
                "no matching decision within {timeout:?}; decisions:\n{}\nstderr:\n{}",
                self.stdout.text(),
                self.stderr.text()
            )
        })
    }
    /// Every operational-log line (stderr) so far that parses as JSON.
    pub fn logs(&self) -> Vec<Value> {
        parse_json_lines(&self.stderr.snapshot())
    }
    /// Waits for an operational-log line matching `pred` (e.g. a reload); panics on timeout.
    pub fn wait_log(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        wait_json(&self.stderr, pred, timeout).unwrap_or_else(|| {
            panic!(
                "no matching log line within {timeout:?}; stderr:\n{}",
                self.stderr.text()
            )
        })
    }
    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }
    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().try_wait().is_none()
    }
    /// Sends a signal by name (`TERM`, `HUP`, `INT`).
    pub fn signal(&self, sig: &str) {
        self.child.lock().unwrap().signal(sig)
    }
    /// Waits for the process to exit on its own; `None` if still running after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.child.lock().unwrap().wait_timeout(timeout)
    }
    /// SIGTERM, then waits up to `timeout` for a graceful exit (panics if it does not exit).
    pub fn terminate(&self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "tollgate did not exit within {timeout:?} of SIGTERM; stderr:\n{}",
                self.stderr_text()
            )
        })
    }
}

fn url_of(l: &ListenerInfo) -> String {
    format!("{}://{}", if l.tls { "https" } else { "http" }, l.address)
}

fn write_into(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, contents).unwrap();
    p
}

fn parse_json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

fn wait_json(lines: &Lines, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
    lines
        .wait_for(
            0,
            |l| serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object() && pred(&v)),
            timeout,
        )
        .map(|(_, l)| serde_json::from_str(&l).unwrap())
}

/// A top-level field, or the same under `fields` (tracing's JSON layout when not flattened).
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get(name)
        .or_else(|| v.get("fields").and_then(|f| f.get(name)))
}

fn is_ready_line(l: &str) -> bool {
    (l.contains("listener ready") || l.contains("admin ready") || l.contains("metrics ready"))
        && serde_json::from_str::<Value>(l).is_ok_and(|v| {
            matches!(
                field(&v, "message").and_then(Value::as_str),
                Some("listener ready" | "admin ready" | "metrics ready")
            )
        })
}

/// The socket path of a `unix://` admin address.
fn unix_socket(v: &Value) -> Option<PathBuf> {
    field(v, "address")
        .and_then(Value::as_str)
        .and_then(|a| a.strip_prefix("unix://"))
        .map(PathBuf::from)
}

fn parse_addr(v: &Value) -> Result<SocketAddr, String> {
    let a = field(v, "address")
        .and_then(Value::as_str)
        .ok_or("ready line without `address`")?;
    a.parse().map_err(|e| format!("bad address {a:?}: {e}"))
}

fn parse_listener(v: &Value) -> Result<ListenerInfo, String> {
    Ok(ListenerInfo {
        name: field(v, "listener")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        address: parse_addr(v)?,
        mode: field(v, "mode").and_then(Value::as_str).map(str::to_string),
        tls: field(v, "tls")
            .is_some_and(|t| t.as_bool() == Some(true) || t.as_str() == Some("true")),
    })
}

/// Listener names, in order, from a block-style `listeners:` list (`- name: x` entries). Only
/// used to count and order the ready lines; tollgate parses the real config.
pub fn listener_names(yaml: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    let mut item_indent: Option<usize> = None;
    for line in yaml.lines() {
        let body = line.split(" #").next().unwrap_or("");
        if body.trim().is_empty() || body.trim_start().starts_with('#') {
            continue;
        }
        let indent = body.len() - body.trim_start().len();
        if indent == 0 && !body.starts_with('-') {
            inside = body.trim_end() == "listeners:";
            item_indent = None;
            continue;
        }
        if !inside {
            continue;
        }
        let t = body.trim_start();
        if let Some(rest) = t.strip_prefix("- ") {
            if item_indent.is_none_or(|i| i == indent) {
                item_indent = Some(indent);
                if let Some(n) = rest.trim_start().strip_prefix("name:") {
                    names.push(unquote(n));
                } else {
                    names.push(String::new());
                }
            }
        } else if let Some(n) = t.strip_prefix("name:") {
            // `name:` on a later line of the current item.
            if let Some(last) = names.last_mut()
                && last.is_empty()
                && item_indent.is_some_and(|i| indent == i + 2)
            {
                *last = unquote(n);
            }
        }
    }
    names
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// The caller every request of [`fixture_config`] is made as (`identity.workload_spiffe_id`).
pub const FIXTURE_CALLER: &str = "spiffe://tollgate.local/test/agent";

/// The configuration many integration tests start from: one `agents` listener, an admin
/// listener, every caller [`FIXTURE_CALLER`], the bundled policy with
/// `tests/fixtures/policy-data.json` (127.0.0.1 intercepted, GET allowed); `rest` adds the
/// other top-level sections (`upstream`, `limits`, `credentials`…), whole.
pub fn fixture_config(rest: &str) -> String {
    let root = super::repo_root();
    format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{FIXTURE_CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         {rest}\n",
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    )
}
