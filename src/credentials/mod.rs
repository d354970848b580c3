//! Credentials (SPEC §5): the agent never holds a secret; tollgate injects one when the
//! decision names it.
//!
//! - [`secret`]: the `Secret` type (`<redacted>` when formatted, zeroed on drop);
//! - [`source`]: file and environment secret sources, files re-read on change;
//! - [`jwt`]: tokens tollgate mints and signs itself;
//! - [`oauth2`]: tokens from an authorization server (client credentials, token exchange),
//!   revoked when their task ends;
//! - [`cache`]: the per-(credential, scopes, caller, task) cache with single flight and backoff;
//! - [`inject`]: the header/query/basic injection and the removal of the agent's own secrets.
//!
//! [`CredentialStore`] ties them together; it is built from the configuration at start-up and
//! on reload (off the request path) and swapped in atomically.

pub mod cache;
pub mod inject;
pub mod jwt;
pub mod oauth2;
pub mod secret;
pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde_json::{Value, json};

use crate::config::credentials::{CredentialConfig, CredentialKind, Grant};
use crate::kill::KillTarget;
use crate::policy::decision::CredentialRequest;
use crate::telemetry::metrics::Metrics;

use cache::{CacheError, CacheKey, CachedToken, Fresh, KeyRef, TokenCache};
use inject::{AgentSecrets, Injection};
use jwt::{Claims, JwtSigner};
use oauth2::{OAuth2Client, TokenRequest};
use secret::Secret;
use source::WatchedSecret;

use crate::watch::Reloaded;

/// How long a request waits for a `static` or `jwt` credential (no network involved).
const LOCAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Lifetime of the subject JWT minted for a token exchange.
const SUBJECT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// How far in the future a `static` secret "expires" (it is re-read on change instead).
const STATIC_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a request gets no credential; every variant is a deny `credential_unavailable`.
/// Messages name the credential and the cause, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the decision names credential `{0}`, which the configuration does not define")]
    Unknown(String),
    #[error("credential `{credential}` is unavailable: {reason}")]
    Unavailable { credential: String, reason: String },
    #[error("credential `{credential}` failed recently; retrying in {retry_in:?}")]
    Backoff {
        credential: String,
        retry_in: Duration,
    },
    #[error("credential `{0}` was not obtained in time")]
    Timeout(String),
}

/// Facts of the request a credential is obtained for.
pub struct RequestContext<'a> {
    pub caller: Option<&'a str>,
    pub task: Option<&'a str>,
    pub intent: Option<&'a str>,
    /// The destination host (a JWT's `aud`).
    pub destination: &'a str,
}

enum Provider {
    Static(WatchedSecret),
    Jwt(Arc<JwtSigner>),
    OAuth2 {
        client: Box<OAuth2Client>,
        /// Token exchange: the signer of the subject token.
        subject: Option<Arc<JwtSigner>>,
    },
}

/// Pre-created metric series of one credential (recorded without a lock).
struct CredentialMetrics {
    issued: IntCounter,
    hits: IntCounter,
    errors: IntCounter,
}

/// One configured credential, ready to serve.
pub struct Credential {
    name: Arc<str>,
    config: CredentialConfig,
    provider: Provider,
    metrics: CredentialMetrics,
}

impl Credential {
    /// How long a request may wait for this credential: the provider's own timeout plus a
    /// second, so a slow token endpoint fails inside the fetch (and starts the backoff) rather
    /// than by cancelling it.
    pub fn timeout(&self) -> Duration {
        match &self.provider {
            Provider::OAuth2 { client, .. } => client.config().timeout + Duration::from_secs(1),
            _ => LOCAL_TIMEOUT,
        }
    }

    fn unavailable(&self, reason: impl ToString) -> CredentialError {
        CredentialError::Unavailable {
            credential: self.name.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Every credential, the shared token cache, the agent-secret rules and the JWKS.
pub struct CredentialStore {
    credentials: HashMap<String, Arc<Credential>>,
    cache: Arc<TokenCache>,
    agent_secrets: AgentSecrets,
    jwks: Value,
}

/// A credential that could not be built (a `check`/start-up error naming its key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credentials.{name}: {message}")]
pub struct BuildError {
    pub name: String,
    pub message: String,
}

impl CredentialStore {
    /// An empty store (no credentials configured).
    pub fn empty() -> CredentialStore {
        CredentialStore {
            credentials: HashMap::new(),
            cache: Arc::new(TokenCache::default()),
            agent_secrets: AgentSecrets::default(),
            jwks: json!({"keys": []}),
        }
    }

    /// Builds the store. With `previous`, an unchanged credential is kept as it is (its
    /// watched secret and its cached tokens survive); entries of changed or removed
    /// credentials are dropped from the shared cache. `strict` turns an unreadable secret into
    /// an error (`tollgate check`); otherwise it is logged and the credential is unavailable
    /// until its file becomes readable.
    pub fn build(
        configs: &BTreeMap<String, CredentialConfig>,
        agent_secrets: &crate::config::credentials::AgentSecretsConfig,
        metrics: &Metrics,
        previous: Option<&CredentialStore>,
        strict: bool,
    ) -> Result<CredentialStore, Vec<BuildError>> {
        let mut errors = Vec::new();
        let mut credentials: HashMap<String, Arc<Credential>> = HashMap::new();
        let mut signers: HashMap<String, Arc<JwtSigner>> = HashMap::new();
        // jwt credentials built anew (a token exchange that uses one is rebuilt too).
        let mut rebuilt: std::collections::HashSet<String> = std::collections::HashSet::new();
        let error = |name: &str, message: String| BuildError {
            name: name.to_string(),
            message,
        };
        // jwt first: token exchange credentials refer to them.
        let mut ordered: Vec<&CredentialConfig> = configs.values().collect();
        ordered.sort_by_key(|c| !matches!(c.kind, CredentialKind::Jwt(_)));
        for config in ordered {
            let name = config.name.as_str();
            if let Some(old) = previous.and_then(|p| p.credentials.get(name))
                && old.config == *config
                && still_current(old, &signers, &rebuilt)
            {
                if let Provider::Jwt(signer) = &old.provider {
                    signers.insert(name.to_string(), signer.clone());
                }
                credentials.insert(name.to_string(), old.clone());
                continue;
            }
            if matches!(config.kind, CredentialKind::Jwt(_)) {
                rebuilt.insert(name.to_string());
            }
            let provider = match &config.kind {
                CredentialKind::Static { source } => {
                    let (watched, failure) = WatchedSecret::load(source.clone(), name);
                    if let Some(failure) = failure {
                        if strict {
                            errors.push(error(name, failure.to_string()));
                        } else {
                            tracing::error!(credential = name, error = %failure, "credential unavailable until its secret can be read");
                        }
                    }
                    Provider::Static(watched)
                }
                CredentialKind::Jwt(jwt) => match JwtSigner::load(jwt) {
                    Ok(signer) => {
                        let signer = Arc::new(signer);
                        signers.insert(name.to_string(), signer.clone());
                        Provider::Jwt(signer)
                    }
                    Err(e) => {
                        errors.push(error(name, e.to_string()));
                        continue;
                    }
                },
                CredentialKind::OAuth2(oauth) => {
                    let subject = match (&oauth.grant, &oauth.subject_token) {
                        (Grant::TokenExchange, Some(jwt)) => {
                            match signers.get(jwt) {
                                Some(signer) => Some(signer.clone()),
                                None => {
                                    errors.push(error(
                                    name,
                                    format!("subject_token.jwt `{jwt}` is not a usable jwt credential"),
                                ));
                                    continue;
                                }
                            }
                        }
                        _ => None,
                    };
                    match OAuth2Client::new((**oauth).clone(), name) {
                        Ok((client, failure)) => {
                            if let Some(failure) = failure {
                                if strict {
                                    errors.push(error(name, format!("client_secret: {failure}")));
                                } else {
                                    tracing::error!(credential = name, error = %failure, "oauth2 client secret unavailable until it can be read");
                                }
                            }
                            Provider::OAuth2 {
                                client: Box::new(client),
                                subject,
                            }
                        }
                        Err(e) => {
                            errors.push(error(name, format!("ca: {e}")));
                            continue;
                        }
                    }
                }
            };
            let kind = config.kind.as_str();
            let series =
                |vec: &prometheus::IntCounterVec, labels: &[&str]| vec.with_label_values(labels);
            let metrics = CredentialMetrics {
                issued: series(&metrics.credential_issued, &[name, kind]),
                hits: series(&metrics.credential_cache_hits, &[name]),
                errors: series(&metrics.credential_errors, &[name]),
            };
            credentials.insert(
                name.to_string(),
                Arc::new(Credential {
                    name: Arc::from(name),
                    config: config.clone(),
                    provider,
                    metrics,
                }),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let cache = match previous {
            Some(previous) => {
                let cache = previous.cache.clone();
                let dropped = cache.remove_matching(|key| {
                    !credentials.get(&*key.credential).is_some_and(|c| {
                        previous
                            .credentials
                            .get(&*key.credential)
                            .is_some_and(|old| Arc::ptr_eq(old, c))
                    })
                });
                if !dropped.is_empty() {
                    tracing::info!(
                        dropped = dropped.len(),
                        "cached tokens of changed or removed credentials dropped"
                    );
                }
                cache
            }
            None => Arc::new(TokenCache::default()),
        };
        let mut keys: Vec<&Value> = Vec::new();
        let mut names: Vec<&String> = credentials.keys().collect();
        names.sort();
        for name in names {
            if let Provider::Jwt(signer) = &credentials[name].provider {
                keys.push(signer.jwk());
            }
        }
        let jwks = json!({ "keys": keys });
        Ok(CredentialStore {
            credentials,
            cache,
            agent_secrets: AgentSecrets::new(&agent_secrets.headers, agent_secrets.on_present),
            jwks,
        })
    }

    /// The JWK Set of every `jwt` credential (`GET /.well-known/jwks.json`).
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The agent-secret rules.
    pub fn agent_secrets(&self) -> &AgentSecrets {
        &self.agent_secrets
    }

    /// The shared cache (tests, benchmarks).
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The named credential.
    pub fn credential(&self, name: &str) -> Option<&Arc<Credential>> {
        self.credentials.get(name)
    }

    /// The credential a decision asks for, as an injection ready for the request.
    pub async fn get(
        &self,
        request: &CredentialRequest,
        ctx: &RequestContext<'_>,
    ) -> Result<Arc<CachedToken>, CredentialError> {
        let Some(credential) = self.credentials.get(&request.name) else {
            return Err(CredentialError::Unknown(request.name.clone()));
        };
        let result = tokio::time::timeout(
            credential.timeout(),
            self.get_from(credential, request, ctx),
        )
        .await;
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(CredentialError::Timeout(request.name.clone())),
        };
        match &result {
            Ok(_) => {}
            Err(_) => credential.metrics.errors.inc(),
        }
        result
    }

    async fn get_from(
        &self,
        credential: &Credential,
        request: &CredentialRequest,
        ctx: &RequestContext<'_>,
    ) -> Result<Arc<CachedToken>, CredentialError> {
        let destination =
            matches!(credential.provider, Provider::Jwt(_)).then_some(ctx.destination);
        let (caller, task) = match credential.provider {
            // A static secret is the same for everyone: one entry.
            Provider::Static(_) => (None, None),
            _ => (ctx.caller, ctx.task),
        };
        let scopes: &[String] = match credential.provider {
            Provider::Static(_) => &[],
            _ => &request.scopes,
        };
        let key = KeyRef::new(&credential.name, scopes, caller, task, destination);
        let result = self
            .cache
            .get_or_fetch(&key, request.ttl, || fetch(credential, request, ctx))
            .await;
        match result {
            Ok((token, hit)) => {
                if hit {
                    credential.metrics.hits.inc();
                } else {
                    credential.metrics.issued.inc();
                }
                Ok(token)
            }
            Err(CacheError::Backoff(retry_in)) => Err(CredentialError::Backoff {
                credential: credential.name.to_string(),
                retry_in,
            }),
            Err(CacheError::Fetch(e)) => Err(e),
        }
    }

    /// Ends a task: drops its cached tokens and revokes the revocable ones (RFC 7009).
    /// Returns (dropped, revoked).
    pub async fn end_task(&self, task: &str) -> (usize, usize) {
        let removed = self
            .cache
            .remove_matching(|key| key.task.as_deref() == Some(task));
        self.revoke_all(removed).await
    }

    /// Drops (and revokes) the cached tokens a kill covers.
    pub async fn drop_matching(&self, target: &KillTarget) -> (usize, usize) {
        let removed = self
            .cache
            .remove_matching(|key| target.matches(key.caller.as_deref(), key.task.as_deref()));
        self.revoke_all(removed).await
    }

    async fn revoke_all(&self, removed: Vec<(CacheKey, Arc<CachedToken>)>) -> (usize, usize) {
        let dropped = removed.len();
        let revocations = removed.into_iter().filter_map(|(key, token)| {
            let credential = self.credentials.get(&*key.credential)?.clone();
            token.revocable.then_some((credential, token))
        });
        let results = futures_util::future::join_all(revocations.map(|(credential, token)| async move {
            let Provider::OAuth2 { client, .. } = &credential.provider else {
                return false;
            };
            match client.revoke(&token.token).await {
                Ok(revoked) => revoked,
                Err(e) => {
                    tracing::warn!(credential = %credential.name, error = %e, "token revocation failed");
                    false
                }
            }
        }))
        .await;
        (dropped, results.into_iter().filter(|r| *r).count())
    }

    /// Re-reads changed secret files (blocking: off the request path); a `static` credential
    /// whose secret changed loses its cached injections. Returns what was re-read.
    pub fn poll_secrets(&self) -> Vec<Reloaded<()>> {
        let mut reloaded = Vec::new();
        for credential in self.credentials.values() {
            let watched = match &credential.provider {
                Provider::Static(watched) => watched,
                Provider::OAuth2 { client, .. } => client.client_secret(),
                Provider::Jwt(_) => continue,
            };
            let Some(result) = watched.poll() else {
                continue;
            };
            if matches!(credential.provider, Provider::Static(_)) {
                let name = credential.name.clone();
                self.cache.remove_matching(|key| key.credential == name);
            }
            reloaded.push(result);
        }
        reloaded
    }
}

/// Whether an unchanged definition can keep its running credential: a `jwt` one only if its
/// key file still holds the same key (a rotated key means new tokens and a new JWKS entry), a
/// token exchange only if its subject-token signer was kept.
fn still_current(
    old: &Credential,
    signers: &HashMap<String, Arc<JwtSigner>>,
    rebuilt: &std::collections::HashSet<String>,
) -> bool {
    match (&old.provider, &old.config.kind) {
        (Provider::Jwt(signer), CredentialKind::Jwt(config)) => {
            JwtSigner::load(config).is_ok_and(|fresh| fresh.jwk() == signer.jwk())
        }
        (Provider::OAuth2 { .. }, CredentialKind::OAuth2(config)) => config
            .subject_token
            .as_ref()
            .is_none_or(|jwt| !rebuilt.contains(jwt) && signers.contains_key(jwt)),
        _ => true,
    }
}

async fn fetch(
    credential: &Credential,
    request: &CredentialRequest,
    ctx: &RequestContext<'_>,
) -> Result<Fresh, CredentialError> {
    let prepare = |token: &Secret| {
        Injection::prepare(&credential.config.inject, token).map_err(|e| credential.unavailable(e))
    };
    match &credential.provider {
        Provider::Static(watched) => {
            let secret = watched.current().map_err(|e| credential.unavailable(e))?;
            Ok(Fresh {
                injection: prepare(&secret)?,
                token: (*secret).clone(),
                expires_at: SystemTime::now() + STATIC_LIFETIME,
                revocable: false,
            })
        }
        Provider::Jwt(signer) => {
            let subject = ctx.caller.ok_or_else(|| {
                credential.unavailable("a jwt needs an authenticated caller for `sub`")
            })?;
            let claims = Claims {
                subject,
                audience: ctx.destination,
                intent: ctx.intent,
                task: ctx.task,
                scopes: &request.scopes,
            };
            let (token, expires_at) = signer
                .mint(&claims, request.ttl, SystemTime::now())
                .map_err(|e| credential.unavailable(e))?;
            Ok(Fresh {
                injection: prepare(&token)?,
                token,
                expires_at,
                revocable: false,
            })
        }
        Provider::OAuth2 { client, subject } => {
            let subject_token = match subject {
                Some(signer) => {
                    let subject = ctx.caller.ok_or_else(|| {
                        credential.unavailable("token exchange needs an authenticated caller")
                    })?;
                    let audience = client.config().token_endpoint.to_string();
                    let claims = Claims {
                        subject,
                        audience: &audience,
                        intent: ctx.intent,
                        task: ctx.task,
                        scopes: &request.scopes,
                    };
                    let ttl = Some(SUBJECT_TOKEN_TTL.min(signer.lifetime(None)));
                    let (token, _) = signer
                        .mint(&claims, ttl, SystemTime::now())
                        .map_err(|e| credential.unavailable(e))?;
                    Some(token)
                }
                None => None,
            };
            let issued = client
                .fetch(&TokenRequest {
                    scopes: &request.scopes,
                    subject_token: subject_token.as_ref(),
                })
                .await
                .map_err(|e| credential.unavailable(e))?;
            Ok(Fresh {
                injection: prepare(&issued.access_token)?,
                token: issued.access_token,
                expires_at: issued.expires_at,
                revocable: true,
            })
        }
    }
}
