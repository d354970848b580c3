//! The intent an agent declares (SPEC §3.2): plain `X-Agent-*` headers, validated.
//!
//! This module owns parsing and validating the headers into an [`Intent`], and the rule for
//! names an agent declares ([`TaskName`], also used by intent names, signed intent tokens,
//! kills and the admin API); removing the headers before the request goes upstream is the
//! inject stage's job, and verifying a signed intent token (`X-Agent-Intent-Token`) is
//! [`crate::intent_token`]'s.

use std::fmt;

use http::HeaderMap;

use crate::identity::SpiffeId;

/// The declared intent as the policy sees it (`input.intent`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    pub name: Option<String>,
    pub task: Option<TaskName>,
    pub purpose: Option<String>,
    pub delegation: Vec<SpiffeId>,
    /// True only when a signed intent token vouched for it.
    pub verified: bool,
    pub issuer: Option<String>,
    /// The signed token's claims (`input.intent.claims`); empty without a token.
    pub claims: serde_json::Map<String, serde_json::Value>,
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
    #[error("X-Agent-Intent-Token must be a compact JWS (ASCII)")]
    TokenNotAscii,
}

/// Header names, lower-case as `http` stores them.
pub const INTENT: &str = "x-agent-intent";
pub const TASK: &str = "x-agent-task";
pub const PURPOSE: &str = "x-agent-purpose";
pub const DELEGATION: &str = "x-agent-delegation";
pub const INTENT_TOKEN: &str = "x-agent-intent-token";

const MAX_PURPOSE: usize = 512;
const MAX_DELEGATION: usize = 8;
const MAX_INTENT_TOKEN: usize = 8 * 1024;

/// A task as agents declare it (`X-Agent-Task`, an intent token's `task`) and as operators
/// name it (a kill's `task`, `DELETE /v1/tasks/{task}`): 1 to [`TaskName::MAX_LEN`] bytes of
/// `A-Z a-z 0-9 . _ : / -` (SPEC §3.2). Only [`TaskName::parse`] makes one, so every task
/// tollgate holds obeys the rule; the same rule applies to intent names ([`is_name`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskName(String);

/// A task name that breaks [`TaskName`]'s rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a task is {} (SPEC §3.2)", TaskName::RULE)]
pub struct InvalidTaskName;

impl TaskName {
    /// Longest task name, in bytes.
    pub const MAX_LEN: usize = 128;
    /// The rule in words, for error messages.
    pub const RULE: &'static str = "1 to 128 characters from A-Z a-z 0-9 . _ : / -";

    /// Checks `text` against the rule.
    pub fn parse(text: &str) -> Result<TaskName, InvalidTaskName> {
        if is_name(text.as_bytes()) {
            Ok(TaskName(text.to_owned()))
        } else {
            Err(InvalidTaskName)
        }
    }

    /// The task name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `value` is a valid declared name (a task, or an intent): 1 to
/// [`TaskName::MAX_LEN`] bytes of `A-Z a-z 0-9 . _ : / -`.
pub fn is_name(value: &[u8]) -> bool {
    (1..=TaskName::MAX_LEN).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

impl std::ops::Deref for TaskName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for TaskName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for TaskName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TaskName {
    /// Validates while parsing: a file or a request body cannot smuggle in a bad task.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TaskName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Reads and validates the intent headers of one request.
pub fn parse_intent(headers: &HeaderMap) -> Result<Intent, IntentError> {
    let name = single(headers, INTENT, "X-Agent-Intent")?
        .map(|v| token_field(v, "X-Agent-Intent"))
        .transpose()?;
    let task = single(headers, TASK, "X-Agent-Task")?
        .map(|v| token_field(v, "X-Agent-Task").map(TaskName))
        .transpose()?;
    let purpose = single(headers, PURPOSE, "X-Agent-Purpose")?
        .map(purpose_field)
        .transpose()?;
    let delegation = match single(headers, DELEGATION, "X-Agent-Delegation")? {
        Some(value) => delegation_field(value)?,
        None => Vec::new(),
    };
    Ok(Intent {
        name,
        task,
        purpose,
        delegation,
        verified: false,
        issuer: None,
        claims: serde_json::Map::new(),
    })
}

/// The `X-Agent-Intent-Token` header, if any: one value, at most 8 KiB, ASCII. Verifying it is
/// [`crate::intent_token`]'s job.
pub fn intent_token(headers: &HeaderMap) -> Result<Option<&str>, IntentError> {
    let Some(token) = single(headers, INTENT_TOKEN, "X-Agent-Intent-Token")? else {
        return Ok(None);
    };
    if token.len() > MAX_INTENT_TOKEN {
        return Err(IntentError::TokenTooLong);
    }
    std::str::from_utf8(token)
        .map(Some)
        .map_err(|_| IntentError::TokenNotAscii)
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
    if !is_name(value) {
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
    fn accepts_task_names_by_the_rule_only() {
        assert_eq!(
            TaskName::parse("t-42/step:1.a_b").unwrap().as_str(),
            "t-42/step:1.a_b"
        );
        assert!(TaskName::parse(&"a".repeat(TaskName::MAX_LEN)).is_ok());
        for bad in ["", "t 1", "t;1", "é", &"a".repeat(TaskName::MAX_LEN + 1)] {
            assert_eq!(TaskName::parse(bad), Err(InvalidTaskName), "{bad:?}");
        }
        let parsed: Result<TaskName, _> = serde_json::from_str("\"t 1\"");
        assert!(parsed.is_err(), "deserializing validates");
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
    fn reads_one_intent_token_within_its_limits() {
        assert_eq!(
            intent_token(&headers(&[(INTENT_TOKEN, b"e30.e30.sig")])),
            Ok(Some("e30.e30.sig"))
        );
        assert_eq!(intent_token(&HeaderMap::new()), Ok(None));
        assert_eq!(
            intent_token(&headers(&[(INTENT_TOKEN, &[b'a'; 8 * 1024 + 1])])),
            Err(IntentError::TokenTooLong)
        );
        assert_eq!(
            intent_token(&headers(&[(INTENT_TOKEN, b"a"), (INTENT_TOKEN, b"b")])),
            Err(IntentError::Repeated {
                header: "X-Agent-Intent-Token"
            })
        );
    }
}
