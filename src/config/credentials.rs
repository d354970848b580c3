//! `credentials` and `agent_secrets` (SPEC §2, §5): the raw YAML shapes and their validation.
//!
//! Every credential kind shares one raw struct so that serde's unknown-key tracking reports
//! misspelt keys; keys that belong to another kind are refused by the validation here, so a
//! `static` credential with a `token_endpoint` is an error rather than a silently ignored key.
//! Secrets are only ever referenced (`{file: …}` / `{env: …}`), never inlined: there is no key
//! that could hold one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::Problems;
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

/// Default and limits of `timeout` for token endpoints.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
const DEFAULT_JWT_MAX_TTL: Duration = Duration::from_secs(900);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn secret_ref(
    raw: &RawSecretRef,
    base: &Path,
    key: &str,
    problems: &mut Problems,
) -> Option<SecretRef> {
    match (&raw.file, &raw.env) {
        (Some(file), None) => Some(SecretRef::File(super::resolve(base, file))),
        (None, Some(env)) if !env.is_empty() && !env.contains('=') => {
            Some(SecretRef::Env(env.clone()))
        }
        (None, Some(_)) => {
            problems.add(key, "env must name an environment variable");
            None
        }
        _ => {
            problems.add(key, "must be exactly one of {file: PATH} or {env: NAME}");
            None
        }
    }
}

fn parse_uri(text: &str, key: &str, problems: &mut Problems) -> Option<http::Uri> {
    match text.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            Some(uri)
        }
        _ => {
            problems.add(key, format!("`{text}` is not an http(s) URL"));
            None
        }
    }
}

fn inject(raw: Option<&RawInject>, key: &str, problems: &mut Problems) -> InjectConfig {
    let Some(raw) = raw else {
        return InjectConfig::default();
    };
    let key = format!("{key}.inject");
    let given = [
        raw.header.is_some() || raw.value.is_some(),
        raw.query.is_some(),
        raw.basic.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        problems.add(
            &key,
            "must be exactly one of {header, value}, {query: PARAM} or {basic: {username}}",
        );
        return InjectConfig::default();
    }
    if let Some(param) = &raw.query {
        let ok = !param.is_empty()
            && param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
        if !ok {
            problems.add(
                format!("{key}.query"),
                "must be a parameter name of A-Z a-z 0-9 - _ . ~",
            );
        }
        return InjectConfig::Query {
            param: param.clone(),
        };
    }
    if let Some(basic) = &raw.basic {
        if basic.username.contains(':') || basic.username.chars().any(char::is_control) {
            problems.add(
                format!("{key}.basic.username"),
                "may not contain ':' or control characters",
            );
        }
        return InjectConfig::Basic {
            username: basic.username.clone(),
        };
    }
    let name_text = raw.header.as_deref().unwrap_or("authorization");
    let name = match HeaderName::from_bytes(name_text.as_bytes()) {
        Ok(name) => name,
        Err(_) => {
            problems.add(
                format!("{key}.header"),
                format!("`{name_text}` is not a valid header name"),
            );
            return InjectConfig::default();
        }
    };
    let template = raw.value.as_deref().unwrap_or("Bearer {token}");
    let Some((prefix, suffix)) = template.split_once("{token}") else {
        problems.add(format!("{key}.value"), "the template must contain {token}");
        return InjectConfig::default();
    };
    if suffix.contains("{token}") {
        problems.add(
            format!("{key}.value"),
            "the template must contain {token} exactly once",
        );
    }
    if http::HeaderValue::from_str(&format!("{prefix}x{suffix}")).is_err() {
        problems.add(
            format!("{key}.value"),
            "the template has characters a header value cannot carry",
        );
    }
    InjectConfig::Header {
        name,
        prefix: prefix.to_string(),
        suffix: suffix.to_string(),
    }
}

/// Keys each kind may use besides `kind` and `inject`.
fn misplaced_keys(raw: &RawCredential, kind: &str) -> Vec<&'static str> {
    let present = [
        ("source", raw.source.is_some()),
        ("signing_key", raw.signing_key.is_some()),
        ("issuer", raw.issuer.is_some()),
        ("max_ttl", raw.max_ttl.is_some()),
        ("default_ttl", raw.default_ttl.is_some()),
        ("grant", raw.grant.is_some()),
        ("token_endpoint", raw.token_endpoint.is_some()),
        ("client_id", raw.client_id.is_some()),
        ("client_secret", raw.client_secret.is_some()),
        ("client_auth", raw.client_auth.is_some()),
        ("resource", raw.resource.is_some()),
        ("audience", raw.audience.is_some()),
        ("revocation_endpoint", raw.revocation_endpoint.is_some()),
        ("subject_token", raw.subject_token.is_some()),
        ("ca", raw.ca.is_some()),
        ("timeout", raw.timeout.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "static" => &["source"],
        "jwt" => &["signing_key", "issuer", "max_ttl", "default_ttl"],
        _ => &[
            "grant",
            "token_endpoint",
            "client_id",
            "client_secret",
            "client_auth",
            "resource",
            "audience",
            "revocation_endpoint",
            "subject_token",
            "ca",
            "timeout",
        ],
    };
    present
        .iter()
        .filter(|(name, set)| *set && !allowed.contains(name))
        .map(|(name, _)| *name)
        .collect()
}

/// Validates every credential; problems are added with their key path.
pub(super) fn validate_credentials(
    raw: BTreeMap<String, RawCredential>,
    base: &Path,
    problems: &mut Problems,
) -> BTreeMap<String, CredentialConfig> {
    let mut out = BTreeMap::new();
    let all = &raw;
    for (name, raw) in all {
        let key = format!("credentials.{name}");
        if !valid_name(name) {
            problems.add(
                &key,
                "a credential name is 1..64 characters of A-Z a-z 0-9 - _ .",
            );
            continue;
        }
        if !matches!(raw.kind.as_str(), "static" | "jwt" | "oauth2") {
            problems.add(
                format!("{key}.kind"),
                format!("`{}` is not one of static, jwt, oauth2", raw.kind),
            );
            continue;
        }
        for misplaced in misplaced_keys(raw, &raw.kind) {
            problems.add(
                format!("{key}.{misplaced}"),
                format!("is not a key of kind {}", raw.kind),
            );
        }
        let inject = inject(raw.inject.as_ref(), &key, problems);
        let kind = match raw.kind.as_str() {
            "static" => {
                let Some(source) = &raw.source else {
                    problems.add(format!("{key}.source"), "is required for kind static");
                    continue;
                };
                let Some(source) = secret_ref(source, base, &format!("{key}.source"), problems)
                else {
                    continue;
                };
                CredentialKind::Static { source }
            }
            "jwt" => {
                let signing_key = match &raw.signing_key {
                    Some(RawSecretRef {
                        file: Some(file),
                        env: None,
                    }) => super::require_file(base, file, &format!("{key}.signing_key"), problems),
                    _ => {
                        problems.add(
                            format!("{key}.signing_key"),
                            "is required for kind jwt: {file: PEM}",
                        );
                        continue;
                    }
                };
                let max_ttl = raw.max_ttl.map_or(DEFAULT_JWT_MAX_TTL, |d| d.0);
                let default_ttl = raw
                    .default_ttl
                    .map_or(DEFAULT_JWT_TTL.min(max_ttl), |d| d.0);
                if max_ttl.is_zero() {
                    problems.add(format!("{key}.max_ttl"), "must be greater than zero");
                }
                if default_ttl.is_zero() || default_ttl > max_ttl {
                    problems.add(
                        format!("{key}.default_ttl"),
                        "must be greater than zero and at most max_ttl",
                    );
                }
                CredentialKind::Jwt(JwtConfig {
                    signing_key,
                    issuer: raw.issuer.clone().unwrap_or_else(|| "tollgate".to_string()),
                    max_ttl,
                    default_ttl,
                })
            }
            _ => {
                let grant = match raw.grant.as_deref() {
                    None | Some("client_credentials") => Grant::ClientCredentials,
                    Some("token_exchange") => Grant::TokenExchange,
                    Some(other) => {
                        problems.add(
                            format!("{key}.grant"),
                            format!("`{other}` is not one of client_credentials, token_exchange"),
                        );
                        Grant::ClientCredentials
                    }
                };
                let token_endpoint = match &raw.token_endpoint {
                    Some(text) => parse_uri(text, &format!("{key}.token_endpoint"), problems),
                    None => {
                        problems.add(format!("{key}.token_endpoint"), "is required for oauth2");
                        None
                    }
                };
                let client_id = raw.client_id.clone().unwrap_or_default();
                if client_id.is_empty() {
                    problems.add(format!("{key}.client_id"), "is required for oauth2");
                }
                let client_secret = match &raw.client_secret {
                    Some(r) => secret_ref(r, base, &format!("{key}.client_secret"), problems),
                    None => {
                        problems.add(
                            format!("{key}.client_secret"),
                            "is required for oauth2: {file: PATH} or {env: NAME}",
                        );
                        None
                    }
                };
                let client_auth = match raw.client_auth.as_deref() {
                    None | Some("basic") => ClientAuthMethod::Basic,
                    Some("post") => ClientAuthMethod::Post,
                    Some(other) => {
                        problems.add(
                            format!("{key}.client_auth"),
                            format!("`{other}` is not one of basic, post"),
                        );
                        ClientAuthMethod::Basic
                    }
                };
                let revocation_endpoint = raw.revocation_endpoint.as_deref().and_then(|text| {
                    parse_uri(text, &format!("{key}.revocation_endpoint"), problems)
                });
                let subject_token = raw.subject_token.as_ref().map(|s| s.jwt.clone());
                match (grant, &subject_token) {
                    (Grant::TokenExchange, None) => problems.add(
                        format!("{key}.subject_token"),
                        "token_exchange needs subject_token: {jwt: NAME of a jwt credential}",
                    ),
                    (Grant::TokenExchange, Some(jwt)) => match all.get(jwt) {
                        Some(other) if other.kind == "jwt" => {}
                        _ => problems.add(
                            format!("{key}.subject_token.jwt"),
                            format!("`{jwt}` is not a credential of kind jwt"),
                        ),
                    },
                    (Grant::ClientCredentials, Some(_)) => problems.add(
                        format!("{key}.subject_token"),
                        "is only used by grant token_exchange",
                    ),
                    (Grant::ClientCredentials, None) => {}
                }
                let ca = raw
                    .ca
                    .as_deref()
                    .map(|p| super::require_file(base, p, &format!("{key}.ca"), problems));
                let timeout = raw.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
                if timeout.is_zero() {
                    problems.add(format!("{key}.timeout"), "must be greater than zero");
                }
                let (Some(token_endpoint), Some(client_secret)) = (token_endpoint, client_secret)
                else {
                    continue;
                };
                CredentialKind::OAuth2(Box::new(OAuth2Config {
                    grant,
                    token_endpoint,
                    client_id,
                    client_secret,
                    client_auth,
                    resource: raw.resource.clone(),
                    audience: raw.audience.clone(),
                    revocation_endpoint,
                    subject_token,
                    ca,
                    timeout,
                }))
            }
        };
        out.insert(
            name.clone(),
            CredentialConfig {
                name: name.clone(),
                kind,
                inject,
            },
        );
    }
    out
}

/// The headers every forwarded request loses (an agent holds no secrets).
pub const BUILTIN_SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

/// Validates `agent_secrets`.
pub(super) fn validate_agent_secrets(
    raw: RawAgentSecrets,
    problems: &mut Problems,
) -> AgentSecretsConfig {
    let mut headers = Vec::new();
    for (i, text) in raw.headers.iter().enumerate() {
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(name) if name.as_str().starts_with("x-agent-") => problems.add(
                format!("agent_secrets.headers[{i}]"),
                "X-Agent-* headers carry intent, not secrets",
            ),
            Ok(name) => {
                if !BUILTIN_SECRET_HEADERS.contains(&name.as_str()) && !headers.contains(&name) {
                    headers.push(name);
                }
            }
            Err(_) => problems.add(
                format!("agent_secrets.headers[{i}]"),
                format!("`{text}` is not a valid header name"),
            ),
        }
    }
    let on_present = match raw.on_present.as_deref() {
        None | Some("remove") => OnPresent::Remove,
        Some("deny") => OnPresent::Deny,
        Some(other) => {
            problems.add(
                "agent_secrets.on_present",
                format!("`{other}` is not one of remove, deny"),
            );
            OnPresent::Remove
        }
    };
    AgentSecretsConfig {
        headers,
        on_present,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwt.pem"), "x").unwrap();
        crate::config::load_str(
            &format!("listeners: [{{name: a, address: '127.0.0.1:0'}}]\n{text}"),
            dir.path(),
            "test.yaml",
        )
    }

    fn keys(errors: &crate::config::ConfigErrors) -> Vec<String> {
        errors.errors.iter().map(|e| e.key.clone()).collect()
    }

    #[test]
    fn accepts_every_kind_with_defaults() {
        let config = load(
            "credentials:\n\
             \x20 github: {kind: static, source: {env: GH_TOKEN}}\n\
             \x20 internal: {kind: jwt, signing_key: {file: jwt.pem}, max_ttl: 10m}\n\
             \x20 partner: {kind: oauth2, token_endpoint: 'https://as.example/token', client_id: c,\n\
             \x20           client_secret: {file: s.txt}, inject: {query: access_token}}\n\
             \x20 exchanged: {kind: oauth2, grant: token_exchange, token_endpoint: 'http://127.0.0.1:1/t',\n\
             \x20           client_id: c, client_secret: {env: S}, client_auth: post,\n\
             \x20           subject_token: {jwt: internal}, inject: {basic: {username: x}}}\n\
             agent_secrets: {headers: [X-Goog-Api-Key], on_present: deny}\n",
        )
        .unwrap();
        assert_eq!(config.credentials.len(), 4);
        assert_eq!(config.credentials["github"].inject, InjectConfig::default());
        let CredentialKind::Jwt(jwt) = &config.credentials["internal"].kind else {
            panic!()
        };
        assert_eq!(jwt.max_ttl, Duration::from_secs(600));
        assert_eq!(jwt.default_ttl, Duration::from_secs(300));
        assert_eq!(jwt.issuer, "tollgate");
        assert_eq!(config.agent_secrets.on_present, OnPresent::Deny);
        assert_eq!(config.agent_secrets.headers[0].as_str(), "x-goog-api-key");
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let errors = load(
            "credentials:\n\
             \x20 a: {kind: static, source: {file: f, env: E}, token_endpoint: 'https://x/'}\n\
             \x20 b: {kind: magic}\n\
             \x20 c: {kind: static, source: {env: E}, inject: {header: 'bad name', value: 'x'}}\n\
             \x20 d: {kind: static, source: {env: E}, inject: {value: 'no placeholder'}}\n\
             \x20 e: {kind: oauth2, grant: token_exchange, token_endpoint: 'ftp://x', client_id: c,\n\
             \x20     client_secret: {env: S}, subject_token: {jwt: a}, colour: red}\n\
             \x20 f: {kind: static, source: {env: E}, secret: inline-value}\n\
             agent_secrets: {headers: ['bad header'], on_present: maybe}\n",
        )
        .unwrap_err();
        let keys = keys(&errors);
        for expected in [
            "credentials.a.source",
            "credentials.a.token_endpoint",
            "credentials.b.kind",
            "credentials.c.inject.header",
            "credentials.d.inject.value",
            "credentials.e.token_endpoint",
            "credentials.e.subject_token.jwt",
            "credentials.e.colour",
            "credentials.f.secret",
            "agent_secrets.headers[0]",
            "agent_secrets.on_present",
        ] {
            assert!(
                keys.iter().any(|k| k == expected),
                "missing {expected} in {keys:?}"
            );
        }
        assert!(!errors.to_string().contains("inline-value"), "{errors}");
    }
}
