//! Real clients as "agents": `tests/agents/py_agent.py` (httpx or requests),
//! `tests/agents/node_agent.mjs` (undici) and curl. Each agent makes one request and prints one
//! JSON line, parsed here into [`AgentResponse`].

use super::{TlsFiles, command, python, repo_root, run_with_timeout};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

/// Which Python HTTP library `py_agent.py` uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PyClient {
    #[default]
    Httpx,
    Requests,
}

/// One request for an agent. Build with [`AgentRequest::get`] / [`AgentRequest::new`] and the
/// chained setters; every field is public too.
#[derive(Clone, Debug)]
pub struct AgentRequest {
    pub url: String,
    /// `http://…` or `https://…` proxy; `None` goes direct.
    pub proxy: Option<String>,
    pub method: String,
    pub headers: Vec<(String, String)>,
    /// Request body, streamed from this file with its Content-Length.
    pub data_file: Option<PathBuf>,
    /// The only CA trusted for the origin's TLS as the agent sees it (through interception:
    /// tollgate's interception CA). `None`: the system roots.
    pub cacert: Option<PathBuf>,
    /// CA trusted for an `https://` proxy (tollgate's TLS listener).
    pub proxy_cacert: Option<PathBuf>,
    /// Client certificate for the origin's (intercepted) TLS.
    pub client_cert: Option<TlsFiles>,
    /// Client certificate for the proxy's TLS (an X.509-SVID for tollgate's TLS listener).
    pub proxy_client_cert: Option<TlsFiles>,
    /// Python only: which library.
    pub py_client: PyClient,
    /// Python httpx only: offer HTTP/2.
    pub http2: bool,
    /// Node only: send http:// requests in absolute-form instead of undici's default CONNECT.
    pub no_tunnel: bool,
    /// The agent's own request timeout; the harness kills it 30 s after that.
    pub timeout: Duration,
}

impl AgentRequest {
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        AgentRequest {
            url: url.into(),
            proxy: None,
            method: method.to_string(),
            headers: Vec::new(),
            data_file: None,
            cacert: None,
            proxy_cacert: None,
            client_cert: None,
            proxy_client_cert: None,
            py_client: PyClient::Httpx,
            http2: false,
            no_tunnel: false,
            timeout: Duration::from_secs(30),
        }
    }
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }
    pub fn method(mut self, m: &str) -> Self {
        self.method = m.to_string();
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn data_file(mut self, p: impl Into<PathBuf>) -> Self {
        self.data_file = Some(p.into());
        self
    }
    pub fn cacert(mut self, p: impl Into<PathBuf>) -> Self {
        self.cacert = Some(p.into());
        self
    }
    pub fn proxy_cacert(mut self, p: impl Into<PathBuf>) -> Self {
        self.proxy_cacert = Some(p.into());
        self
    }
    pub fn client_cert(mut self, f: TlsFiles) -> Self {
        self.client_cert = Some(f);
        self
    }
    pub fn proxy_client_cert(mut self, f: TlsFiles) -> Self {
        self.proxy_client_cert = Some(f);
        self
    }
    pub fn py_client(mut self, c: PyClient) -> Self {
        self.py_client = c;
        self
    }
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }
    pub fn no_tunnel(mut self) -> Self {
        self.no_tunnel = true;
        self
    }
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The CLI arguments both agents share.
    fn common_args(&self, cmd: &mut Command) {
        cmd.arg("--url")
            .arg(&self.url)
            .arg("--method")
            .arg(&self.method);
        if let Some(p) = &self.proxy {
            cmd.arg("--proxy").arg(p);
        }
        for (k, v) in &self.headers {
            cmd.arg("--header").arg(format!("{k}: {v}"));
        }
        let paths = [
            ("--data-file", &self.data_file),
            ("--cacert", &self.cacert),
            ("--proxy-cacert", &self.proxy_cacert),
        ];
        for (flag, p) in paths {
            if let Some(p) = p {
                cmd.arg(flag).arg(p);
            }
        }
        if let Some(c) = &self.client_cert {
            cmd.arg("--client-cert")
                .arg(&c.cert)
                .arg("--client-key")
                .arg(&c.key);
        }
        if let Some(c) = &self.proxy_client_cert {
            cmd.arg("--proxy-client-cert")
                .arg(&c.cert)
                .arg("--proxy-client-key")
                .arg(&c.key);
        }
        cmd.arg("--timeout")
            .arg(format!("{}", self.timeout.as_secs_f64()));
    }
}

/// What an agent printed for a completed exchange (any status, 403 included).
#[derive(Clone, Debug)]
pub struct AgentResponse {
    pub status: u16,
    /// Lower-cased names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body_len: u64,
    pub body_sha256: String,
    /// The first 4 KiB of the body, if UTF-8.
    pub body_text: Option<String>,
    /// "HTTP/1.1" or "HTTP/2" as the client saw it.
    pub http_version: String,
    /// The whole JSON line.
    pub raw: Value,
}

impl AgentResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    /// The body (first 4 KiB) parsed as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        let t = self
            .body_text
            .as_deref()
            .unwrap_or_else(|| panic!("body is not text: {:?}", self.raw));
        serde_json::from_str(t).unwrap_or_else(|e| panic!("body is not JSON ({e}): {t:?}"))
    }
}

/// An agent that failed at the transport level (`{"error": …}`, exit 1), or crashed.
#[derive(Clone, Debug)]
pub struct AgentError {
    /// The agent's `error` string (library exception / undici error code and message).
    pub error: String,
    pub stderr: String,
    pub status: ExitStatus,
}

/// Runs `py_agent.py`; panics on a transport error. See [`try_python_agent`].
pub fn python_agent(req: &AgentRequest) -> AgentResponse {
    try_python_agent(req).unwrap_or_else(|e| panic!("python agent failed for {req:?}: {e:?}"))
}

/// Runs `py_agent.py` (httpx by default) and parses its line.
pub fn try_python_agent(req: &AgentRequest) -> Result<AgentResponse, AgentError> {
    let mut cmd = command(python());
    cmd.arg(repo_root().join("tests/agents/py_agent.py"));
    req.common_args(&mut cmd);
    if req.py_client == PyClient::Requests {
        cmd.args(["--client", "requests"]);
    }
    if req.http2 {
        cmd.arg("--http2");
    }
    parse_agent(run_with_timeout(
        &mut cmd,
        req.timeout + Duration::from_secs(30),
    ))
}

/// Runs `node_agent.mjs`; panics on a transport error. See [`try_node_agent`].
pub fn node_agent(req: &AgentRequest) -> AgentResponse {
    try_node_agent(req).unwrap_or_else(|e| panic!("node agent failed for {req:?}: {e:?}"))
}

/// Runs `node_agent.mjs` (undici; needs `npm ci` in tests/agents) and parses its line.
pub fn try_node_agent(req: &AgentRequest) -> Result<AgentResponse, AgentError> {
    let dir = repo_root().join("tests/agents");
    assert!(
        dir.join("node_modules/undici").is_dir(),
        "tests/agents/node_modules is missing: run `npm ci` in tests/agents (or `bash .ci/run`)"
    );
    let mut cmd = command(std::env::var("TOLLGATE_TEST_NODE").unwrap_or_else(|_| "node".into()));
    cmd.arg(dir.join("node_agent.mjs")).current_dir(&dir);
    req.common_args(&mut cmd);
    if req.no_tunnel {
        cmd.arg("--no-tunnel");
    }
    parse_agent(run_with_timeout(
        &mut cmd,
        req.timeout + Duration::from_secs(30),
    ))
}

fn parse_agent(out: Output) -> Result<AgentResponse, AgentError> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    let v: Option<Value> = line.and_then(|l| serde_json::from_str(l).ok());
    let Some(v) = v else {
        return Err(AgentError {
            error: format!("no JSON line on stdout: {stdout:?}"),
            stderr,
            status: out.status,
        });
    };
    if let Some(e) = v.get("error") {
        return Err(AgentError {
            error: e.as_str().unwrap_or_default().to_string(),
            stderr,
            status: out.status,
        });
    }
    let parsed = (|| {
        Some(AgentResponse {
            status: u16::try_from(v.get("status")?.as_u64()?).ok()?,
            headers: v
                .get("headers")?
                .as_object()?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            body_len: v.get("body_len")?.as_u64()?,
            body_sha256: v.get("body_sha256")?.as_str()?.to_string(),
            body_text: v
                .get("body_text")
                .and_then(Value::as_str)
                .map(str::to_string),
            http_version: v.get("http_version")?.as_str()?.to_string(),
            raw: v.clone(),
        })
    })();
    parsed.ok_or_else(|| AgentError {
        error: format!("malformed agent output: {v}"),
        stderr,
        status: out.status,
    })
}

/// Runs `curl ARGS…` (bounded: 120 s; pass `--max-time` for less) with a clean proxy
/// environment. Returns the raw output: a thin wrapper.
pub fn curl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    run_with_timeout(
        command(super::require_tool("curl")).args(args),
        Duration::from_secs(120),
    )
}

/// `curl ARGS…` left running, its stdout readable line by line (e.g. `-N` on an SSE stream).
pub fn curl_stream<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> super::Streaming {
    super::Streaming::spawn(command(super::require_tool("curl")).args(args))
}
