//! The policy's answer (SPEC §4.2), checked before anything acts on it.
//!
//! Only `allow` is required; anything that is not a valid decision is an error the caller turns
//! into a `policy_error` deny (fail closed). Header changes are validated here, once, so the
//! forward stage can apply them without re-checking.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use regorus::Value;

use crate::config::duration::parse_duration;

/// What the policy asked for the connection (connection-level checks only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionMode {
    /// Terminate TLS and authorize each request (default).
    #[default]
    Intercept,
    /// Pass the bytes through unread.
    Tunnel,
}

/// The credential a decision names; injected by the credentials release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRequest {
    pub name: String,
    pub scopes: Vec<String>,
    pub ttl: Option<Duration>,
}

/// A valid decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub allow: bool,
    pub reason: Option<String>,
    pub credential: Option<CredentialRequest>,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
    pub mode: ConnectionMode,
}

/// Why a policy result is not a valid decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("the decision is undefined")]
    Undefined,
    #[error("the decision is not an object")]
    NotAnObject,
    #[error("decision.allow is missing or not a boolean")]
    BadAllow,
    #[error("decision.{0} has the wrong type")]
    WrongType(&'static str),
    #[error("decision.headers names a header that cannot be set or removed: {0}")]
    BadHeader(String),
    #[error("decision.mode must be intercept or tunnel")]
    BadMode,
    #[error("decision.credential.ttl: {0}")]
    BadTtl(String),
    /// Two keys of `headers.set` that name one header (they differ only in case): which value
    /// would win is not the policy's to leave to key order.
    #[error("decision.headers.set names the header {0} twice")]
    DuplicateHeader(String),
}

/// Headers a policy may not touch: framing, hop-by-hop and routing are the proxy's, and the
/// decision id is what tollgate itself asserts.
fn is_protected(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "x-tollgate-decision-id"
    )
}

fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(&Value::from(key))
            .filter(|v| !matches!(v, Value::Null)),
        _ => None,
    }
}

fn string(value: &Value, what: &'static str) -> Result<String, DecisionError> {
    match value {
        Value::String(s) => Ok(s.to_string()),
        _ => Err(DecisionError::WrongType(what)),
    }
}

fn string_list(value: &Value, what: &'static str) -> Result<Vec<String>, DecisionError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Set(items) => items.iter().collect(),
        _ => return Err(DecisionError::WrongType(what)),
    };
    items.into_iter().map(|v| string(v, what)).collect()
}

impl Decision {
    /// Checks an entrypoint's value; anything but a valid decision is an error.
    pub fn from_value(value: &Value) -> Result<Decision, DecisionError> {
        match value {
            Value::Undefined => return Err(DecisionError::Undefined),
            Value::Object(_) => {}
            _ => return Err(DecisionError::NotAnObject),
        }
        let allow = match field(value, "allow") {
            Some(Value::Bool(b)) => *b,
            _ => return Err(DecisionError::BadAllow),
        };
        let reason = field(value, "reason")
            .map(|v| string(v, "reason"))
            .transpose()?;
        let credential = match field(value, "credential") {
            None => None,
            Some(c @ Value::Object(_)) => Some(CredentialRequest {
                name: field(c, "name")
                    .ok_or(DecisionError::WrongType("credential.name"))
                    .and_then(|v| string(v, "credential.name"))?,
                scopes: field(c, "scopes")
                    .map(|v| string_list(v, "credential.scopes"))
                    .transpose()?
                    .unwrap_or_default(),
                ttl: field(c, "ttl")
                    .map(|v| string(v, "credential.ttl"))
                    .transpose()?
                    .map(|text| parse_duration(&text).map_err(DecisionError::BadTtl))
                    .transpose()?,
            }),
            Some(_) => return Err(DecisionError::WrongType("credential")),
        };
        let mut set_headers = Vec::new();
        let mut remove_headers = Vec::new();
        match field(value, "headers") {
            None => {}
            Some(h @ Value::Object(_)) => {
                match field(h, "set") {
                    None => {}
                    Some(Value::Object(map)) => {
                        // The object's keys in their own order; a header name is
                        // case-insensitive, so two keys can name one header.
                        for (k, v) in map.iter() {
                            let name = string(k, "headers.set")?;
                            let text = string(v, "headers.set")?;
                            let header = HeaderName::from_bytes(name.as_bytes())
                                .map_err(|_| DecisionError::BadHeader(name.clone()))?;
                            if is_protected(&header) {
                                return Err(DecisionError::BadHeader(name));
                            }
                            let value = HeaderValue::from_str(&text)
                                .map_err(|_| DecisionError::BadHeader(name))?;
                            set_headers.push((header, value));
                        }
                        // In the header's own (lower-case) name order, so the decision is the
                        // same whatever case the policy wrote its keys in.
                        set_headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                        if let Some(pair) = set_headers.windows(2).find(|p| p[0].0 == p[1].0) {
                            return Err(DecisionError::DuplicateHeader(pair[0].0.to_string()));
                        }
                    }
                    Some(_) => return Err(DecisionError::WrongType("headers.set")),
                }
                if let Some(list) = field(h, "remove") {
                    for name in string_list(list, "headers.remove")? {
                        let header = HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| DecisionError::BadHeader(name.clone()))?;
                        if is_protected(&header) {
                            return Err(DecisionError::BadHeader(name));
                        }
                        remove_headers.push(header);
                    }
                }
            }
            Some(_) => return Err(DecisionError::WrongType("headers")),
        }
        let mode = match field(value, "mode") {
            None => ConnectionMode::Intercept,
            Some(Value::String(s)) if &**s == "intercept" => ConnectionMode::Intercept,
            Some(Value::String(s)) if &**s == "tunnel" => ConnectionMode::Tunnel,
            Some(_) => return Err(DecisionError::BadMode),
        };
        Ok(Decision {
            allow,
            reason,
            credential,
            set_headers,
            remove_headers,
            mode,
        })
    }

    /// The decision as JSON, for `tollgate policy eval`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::json!({ "allow": self.allow });
        if let Some(reason) = &self.reason {
            out["reason"] = reason.as_str().into();
        }
        if let Some(c) = &self.credential {
            out["credential"] = serde_json::json!({
                "name": c.name,
                "scopes": c.scopes,
                "ttl": c.ttl.map(|d| format!("{}s", d.as_secs())),
            });
        }
        if !self.set_headers.is_empty() || !self.remove_headers.is_empty() {
            let set: serde_json::Map<String, serde_json::Value> = self
                .set_headers
                .iter()
                // A value the policy set is a JSON string, so its bytes are UTF-8 and come
                // back whole; `to_str` would write "" for any non-ASCII one (found by fuzzing).
                .map(|(k, v)| {
                    let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (k.to_string(), text.into())
                })
                .collect();
            let remove: Vec<&str> = self.remove_headers.iter().map(|h| h.as_str()).collect();
            out["headers"] = serde_json::json!({ "set": set, "remove": remove });
        }
        out["mode"] = match self.mode {
            ConnectionMode::Intercept => "intercept",
            ConnectionMode::Tunnel => "tunnel",
        }
        .into();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Decision, DecisionError> {
        Decision::from_value(&Value::from_json_str(json).unwrap())
    }

    #[test]
    fn accepts_the_spec_example() {
        let d = parse(
            r#"{"allow": true, "reason": "triage may read issues",
                "credential": {"name": "github", "scopes": ["issues:read"], "ttl": "5m"},
                "headers": {"set": {"x-request-source": "tollgate"}, "remove": ["x-debug"]},
                "mode": "intercept"}"#,
        )
        .unwrap();
        assert!(d.allow);
        assert_eq!(d.credential.unwrap().ttl, Some(Duration::from_secs(300)));
        assert_eq!(d.set_headers.len(), 1);
        assert_eq!(d.remove_headers[0].as_str(), "x-debug");
    }

    #[test]
    fn accepts_allow_alone() {
        assert_eq!(parse(r#"{"allow": false}"#).unwrap().reason, None);
    }

    #[test]
    fn rejects_what_is_not_a_decision() {
        assert_eq!(
            Decision::from_value(&Value::Undefined),
            Err(DecisionError::Undefined)
        );
        assert_eq!(parse("true"), Err(DecisionError::NotAnObject));
        assert_eq!(parse(r#"{"reason": "x"}"#), Err(DecisionError::BadAllow));
        assert_eq!(parse(r#"{"allow": "yes"}"#), Err(DecisionError::BadAllow));
        assert_eq!(
            parse(r#"{"allow": true, "reason": 3}"#),
            Err(DecisionError::WrongType("reason"))
        );
        assert_eq!(
            parse(r#"{"allow": true, "mode": "bypass"}"#),
            Err(DecisionError::BadMode)
        );
        assert!(matches!(
            parse(r#"{"allow": true, "credential": {"name": "a", "ttl": "5 minutes"}}"#),
            Err(DecisionError::BadTtl(_))
        ));
    }

    /// Header keys differ in case from the names they set: the set is in name order whatever
    /// the keys' case (fuzzing found a decision that changed order when written back), and two
    /// keys naming one header are an error, not a race decided by key order.
    #[test]
    fn orders_set_headers_by_name_and_refuses_one_header_set_twice() {
        let d = parse(
            r#"{"allow": true, "headers": {"set": {"X-Zeta": "z", "x-alpha": "a", "X-Mid": "m"}}}"#,
        )
        .unwrap();
        let names: Vec<&str> = d.set_headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-alpha", "x-mid", "x-zeta"]);
        assert_eq!(
            parse(r#"{"allow": true, "headers": {"set": {"X-Team": "a", "x-team": "b"}}}"#),
            Err(DecisionError::DuplicateHeader("x-team".into()))
        );
    }

    #[test]
    fn rejects_protected_or_invalid_headers() {
        for json in [
            r#"{"allow": true, "headers": {"set": {"host": "evil"}}}"#,
            r#"{"allow": true, "headers": {"set": {"x-tollgate-decision-id": "x"}}}"#,
            r#"{"allow": true, "headers": {"set": {"bad name": "x"}}}"#,
            r#"{"allow": true, "headers": {"set": {"x-a": "line\nbreak"}}}"#,
            r#"{"allow": true, "headers": {"remove": ["transfer-encoding"]}}"#,
        ] {
            assert!(
                matches!(parse(json), Err(DecisionError::BadHeader(_))),
                "{json}"
            );
        }
    }
}
