//! The target stage: where a request goes, taken from one trusted place, normalized and
//! resolved.
//!
//! - forward (absolute-form) requests: the request URI's scheme, host and port;
//! - requests inside a CONNECT tunnel: the tunnel's authority, and the request's own Host /
//!   `:authority` must name the same host (and port, when given) — no domain fronting;
//! - hosts are lower-cased; paths are normalized (percent-decoding of unreserved characters,
//!   dot segments removed, repeated slashes merged) *before* the policy sees them, and the
//!   normalized path is what goes upstream, so `/repos/acme/../../admin` can neither slip past
//!   a prefix rule nor reach the origin in a form the policy did not see;
//! - the name is resolved here, so the policy sees the address that will be dialled, and a
//!   name that resolves only to non-public addresses is refused before the policy runs. A name
//!   that does not resolve is not refused here: the policy still decides (with
//!   `destination.ip` null), so a call the policy denies is a 403 whether or not its name
//!   resolves, and only an allowed call reports the DNS failure (502, [`Resolution::addresses`]).

use std::net::IpAddr;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Uri};

use crate::error::ProxyError;
use crate::upstream::{ResolveError, UpstreamError};

use super::Proxy;
use super::ctx::ConnCtx;
use super::record::Recorder;

/// Where a request goes, and what its name resolved to.
#[derive(Debug, Clone)]
pub struct Destination {
    pub target: Target,
    pub resolution: Resolution,
}

/// What a destination's name resolved to.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// Public addresses (or ones `upstream.allow_private` admits), in dial order.
    Resolved(Arc<[IpAddr]>),
    /// The name did not resolve; the policy decides without an address.
    Unresolved(ResolveError),
}

impl Resolution {
    /// The address the policy sees (`destination.ip`).
    pub fn first(&self) -> Option<IpAddr> {
        match self {
            Resolution::Resolved(ips) => ips.first().copied(),
            Resolution::Unresolved(_) => None,
        }
    }

    /// The addresses to dial; a name that did not resolve is now the answer (502).
    pub fn addresses(&self) -> Result<&Arc<[IpAddr]>, ProxyError> {
        match self {
            Resolution::Resolved(ips) => Ok(ips),
            Resolution::Unresolved(dns) => {
                Err(ProxyError::Upstream(UpstreamError::Resolve(dns.clone())))
            }
        }
    }
}

/// Resolves `host`. Non-public addresses are refused here, before the policy runs; a DNS
/// failure is not (see the module documentation).
pub async fn resolve(proxy: &Proxy, host: &str) -> Result<Resolution, ProxyError> {
    match proxy.upstream().resolver.resolve(host).await {
        Ok(ips) => Ok(Resolution::Resolved(ips)),
        Err(private @ ResolveError::Private { .. }) => Err(ProxyError::PrivateDestination(private)),
        Err(dns) => Ok(Resolution::Unresolved(dns)),
    }
}

/// The stage for an HTTP request: its target (the absolute-form URI, or inside a tunnel the
/// tunnel's authority checked against the request's own), resolved — inside a tunnel, to the
/// addresses vetted when the tunnel was authorized.
pub async fn request_destination<B>(
    proxy: &Proxy,
    conn: &ConnCtx,
    request: &Request<B>,
    record: &mut Recorder,
) -> Result<Destination, ProxyError> {
    let host_header = request.headers().get(http::header::HOST);
    let target = match (&conn.tunnel, conn.original) {
        (Some(tunnel), _) => {
            tunneled_target(request.uri(), host_header, &tunnel.authority, tunnel.scheme)?
        }
        (None, Some(original)) => {
            if request.method() == http::Method::CONNECT {
                return Err(ProxyError::BadRequest(
                    "CONNECT on a transparently redirected connection: send the request itself"
                        .into(),
                ));
            }
            transparent_target(request.uri(), host_header, original)?
        }
        (None, None) => forward_target(request.uri())?,
    };
    record.target(&target);
    let resolution = match (&conn.tunnel, conn.original) {
        (Some(tunnel), _) if !tunnel.ips.is_empty() => Resolution::Resolved(tunnel.ips.clone()),
        (None, Some(original)) => bind_original(proxy, &target.host, original.ip()).await?,
        _ => resolve(proxy, &target.host).await?,
    };
    Ok(Destination { target, resolution })
}

/// Destination binding for a transparent connection: `host` (the name the policy will see:
/// SNI or Host) must resolve to `dialled`, the address the agent's connection was made to, and
/// that address must be one tollgate may dial; the resolution is then that address alone. A
/// name that does not resolve, or resolves elsewhere, is [`ProxyError::DestinationMismatch`]:
/// an agent cannot reach an arbitrary IP by naming a host the policy allows (domain fronting).
pub async fn bind_original(
    proxy: &Proxy,
    host: &str,
    dialled: IpAddr,
) -> Result<Resolution, ProxyError> {
    let upstream = proxy.upstream();
    let resolver = &upstream.resolver;
    if !resolver.permits(dialled) {
        return Err(ProxyError::PrivateDestination(ResolveError::Private {
            host: host.to_string(),
            ip: dialled,
        }));
    }
    match resolver.resolve(host).await {
        Ok(ips) if ips.contains(&dialled) => Ok(Resolution::Resolved(Arc::from([dialled]))),
        Ok(_) | Err(ResolveError::Dns { .. } | ResolveError::Private { .. }) => {
            Err(ProxyError::DestinationMismatch {
                host: host.to_string(),
                dialled,
            })
        }
    }
}

/// The stage for a CONNECT: its `host:port`, resolved.
pub async fn tunnel_destination<B>(
    proxy: &Proxy,
    request: &Request<B>,
    record: &mut Recorder,
) -> Result<(TunnelAuthority, Resolution), ProxyError> {
    let authority = connect_authority(request.uri())?;
    record.authority(&authority.host, authority.port);
    let resolution = resolve(proxy, &authority.host).await?;
    Ok((authority, resolution))
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: &'static str,
    /// Lower-case DNS name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    /// Normalized path, always starting with `/`.
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    /// The URI to send upstream.
    pub fn upstream_uri(&self) -> Result<Uri, ProxyError> {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut text = format!("{}://{}:{}{}", self.scheme, host, self.port, self.path);
        if let Some(query) = &self.query {
            text.push('?');
            text.push_str(query);
        }
        text.parse()
            .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded".into()))
    }
}

/// The authority a CONNECT tunnel was opened to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelAuthority {
    pub host: String,
    pub port: u16,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// Lower-cases a host and strips IPv6 brackets; refuses empty hosts.
pub fn normalize_host(host: &str) -> Result<String, ProxyError> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(ProxyError::BadRequest("the request names no host".into()));
    }
    Ok(host.to_ascii_lowercase())
}

/// Parses a CONNECT request target (`host:port`, port required).
pub fn connect_authority(uri: &Uri) -> Result<TunnelAuthority, ProxyError> {
    let authority = uri
        .authority()
        .ok_or_else(|| ProxyError::BadRequest("CONNECT needs a host:port target".into()))?;
    let port = authority
        .port_u16()
        .ok_or_else(|| ProxyError::BadRequest("CONNECT needs a host:port target".into()))?;
    Ok(TunnelAuthority {
        host: normalize_host(authority.host())?,
        port,
    })
}

/// The target of an absolute-form request on a forward listener.
pub fn forward_target(uri: &Uri) -> Result<Target, ProxyError> {
    let scheme = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => "http",
        Some(s) if *s == Scheme::HTTPS => "https",
        Some(other) => {
            return Err(ProxyError::BadRequest(format!(
                "unsupported scheme `{other}`"
            )));
        }
        None => {
            return Err(ProxyError::BadRequest(
                "not a proxy request: send an absolute URI (http://host/path) or use CONNECT"
                    .into(),
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| ProxyError::BadRequest("the request URI has no host".into()))?;
    reject_userinfo(authority)?;
    Ok(Target {
        scheme,
        host: normalize_host(authority.host())?,
        port: authority.port_u16().unwrap_or_else(|| default_port(scheme)),
        path: normalize_path(uri.path())?,
        query: uri.query().map(str::to_owned),
    })
}

/// The target of a request inside a tunnel: the tunnel's authority, checked against the
/// request's own authority (h2 `:authority` or h1 `Host`).
pub fn tunneled_target(
    uri: &Uri,
    host_header: Option<&http::HeaderValue>,
    tunnel: &TunnelAuthority,
    scheme: &'static str,
) -> Result<Target, ProxyError> {
    let claimed = claimed_authority(uri, host_header)?;
    let host = normalize_host(claimed.host())?;
    let port_matches = claimed.port_u16().is_none_or(|p| p == tunnel.port);
    if host != tunnel.host || !port_matches {
        return Err(ProxyError::HostMismatch {
            expected: format!("{}:{}", tunnel.host, tunnel.port),
            found: claimed.to_string(),
        });
    }
    Ok(Target {
        scheme,
        host,
        port: tunnel.port,
        path: normalize_path(uri.path())?,
        query: uri.query().map(str::to_owned),
    })
}

/// The authority a request inside a tunnel or a transparent connection names: the URI's (h2
/// `:authority`, absolute form) or else the `Host` header; userinfo refused.
fn claimed_authority(
    uri: &Uri,
    host_header: Option<&http::HeaderValue>,
) -> Result<Authority, ProxyError> {
    let claimed = match uri.authority() {
        Some(a) => Some(a.clone()),
        None => host_header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Authority>().ok()),
    };
    let claimed =
        claimed.ok_or_else(|| ProxyError::BadRequest("the request has no Host".into()))?;
    reject_userinfo(&claimed)?;
    Ok(claimed)
}

/// The target of a request on a transparent connection (plain HTTP): the request's own
/// authority (h2 `:authority` or h1 `Host`), at the port the agent dialled (a port the request
/// names must be that one).
pub fn transparent_target(
    uri: &Uri,
    host_header: Option<&http::HeaderValue>,
    original: std::net::SocketAddr,
) -> Result<Target, ProxyError> {
    let claimed = claimed_authority(uri, host_header)?;
    if claimed.port_u16().is_some_and(|p| p != original.port()) {
        return Err(ProxyError::HostMismatch {
            expected: format!("port {}", original.port()),
            found: claimed.to_string(),
        });
    }
    Ok(Target {
        scheme: "http",
        host: normalize_host(claimed.host())?,
        port: original.port(),
        path: normalize_path(uri.path())?,
        query: uri.query().map(str::to_owned),
    })
}

fn reject_userinfo(authority: &Authority) -> Result<(), ProxyError> {
    if authority.as_str().contains('@') {
        return Err(ProxyError::BadRequest(
            "user info in the request URI is not allowed".into(),
        ));
    }
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a request path (RFC 3986 §6.2.2 plus merged slashes).
pub fn normalize_path(raw: &str) -> Result<String, ProxyError> {
    if raw == "*" {
        return Ok("*".into());
    }
    if !raw.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "the request path must start with /".into(),
        ));
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(ProxyError::BadRequest(
                    "the request path has a malformed %-escape".into(),
                ));
            };
            let value = h * 16 + l;
            if value == 0 {
                return Err(ProxyError::BadRequest(
                    "the request path contains %00".into(),
                ));
            }
            if is_unreserved(value) {
                decoded.push(value);
            } else {
                decoded.extend_from_slice(format!("%{value:02X}").as_bytes());
            }
            i += 3;
        } else {
            if b == b'\\' {
                return Err(ProxyError::BadRequest(
                    "the request path contains a backslash".into(),
                ));
            }
            decoded.push(b);
            i += 1;
        }
    }
    let text = String::from_utf8(decoded)
        .map_err(|_| ProxyError::BadRequest("the request path is not valid".into()))?;
    let trailing_slash = text.len() > 1 && text.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(text.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dot_segments_slashes_and_escapes() {
        let cases = [
            ("/", "/"),
            ("/repos/acme/app", "/repos/acme/app"),
            ("/repos/acme/../../admin", "/admin"),
            ("/repos/./acme//app", "/repos/acme/app"),
            ("/repos/acme/%2e%2e/%2E%2E/admin", "/admin"),
            ("/a/%7euser", "/a/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/b/", "/a/b/"),
            ("/..", "/"),
            ("//", "/"),
            ("/a/..", "/"),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_path(raw).unwrap(), expected, "{raw}");
        }
    }

    #[test]
    fn rejects_malformed_paths() {
        for raw in ["/a%zz", "/a%2", "/a%00b", "relative", "/a\\b"] {
            assert!(normalize_path(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn reads_forward_targets_with_default_ports() {
        let t = forward_target(&"http://API.GitHub.com/repos?x=1".parse().unwrap()).unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            ("http", "api.github.com", 80)
        );
        assert_eq!(t.query.as_deref(), Some("x=1"));
        let t = forward_target(&"https://[::1]:8443/".parse().unwrap()).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(t.upstream_uri().unwrap().to_string(), "https://[::1]:8443/");
    }

    #[test]
    fn rejects_origin_form_on_a_forward_listener() {
        assert!(matches!(
            forward_target(&"/path".parse().unwrap()),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn rejects_a_host_that_differs_from_the_tunnel() {
        let tunnel = TunnelAuthority {
            host: "api.github.com".into(),
            port: 443,
        };
        let uri: Uri = "/x".parse().unwrap();
        let ok = http::HeaderValue::from_static("API.github.com");
        assert!(tunneled_target(&uri, Some(&ok), &tunnel, "https").is_ok());
        let with_port = http::HeaderValue::from_static("api.github.com:443");
        assert!(tunneled_target(&uri, Some(&with_port), &tunnel, "https").is_ok());
        let evil = http::HeaderValue::from_static("evil.example");
        assert!(matches!(
            tunneled_target(&uri, Some(&evil), &tunnel, "https"),
            Err(ProxyError::HostMismatch { .. })
        ));
        let wrong_port = http::HeaderValue::from_static("api.github.com:8443");
        assert!(matches!(
            tunneled_target(&uri, Some(&wrong_port), &tunnel, "https"),
            Err(ProxyError::HostMismatch { .. })
        ));
    }

    #[test]
    fn takes_a_transparent_target_from_the_host_at_the_dialled_port() {
        let original: std::net::SocketAddr = "192.0.2.2:8080".parse().unwrap();
        let uri: Uri = "/a/../b?x=1".parse().unwrap();
        let host = http::HeaderValue::from_static("API.test");
        let t = transparent_target(&uri, Some(&host), original).unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port, t.path.as_str()),
            ("http", "api.test", 8080, "/b")
        );
        assert_eq!(t.query.as_deref(), Some("x=1"));
        let same_port = http::HeaderValue::from_static("api.test:8080");
        assert!(transparent_target(&uri, Some(&same_port), original).is_ok());
        let other_port = http::HeaderValue::from_static("api.test:9090");
        assert!(matches!(
            transparent_target(&uri, Some(&other_port), original),
            Err(ProxyError::HostMismatch { .. })
        ));
        assert!(matches!(
            transparent_target(&uri, None, original),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn requires_a_port_on_connect() {
        assert!(connect_authority(&"api.github.com:443".parse().unwrap()).is_ok());
        assert!(connect_authority(&"api.github.com".parse().unwrap()).is_err());
    }
}
