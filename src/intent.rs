//! The intent an agent declares (SPEC §3.2): plain `X-Agent-*` headers, validated.
//!
//! This module owns parsing and validating the headers into an [`Intent`]; removing them
//! before the request goes upstream is the forward stage's job. Signed intent tokens
//! (`X-Agent-Intent-Token`) arrive with the identity release: until then a request carrying one
//! is refused (never silently treated as unsigned), so no agent comes to depend on it being
//! ignored.

use http::HeaderMap;

use crate::identity::SpiffeId;

/// The declared intent as the policy sees it (`input.intent`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    pub name: Option<String>,
    pub task: Option<String>,
    pub purpose: Option<String>,
    pub delegation: Vec<SpiffeId>,
    /// True only when a signed intent token vouched for it.
    pub verified: bool,
    pub issuer: Option<String>,
}

/// A header that breaks its SPEC §3.2 limits; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    #[error("{header} must be 1..128 bytes of A-Z a-z 0-9 . _ : / -")]
    BadToken { header: &'static str },
    #[error("X-Agent-Purpose must be printable UTF-8 of at most 512 bytes")]
    BadPurpose,
    #[error("X-Agent-Delegation must be at most 8 comma-separated SPIFFE IDs: {0}")]
    BadDelegation(String),
    #[error("{header} appears more than once")]
    Repeated { header: &'static str },
    #[error("X-Agent-Intent-Token is longer than 8 KiB")]
    TokenTooLong,
    #[error(
        "X-Agent-Intent-Token is not supported yet: no intent_tokens issuers can be configured in this version"
    )]
    TokenNotSupported,
}

/// Header names, lower-case as `http` stores them.
pub const INTENT: &str = "x-agent-intent";
pub const TASK: &str = "x-agent-task";
pub const PURPOSE: &str = "x-agent-purpose";
pub const DELEGATION: &str = "x-agent-delegation";
pub const INTENT_TOKEN: &str = "x-agent-intent-token";

const MAX_TOKEN_FIELD: usize = 128;
const MAX_PURPOSE: usize = 512;
const MAX_DELEGATION: usize = 8;
const MAX_INTENT_TOKEN: usize = 8 * 1024;

/// Reads and validates the intent headers of one request.
pub fn parse_intent(headers: &HeaderMap) -> Result<Intent, IntentError> {
    let name = single(headers, INTENT, "X-Agent-Intent")?
        .map(|v| token_field(v, "X-Agent-Intent"))
        .transpose()?;
    let task = single(headers, TASK, "X-Agent-Task")?
        .map(|v| token_field(v, "X-Agent-Task"))
        .transpose()?;
    let purpose = single(headers, PURPOSE, "X-Agent-Purpose")?
        .map(purpose_field)
        .transpose()?;
    let delegation = match single(headers, DELEGATION, "X-Agent-Delegation")? {
        Some(value) => delegation_field(value)?,
        None => Vec::new(),
    };
    if let Some(token) = single(headers, INTENT_TOKEN, "X-Agent-Intent-Token")? {
        if token.len() > MAX_INTENT_TOKEN {
            return Err(IntentError::TokenTooLong);
        }
        return Err(IntentError::TokenNotSupported);
    }
    Ok(Intent {
        name,
        task,
        purpose,
        delegation,
        verified: false,
        issuer: None,
    })
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &str,
    display: &'static str,
) -> Result<Option<&'a [u8]>, IntentError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(IntentError::Repeated { header: display });
    }
    Ok(first.map(|v| v.as_bytes()))
}

fn token_field(value: &[u8], header: &'static str) -> Result<String, IntentError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TOKEN_FIELD
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'));
    if !ok {
        return Err(IntentError::BadToken { header });
    }
    // Every byte was checked to be ASCII above.
    Ok(value.iter().map(|&b| char::from(b)).collect())
}

fn purpose_field(value: &[u8]) -> Result<String, IntentError> {
    if value.len() > MAX_PURPOSE {
        return Err(IntentError::BadPurpose);
    }
    let text = std::str::from_utf8(value).map_err(|_| IntentError::BadPurpose)?;
    if text.chars().any(char::is_control) {
        return Err(IntentError::BadPurpose);
    }
    Ok(text.to_string())
}

fn delegation_field(value: &[u8]) -> Result<Vec<SpiffeId>, IntentError> {
    let text =
        std::str::from_utf8(value).map_err(|_| IntentError::BadDelegation("not UTF-8".into()))?;
    let entries: Vec<&str> = text.split(',').map(str::trim).collect();
    if entries.len() > MAX_DELEGATION {
        return Err(IntentError::BadDelegation(format!(
            "{} entries, at most {MAX_DELEGATION}",
            entries.len()
        )));
    }
    entries
        .into_iter()
        .map(|entry| SpiffeId::parse(entry).map_err(|e| IntentError::BadDelegation(e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn accepts_all_fields() {
        let intent = parse_intent(&headers(&[
            (INTENT, b"issues.read"),
            (TASK, b"t-42"),
            (PURPOSE, "triage new issues \u{e9}".as_bytes()),
            (
                DELEGATION,
                b"spiffe://example.org/orchestrator, spiffe://example.org/planner",
            ),
        ]))
        .unwrap();
        assert_eq!(intent.name.as_deref(), Some("issues.read"));
        assert_eq!(intent.task.as_deref(), Some("t-42"));
        assert_eq!(intent.delegation.len(), 2);
        assert!(!intent.verified);
    }

    #[test]
    fn accepts_no_headers_as_empty_intent() {
        assert_eq!(parse_intent(&HeaderMap::new()).unwrap(), Intent::default());
    }

    #[test]
    fn rejects_bad_intent_charset_and_length() {
        for bad in [&b"issues read"[..], b"", b"a;b", &[b'a'; 129]] {
            assert_eq!(
                parse_intent(&headers(&[(INTENT, bad)])),
                Err(IntentError::BadToken {
                    header: "X-Agent-Intent"
                })
            );
        }
        assert!(parse_intent(&headers(&[(INTENT, &[b'a'; 128])])).is_ok());
    }

    #[test]
    fn rejects_bad_task_purpose_delegation() {
        assert!(matches!(
            parse_intent(&headers(&[(TASK, b"t 1")])),
            Err(IntentError::BadToken {
                header: "X-Agent-Task"
            })
        ));
        assert_eq!(
            parse_intent(&headers(&[(PURPOSE, &[b'a'; 513])])),
            Err(IntentError::BadPurpose)
        );
        assert_eq!(
            parse_intent(&headers(&[(PURPOSE, b"tab\there")])),
            Err(IntentError::BadPurpose)
        );
        assert_eq!(
            parse_intent(&headers(&[(PURPOSE, b"\xff\xfe")])),
            Err(IntentError::BadPurpose)
        );
        let nine = ["spiffe://e.org/a"; 9].join(",");
        assert!(matches!(
            parse_intent(&headers(&[(DELEGATION, nine.as_bytes())])),
            Err(IntentError::BadDelegation(_))
        ));
        assert!(matches!(
            parse_intent(&headers(&[(DELEGATION, b"not-an-id")])),
            Err(IntentError::BadDelegation(_))
        ));
    }

    #[test]
    fn rejects_repeated_headers() {
        assert_eq!(
            parse_intent(&headers(&[(INTENT, b"a"), (INTENT, b"b")])),
            Err(IntentError::Repeated {
                header: "X-Agent-Intent"
            })
        );
    }

    #[test]
    fn rejects_intent_tokens_until_supported() {
        assert_eq!(
            parse_intent(&headers(&[(INTENT_TOKEN, b"e30.e30.sig")])),
            Err(IntentError::TokenNotSupported)
        );
    }
}
