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

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::identity::SpiffeId;
use crate::intent::{Intent, TaskName, is_name};
use crate::reason::Reason;
use crate::watch::{Inputs, Rebuilt, Reloaded, Source, Watched};

/// Longest token accepted, in bytes (SPEC §3.2).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The audience a token must carry when the issuer configures none.
pub const DEFAULT_AUDIENCE: &str = "tollgate";

const MAX_DELEGATION: usize = 8;
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

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

/// One public key, pinned to the single algorithm it may verify.
struct VerifyKey {
    kid: Option<String>,
    alg: Alg,
    key: DecodingKey,
}

/// The algorithms tollgate accepts; nothing else can even be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Es256,
    EdDsa,
    Rs256,
}

impl Alg {
    fn from_name(name: &str) -> Option<Alg> {
        match name {
            "ES256" => Some(Alg::Es256),
            // "Ed25519" is RFC 9864's fully-specified name for EdDSA on Ed25519.
            "EdDSA" | "Ed25519" => Some(Alg::EdDsa),
            "RS256" => Some(Alg::Rs256),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Rs256 => "RS256",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Alg::Es256 => Algorithm::ES256,
            Alg::EdDsa => Algorithm::EdDSA,
            Alg::Rs256 => Algorithm::RS256,
        }
    }
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

/// The three base64url parts of a compact JWS.
struct Parts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    Ok(Parts {
        header,
        payload,
        signature,
    })
}

fn decode_object(part: &str, why: &'static str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(why))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed(why)),
    }
}

fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, TokenError> {
    match claims.get(name) {
        None => Err(TokenError::MissingClaim(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or(TokenError::InvalidClaim(name)),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
fn audience_matches(claims: &Map<String, Value>, audience: &str) -> Result<bool, TokenError> {
    match claims.get("aud") {
        None => Err(TokenError::MissingClaim("aud")),
        Some(Value::String(aud)) => Ok(aud == audience),
        Some(Value::Array(auds)) => {
            let mut found = false;
            for aud in auds {
                match aud {
                    Value::String(aud) => found |= aud == audience,
                    _ => return Err(TokenError::InvalidClaim("aud")),
                }
            }
            Ok(found)
        }
        Some(_) => Err(TokenError::InvalidClaim("aud")),
    }
}

/// `intent`: required, same rule as the plain header.
fn name_claim(claims: &Map<String, Value>, name: &'static str) -> Result<String, TokenError> {
    let value = string_claim(claims, name)?;
    if !is_name(value.as_bytes()) {
        return Err(TokenError::InvalidClaim(name));
    }
    Ok(value.to_string())
}

/// `task`: required, a [`TaskName`].
fn task_claim(claims: &Map<String, Value>) -> Result<TaskName, TokenError> {
    TaskName::parse(string_claim(claims, "task")?).map_err(|_| TokenError::InvalidClaim("task"))
}

fn delegation_claim(claims: &Map<String, Value>) -> Result<Vec<SpiffeId>, TokenError> {
    let invalid = TokenError::InvalidClaim("delegation");
    match claims.get("delegation") {
        None => Ok(Vec::new()),
        Some(Value::Array(ids)) if ids.len() <= MAX_DELEGATION => ids
            .iter()
            .map(|id| match id {
                Value::String(id) => SpiffeId::parse(id).map_err(|_| invalid),
                _ => Err(invalid),
            })
            .collect(),
        Some(_) => Err(invalid),
    }
}

/// The members of a JWK this module reads; anything else (`x5c`, `x5t`, …) is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    d: Option<Value>,
    #[serde(default)]
    k: Option<Value>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

/// Reads a JWK Set file; the error names the file and the key at fault.
fn load_jwks(path: &PathBuf) -> Result<Vec<VerifyKey>, String> {
    let file = path.display();
    let text = std::fs::read(path).map_err(|e| format!("cannot read {file}: {e}"))?;
    let jwks: RawJwks = serde_json::from_slice(&text)
        .map_err(|e| format!("{file} is not a JWK Set ({{\"keys\": [...]}}): {e}"))?;
    if jwks.keys.is_empty() {
        return Err(format!("{file} holds no keys"));
    }
    let mut keys: Vec<VerifyKey> = Vec::with_capacity(jwks.keys.len());
    for (index, value) in jwks.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(Value::as_str).map(str::to_string);
        let name = match &kid {
            Some(kid) => format!("keys[{index}] (kid {kid:?})"),
            None => format!("keys[{index}]"),
        };
        let key = parse_jwk(value).map_err(|why| format!("{file}: {name}: {why}"))?;
        if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) {
            return Err(format!(
                "{file}: {name}: this kid is used by an earlier key"
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn parse_jwk(value: Value) -> Result<VerifyKey, String> {
    let jwk: RawJwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if jwk.d.is_some() || jwk.k.is_some() {
        return Err(
            "holds private or symmetric key material (d or k): publish public keys only".into(),
        );
    }
    if let Some(use_) = jwk.use_.as_deref()
        && use_ != "sig"
    {
        return Err(format!("use is {use_:?}, not \"sig\""));
    }
    let (alg, key) = match jwk.kty.as_str() {
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err(format!(
                    "EC keys must be on curve P-256 (ES256), not {:?}",
                    jwk.crv.as_deref().unwrap_or("")
                ));
            }
            let x = member(&jwk.x, "x", 32..=32)?;
            let y = member(&jwk.y, "y", 32..=32)?;
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?;
            (Alg::Es256, key)
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!(
                    "OKP keys must be Ed25519 (EdDSA), not {:?}",
                    jwk.crv.as_deref().unwrap_or("")
                ));
            }
            let x = member(&jwk.x, "x", 32..=32)?;
            (
                Alg::EdDsa,
                DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?,
            )
        }
        "RSA" => {
            let n = member(&jwk.n, "n", 1..=MAX_RSA_BITS / 8)?;
            let bits = rsa_bits(n);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(format!(
                    "RSA modulus is {bits} bits; RS256 keys must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits"
                ));
            }
            let e = member(&jwk.e, "e", 1..=8)?;
            (
                Alg::Rs256,
                DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?,
            )
        }
        "oct" => {
            return Err(
                "symmetric (oct) keys are refused: intent tokens are verified with public keys only"
                    .into(),
            );
        }
        other => return Err(format!("kty {other:?} is not EC, OKP or RSA")),
    };
    if let Some(declared) = jwk.alg.as_deref()
        && Alg::from_name(declared) != Some(alg)
    {
        return Err(format!(
            "alg is {declared:?}, but tollgate verifies this key type only with {}",
            alg.name()
        ));
    }
    Ok(VerifyKey {
        kid: jwk.kid,
        alg,
        key,
    })
}

/// A required base64url member whose decoded length lies in `len`.
fn member<'a>(
    value: &'a Option<String>,
    name: &str,
    len: std::ops::RangeInclusive<usize>,
) -> Result<&'a str, String> {
    let text = value.as_deref().ok_or_else(|| format!("has no {name:?}"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("{name:?} is not base64url"))?;
    if !len.contains(&bytes.len()) {
        return Err(format!(
            "{name:?} has {} bytes, expected {len:?}",
            bytes.len()
        ));
    }
    Ok(text)
}

/// Bit length of a big-endian base64url integer (already checked to decode).
fn rsa_bits(n: &str) -> usize {
    let bytes = URL_SAFE_NO_PAD.decode(n).unwrap_or_default();
    let Some(first) = bytes.iter().position(|&b| b != 0) else {
        return 0;
    };
    (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISS: &str = "https://orchestrator.example.org";
    const CALLER: &str = "spiffe://example.org/ns/agents/sa/triage";
    const NOW: u64 = 1_800_000_000;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A signing key with its public JWK (rcgen + ring: independent of the verifier's parsing).
    struct TestKey {
        alg: Algorithm,
        encoding: EncodingKey,
        jwk: Value,
    }

    fn ec_key(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 65);
        TestKey {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
        }
    }

    fn ed_key(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        TestKey {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key_raw())}),
        }
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "sub": CALLER, "aud": "tollgate", "intent": "issues.read", "task": "t-42",
            "exp": NOW + 300, "iat": NOW, "scope": "issues:read",
            "delegation": ["spiffe://example.org/orchestrator"],
        })
    }

    fn sign(key: &TestKey, claims: &Value, kid: bool) -> String {
        let mut header = Header::new(key.alg);
        if kid {
            header.kid = key.jwk["kid"].as_str().map(str::to_string);
        }
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        issuers: IntentIssuers,
    }

    fn write_jwks(path: &PathBuf, keys: &[&Value]) {
        std::fs::write(path, json!({ "keys": keys }).to_string()).unwrap();
    }

    fn fixture(keys: &[&TestKey]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        write_jwks(&path, &keys.iter().map(|k| &k.jwk).collect::<Vec<_>>());
        let issuers = IntentIssuers::load(&[IssuerConfig {
            issuer: ISS.into(),
            jwks: path.clone(),
            audience: None,
        }])
        .unwrap();
        Fixture {
            _dir: dir,
            path,
            issuers,
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn caller() -> SpiffeId {
        SpiffeId::parse(CALLER).unwrap()
    }

    fn check(f: &Fixture, token: &str) -> Result<VerifiedIntent, TokenError> {
        f.issuers.verify(token, Some(&caller()), now())
    }

    #[test]
    fn accepts_es256_and_eddsa_with_and_without_kid() {
        let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
        let f = fixture(&[&ec, &ed]);
        for key in [&ec, &ed] {
            for kid in [true, false] {
                let verified = check(&f, &sign(key, &claims(), kid)).unwrap();
                assert_eq!(verified.name, "issues.read");
                assert_eq!(verified.task.as_str(), "t-42");
                assert_eq!(verified.issuer, ISS);
                assert_eq!(
                    verified.delegation[0].as_str(),
                    "spiffe://example.org/orchestrator"
                );
                assert_eq!(verified.claims["scope"], "issues:read");
            }
        }
    }

    #[test]
    fn accepts_token_merged_over_plain_headers() {
        let ec = ec_key("ec-1");
        let f = fixture(&[&ec]);
        let plain = Intent {
            name: Some("repos.delete".into()),
            purpose: Some("audit text".into()),
            ..Intent::default()
        };
        let intent = f
            .issuers
            .apply(&sign(&ec, &claims(), true), Some(&caller()), now(), plain)
            .unwrap();
        assert_eq!(intent.name.as_deref(), Some("issues.read"));
        assert_eq!(intent.task.as_deref(), Some("t-42"));
        assert_eq!(intent.purpose.as_deref(), Some("audit text"));
        assert!(intent.verified);
        assert_eq!(intent.issuer.as_deref(), Some(ISS));
        assert_eq!(intent.claims["sub"], CALLER);
    }

    #[test]
    fn accepts_within_leeway_and_rejects_beyond() {
        let ec = ec_key("ec-1");
        let f = fixture(&[&ec]);
        let mut c = claims();
        c["exp"] = json!(NOW - 29);
        assert!(check(&f, &sign(&ec, &c, true)).is_ok());
        c["exp"] = json!(NOW - 30);
        assert_eq!(check(&f, &sign(&ec, &c, true)), Err(TokenError::Expired));
        let mut c = claims();
        c["nbf"] = json!(NOW + 30);
        assert!(check(&f, &sign(&ec, &c, true)).is_ok());
        c["nbf"] = json!(NOW + 31);
        assert_eq!(
            check(&f, &sign(&ec, &c, true)),
            Err(TokenError::NotYetValid)
        );
        let mut c = claims();
        c["iat"] = json!(NOW + 3600);
        assert_eq!(
            check(&f, &sign(&ec, &c, true)),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn rejects_none_and_hmac_before_key_lookup() {
        let ec = ec_key("ec-1");
        let f = fixture(&[&ec]);
        let body = b64(claims().to_string().as_bytes());
        for alg in [
            "none", "HS256", "HS384", "HS512", "ES384", "PS256", "RS512", "ES256K",
        ] {
            let header = b64(json!({"alg": alg, "kid": "ec-1"}).to_string().as_bytes());
            for sig in ["", "c2ln", "not base64!"] {
                let token = format!("{header}.{body}.{sig}");
                assert_eq!(check(&f, &token), Err(TokenError::AlgNotAllowed), "{alg}");
            }
        }
        // HS256 keyed with the issuer's public key, in every form an attacker might try.
        let public_forms = [
            ec.jwk.to_string(),
            ec.jwk["x"].as_str().unwrap().to_string(),
        ];
        for secret in public_forms {
            let token = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(),
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap();
            assert_eq!(check(&f, &token), Err(TokenError::AlgNotAllowed));
        }
    }

    #[test]
    fn rejects_key_of_another_type_even_with_its_kid() {
        let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
        let f = fixture(&[&ec]);
        // An EdDSA token naming the EC key's kid: no key may verify an algorithm it was not
        // loaded for.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ec-1".into());
        let token = jsonwebtoken::encode(&header, &claims(), &ed.encoding).unwrap();
        assert_eq!(check(&f, &token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn rejects_unknown_kid_and_foreign_key() {
        let (ec, other) = (ec_key("ec-1"), ec_key("ec-2"));
        let f = fixture(&[&ec]);
        assert_eq!(
            check(&f, &sign(&other, &claims(), true)),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            check(&f, &sign(&other, &claims(), false)),
            Err(TokenError::BadSignature)
        );
        let mut impostor = ec_key("ec-1");
        impostor.jwk = ec.jwk.clone();
        assert_eq!(
            check(&f, &sign(&impostor, &claims(), true)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn rejects_tampered_claims() {
        let ec = ec_key("ec-1");
        let f = fixture(&[&ec]);
        let token = sign(&ec, &claims(), true);
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c["intent"] = json!("repos.delete");
        let forged = b64(c.to_string().as_bytes());
        parts[1] = &forged;
        assert_eq!(check(&f, &parts.join(".")), Err(TokenError::BadSignature));
    }

    #[test]
    fn rejects_wrong_audience_subject_issuer() {
        let ec = ec_key("ec-1");
        let f = fixture(&[&ec]);
        let mut c = claims();
        c["aud"] = json!(["other", "api.github.com"]);
        assert_eq!(
            check(&f, &sign(&ec, &c, true)),
            Err(TokenError::WrongAudience)
        );
        c["aud"] = json!(["other", "tollgate"]);
        assert!(check(&f, &sign(&ec, &c, true)).is_ok());

        let token = sign(&ec, &claims(), true);
        let thief = SpiffeId::parse("spiffe://example.org/ns/agents/sa/other").unwrap();
        assert_eq!(
            f.issuers.verify(&token, Some(&thief), now()),
            Err(TokenError::SubjectMismatch)
        );
        assert_eq!(
            f.issuers.verify(&token, None, now()),
            Err(TokenError::SubjectMismatch)
        );

        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        assert_eq!(
            check(&f, &sign(&ec, &c, true)),
            Err(TokenError::UnknownIssuer)
        );
        assert_eq!(
            IntentIssuers::none().verify(&token, Some(&caller()), now()),
            Err(TokenError::UnknownIssuer)
        );
    }

    #[test]
    fn rejects_missing_and_invalid_claims() {
        let ec = ec_key("ec-1");
        let f = fixture(&[&ec]);
        for name in ["iss", "exp", "aud", "sub", "intent", "task"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(name);
            assert_eq!(
                check(&f, &sign(&ec, &c, true)),
                Err(TokenError::MissingClaim(name)),
                "{name}"
            );
        }
        let bad: [(&str, Value); 7] = [
            ("exp", json!("tomorrow")),
            ("nbf", json!(null)),
            ("aud", json!(7)),
            ("intent", json!("issues read")),
            ("task", json!("")),
            ("delegation", Value::from(vec!["spiffe://e.org/a"; 9])),
            ("delegation", json!(["https://e.org/a"])),
        ];
        for (name, value) in bad {
            let mut c = claims();
            c[name] = value;
            assert_eq!(
                check(&f, &sign(&ec, &c, true)),
                Err(TokenError::InvalidClaim(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn rejects_malformed_and_oversized() {
        let ec = ec_key("ec-1");
        let f = fixture(&[&ec]);
        let token = sign(&ec, &claims(), true);
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.c2ln", &format!("{token}.")] {
            assert!(
                matches!(check(&f, bad), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        let crit = b64(json!({"alg": "ES256", "crit": ["exp"], "exp": 1})
            .to_string()
            .as_bytes());
        let (_, rest) = token.split_once('.').unwrap();
        assert!(matches!(
            check(&f, &format!("{crit}.{rest}")),
            Err(TokenError::Malformed(_))
        ));
        let mut c = claims();
        c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
        assert_eq!(check(&f, &sign(&ec, &c, true)), Err(TokenError::TooLarge));
    }

    #[test]
    fn rejects_jwks_with_unusable_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let ec = ec_key("ec-1");
        let mut p384 = ec.jwk.clone();
        p384["crv"] = json!("P-384");
        let mut private = ec.jwk.clone();
        private["d"] = json!("AAAA");
        let mut hs = ec.jwk.clone();
        hs["alg"] = json!("HS256");
        let mut enc = ec.jwk.clone();
        enc["use"] = json!("enc");
        let cases = [
            (
                json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
                "keys[0]",
            ),
            (json!({"keys": [p384]}), "P-256"),
            (json!({"keys": [private]}), "private"),
            (json!({"keys": [hs]}), "HS256"),
            (json!({"keys": [enc]}), "\"enc\""),
            (json!({"keys": [ec.jwk, ec.jwk]}), "earlier key"),
            (json!({"keys": []}), "no keys"),
            (
                json!({"keys": [{"kty": "RSA", "n": b64(&[0xff; 128]), "e": "AQAB"}]}),
                "1024 bits",
            ),
            (json!([1]), "not a JWK Set"),
        ];
        for (jwks, needle) in cases {
            std::fs::write(&path, jwks.to_string()).unwrap();
            let errors = IntentIssuers::load(&[IssuerConfig {
                issuer: ISS.into(),
                jwks: path.clone(),
                audience: None,
            }])
            .err()
            .unwrap();
            let text = errors[0].to_string();
            assert_eq!(errors[0].key, "intent_tokens.issuers[0].jwks");
            assert!(
                text.contains(needle) && text.contains("jwks.json"),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_duplicate_issuers_and_missing_file() {
        let ec = ec_key("ec-1");
        let f = fixture(&[&ec]);
        let config = IssuerConfig {
            issuer: ISS.into(),
            jwks: f.path.clone(),
            audience: None,
        };
        let missing = IssuerConfig {
            issuer: "other".into(),
            jwks: f.path.with_file_name("missing.json"),
            audience: Some(String::new()),
        };
        let errors = IntentIssuers::load(&[config.clone(), config, missing])
            .err()
            .unwrap();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "intent_tokens.issuers[1].issuer",
                "intent_tokens.issuers[2].audience",
                "intent_tokens.issuers[2].jwks"
            ]
        );
    }

    #[test]
    fn accepts_rotated_jwks_and_keeps_last_good_on_garbage() {
        let (old, new) = (ec_key("old"), ed_key("new"));
        let f = fixture(&[&old]);
        assert_eq!(f.issuers.reload_if_changed(), Ok(0));
        write_jwks(&f.path, &[&new.jwk]);
        assert_eq!(f.issuers.reload_if_changed(), Ok(1));
        assert!(check(&f, &sign(&new, &claims(), true)).is_ok());
        assert_eq!(
            check(&f, &sign(&old, &claims(), true)),
            Err(TokenError::UnknownKey)
        );

        std::fs::write(&f.path, "{ not json").unwrap();
        let errors = f.issuers.reload_if_changed().err().unwrap();
        assert!(errors[0].message.contains("jwks.json"), "{}", errors[0]);
        assert!(check(&f, &sign(&new, &claims(), true)).is_ok());
        // Reported once, not on every poll.
        assert_eq!(f.issuers.reload_if_changed(), Ok(0));
    }

    #[test]
    fn accepts_sharing_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<IntentIssuers>();
        shared::<TokenError>();
    }

    #[test]
    fn reasons_are_distinct() {
        let all = [
            TokenError::TooLarge,
            TokenError::Malformed(""),
            TokenError::AlgNotAllowed,
            TokenError::MissingClaim(""),
            TokenError::InvalidClaim(""),
            TokenError::UnknownIssuer,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongAudience,
            TokenError::SubjectMismatch,
        ];
        let reasons: std::collections::BTreeSet<_> = all.iter().map(TokenError::reason).collect();
        assert_eq!(reasons.len(), all.len());
        assert!(reasons.iter().all(|r| r.as_str().starts_with("token_")));
    }
}
