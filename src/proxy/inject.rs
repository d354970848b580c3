//! The inject stage: turn the agent's request into the origin's request — hop-by-hop, intent
//! and the agent's own secret headers removed, the policy's header changes applied, the
//! normalized target as URI, then the credential the decision named injected. It needs the
//! [`Permit`]: nothing is injected into a request the policy did not allow.

use http::Request;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::body::Incoming;

use crate::credentials::inject::{AgentSecrets, Injection};
use crate::error::ProxyError;
use crate::policy::Decision;

use super::authorize::Permit;
use super::target::Target;

/// `via` added in both directions (RFC 9110 §7.6.3).
pub const VIA: HeaderValue = HeaderValue::from_static("1.1 tollgate");

// Hop-by-hop headers `http` has no constant for, named once (a `&str` name is parsed on every
// removal).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, plus
/// the fixed list. `TE: trailers` survives (gRPC needs it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Turns the agent's headers into the origin's: hop-by-hop, the agent's secret headers, the
/// intent headers and `Host` removed, `decision`'s header changes applied, `via` added. Public
/// (it needs no [`Permit`]: it injects nothing) so that `benches/request_path.rs` measures
/// this code rather than a copy of it.
pub fn origin_headers(headers: &mut HeaderMap, decision: &Decision, secrets: &AgentSecrets) {
    strip_hop_by_hop(headers);
    // An agent holds no secrets: whatever it sent in a secret header never reaches the origin.
    secrets.strip(headers);
    let intent_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-agent-"))
        .cloned()
        .collect();
    for name in intent_headers {
        headers.remove(name);
    }
    // The client sets Host (HTTP/1.1) or :authority (HTTP/2) from the URI.
    headers.remove(header::HOST);
    for name in &decision.remove_headers {
        headers.remove(name);
    }
    for (name, value) in &decision.set_headers {
        headers.insert(name.clone(), value.clone());
    }
    headers.append(header::VIA, VIA);
}

/// Builds the origin request (see the module documentation).
pub fn upstream_request(
    request: Request<Incoming>,
    target: &Target,
    permit: &Permit,
    secrets: &AgentSecrets,
    injection: Option<&Injection>,
) -> Result<Request<Incoming>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    origin_headers(&mut parts.headers, permit.decision(), secrets);
    parts.uri = target.upstream_uri()?;
    if let Some(injection) = injection {
        injection
            .apply(&mut parts.headers, &mut parts.uri)
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
    }
    // The origin's protocol is chosen by ALPN, not by what the agent spoke.
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_nominated_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("proxy-connection", "keep-alive".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-end-to-end", "kept".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("x-secret-hop").is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get("proxy-connection").is_none());
        assert!(headers.get(header::UPGRADE).is_none());
        assert_eq!(headers.get(header::TE).unwrap(), "trailers");
        assert_eq!(headers.get("x-end-to-end").unwrap(), "kept");
    }
}
