//! A compact JWS split into its parts, and the claims of an intent token read by their rules
//! (RFC 7519 types; `intent` and `task` by the header rule; at most 8 delegation IDs).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::identity::SpiffeId;
use crate::intent::{TaskName, is_name};

use super::TokenError;

/// Most SPIFFE IDs a `delegation` claim may list.
const MAX_DELEGATION: usize = 8;

/// The three base64url parts of a compact JWS.
pub(super) struct Parts<'a> {
    pub(super) header: &'a str,
    pub(super) payload: &'a str,
    pub(super) signature: &'a str,
}

pub(super) fn split(token: &str) -> Result<Parts<'_>, TokenError> {
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

pub(super) fn decode_object(
    part: &str,
    why: &'static str,
) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(why))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed(why)),
    }
}

pub(super) fn string_claim<'a>(
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
pub(super) fn numeric_date(
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
pub(super) fn audience_matches(
    claims: &Map<String, Value>,
    audience: &str,
) -> Result<bool, TokenError> {
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
pub(super) fn name_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<String, TokenError> {
    let value = string_claim(claims, name)?;
    if !is_name(value.as_bytes()) {
        return Err(TokenError::InvalidClaim(name));
    }
    Ok(value.to_string())
}

/// `task`: required, a [`TaskName`].
pub(super) fn task_claim(claims: &Map<String, Value>) -> Result<TaskName, TokenError> {
    TaskName::parse(string_claim(claims, "task")?).map_err(|_| TokenError::InvalidClaim("task"))
}

pub(super) fn delegation_claim(claims: &Map<String, Value>) -> Result<Vec<SpiffeId>, TokenError> {
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
