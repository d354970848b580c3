//! Validation of `credentials` and `agent_secrets`: each credential by its kind, every problem
//! reported with its key path.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;

use super::super::Problems;
use super::super::validate::{require_file, resolve};
use super::*;

/// Default `timeout` of a token endpoint.
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
        (Some(file), None) => Some(SecretRef::File(resolve(base, file))),
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
pub(in crate::config) fn validate_credentials(
    raw: BTreeMap<String, RawCredential>,
    base: &Path,
    problems: &mut Problems,
) -> BTreeMap<String, CredentialConfig> {
    let mut out = BTreeMap::new();
    for (name, credential) in &raw {
        let key = format!("credentials.{name}");
        if !valid_name(name) {
            problems.add(
                &key,
                "a credential name is 1..64 characters of A-Z a-z 0-9 - _ .",
            );
            continue;
        }
        if !matches!(credential.kind.as_str(), "static" | "jwt" | "oauth2") {
            problems.add(
                format!("{key}.kind"),
                format!("`{}` is not one of static, jwt, oauth2", credential.kind),
            );
            continue;
        }
        for misplaced in misplaced_keys(credential, &credential.kind) {
            problems.add(
                format!("{key}.{misplaced}"),
                format!("is not a key of kind {}", credential.kind),
            );
        }
        let inject = inject(credential.inject.as_ref(), &key, problems);
        let kind = match credential.kind.as_str() {
            "static" => static_kind(credential, &key, base, problems),
            "jwt" => jwt_kind(credential, &key, base, problems),
            _ => oauth2_kind(credential, &key, &raw, base, problems),
        };
        if let Some(kind) = kind {
            out.insert(
                name.clone(),
                CredentialConfig {
                    name: name.clone(),
                    kind,
                    inject,
                },
            );
        }
    }
    out
}

/// `kind: static`: a secret from a file or a variable.
fn static_kind(
    raw: &RawCredential,
    key: &str,
    base: &Path,
    problems: &mut Problems,
) -> Option<CredentialKind> {
    let Some(source) = &raw.source else {
        problems.add(format!("{key}.source"), "is required for kind static");
        return None;
    };
    let source = secret_ref(source, base, &format!("{key}.source"), problems)?;
    Some(CredentialKind::Static { source })
}

/// `kind: jwt`: tokens tollgate signs with its own key.
fn jwt_kind(
    raw: &RawCredential,
    key: &str,
    base: &Path,
    problems: &mut Problems,
) -> Option<CredentialKind> {
    let signing_key = match &raw.signing_key {
        Some(RawSecretRef {
            file: Some(file),
            env: None,
        }) => require_file(base, file, &format!("{key}.signing_key"), problems),
        _ => {
            problems.add(
                format!("{key}.signing_key"),
                "is required for kind jwt: {file: PEM}",
            );
            return None;
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
    Some(CredentialKind::Jwt(JwtConfig {
        signing_key,
        issuer: raw.issuer.clone().unwrap_or_else(|| "tollgate".to_string()),
        max_ttl,
        default_ttl,
    }))
}

/// `kind: oauth2`: tokens from an authorization server (`all`: every credential, for
/// `subject_token.jwt`).
fn oauth2_kind(
    raw: &RawCredential,
    key: &str,
    all: &BTreeMap<String, RawCredential>,
    base: &Path,
    problems: &mut Problems,
) -> Option<CredentialKind> {
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
    let revocation_endpoint = raw
        .revocation_endpoint
        .as_deref()
        .and_then(|text| parse_uri(text, &format!("{key}.revocation_endpoint"), problems));
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
        .map(|p| require_file(base, p, &format!("{key}.ca"), problems));
    let timeout = raw.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        problems.add(format!("{key}.timeout"), "must be greater than zero");
    }
    let (Some(token_endpoint), Some(client_secret)) = (token_endpoint, client_secret) else {
        return None;
    };
    Some(CredentialKind::OAuth2(Box::new(OAuth2Config {
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
    })))
}

/// Validates `agent_secrets`.
pub(in crate::config) fn validate_agent_secrets(
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
