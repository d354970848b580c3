//! Putting a credential into the forwarded request, and taking the agent's own secrets out.
//!
//! An [`Injection`] is prepared once per token (header value built and marked sensitive, query
//! pair encoded), so a cached credential costs the request a header insert or a query append.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::config::credentials::{BUILTIN_SECRET_HEADERS, InjectConfig, OnPresent};

use super::secret::{REDACTED, Secret};

/// Escaped in a query parameter value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A credential ready to apply to one request.
#[derive(Clone)]
pub enum Injection {
    /// Set this header (replacing any value).
    Header(HeaderName, HeaderValue),
    /// Append `param=value` to the query (replacing the agent's own `param`).
    Query { param: String, value: Secret },
}

impl fmt::Debug for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Injection::Header(name, _) => write!(f, "Header({name}: {REDACTED})"),
            Injection::Query { param, .. } => write!(f, "Query({param}={REDACTED})"),
        }
    }
}

/// Why a token cannot be injected as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token has characters that cannot be carried in a header")]
pub struct InjectError;

impl Injection {
    /// Prepares the injection of `token` as `config` says.
    pub fn prepare(config: &InjectConfig, token: &Secret) -> Result<Injection, InjectError> {
        match config {
            InjectConfig::Header {
                name,
                prefix,
                suffix,
            } => {
                let text = zeroize::Zeroizing::new(format!("{prefix}{}{suffix}", token.expose()));
                let mut value = HeaderValue::from_str(&text).map_err(|_| InjectError)?;
                value.set_sensitive(true);
                Ok(Injection::Header(name.clone(), value))
            }
            InjectConfig::Basic { username } => {
                let pair = zeroize::Zeroizing::new(format!("{username}:{}", token.expose()));
                let text = zeroize::Zeroizing::new(format!("Basic {}", STANDARD.encode(&*pair)));
                let mut value = HeaderValue::from_str(&text).map_err(|_| InjectError)?;
                value.set_sensitive(true);
                Ok(Injection::Header(http::header::AUTHORIZATION, value))
            }
            InjectConfig::Query { param } => Ok(Injection::Query {
                param: param.clone(),
                value: Secret::new(utf8_percent_encode(token.expose(), QUERY_VALUE).to_string()),
            }),
        }
    }

    /// Applies the injection to the origin request's headers and URI.
    pub fn apply(&self, headers: &mut HeaderMap, uri: &mut http::Uri) -> Result<(), InjectError> {
        match self {
            Injection::Header(name, value) => {
                headers.insert(name.clone(), value.clone());
                Ok(())
            }
            Injection::Query { param, value } => {
                let mut parts = std::mem::take(uri).into_parts();
                let (path, query) = match &parts.path_and_query {
                    Some(pq) => (pq.path().to_string(), pq.query().map(str::to_string)),
                    None => ("/".to_string(), None),
                };
                let kept: Vec<&str> = query
                    .as_deref()
                    .unwrap_or("")
                    .split('&')
                    .filter(|pair| !pair.is_empty())
                    .filter(|pair| pair.split('=').next() != Some(param.as_str()))
                    .collect();
                let mut new = zeroize::Zeroizing::new(path);
                new.push('?');
                for pair in kept {
                    new.push_str(pair);
                    new.push('&');
                }
                new.push_str(param);
                new.push('=');
                new.push_str(value.expose());
                parts.path_and_query = Some(new.parse().map_err(|_| InjectError)?);
                *uri = http::Uri::from_parts(parts).map_err(|_| InjectError)?;
                Ok(())
            }
        }
    }
}

/// The secret headers agents may not send (built-ins + `agent_secrets.headers`), and what to
/// do when one is present.
#[derive(Debug, Clone)]
pub struct AgentSecrets {
    names: Vec<HeaderName>,
    pub on_present: OnPresent,
}

impl AgentSecrets {
    /// The built-in names plus the configured extras.
    pub fn new(extra: &[HeaderName], on_present: OnPresent) -> AgentSecrets {
        let mut names: Vec<HeaderName> = BUILTIN_SECRET_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        names.extend(extra.iter().cloned());
        AgentSecrets { names, on_present }
    }

    /// Every name, lower-cased.
    pub fn names(&self) -> &[HeaderName] {
        &self.names
    }

    /// The secret headers present in a request (names only).
    pub fn present<'a>(&'a self, headers: &HeaderMap) -> Vec<&'a str> {
        self.names
            .iter()
            .filter(|n| headers.contains_key(*n))
            .map(HeaderName::as_str)
            .collect()
    }

    /// Removes every secret header; returns whether any was there.
    pub fn strip(&self, headers: &mut HeaderMap) -> bool {
        let mut any = false;
        for name in &self.names {
            // `remove` drops every value of a repeated header.
            any |= headers.remove(name).is_some();
        }
        any
    }
}

impl Default for AgentSecrets {
    fn default() -> Self {
        AgentSecrets::new(&[], OnPresent::Remove)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Secret {
        Secret::new("tok/en+1".to_string())
    }

    #[test]
    fn header_template_and_basic() {
        let config = InjectConfig::Header {
            name: HeaderName::from_static("x-token"),
            prefix: "Token ".into(),
            suffix: ";v=1".into(),
        };
        let mut headers = HeaderMap::new();
        let mut uri: http::Uri = "http://h/p".parse().unwrap();
        Injection::prepare(&config, &token())
            .unwrap()
            .apply(&mut headers, &mut uri)
            .unwrap();
        assert_eq!(headers["x-token"], "Token tok/en+1;v=1");
        assert!(headers["x-token"].is_sensitive());
        let basic = InjectConfig::Basic {
            username: "x-access-token".into(),
        };
        Injection::prepare(&basic, &token())
            .unwrap()
            .apply(&mut headers, &mut uri)
            .unwrap();
        let expected = format!("Basic {}", STANDARD.encode("x-access-token:tok/en+1"));
        assert_eq!(headers["authorization"], expected.as_str());
    }

    #[test]
    fn query_replaces_the_agents_parameter() {
        let config = InjectConfig::Query {
            param: "access_token".into(),
        };
        let injection = Injection::prepare(&config, &token()).unwrap();
        let mut headers = HeaderMap::new();
        let mut uri: http::Uri = "http://h/p?a=1&access_token=agent&b=2".parse().unwrap();
        injection.apply(&mut headers, &mut uri).unwrap();
        assert_eq!(
            uri.to_string(),
            "http://h/p?a=1&b=2&access_token=tok%2Fen%2B1"
        );
        let mut uri: http::Uri = "http://h/p".parse().unwrap();
        injection.apply(&mut headers, &mut uri).unwrap();
        assert_eq!(uri.to_string(), "http://h/p?access_token=tok%2Fen%2B1");
        assert_eq!(format!("{injection:?}"), "Query(access_token=<redacted>)");
    }

    #[test]
    fn strips_agent_secrets() {
        let secrets = AgentSecrets::new(
            &[HeaderName::from_static("x-goog-api-key")],
            OnPresent::Remove,
        );
        let mut headers = HeaderMap::new();
        for name in [
            "authorization",
            "cookie",
            "x-api-key",
            "x-goog-api-key",
            "x-other",
        ] {
            headers.append(name, HeaderValue::from_static("v"));
        }
        headers.append("cookie", HeaderValue::from_static("second"));
        assert_eq!(secrets.present(&headers).len(), 4);
        assert!(secrets.strip(&mut headers));
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-other"));
    }
}
