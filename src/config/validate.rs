//! Validation: the raw sections → the [`Config`] that runs. Each section has its function; they
//! run in a fixed order (so problems are reported in the order of the file's usual layout), and
//! every problem is collected, none stops the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::identity::SpiffeId;

use super::load::{Problems, Sections};
use super::types::*;
use super::{credentials, raw};

/// Every section, validated, in order.
pub(super) fn validate(
    sections: Sections,
    base: &Path,
    origin: &str,
    problems: &mut Problems,
) -> Config {
    let written = sections.listeners_written;
    let listeners = validate_listeners(
        sections.listeners.unwrap_or_default(),
        written,
        base,
        problems,
    );
    let (admin, identity) = validate_admin_and_identity(
        sections.admin.unwrap_or_default(),
        sections.identity.unwrap_or_default(),
        &listeners,
        base,
        problems,
    );
    let intercept_ca = sections.intercept_ca.map(|pair| KeyPairPaths {
        cert: require_file(base, &pair.cert, "intercept_ca.cert", problems),
        key: require_file(base, &pair.key, "intercept_ca.key", problems),
    });
    let policy = validate_policy(sections.policy.unwrap_or_default(), base, problems);
    let intent_issuers = validate_intent_issuers(sections.intent_tokens, base, problems);
    let credentials =
        credentials::validate_credentials(sections.credentials.unwrap_or_default(), base, problems);
    let agent_secrets =
        credentials::validate_agent_secrets(sections.agent_secrets.unwrap_or_default(), problems);
    let upstream = validate_upstream(sections.upstream.unwrap_or_default(), base, problems);
    let limits = validate_limits(sections.limits.unwrap_or_default(), problems);
    let telemetry = validate_telemetry(sections.telemetry.unwrap_or_default(), base, problems);
    Config {
        listeners,
        admin,
        identity,
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

pub(super) fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

pub(super) fn require_file(
    base: &Path,
    path: &Path,
    key: &str,
    problems: &mut Problems,
) -> PathBuf {
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

/// `admin.address`: `IP:port`, or `unix:///absolute/path`.
fn parse_admin_address(text: &str, problems: &mut Problems) -> Option<AdminAddress> {
    let Some(path) = text.strip_prefix("unix://") else {
        return parse_address(text, "admin.address", problems).map(AdminAddress::Tcp);
    };
    let path = PathBuf::from(path);
    if path.is_absolute() && path.file_name().is_some() {
        Some(AdminAddress::Unix(path))
    } else {
        problems.add(
            "admin.address",
            format!("`{text}` is not a unix:///absolute/path socket address"),
        );
        None
    }
}

/// What the admin listener's transport requires. A Unix socket checks its callers by UID, so
/// `admin.tls` does not apply to it; `admin.allowed_uids` applies to nothing else. With a
/// transparent listener the agent shares loopback with tollgate (the redirect exempts it), so
/// a plain TCP admin API would let the agent lift its own kill: it must be a Unix socket, or
/// TCP with mTLS and an allow list. One line says so, naming what is missing.
fn check_admin_transport(
    raw_admin: &raw::RawAdmin,
    address: Option<&AdminAddress>,
    has_tls: bool,
    has_allowed_ids: bool,
    transparent: bool,
    problems: &mut Problems,
) {
    match address {
        Some(AdminAddress::Unix(_)) => {
            if raw_admin.tls.is_some() {
                problems.add(
                    "admin.tls",
                    "does not apply to a unix:// admin.address (its callers are checked by \
                     UID: admin.allowed_uids)",
                );
            }
            if raw_admin.allowed_uids.as_ref().is_some_and(Vec::is_empty) {
                problems.add(
                    "admin.allowed_uids",
                    "an empty list lets no one use the admin API; omit it to allow tollgate's \
                     own UID",
                );
            }
        }
        Some(AdminAddress::Tcp(_)) => {
            if raw_admin.allowed_uids.is_some() {
                problems.add(
                    "admin.allowed_uids",
                    "applies only to a unix:// admin.address",
                );
            }
            if transparent && !(has_tls && has_allowed_ids) {
                let missing: Vec<&str> = [
                    (!has_tls).then_some("admin.tls"),
                    (!has_allowed_ids).then_some("admin.allowed_spiffe_ids"),
                ]
                .into_iter()
                .flatten()
                .collect();
                problems.add(
                    "admin.address",
                    format!(
                        "a transparent listener exists, so the agent shares loopback with the \
                         admin API: use a unix:// admin.address, or TCP with mTLS and an allow \
                         list (missing: {})",
                        missing.join(", ")
                    ),
                );
            }
        }
        None => {}
    }
}

/// `admin` and `identity`, and what each requires of the other and of the listeners.
fn validate_admin_and_identity(
    raw_admin: raw::RawAdmin,
    raw_identity: raw::RawIdentity,
    listeners: &[ListenerConfig],
    base: &Path,
    problems: &mut Problems,
) -> (AdminConfig, IdentityConfig) {
    let admin_text = raw_admin.address.as_deref().unwrap_or(DEFAULT_ADMIN);
    let admin_parsed = parse_admin_address(admin_text, problems);
    let admin_address = admin_parsed
        .clone()
        .unwrap_or_else(|| AdminAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], 15000))));
    let metrics_address = raw_admin
        .metrics_address
        .as_deref()
        .and_then(|text| parse_address(text, "admin.metrics_address", problems));
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

    let mut trust_domains = BTreeMap::new();
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
    let transparent = listeners
        .iter()
        .any(|l| l.mode == ListenerMode::Transparent);
    check_admin_transport(
        &raw_admin,
        admin_parsed.as_ref(),
        admin_tls.is_some(),
        !allowed_spiffe_ids.is_empty(),
        transparent,
        problems,
    );
    if admin_address.tcp().is_some_and(|a| !a.ip().is_loopback()) {
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

    let admin = AdminConfig {
        address: admin_address,
        metrics_address,
        allowed_uids: raw_admin.allowed_uids.clone(),
        tls: admin_tls,
        allowed_spiffe_ids,
        kill_file: raw_admin.kill_file.as_deref().map(|p| resolve(base, p)),
    };
    let identity = IdentityConfig {
        workload_spiffe_id,
        trust_domains,
        workload_api,
    };
    (admin, identity)
}

/// `intent_tokens.issuers`: each JWKS file must exist, and (when nothing else is wrong) parse.
fn validate_intent_issuers(
    raw: Option<raw::RawIntentTokens>,
    base: &Path,
    problems: &mut Problems,
) -> Vec<crate::intent_token::IssuerConfig> {
    let intent_issuers: Vec<crate::intent_token::IssuerConfig> = raw
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
    intent_issuers
}

/// `upstream`.
fn validate_upstream(
    raw_upstream: raw::RawUpstream,
    base: &Path,
    problems: &mut Problems,
) -> UpstreamConfig {
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

    upstream
}

/// The most HTTP/2 streams `limits.max_concurrent_streams` may allow on one connection: each
/// open stream holds a task and up to its send buffer, so the bound is what one connection
/// may cost.
const MAX_CONCURRENT_STREAMS: u64 = 10_000;

/// `limits`.
fn validate_limits(raw_limits: raw::RawLimits, problems: &mut Problems) -> Limits {
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
    let max_concurrent_streams = raw_limits.max_concurrent_streams.unwrap_or(100);
    if !(1..=MAX_CONCURRENT_STREAMS).contains(&max_concurrent_streams) {
        problems.add(
            "limits.max_concurrent_streams",
            format!("must be between 1 and {MAX_CONCURRENT_STREAMS}"),
        );
    }
    let max_requests_per_caller = raw_limits.max_requests_per_caller.unwrap_or(256);
    if !(1..=1_000_000).contains(&max_requests_per_caller) {
        problems.add(
            "limits.max_requests_per_caller",
            "must be between 1 and 1000000",
        );
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
        max_concurrent_streams: u32::try_from(max_concurrent_streams).unwrap_or(100),
        max_requests_per_caller: usize::try_from(max_requests_per_caller).unwrap_or(256),
    };
    if limits.header_read_timeout.is_zero() {
        problems.add("limits.header_read_timeout", "must be greater than zero");
    }

    limits
}

/// The most lines `telemetry.decision_log_capacity` may hold: the queue's memory is bounded
/// by it (tokio's bounded channel also caps its permits far above this).
const MAX_DECISION_LOG_CAPACITY: u64 = 1 << 24;

/// `telemetry`.
fn validate_telemetry(
    raw_telemetry: raw::RawTelemetry,
    base: &Path,
    problems: &mut Problems,
) -> TelemetryConfig {
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
    let on_full = match raw_telemetry.decision_log_on_full.as_deref() {
        None | Some("backpressure") => OnFull::Backpressure,
        Some("drop") => OnFull::Drop,
        Some(other) => {
            problems.add(
                "telemetry.decision_log_on_full",
                format!("`{other}` is not one of backpressure, drop"),
            );
            OnFull::Backpressure
        }
    };
    let capacity = match raw_telemetry.decision_log_capacity {
        None => DecisionLogQueue::DEFAULT_CAPACITY,
        Some(n) if (1..=MAX_DECISION_LOG_CAPACITY).contains(&n) => {
            usize::try_from(n).unwrap_or(DecisionLogQueue::DEFAULT_CAPACITY)
        }
        Some(_) => {
            problems.add(
                "telemetry.decision_log_capacity",
                format!("must be between 1 and {MAX_DECISION_LOG_CAPACITY}"),
            );
            DecisionLogQueue::DEFAULT_CAPACITY
        }
    };
    let max_wait = raw_telemetry
        .decision_log_max_wait
        .map_or(DecisionLogQueue::DEFAULT_MAX_WAIT, |d| d.0);
    if max_wait.is_zero() {
        problems.add(
            "telemetry.decision_log_max_wait",
            "must be greater than zero",
        );
    }
    TelemetryConfig {
        decision_log,
        log_format,
        metrics_label_destination: raw_telemetry.metrics_label_destination.unwrap_or(true),
        decision_log_queue: DecisionLogQueue {
            capacity,
            on_full,
            max_wait,
        },
    }
}

fn validate_listeners(
    raw: Vec<raw::RawListener>,
    written: usize,
    base: &Path,
    problems: &mut Problems,
) -> Vec<ListenerConfig> {
    if raw.is_empty() && written == 0 {
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
            Some("transparent") => ListenerMode::Transparent,
            Some(other) => {
                problems.add(
                    format!("{key}.mode"),
                    format!("`{other}` is not one of forward, transparent"),
                );
                ListenerMode::Forward
            }
        };
        let sniff_timeout = match (mode, listener.sniff_timeout) {
            (_, None) => DEFAULT_SNIFF_TIMEOUT,
            (ListenerMode::Transparent, Some(d)) if d.0.is_zero() || d.0 > MAX_SNIFF_TIMEOUT => {
                problems.add(
                    format!("{key}.sniff_timeout"),
                    "must be greater than zero and at most 10s",
                );
                DEFAULT_SNIFF_TIMEOUT
            }
            (ListenerMode::Transparent, Some(d)) => d.0,
            (ListenerMode::Forward, Some(_)) => {
                problems.add(
                    format!("{key}.sniff_timeout"),
                    "applies only to mode: transparent",
                );
                DEFAULT_SNIFF_TIMEOUT
            }
        };
        if mode == ListenerMode::Transparent && listener.tls.is_some() {
            problems.add(
                format!("{key}.tls"),
                "a transparent listener takes the agent's own connections to origins: TLS on \
                 the listener itself does not apply (interception is `intercept`)",
            );
        }
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
                sniff_timeout,
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
