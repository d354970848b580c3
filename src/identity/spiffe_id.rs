//! SPIFFE ID parsing per the SPIFFE-ID specification (§2): `spiffe://<trust-domain><path>`.
//!
//! Stricter than the `spiffe` crate, which lower-cases an upper-case trust domain: like
//! go-spiffe we refuse it, because two spellings of one identity would be two policy keys.

use std::fmt;
use std::sync::Arc;

/// A validated SPIFFE ID; cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    text: Arc<str>,
    /// Byte offset where the path starts (== text.len() when there is no path).
    path_start: usize,
}

/// Why a string is not a SPIFFE ID; each variant names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID must start with spiffe://")]
    WrongScheme,
    #[error("the SPIFFE ID's trust domain is empty")]
    EmptyTrustDomain,
    #[error(
        "the SPIFFE ID's trust domain may only contain lower-case letters, digits, '.', '-' and '_'"
    )]
    BadTrustDomainChar,
    #[error("a SPIFFE ID may not carry a port, user info, query or fragment")]
    ForbiddenComponent,
    #[error("the SPIFFE ID's path has an empty, '.' or '..' segment, or a trailing '/'")]
    BadPathSegment,
    #[error("the SPIFFE ID's path may only contain letters, digits, '.', '-' and '_'")]
    BadPathChar,
    #[error("the SPIFFE ID is longer than 2048 bytes or its trust domain longer than 255")]
    TooLong,
}

const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(text: &str) -> Result<SpiffeId, SpiffeIdError> {
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or(SpiffeIdError::WrongScheme)?;
        if text.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let td_end = rest.find('/').unwrap_or(rest.len());
        let (trust_domain, path) = rest.split_at(td_end);
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        for b in trust_domain.bytes() {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
                b':' | b'@' | b'?' | b'#' => return Err(SpiffeIdError::ForbiddenComponent),
                _ => return Err(SpiffeIdError::BadTrustDomainChar),
            }
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(SpiffeIdError::BadPathSegment);
                }
                for b in segment.bytes() {
                    match b {
                        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
                        b'?' | b'#' => return Err(SpiffeIdError::ForbiddenComponent),
                        _ => return Err(SpiffeIdError::BadPathChar),
                    }
                }
            }
        }
        Ok(SpiffeId {
            text: Arc::from(text),
            path_start: "spiffe://".len() + td_end,
        })
    }

    /// The whole ID, e.g. `spiffe://example.org/ns/agents/sa/triage`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The whole ID as a shared string, for the policy input without a copy.
    pub fn shared(&self) -> Arc<str> {
        self.text.clone()
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.text["spiffe://".len()..self.path_start]
    }

    /// The path, e.g. `/ns/agents/sa/triage`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.text[self.path_start..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids_and_splits_them() {
        let id = SpiffeId::parse("spiffe://example.org/ns/agents/sa/triage").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/agents/sa/triage");
        let td = SpiffeId::parse("spiffe://tollgate.local").unwrap();
        assert_eq!(td.trust_domain(), "tollgate.local");
        assert_eq!(td.path(), "");
    }

    #[test]
    fn rejects_each_broken_rule() {
        use SpiffeIdError::*;
        let cases = [
            ("https://example.org/a", WrongScheme),
            ("SPIFFE://example.org/a", WrongScheme),
            ("spiffe:///a", EmptyTrustDomain),
            ("spiffe://Example.org/a", BadTrustDomainChar),
            ("spiffe://example.org:443/a", ForbiddenComponent),
            ("spiffe://user@example.org/a", ForbiddenComponent),
            ("spiffe://example.org/a?x=1", ForbiddenComponent),
            ("spiffe://example.org/a#f", ForbiddenComponent),
            ("spiffe://example.org/a//b", BadPathSegment),
            ("spiffe://example.org/a/./b", BadPathSegment),
            ("spiffe://example.org/a/../b", BadPathSegment),
            ("spiffe://example.org/a/", BadPathSegment),
            ("spiffe://example.org/a%20b", BadPathChar),
        ];
        for (text, expected) in cases {
            assert_eq!(SpiffeId::parse(text), Err(expected), "{text}");
        }
    }

    #[test]
    fn rejects_overlong_ids() {
        let long = format!("spiffe://example.org/{}", "a".repeat(2100));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong));
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert_eq!(SpiffeId::parse(&long_td), Err(SpiffeIdError::TooLong));
    }
}
