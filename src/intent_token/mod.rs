//! Signed intent tokens (SPEC §3.2, `X-Agent-Intent-Token`): a compact JWS from a configured
//! issuer that vouches for the intent, task and delegation chain of one caller.
//!
//! This module owns the issuers' key sets (JWKS files, re-read when they change) and the
//! verification of one token into a [`VerifiedIntent`] or a [`TokenError`] whose
//! [`reason`](TokenError::reason) is the deny reason. It does not read headers (that is
//! [`crate::intent`]) and does not decide anything: a valid token only makes the intent
//! `verified` for the policy.
//!
//! # What is refused, and why
//! - Only ES256 (P-256), EdDSA (Ed25519; also under RFC 9864's name `Ed25519`) and RS256
//!   (2048..8192-bit keys). The header's `alg` is checked against that list *before* any key is
//!   looked up, and every key is pinned at load to the one algorithm its type allows, so `none`
//!   and every HMAC algorithm are refused and a public key can never serve as an HMAC secret.
//!   JWKS files may hold no symmetric (`oct`) or private key material at all.
//! - Keys come only from the issuer's JWKS file: header `jwk`, `jku`, `x5u` and `x5c` are never
//!   used, and a `crit` header is refused (no extension is understood).
//! - `iss` selects the issuer (it has to be read before the signature is checked, since it says
//!   which keys to check with); every other claim is trusted only after the signature verified.
//! - `exp` is required, `nbf` and `iat` optional; all three get [`LEEWAY`] for clock skew.
//! - `aud` must contain the issuer's configured audience (default [`DEFAULT_AUDIENCE`]).
//! - `sub` must equal the caller's SPIFFE ID, so a token stolen by another workload, or replayed
//!   by an unauthenticated caller, is useless.
//! - `intent` and `task` are required and obey the header charset (`[A-Za-z0-9._:/-]`,
//!   1..128 bytes); `delegation` is at most 8 SPIFFE IDs.
//!
//! # Hot path and reload
//! Each issuer's keys are a [`Watched`] value: verification never locks. The owner polls
//! [`IntentIssuers::poll`] (off the request path): a JWKS file whose size or modification time
//! changed is re-read and swapped in whole; a broken file keeps the last good key set.

mod claims;
mod jwks;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::identity::SpiffeId;
use crate::intent::{Intent, TaskName};
use crate::reason::Reason;
use crate::watch::{Inputs, Rebuilt, Reloaded, Source, Watched};
use claims::{
    audience_matches, decode_object, delegation_claim, name_claim, numeric_date, split,
    string_claim, task_claim,
};
use jwks::{Alg, VerifyKey, load_jwks};

/// Longest token accepted, in bytes (SPEC §3.2).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The audience a token must carry when the issuer configures none.
pub const DEFAULT_AUDIENCE: &str = "tollgate";

/// One `intent_tokens.issuers[]` entry, paths already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The `iss` value tokens of this issuer carry.
    pub issuer: String,
    /// The issuer's public keys (RFC 7517 JWK Set).
    pub jwks: PathBuf,
    /// The audience tokens must be for; [`DEFAULT_AUDIENCE`] when `None`.
    pub audience: Option<String>,
}

/// A configuration or JWKS problem, with the configuration key it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct IssuerError {
    /// The configuration key at fault, e.g. `intent_tokens.issuers[0].jwks`.
    pub key: String,
    /// What is wrong; names the file and the key inside it.
    pub message: String,
}

/// Why a token was refused. Closed: [`reason`](TokenError::reason) is the deny reason, the
/// decision-log reason and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the intent token is longer than 8 KiB")]
    TooLarge,
    #[error("the intent token is not a valid compact JWS: {0}")]
    Malformed(&'static str),
    #[error("the intent token's alg is not one of ES256, EdDSA, RS256")]
    AlgNotAllowed,
    #[error("the intent token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the intent token's `{0}` claim is not valid")]
    InvalidClaim(&'static str),
    #[error("the intent token's issuer (iss) is not a configured intent token issuer")]
    UnknownIssuer,
    #[error("the intent token's issuer has no key for this kid and alg")]
    UnknownKey,
    #[error("the intent token's signature does not verify")]
    BadSignature,
    #[error("the intent token has expired")]
    Expired,
    #[error("the intent token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("the intent token's aud does not include tollgate's audience for this issuer")]
    WrongAudience,
    #[error("the intent token's sub is not the caller's SPIFFE ID")]
    SubjectMismatch,
}

impl TokenError {
    /// The closed reason: the deny reason, the decision-log reason and the metric label.
    pub fn reason(&self) -> Reason {
        match self {
            TokenError::TooLarge => Reason::TokenTooLarge,
            TokenError::Malformed(_) => Reason::TokenMalformed,
            TokenError::AlgNotAllowed => Reason::TokenAlgNotAllowed,
            TokenError::MissingClaim(_) => Reason::TokenMissingClaim,
            TokenError::InvalidClaim(_) => Reason::TokenInvalidClaim,
            TokenError::UnknownIssuer => Reason::TokenUnknownIssuer,
            TokenError::UnknownKey => Reason::TokenUnknownKey,
            TokenError::BadSignature => Reason::TokenBadSignature,
            TokenError::Expired => Reason::TokenExpired,
            TokenError::NotYetValid => Reason::TokenNotYetValid,
            TokenError::WrongAudience => Reason::TokenWrongAudience,
            TokenError::SubjectMismatch => Reason::TokenSubjectMismatch,
        }
    }
}

/// What a valid token vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIntent {
    /// `intent`.
    pub name: String,
    /// `task`.
    pub task: TaskName,
    /// `iss`, as configured.
    pub issuer: String,
    /// `delegation`, outermost first; empty when absent.
    pub delegation: Vec<SpiffeId>,
    /// Every claim of the token, as signed (for `input.intent.claims`).
    pub claims: Map<String, Value>,
}

impl VerifiedIntent {
    /// The intent the policy sees: the token wins over the plain headers for everything it
    /// carries; only the free-text `purpose` (audit only) is kept from the headers.
    pub fn into_intent(self, plain: Intent) -> Intent {
        Intent {
            name: Some(self.name),
            task: Some(self.task),
            purpose: plain.purpose,
            delegation: self.delegation,
            verified: true,
            issuer: Some(self.issuer),
            claims: self.claims,
        }
    }
}

/// The configured issuers and their current keys.
pub struct IntentIssuers {
    issuers: Vec<Issuer>,
}

struct Issuer {
    issuer: String,
    audience: String,
    /// The issuer's keys, re-read when its JWKS file changes; named in reloads by its
    /// configuration key (`intent_tokens.issuers[N].jwks`).
    keys: Watched<Vec<VerifyKey>>,
}

impl IntentIssuers {
    /// Loads every issuer's JWKS file; reports every problem at once.
    pub fn load(configs: &[IssuerConfig]) -> Result<IntentIssuers, Vec<IssuerError>> {
        let mut problems = Vec::new();
        let mut issuers: Vec<Issuer> = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            let prefix = format!("intent_tokens.issuers[{index}]");
            if config.issuer.is_empty() {
                problems.push(IssuerError {
                    key: format!("{prefix}.issuer"),
                    message: "must not be empty".into(),
                });
            } else if issuers.iter().any(|i| i.issuer == config.issuer) {
                problems.push(IssuerError {
                    key: format!("{prefix}.issuer"),
                    message: format!("{:?} is configured twice", config.issuer),
                });
            }
            if config.audience.as_deref() == Some("") {
                problems.push(IssuerError {
                    key: format!("{prefix}.audience"),
                    message: "must not be empty (omit it for the default \"tollgate\")".into(),
                });
            }
            let config_key = format!("{prefix}.jwks");
            let keys = match load_jwks(&config.jwks) {
                Ok(keys) => keys,
                Err(message) => {
                    problems.push(IssuerError {
                        key: config_key.clone(),
                        message,
                    });
                    Vec::new()
                }
            };
            issuers.push(Issuer {
                issuer: config.issuer.clone(),
                audience: config
                    .audience
                    .clone()
                    .unwrap_or_else(|| DEFAULT_AUDIENCE.to_string()),
                keys: watched_keys(config_key, &config.jwks, keys),
            });
        }
        if problems.is_empty() {
            Ok(IntentIssuers { issuers })
        } else {
            Err(problems)
        }
    }

    /// No issuer configured: every token is refused as `token_unknown_issuer`.
    pub fn none() -> IntentIssuers {
        IntentIssuers {
            issuers: Vec::new(),
        }
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Re-reads every JWKS file whose size or modification time changed since it was last
    /// read; a broken file keeps its last good key set. Blocking file I/O: call it off the
    /// request path.
    pub fn poll(&self) -> Vec<Reloaded<()>> {
        self.issuers
            .iter()
            .filter_map(|issuer| issuer.keys.poll().map(Reloaded::erase))
            .collect()
    }

    /// [`poll`](Self::poll), summed up: `Ok(n)`: `n` key sets were replaced; `Err`: the files
    /// that changed but are broken (the others that changed were still replaced).
    pub fn reload_if_changed(&self) -> Result<usize, Vec<IssuerError>> {
        let mut reloaded = 0;
        let mut problems = Vec::new();
        for result in self.poll() {
            match result.outcome {
                Ok(_) => reloaded += 1,
                Err(message) => problems.push(IssuerError {
                    key: result.what.to_string(),
                    message,
                }),
            }
        }
        if problems.is_empty() {
            Ok(reloaded)
        } else {
            Err(problems)
        }
    }

    /// Verifies one token for this caller at this time.
    pub fn verify(
        &self,
        token: &str,
        caller: Option<&SpiffeId>,
        now: SystemTime,
    ) -> Result<VerifiedIntent, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let parts = split(token)?;

        // The algorithm allow-list comes first: nothing about a token naming another algorithm
        // is looked at, so no key can be paired with an algorithm it was not loaded for.
        let header = decode_object(parts.header, "the header is not a base64url JSON object")?;
        let alg = match header.get("alg") {
            Some(Value::String(name)) => Alg::from_name(name).ok_or(TokenError::AlgNotAllowed)?,
            Some(_) => return Err(TokenError::AlgNotAllowed),
            None => return Err(TokenError::Malformed("the header has no alg")),
        };
        if header.contains_key("crit") {
            return Err(TokenError::Malformed(
                "crit header parameters are not supported",
            ));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(TokenError::Malformed("the header's kid is not a string")),
        };
        if parts.signature.is_empty() || URL_SAFE_NO_PAD.decode(parts.signature).is_err() {
            return Err(TokenError::Malformed("the signature is not base64url"));
        }
        let claims = decode_object(parts.payload, "the claims are not a base64url JSON object")?;

        // Unverified at this point: `iss` only chooses which keys to try.
        let iss = string_claim(&claims, "iss")?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(TokenError::UnknownIssuer)?;
        let keys = issuer.keys.load();
        let mut candidates = keys
            .iter()
            .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::UnknownKey);
        }
        let message = &token[..parts.header.len() + 1 + parts.payload.len()];
        let verified = candidates.any(|k| {
            jsonwebtoken::crypto::verify(parts.signature, message.as_bytes(), &k.key, alg.jwt())
                .unwrap_or(false)
        });
        if !verified {
            return Err(TokenError::BadSignature);
        }

        // Signed: the claims can be trusted from here on.
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = LEEWAY.as_secs_f64();
        let exp = numeric_date(&claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
        if now >= exp + leeway {
            return Err(TokenError::Expired);
        }
        for name in ["nbf", "iat"] {
            if let Some(at) = numeric_date(&claims, name)?
                && at > now + leeway
            {
                return Err(TokenError::NotYetValid);
            }
        }
        if !audience_matches(&claims, &issuer.audience)? {
            return Err(TokenError::WrongAudience);
        }
        let sub = string_claim(&claims, "sub")?;
        if caller.map(SpiffeId::as_str) != Some(sub) {
            return Err(TokenError::SubjectMismatch);
        }
        let name = name_claim(&claims, "intent")?;
        let task = task_claim(&claims)?;
        let delegation = delegation_claim(&claims)?;
        Ok(VerifiedIntent {
            name,
            task,
            issuer: issuer.issuer.clone(),
            delegation,
            claims,
        })
    }

    /// [`verify`](Self::verify), then the verified intent merged over the plain headers'
    /// ([`VerifiedIntent::into_intent`]). An invalid token is an error, never the plain intent.
    pub fn apply(
        &self,
        token: &str,
        caller: Option<&SpiffeId>,
        now: SystemTime,
        plain: Intent,
    ) -> Result<Intent, TokenError> {
        Ok(self.verify(token, caller, now)?.into_intent(plain))
    }
}

/// An issuer's keys as a watched value: rebuilt from `jwks` when it changes.
fn watched_keys(
    config_key: String,
    jwks: &PathBuf,
    keys: Vec<VerifyKey>,
) -> Watched<Vec<VerifyKey>> {
    let path = jwks.clone();
    Watched::new(
        Source::IntentTokenKeys,
        config_key,
        keys,
        Inputs::none().file(jwks),
        move |_| match load_jwks(&path) {
            Ok(keys) => Rebuilt::Ok(keys),
            Err(message) => Rebuilt::Failed(message),
        },
    )
}

#[cfg(test)]
mod tests;
