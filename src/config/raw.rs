//! The configuration exactly as users write it (SPEC §2): serde structs, no validation.
//!
//! Unknown keys are not refused here but collected by `serde_ignored` in [`super::load`], so
//! that every unknown key is reported at once instead of only the first. Values are turned into
//! the validated [`super::Config`] by `super::validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::duration::ConfigDuration;

/// `listeners[]`: one socket the agents connect to.
#[derive(Debug, Clone, Deserialize)]
pub struct RawListener {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub tls: Option<RawListenerTls>,
    #[serde(default)]
    pub intercept: Option<bool>,
    /// `mode: transparent` only: how long to wait for the client's first bytes.
    #[serde(default)]
    pub sniff_timeout: Option<ConfigDuration>,
}

/// `listeners[].tls`: TLS on the listener itself ("HTTPS proxy").
#[derive(Debug, Clone, Deserialize)]
pub struct RawListenerTls {
    /// Absent (with `key`) when tollgate's own SVID from the Workload API serves.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: Option<String>,
}

/// `admin`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawAdmin {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub kill_file: Option<PathBuf>,
    #[serde(default)]
    pub allowed_spiffe_ids: Vec<String>,
    /// SPEC §2: a TCP address serving only `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Extension to SPEC §2: the peer UIDs a `unix://` admin socket serves.
    #[serde(default)]
    pub allowed_uids: Option<Vec<u32>>,
    /// Extension to SPEC §2: the admin listener's own certificate when it is not on loopback.
    #[serde(default)]
    pub tls: Option<RawKeyPair>,
}

/// `identity`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawIdentity {
    #[serde(default)]
    pub trust_domains: BTreeMap<String, RawTrustDomain>,
    #[serde(default)]
    pub workload_api: Option<String>,
    #[serde(default)]
    pub workload_spiffe_id: Option<String>,
}

/// `identity.trust_domains.<td>`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawTrustDomain {
    pub bundle: PathBuf,
}

/// `intercept_ca`: a certificate and its key, both PEM files.
#[derive(Debug, Clone, Deserialize)]
pub struct RawKeyPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `policy`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawPolicy {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub engine: Option<String>,
    #[serde(default)]
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub watch: Option<bool>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// `intent_tokens`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawIntentTokens {
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
}

/// `intent_tokens.issuers[]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawIssuer {
    pub issuer: String,
    pub jwks: PathBuf,
    #[serde(default)]
    pub audience: Option<String>,
}

/// `upstream`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawUpstream {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub allow_private: Vec<String>,
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub request_timeout: Option<ConfigDuration>,
}

/// `limits`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawLimits {
    #[serde(default)]
    pub max_header_bytes: Option<u64>,
    #[serde(default)]
    pub header_read_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub max_connections: Option<u64>,
    #[serde(default)]
    pub drain_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub max_concurrent_streams: Option<u64>,
    #[serde(default)]
    pub max_requests_per_caller: Option<u64>,
}

/// `telemetry`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawTelemetry {
    #[serde(default)]
    pub decision_log: Option<String>,
    #[serde(default)]
    pub log_format: Option<String>,
    #[serde(default)]
    pub metrics_label_destination: Option<bool>,
    #[serde(default)]
    pub decision_log_capacity: Option<u64>,
    #[serde(default)]
    pub decision_log_on_full: Option<String>,
    #[serde(default)]
    pub decision_log_max_wait: Option<ConfigDuration>,
}
