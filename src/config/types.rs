//! The validated configuration: what runs, every value checked, every path absolute; and the
//! errors that say why a configuration is refused.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::identity::SpiffeId;

use super::credentials;

/// The configuration that runs: every value checked, every path absolute.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub admin: AdminConfig,
    pub identity: IdentityConfig,
    pub intercept_ca: Option<KeyPairPaths>,
    pub policy: PolicyConfig,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    pub telemetry: TelemetryConfig,
    /// Issuers of signed intent tokens (`intent_tokens.issuers`).
    pub intent_issuers: Vec<crate::intent_token::IssuerConfig>,
    /// `credentials` (SPEC §5), by name.
    pub credentials: std::collections::BTreeMap<String, credentials::CredentialConfig>,
    /// `agent_secrets` (extension): extra secret headers and what to do when an agent sends one.
    pub agent_secrets: credentials::AgentSecretsConfig,
    /// Where the configuration came from, for messages ("built-in" or the file path).
    pub origin: String,
}

/// How a listener receives traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Explicit HTTP proxy: absolute-form requests and CONNECT.
    Forward,
    /// Connections the kernel redirected (`tollgate redirect install`): the destination is
    /// the original one (`SO_ORIGINAL_DST`), the protocol sniffed from the first bytes.
    Transparent,
}

impl ListenerMode {
    /// The name used in the policy input (`connection.mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Forward => "forward",
            ListenerMode::Transparent => "transparent",
        }
    }
}

/// One validated `listeners[]` entry.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub mode: ListenerMode,
    pub tls: Option<KeyPairPaths>,
    /// TLS on the listener with tollgate's own SVID from the Workload API as its certificate
    /// (a `tls` block without `cert` and `key`).
    pub tls_from_workload_api: bool,
    /// Whether agents must (or may) present an X.509-SVID on the listener's TLS.
    pub client_auth: ClientAuth,
    pub intercept: bool,
    /// `mode: transparent`: how long the listener waits for the first bytes before it takes
    /// the connection as one it cannot read (server-speaks-first protocols such as SSH):
    /// `listeners[].sniff_timeout`, default [`DEFAULT_SNIFF_TIMEOUT`].
    pub sniff_timeout: Duration,
}

/// The default `listeners[].sniff_timeout`: short, because a server-speaks-first client waits
/// this long for its connection-level decision.
pub const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_millis(300);

/// The largest `listeners[].sniff_timeout`: longer would only hold server-speaks-first
/// connections back.
pub const MAX_SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// `listeners[].tls.client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// A PEM certificate (chain) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the admin API listens: a TCP address, or a Unix socket (`unix:///path`) whose
/// callers are checked by UID, which a sidecar's agent cannot fake from its own container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// `IP:port`.
    Tcp(SocketAddr),
    /// `unix:///absolute/path`: created mode 0600, each peer's UID checked (`SO_PEERCRED`).
    Unix(PathBuf),
}

impl AdminAddress {
    /// The TCP address, when it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            AdminAddress::Tcp(address) => Some(*address),
            AdminAddress::Unix(_) => None,
        }
    }
}

impl fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddress::Tcp(address) => write!(f, "{address}"),
            AdminAddress::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// `admin`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: AdminAddress,
    /// `admin.metrics_address`: a TCP address serving only `/metrics`, `/healthz` and
    /// `/readyz` (for Prometheus and the kubelet), never a route that steers the proxy.
    pub metrics_address: Option<SocketAddr>,
    /// `admin.allowed_uids`: the peer UIDs a Unix admin socket serves; `None` means tollgate's
    /// own UID only (resolved at start-up).
    pub allowed_uids: Option<Vec<u32>>,
    /// TLS (with SVID client authentication) for a non-loopback admin address.
    pub tls: Option<KeyPairPaths>,
    /// Callers allowed on a non-loopback admin address.
    pub allowed_spiffe_ids: Vec<SpiffeId>,
    /// Where kills are persisted so a restart keeps them; `None` keeps them in memory only.
    pub kill_file: Option<PathBuf>,
}

/// `identity`.
#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    /// Identity assumed for callers without a client certificate.
    pub workload_spiffe_id: Option<SpiffeId>,
    /// Trust bundle file of each trust domain, for SVID verification.
    pub trust_domains: std::collections::BTreeMap<String, PathBuf>,
    /// SPIFFE Workload API endpoint (`unix:///…`): X.509 bundles of every trust domain, pushed.
    pub workload_api: Option<String>,
}

/// Which policy engine evaluates decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Rego evaluated natively by regorus.
    Rego,
    /// An OPA-compiled Wasm module evaluated on wasmtime (opa-wasm).
    Wasm,
}

impl EngineKind {
    /// The name used in logs and the decision log (`engine`).
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Rego => "rego",
            EngineKind::Wasm => "wasm",
        }
    }
}

/// Where the policy comes from; the variant also fixes the engine (`engine: auto` picks by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The policy bundled into the binary from `policy-wasm/`.
    Bundled,
    /// A folder of `.rego` files (`*_test.rego` excluded) or one `.rego` file.
    Path(PathBuf),
    /// A bare OPA Wasm module (`.wasm`): data comes from `policy.data`.
    WasmModule(PathBuf),
    /// An OPA bundle (`.tar.gz`) holding `/policy.wasm`, its data and `.manifest`.
    WasmBundle(PathBuf),
}

impl PolicySource {
    /// Classifies a policy path by what it names: `.wasm` → module, `.tar.gz` → bundle,
    /// anything else (a folder or a `.rego` file) → Rego source. `engine: auto` is exactly this.
    pub fn from_path(path: PathBuf) -> PolicySource {
        let name = path.to_string_lossy();
        if name.ends_with(".wasm") {
            PolicySource::WasmModule(path)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            PolicySource::WasmBundle(path)
        } else {
            PolicySource::Path(path)
        }
    }

    /// The engine that evaluates this source.
    pub fn engine(&self) -> EngineKind {
        match self {
            PolicySource::Bundled | PolicySource::Path(_) => EngineKind::Rego,
            PolicySource::WasmModule(_) | PolicySource::WasmBundle(_) => EngineKind::Wasm,
        }
    }

    /// The file or folder read, `None` for the policy compiled into the binary.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PolicySource::Bundled => None,
            PolicySource::Path(path)
            | PolicySource::WasmModule(path)
            | PolicySource::WasmBundle(path) => Some(path),
        }
    }
}

/// Where the policy's data document comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The example data bundled into the binary from `policy-wasm/data.json`.
    Bundled,
    /// A JSON file.
    File(PathBuf),
    /// No data: `data` holds only the policy's own rules.
    Empty,
}

/// `policy`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub source: PolicySource,
    pub data: DataSource,
    pub engine: EngineKind,
    /// Rule path such as `tollgate/decision`.
    pub entrypoint: String,
    pub dry_run: bool,
    /// Reload when the policy or data files change.
    pub watch: bool,
}

/// `upstream`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub ca: Option<PathBuf>,
    pub allow_private: Vec<IpNet>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// `limits`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub drain_timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` of every connection: a stream beyond it is
    /// refused (`RST_STREAM(REFUSED_STREAM)`), so one connection cannot make unbounded work.
    pub max_concurrent_streams: u32,
    /// Requests one caller (SPIFFE ID; every unauthenticated caller together) may have in
    /// flight across all its connections; beyond it a 429 `too_many_requests`.
    pub max_requests_per_caller: usize,
}

/// Where decision-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionLogTarget {
    Stdout,
    File(PathBuf),
    Off,
}

/// Operational log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// `telemetry`.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub decision_log: DecisionLogTarget,
    pub log_format: LogFormat,
    pub metrics_label_destination: bool,
    /// How the decision-log queue is bounded, and what a full one does.
    pub decision_log_queue: DecisionLogQueue,
}

/// The bound of the decision-log queue (`telemetry.decision_log_capacity`, `_on_full`,
/// `_max_wait`): a sink that stalls must not grow tollgate's memory without limit, and must not
/// let a request through without its line unless the operator chose so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionLogQueue {
    /// Lines queued or reserved by requests in flight, at most.
    pub capacity: usize,
    /// What a request does when the queue is full.
    pub on_full: OnFull,
    /// How long a request waits for room (backpressure) before it is refused with 503.
    pub max_wait: Duration,
}

impl DecisionLogQueue {
    /// Default capacity: requests in flight hold a slot each, so it is well above the default
    /// `limits.max_connections` (10,000).
    pub const DEFAULT_CAPACITY: usize = 65_536;
    /// Default wait for room before a 503.
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);
}

impl Default for DecisionLogQueue {
    fn default() -> DecisionLogQueue {
        DecisionLogQueue {
            capacity: DecisionLogQueue::DEFAULT_CAPACITY,
            on_full: OnFull::Backpressure,
            max_wait: DecisionLogQueue::DEFAULT_MAX_WAIT,
        }
    }
}

/// What a request does when the decision-log queue is full (`telemetry.decision_log_on_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Wait up to `max_wait` for room, then refuse with 503 `decision_log_unavailable`: no
    /// request is forwarded without its line (the default: an audit log that fails closed).
    Backpressure,
    /// Serve the request and drop its line, counted in `tollgate_decision_log_dropped_total`
    /// and logged: availability over a complete audit trail, chosen explicitly.
    Drop,
}

/// One configuration problem, tied to the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `listeners[0].address`.
    pub key: String,
    pub message: String,
}

/// Every problem found in one configuration, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if error.key.is_empty() {
                write!(f, "{}: {}", self.origin, error.message)?;
            } else {
                write!(f, "{}: {}: {}", self.origin, error.key, error.message)?;
            }
        }
        Ok(())
    }
}
