//! Configuration: YAML in, a validated [`Config`] out, every problem reported at once.
//!
//! Loading happens in three passes so an operator fixes a broken file in one round trip:
//! 1. the YAML is parsed into a tree;
//! 2. each section is deserialized on its own into the [`raw`] structs, collecting unknown keys
//!    (via `serde_ignored`) and type errors (via `serde_path_to_error`), each with its key path;
//! 3. the raw values are validated into [`Config`] (addresses, CIDRs, SPIFFE IDs, file
//!    existence, keys that a later release implements and that are refused as "not supported
//!    yet" rather than silently ignored).
//!
//! Relative paths resolve against the folder of the configuration file.

pub mod credentials;
pub mod duration;
pub mod raw;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;

use crate::identity::SpiffeId;

/// The built-in local-development configuration used by `tollgate run` without `-c`.
pub const BUILTIN_CONFIG_YAML: &str = include_str!("../../config/local-dev.yaml");

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
}

impl ListenerMode {
    /// The name used in the policy input (`connection.mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Forward => "forward",
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
}

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

/// `admin`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
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

/// Collects problems while validating.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn not_supported(&mut self, key: impl Into<String>) {
        self.add(key, "not supported yet in this version of tollgate");
    }
}

/// Loads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        origin: origin.clone(),
        errors: vec![ConfigError {
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        }],
    })?;
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    load_str(&text, &base, &origin)
}

/// The built-in local-development configuration (SPEC §1, `tollgate run` without `-c`).
pub fn builtin() -> Result<Config, ConfigErrors> {
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    load_str(BUILTIN_CONFIG_YAML, &base, "built-in configuration")
}

/// Parses and validates YAML text; relative paths resolve against `base`.
pub fn load_str(text: &str, base: &Path, origin: &str) -> Result<Config, ConfigErrors> {
    let mut problems = Problems::default();
    let tree: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(serde_yaml::Value::Null) => serde_yaml::Value::Mapping(Default::default()),
        Ok(tree) => tree,
        Err(e) => {
            return Err(ConfigErrors {
                origin: origin.to_string(),
                errors: vec![ConfigError {
                    key: String::new(),
                    message: format!("not valid YAML: {e}"),
                }],
            });
        }
    };
    let serde_yaml::Value::Mapping(mapping) = tree else {
        return Err(ConfigErrors {
            origin: origin.to_string(),
            errors: vec![ConfigError {
                key: String::new(),
                message: "the configuration must be a YAML mapping of sections".into(),
            }],
        });
    };

    let mut sections = Sections::default();
    for (key, value) in mapping {
        let Some(name) = key.as_str().map(str::to_owned) else {
            problems.add(format!("{key:?}"), "section names must be strings");
            continue;
        };
        sections.take(&name, value, &mut problems);
    }

    let config = validate(sections, base, origin, &mut problems);
    if problems.0.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors {
            origin: origin.to_string(),
            errors: problems.0,
        })
    }
}

/// The top-level sections, each deserialized on its own.
#[derive(Default)]
struct Sections {
    listeners: Option<Vec<raw::RawListener>>,
    admin: Option<raw::RawAdmin>,
    identity: Option<raw::RawIdentity>,
    intercept_ca: Option<raw::RawKeyPair>,
    policy: Option<raw::RawPolicy>,
    intent_tokens: Option<raw::RawIntentTokens>,
    credentials: Option<std::collections::BTreeMap<String, credentials::RawCredential>>,
    agent_secrets: Option<credentials::RawAgentSecrets>,
    upstream: Option<raw::RawUpstream>,
    limits: Option<raw::RawLimits>,
    telemetry: Option<raw::RawTelemetry>,
}

impl Sections {
    fn take(&mut self, name: &str, value: serde_yaml::Value, problems: &mut Problems) {
        if value.is_null() {
            return;
        }
        match name {
            "listeners" => {
                let serde_yaml::Value::Sequence(items) = value else {
                    problems.add("listeners", "must be a list of listeners");
                    return;
                };
                let listeners: Vec<_> = items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, item)| section(item, &format!("listeners[{i}]"), problems))
                    .collect();
                self.listeners = Some(listeners);
            }
            "admin" => self.admin = section(value, name, problems),
            "identity" => self.identity = section(value, name, problems),
            "intercept_ca" => self.intercept_ca = section(value, name, problems),
            "policy" => self.policy = section(value, name, problems),
            "intent_tokens" => self.intent_tokens = section(value, name, problems),
            "credentials" => self.credentials = section(value, name, problems),
            "agent_secrets" => self.agent_secrets = section(value, name, problems),
            "upstream" => self.upstream = section(value, name, problems),
            "limits" => self.limits = section(value, name, problems),
            "telemetry" => self.telemetry = section(value, name, problems),
            other => problems.add(other, "unknown key"),
        }
    }
}

/// Deserializes one section, reporting every unknown key and every mistyped key by path.
///
/// serde stops at the first type error; to report the others too, the offending top-level key
/// of the section is dropped and the section deserialized again (bounded), until it parses.
fn section<T: DeserializeOwned>(
    mut value: serde_yaml::Value,
    key: &str,
    problems: &mut Problems,
) -> Option<T> {
    let mut unknown: Vec<String> = Vec::new();
    for _ in 0..64 {
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(value.clone(), &mut track);
        let result = serde_ignored::deserialize(tracked, |path| {
            let path = path.to_string();
            if !unknown.contains(&path) {
                unknown.push(path);
            }
        });
        match result {
            Ok(parsed) => {
                for path in &unknown {
                    problems.add(join_key(key, path), "unknown key");
                }
                // After a type error the section parsed without the offending key; keep it so
                // the semantic checks still run on the rest (the recorded problem already fails
                // the configuration).
                return Some(parsed);
            }
            Err(e) => {
                let path = track.path().to_string();
                let path = if path == "." { String::new() } else { path };
                problems.add(join_key(key, &path), e.to_string());
                let first = path.split(['.', '[']).next().unwrap_or("");
                let removed = match &mut value {
                    serde_yaml::Value::Mapping(map) if !first.is_empty() => {
                        map.remove(first).is_some()
                    }
                    _ => false,
                };
                if !removed {
                    break;
                }
            }
        }
    }
    for path in &unknown {
        problems.add(join_key(key, path), "unknown key");
    }
    None
}

fn join_key(prefix: &str, path: &str) -> String {
    if path.is_empty() || path == "?" {
        prefix.to_string()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{}", path.replace(".?", ""))
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn require_file(base: &Path, path: &Path, key: &str, problems: &mut Problems) -> PathBuf {
    let resolved = resolve(base, path);
    if !resolved.is_file() {
        problems.add(key, format!("file not found: {}", resolved.display()));
    }
    resolved
}

fn parse_address(text: &str, key: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(address) => Some(address),
        Err(_) => {
            problems.add(
                key,
                format!("`{text}` is not an IP:port address (for example 127.0.0.1:15001)"),
            );
            None
        }
    }
}

const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

fn validate(sections: Sections, base: &Path, origin: &str, problems: &mut Problems) -> Config {
    let listeners = validate_listeners(sections.listeners.unwrap_or_default(), base, problems);

    let raw_admin = sections.admin.unwrap_or_default();
    let admin_address = raw_admin.address.as_deref().unwrap_or(DEFAULT_ADMIN);
    let admin_address = parse_address(admin_address, "admin.address", problems)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 15000)));
    let allowed_spiffe_ids: Vec<SpiffeId> = raw_admin
        .allowed_spiffe_ids
        .iter()
        .enumerate()
        .filter_map(|(i, text)| {
            SpiffeId::parse(text)
                .map_err(|e| problems.add(format!("admin.allowed_spiffe_ids[{i}]"), e.to_string()))
                .ok()
        })
        .collect();
    let admin_tls = raw_admin.tls.as_ref().map(|pair| KeyPairPaths {
        cert: require_file(base, &pair.cert, "admin.tls.cert", problems),
        key: require_file(base, &pair.key, "admin.tls.key", problems),
    });

    let raw_identity = sections.identity.unwrap_or_default();
    let mut trust_domains = std::collections::BTreeMap::new();
    for (domain, trust) in &raw_identity.trust_domains {
        let key = format!("identity.trust_domains.{domain}");
        match SpiffeId::parse(&format!("spiffe://{domain}")) {
            Ok(id) if id.path().is_empty() => {
                trust_domains.insert(
                    domain.clone(),
                    require_file(base, &trust.bundle, &format!("{key}.bundle"), problems),
                );
            }
            _ => problems.add(
                key,
                "is not a valid trust domain (lower-case letters, digits, '.', '-', '_')",
            ),
        }
    }
    if admin_tls.is_some() && trust_domains.is_empty() && raw_identity.workload_api.is_none() {
        problems.add(
            "admin.tls",
            "admin mTLS verifies callers against identity.trust_domains, which is empty",
        );
    }
    if !admin_address.ip().is_loopback() {
        // Beyond loopback the admin API steers the proxy for anyone who can reach it: it
        // needs mTLS and a list of who may use it.
        if admin_tls.is_none() {
            problems.add(
                "admin.tls",
                "a non-loopback admin.address needs admin.tls (cert and key) for mTLS",
            );
        }
        if allowed_spiffe_ids.is_empty() {
            problems.add(
                "admin.allowed_spiffe_ids",
                "a non-loopback admin.address needs at least one allowed SPIFFE ID",
            );
        }
        if trust_domains.is_empty() && raw_identity.workload_api.is_none() {
            problems.add(
                "identity.trust_domains",
                "a non-loopback admin.address needs trust bundles (or identity.workload_api) to verify callers",
            );
        }
    }
    let workload_api = raw_identity.workload_api.clone();
    if let Some(endpoint) = &workload_api
        && !endpoint.starts_with("unix:///")
    {
        problems.add(
            "identity.workload_api",
            format!("`{endpoint}` is not a unix:///absolute/path endpoint"),
        );
    }
    let workload_spiffe_id = raw_identity.workload_spiffe_id.as_deref().and_then(|text| {
        SpiffeId::parse(text)
            .map_err(|e| problems.add("identity.workload_spiffe_id", e.to_string()))
            .ok()
    });

    for (i, listener) in listeners.iter().enumerate() {
        if listener.tls_from_workload_api && raw_identity.workload_api.is_none() {
            problems.add(
                format!("listeners[{i}].tls"),
                "needs cert and key, or identity.workload_api to serve tollgate's own SVID",
            );
        }
        if listener.client_auth != ClientAuth::None
            && trust_domains.is_empty()
            && raw_identity.workload_api.is_none()
        {
            problems.add(
                format!("listeners[{i}].tls.client_auth"),
                "client certificates are verified against identity.trust_domains, which is empty",
            );
        }
    }

    let intercept_ca = sections.intercept_ca.map(|pair| KeyPairPaths {
        cert: require_file(base, &pair.cert, "intercept_ca.cert", problems),
        key: require_file(base, &pair.key, "intercept_ca.key", problems),
    });

    let policy = validate_policy(sections.policy.unwrap_or_default(), base, problems);

    let intent_issuers: Vec<crate::intent_token::IssuerConfig> = sections
        .intent_tokens
        .map(|t| t.issuers)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, raw)| crate::intent_token::IssuerConfig {
            issuer: raw.issuer,
            jwks: require_file(
                base,
                &raw.jwks,
                &format!("intent_tokens.issuers[{i}].jwks"),
                problems,
            ),
            audience: raw.audience,
        })
        .collect();
    if problems.0.is_empty() && !intent_issuers.is_empty() {
        // Parse the key sets now, so `check` and start-up report a broken JWKS with its key.
        if let Err(errors) = crate::intent_token::IntentIssuers::load(&intent_issuers) {
            for error in errors {
                problems.add(error.key, error.message);
            }
        }
    }
    let credentials =
        credentials::validate_credentials(sections.credentials.unwrap_or_default(), base, problems);
    let agent_secrets =
        credentials::validate_agent_secrets(sections.agent_secrets.unwrap_or_default(), problems);

    let raw_upstream = sections.upstream.unwrap_or_default();
    let upstream = UpstreamConfig {
        ca: raw_upstream
            .ca
            .as_deref()
            .map(|p| require_file(base, p, "upstream.ca", problems)),
        allow_private: raw_upstream
            .allow_private
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                parse_cidr(text, &format!("upstream.allow_private[{i}]"), problems)
            })
            .collect(),
        connect_timeout: raw_upstream
            .connect_timeout
            .map_or(Duration::from_secs(5), |d| d.0),
        request_timeout: raw_upstream
            .request_timeout
            .map_or(Duration::from_secs(300), |d| d.0),
    };
    for (key, value) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.request_timeout", upstream.request_timeout),
    ] {
        if value.is_zero() {
            problems.add(key, "must be greater than zero");
        }
    }

    let raw_limits = sections.limits.unwrap_or_default();
    let max_header_bytes = raw_limits.max_header_bytes.unwrap_or(65536);
    if !(1024..=1024 * 1024).contains(&max_header_bytes) {
        problems.add(
            "limits.max_header_bytes",
            "must be between 1024 and 1048576",
        );
    }
    let max_connections = raw_limits.max_connections.unwrap_or(10_000);
    if max_connections == 0 || max_connections > 1_000_000 {
        problems.add("limits.max_connections", "must be between 1 and 1000000");
    }
    let limits = Limits {
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(65536),
        header_read_timeout: raw_limits
            .header_read_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        max_connections: usize::try_from(max_connections).unwrap_or(10_000),
        drain_timeout: raw_limits
            .drain_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
    };
    if limits.header_read_timeout.is_zero() {
        problems.add("limits.header_read_timeout", "must be greater than zero");
    }

    let raw_telemetry = sections.telemetry.unwrap_or_default();
    let decision_log = match raw_telemetry.decision_log.as_deref() {
        None | Some("stdout") => DecisionLogTarget::Stdout,
        Some("off") => DecisionLogTarget::Off,
        Some("") => {
            problems.add(
                "telemetry.decision_log",
                "must be stdout, off or a file path",
            );
            DecisionLogTarget::Off
        }
        Some(path) => DecisionLogTarget::File(resolve(base, Path::new(path))),
    };
    let log_format = match raw_telemetry.log_format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            problems.add(
                "telemetry.log_format",
                format!("`{other}` is not one of json, pretty"),
            );
            LogFormat::Json
        }
    };
    let telemetry = TelemetryConfig {
        decision_log,
        log_format,
        metrics_label_destination: raw_telemetry.metrics_label_destination.unwrap_or(true),
    };

    Config {
        listeners,
        admin: AdminConfig {
            address: admin_address,
            tls: admin_tls,
            allowed_spiffe_ids,
            kill_file: raw_admin.kill_file.as_deref().map(|p| resolve(base, p)),
        },
        identity: IdentityConfig {
            workload_spiffe_id,
            trust_domains,
            workload_api,
        },
        intercept_ca,
        policy,
        upstream,
        limits,
        telemetry,
        intent_issuers,
        credentials,
        agent_secrets,
        origin: origin.to_string(),
    }
}

fn validate_listeners(
    raw: Vec<raw::RawListener>,
    base: &Path,
    problems: &mut Problems,
) -> Vec<ListenerConfig> {
    if raw.is_empty() {
        problems.add("listeners", "at least one listener is required");
    }
    let mut names = BTreeSet::new();
    let mut listeners = Vec::new();
    for (i, listener) in raw.into_iter().enumerate() {
        let key = format!("listeners[{i}]");
        let name_ok = !listener.name.is_empty()
            && listener.name.len() <= 64
            && listener
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            problems.add(
                format!("{key}.name"),
                "must be 1..64 characters of a-z, 0-9, - and _ (it becomes a metric label)",
            );
        }
        if !names.insert(listener.name.clone()) {
            problems.add(
                format!("{key}.name"),
                format!("`{}` is used by another listener", listener.name),
            );
        }
        let address = parse_address(&listener.address, &format!("{key}.address"), problems);
        let mode = match listener.mode.as_deref() {
            None | Some("forward") => ListenerMode::Forward,
            Some("transparent") => {
                problems.not_supported(format!("{key}.mode: transparent"));
                ListenerMode::Forward
            }
            Some(other) => {
                problems.add(
                    format!("{key}.mode"),
                    format!("`{other}` is not one of forward, transparent"),
                );
                ListenerMode::Forward
            }
        };
        let mut client_auth = ClientAuth::None;
        let mut tls_from_workload_api = false;
        let tls = listener.tls.and_then(|tls| {
            client_auth = match tls.client_auth.as_deref() {
                None | Some("none") => ClientAuth::None,
                Some("required") => ClientAuth::Required,
                Some("optional") => ClientAuth::Optional,
                Some(other) => {
                    problems.add(
                        format!("{key}.tls.client_auth"),
                        format!("`{other}` is not one of required, optional, none"),
                    );
                    ClientAuth::None
                }
            };
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(key_file)) => Some(KeyPairPaths {
                    cert: require_file(base, cert, &format!("{key}.tls.cert"), problems),
                    key: require_file(base, key_file, &format!("{key}.tls.key"), problems),
                }),
                (None, None) => {
                    tls_from_workload_api = true;
                    None
                }
                (None, Some(_)) => {
                    problems.add(format!("{key}.tls.cert"), "is required with tls.key");
                    None
                }
                (Some(_), None) => {
                    problems.add(format!("{key}.tls.key"), "is required with tls.cert");
                    None
                }
            }
        });
        if let Some(address) = address {
            listeners.push(ListenerConfig {
                name: listener.name,
                address,
                mode,
                tls,
                tls_from_workload_api,
                client_auth,
                intercept: listener.intercept.unwrap_or(true),
            });
        }
    }
    listeners
}

fn validate_policy(raw: raw::RawPolicy, base: &Path, problems: &mut Problems) -> PolicyConfig {
    let requested = match raw.engine.as_deref() {
        None | Some("auto") => None,
        Some("rego") => Some(EngineKind::Rego),
        Some("wasm") => Some(EngineKind::Wasm),
        Some(other) => {
            problems.add(
                "policy.engine",
                format!("`{other}` is not one of auto, rego, wasm"),
            );
            None
        }
    };
    let source = match raw.path {
        None => PolicySource::Bundled,
        Some(path) => {
            let resolved = resolve(base, &path);
            if !resolved.exists() {
                problems.add("policy.path", format!("not found: {}", resolved.display()));
            }
            PolicySource::from_path(resolved)
        }
    };
    // `auto` (or no key) is whatever the path holds; an explicit engine must agree with it.
    let engine = source.engine();
    match (requested, &source) {
        (Some(EngineKind::Wasm), PolicySource::Bundled) => problems.add(
            "policy.engine",
            "wasm needs policy.path naming a .wasm module or an OPA bundle .tar.gz \
             (the built-in policy is Rego)",
        ),
        (Some(wanted), _) if wanted != engine => problems.add(
            "policy.engine",
            format!(
                "`{}` cannot evaluate policy.path {} (a .wasm or .tar.gz needs wasm; \
                 a folder or .rego file needs rego; or use auto)",
                wanted.as_str(),
                source
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        ),
        _ => {}
    }
    let data = match (&raw.data, &source) {
        (Some(_), PolicySource::WasmBundle(_)) => {
            problems.add(
                "policy.data",
                "an OPA bundle carries its own data.json; remove policy.data \
                 (or use a bare .wasm module with policy.data)",
            );
            DataSource::Empty
        }
        (Some(path), _) => DataSource::File(require_file(base, path, "policy.data", problems)),
        (None, PolicySource::Bundled) => DataSource::Bundled,
        (None, PolicySource::Path(dir)) if dir.join("data.json").is_file() => {
            DataSource::File(dir.join("data.json"))
        }
        (None, _) => DataSource::Empty,
    };
    let entrypoint = raw
        .entrypoint
        .unwrap_or_else(|| "tollgate/decision".to_string());
    let entrypoint_ok = !entrypoint.is_empty()
        && entrypoint.split('/').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if !entrypoint_ok {
        problems.add(
            "policy.entrypoint",
            format!("`{entrypoint}` is not a rule path such as tollgate/decision"),
        );
    }
    PolicyConfig {
        source,
        data,
        engine,
        entrypoint,
        dry_run: raw.dry_run.unwrap_or(false),
        watch: raw.watch.unwrap_or(false),
    }
}

fn parse_cidr(text: &str, key: &str, problems: &mut Problems) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net);
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some(IpNet::from(ip));
    }
    problems.add(
        key,
        format!("`{text}` is not a CIDR such as 10.0.0.0/8 or an IP address"),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        load_str(text, Path::new("/nonexistent-base"), "test.yaml")
    }

    fn keys(errors: &ConfigErrors) -> Vec<&str> {
        errors.errors.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn accepts_minimal_config() {
        let config = load("listeners: [{name: agents, address: '127.0.0.1:0'}]").unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert!(config.listeners[0].intercept);
        assert_eq!(config.policy.source, PolicySource::Bundled);
        assert_eq!(config.policy.data, DataSource::Bundled);
        assert_eq!(config.limits.max_header_bytes, 65536);
        assert_eq!(config.upstream.request_timeout, Duration::from_secs(300));
    }

    #[test]
    fn accepts_builtin_config() {
        let config = builtin().unwrap();
        assert_eq!(
            config.listeners[0].address,
            "127.0.0.1:15001".parse().unwrap()
        );
        assert_eq!(config.admin.address, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(
            config
                .identity
                .workload_spiffe_id
                .as_ref()
                .map(|id| id.as_str()),
            Some("spiffe://tollgate.local/dev/agent")
        );
    }

    #[test]
    fn rejects_every_unknown_key_at_once() {
        let errors = load(
            "listeners: [{name: a, address: '127.0.0.1:0', colour: red}]\n\
             upstream: {conect_timeout: 5s}\nbogus: 1\nlimits: {max_header_bytes: 2048, nope: 1}",
        )
        .unwrap_err();
        let keys = keys(&errors);
        assert!(keys.contains(&"listeners[0].colour"), "{keys:?}");
        assert!(keys.contains(&"upstream.conect_timeout"), "{keys:?}");
        assert!(keys.contains(&"bogus"), "{keys:?}");
        assert!(keys.contains(&"limits.nope"), "{keys:?}");
        assert!(errors.errors.iter().all(|e| e.message == "unknown key"));
    }

    #[test]
    fn rejects_bad_values_naming_each_key() {
        let errors = load(
            "listeners: [{name: a, address: 'nowhere'}, {name: a, address: '127.0.0.1:0'}]\n\
             upstream: {connect_timeout: 5 seconds, allow_private: [not-a-cidr]}\n\
             limits: {max_header_bytes: 10}\npolicy: {engine: magic}",
        )
        .unwrap_err();
        let keys = keys(&errors);
        for expected in [
            "listeners[0].address",
            "listeners[1].name",
            "upstream.connect_timeout",
            "limits.max_header_bytes",
            "policy.engine",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn rejects_later_features_as_not_supported_yet() {
        let errors = load(
            "listeners: [{name: a, address: '127.0.0.1:0', mode: transparent}]\n\
             intent_tokens: {issuers: [{issuer: x, jwks: j.json}]}",
        )
        .unwrap_err();
        let text = errors.to_string();
        assert!(!text.contains("credentials"), "{text}");
        assert!(text.contains("transparent: not supported yet"), "{text}");
    }

    #[test]
    fn resolves_relative_paths_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), "x").unwrap();
        let file = dir.path().join("tollgate.yaml");
        std::fs::write(
            &file,
            "listeners: [{name: a, address: '127.0.0.1:0'}]\nintercept_ca: {cert: ca.pem, key: ca-key.pem}\n",
        )
        .unwrap();
        let config = load_file(&file).unwrap();
        let ca = config.intercept_ca.unwrap();
        assert!(ca.cert.is_absolute());
        assert_eq!(ca.cert, dir.path().join("ca.pem"));
    }

    #[test]
    fn rejects_missing_files_with_their_key() {
        let errors = load(
            "listeners: [{name: a, address: '127.0.0.1:0', tls: {cert: nope.pem, key: nope-key.pem}}]",
        )
        .unwrap_err();
        assert_eq!(
            keys(&errors),
            vec!["listeners[0].tls.cert", "listeners[0].tls.key"]
        );
    }

    #[test]
    fn rejects_non_yaml() {
        let errors = load("listeners: [").unwrap_err();
        assert!(errors.to_string().contains("not valid YAML"));
    }

    #[test]
    fn engine_auto_picks_by_what_the_path_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.path().join("b.tar.gz"), b"").unwrap();
        std::fs::write(dir.path().join("p.rego"), "package p").unwrap();
        let at = |policy: &str| {
            load_str(
                &format!("listeners: [{{name: a, address: '127.0.0.1:0'}}]\npolicy: {policy}"),
                dir.path(),
                "t.yaml",
            )
        };
        let module = at("{path: p.wasm}").unwrap().policy;
        assert_eq!(module.engine, EngineKind::Wasm);
        assert_eq!(
            module.source,
            PolicySource::WasmModule(dir.path().join("p.wasm"))
        );
        assert_eq!(module.data, DataSource::Empty);
        let bundle = at("{path: b.tar.gz, engine: auto}").unwrap().policy;
        assert_eq!(bundle.engine, EngineKind::Wasm);
        assert_eq!(
            bundle.source,
            PolicySource::WasmBundle(dir.path().join("b.tar.gz"))
        );
        let folder = at("{path: .}").unwrap().policy;
        assert_eq!(folder.engine, EngineKind::Rego);
        let file = at("{path: p.rego, engine: rego}").unwrap().policy;
        assert_eq!(file.engine, EngineKind::Rego);
        assert_eq!(
            at("{path: p.wasm, engine: wasm}").unwrap().policy.engine,
            EngineKind::Wasm
        );
    }

    #[test]
    fn refuses_an_engine_that_cannot_read_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.path().join("b.tar.gz"), b"").unwrap();
        std::fs::write(dir.path().join("d.json"), "{}").unwrap();
        let at = |policy: &str| {
            load_str(
                &format!("listeners: [{{name: a, address: '127.0.0.1:0'}}]\npolicy: {policy}"),
                dir.path(),
                "t.yaml",
            )
            .unwrap_err()
        };
        for policy in [
            "{path: p.wasm, engine: rego}",
            "{path: ., engine: wasm}",
            "{engine: wasm}",
        ] {
            let errors = at(policy);
            assert_eq!(keys(&errors), vec!["policy.engine"], "{policy}");
        }
        let errors = at("{path: b.tar.gz, data: d.json}");
        assert_eq!(keys(&errors), vec!["policy.data"]);
        assert!(
            errors
                .to_string()
                .contains("bundle carries its own data.json")
        );
    }
}
