//! `credentials` and `agent_secrets` (SPEC §2, §5): the raw YAML shapes and their validation.
//!
//! Every credential kind shares one raw struct so that serde's unknown-key tracking reports
//! misspelt keys; keys that belong to another kind are refused by the validation here, so a
//! `static` credential with a `token_endpoint` is an error rather than a silently ignored key.
//! Secrets are only ever referenced (`{file: …}` / `{env: …}`), never inlined: there is no key
//! that could hold one.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::duration::ConfigDuration;

/// `credentials.<name>` as written.
#[derive(Debug, Clone, Deserialize)]
pub struct RawCredential {
    pub kind: String,
    #[serde(default)]
    pub source: Option<RawSecretRef>,
    #[serde(default)]
    pub inject: Option<RawInject>,
    #[serde(default)]
    pub signing_key: Option<RawSecretRef>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub max_ttl: Option<ConfigDuration>,
    #[serde(default)]
    pub default_ttl: Option<ConfigDuration>,
    #[serde(default)]
    pub grant: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<RawSecretRef>,
    #[serde(default)]
    pub client_auth: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub subject_token: Option<RawSubjectToken>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
}

/// `{file: PATH}` or `{env: NAME}`: where a secret lives.
#[derive(Debug, Clone, Deserialize)]
pub struct RawSecretRef {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
}

/// `inject`: `{header, value}`, `{query}` or `{basic: {username}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawInject {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub basic: Option<RawBasic>,
}

/// `inject.basic`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawBasic {
    pub username: String,
}

/// `subject_token: {jwt: NAME}` (token exchange: the caller's identity as a minted JWT).
#[derive(Debug, Clone, Deserialize)]
pub struct RawSubjectToken {
    pub jwt: String,
}

/// `agent_secrets` (extension to SPEC §2).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawAgentSecrets {
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub on_present: Option<String>,
}

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// A file, re-read when it changes (rotation).
    File(PathBuf),
    /// An environment variable, read at start-up.
    Env(String),
}

/// How a credential is put into the forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectConfig {
    /// `header: value` where the value is `prefix + token + suffix`.
    Header {
        name: HeaderName,
        prefix: String,
        suffix: String,
    },
    /// `?param=token` appended to the query (an existing `param` is replaced).
    Query { param: String },
    /// `Authorization: Basic base64(username:token)`.
    Basic { username: String },
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig::Header {
            name: http::header::AUTHORIZATION,
            prefix: "Bearer ".to_string(),
            suffix: String::new(),
        }
    }
}

/// `jwt` credentials: tollgate mints the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// PKCS#8 PEM, ES256 (P-256) or EdDSA (Ed25519).
    pub signing_key: PathBuf,
    pub issuer: String,
    pub max_ttl: Duration,
    pub default_ttl: Duration,
}

/// RFC 6749 §4.4 or RFC 8693.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials,
    TokenExchange,
}

/// How tollgate authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// `client_secret_basic` (default).
    Basic,
    /// `client_secret_post`.
    Post,
}

/// `oauth2` credentials: tokens from an authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    pub grant: Grant,
    pub token_endpoint: http::Uri,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub client_auth: ClientAuthMethod,
    pub resource: Option<String>,
    pub audience: Option<String>,
    pub revocation_endpoint: Option<http::Uri>,
    /// Token exchange: the `jwt` credential that mints the subject token.
    pub subject_token: Option<String>,
    pub ca: Option<PathBuf>,
    pub timeout: Duration,
}

/// What a credential is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    Static { source: SecretRef },
    Jwt(JwtConfig),
    OAuth2(Box<OAuth2Config>),
}

impl CredentialKind {
    /// The `kind` label of `tollgate_credential_issued_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialKind::Static { .. } => "static",
            CredentialKind::Jwt(_) => "jwt",
            CredentialKind::OAuth2(_) => "oauth2",
        }
    }
}

/// One validated credential. `PartialEq` lets a reload keep the cache of an unchanged one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialConfig {
    pub name: String,
    pub kind: CredentialKind,
    pub inject: InjectConfig,
}

/// What to do when an agent sends a secret header itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnPresent {
    /// Remove it and log the header name (default).
    #[default]
    Remove,
    /// Refuse the request (403 `agent_secret_present`).
    Deny,
}

/// `agent_secrets`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentSecretsConfig {
    /// Extra secret headers beyond authorization, proxy-authorization, x-api-key and cookie.
    pub headers: Vec<HeaderName>,
    pub on_present: OnPresent,
}

/// The headers every forwarded request loses (an agent holds no secrets).
pub const BUILTIN_SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

mod validate;

pub(super) use validate::{validate_agent_secrets, validate_credentials};

#[cfg(test)]
mod tests;
