//! Destination resolution with the private-address guard.
//!
//! Names are resolved *before* the policy decides (the policy sees `destination.ip`) and the
//! connector re-uses the same cached answer, so what was authorized is what is dialled (no DNS
//! rebinding between check and connect). Every address is checked after resolution: a name that
//! resolves to loopback, private, link-local (169.254.169.254, the cloud metadata service) or
//! other non-public ranges is refused unless `upstream.allow_private` lists it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;
use quick_cache::sync::Cache;

/// How long a resolved name is reused. getaddrinfo exposes no TTL; 10 s bounds staleness.
const CACHE_TTL: Duration = Duration::from_secs(10);

/// Why a destination cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {message}")]
    Dns { host: String, message: String },
    #[error(
        "{host} resolves only to non-public addresses ({ip}), which upstream.allow_private does not list"
    )]
    Private { host: String, ip: IpAddr },
}

/// Resolves names, caches answers briefly, and filters out forbidden addresses.
#[derive(Clone)]
pub struct GuardedResolver {
    inner: Arc<Inner>,
}

struct Inner {
    allow_private: Vec<IpNet>,
    cache: Cache<String, (Arc<[IpAddr]>, Instant)>,
}

impl GuardedResolver {
    /// A resolver that permits non-public addresses only inside `allow_private`.
    pub fn new(allow_private: Vec<IpNet>) -> GuardedResolver {
        GuardedResolver {
            inner: Arc::new(Inner {
                allow_private,
                cache: Cache::new(4096),
            }),
        }
    }

    /// Whether an address may be dialled.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.inner.allow_private.iter().any(|net| net.contains(&ip))
    }

    /// The permitted addresses of `host`, first one preferred; an error if none is permitted.
    pub async fn resolve(&self, host: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        let all = self.lookup(host).await?;
        let permitted: Arc<[IpAddr]> = all.iter().copied().filter(|ip| self.permits(*ip)).collect();
        if permitted.is_empty() {
            return Err(ResolveError::Private {
                host: host.to_string(),
                ip: all
                    .first()
                    .copied()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            });
        }
        Ok(permitted)
    }

    async fn lookup(&self, host: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(Arc::from([ip]));
        }
        if let Some((ips, at)) = self.inner.cache.get(host)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(ips);
        }
        let addrs = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| ResolveError::Dns {
                host: host.to_string(),
                message: e.to_string(),
            })?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for addr in addrs {
            if !ips.contains(&addr.ip()) {
                ips.push(addr.ip());
            }
        }
        if ips.is_empty() {
            return Err(ResolveError::Dns {
                host: host.to_string(),
                message: "no addresses".into(),
            });
        }
        let ips: Arc<[IpAddr]> = ips.into();
        self.inner
            .cache
            .insert(host.to_string(), (ips.clone(), Instant::now()));
        Ok(ips)
    }
}

/// The connector's view: resolution through the same cache and guard.
impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move {
            let ips = resolver.resolve(name.as_str()).await?;
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
            Ok(addrs.into_iter())
        })
    }
}

/// A resolver that answers every name with one address: the connector of a transparent
/// connection's requests, which go only to the address the agent dialled (checked by
/// `proxy::target::bind_original` against the guard and the name's own addresses first).
#[derive(Clone, Copy, Debug)]
pub struct PinnedResolver(pub IpAddr);

impl tower_service::Service<Name> for PinnedResolver {
    type Response = std::iter::Once<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(SocketAddr::new(self.0, 0))))
    }
}

/// True for addresses on the public internet; false for every special-purpose range an agent
/// must not reach by default (RFC 6890 and friends).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && !is_public_v4(embedded_v4(ip))
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

fn embedded_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let s = ip.segments();
    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_special_purpose_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn accepts_public_addresses() {
        for ip in [
            "140.82.112.6",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn refuses_loopback_unless_allowed() {
        let strict = GuardedResolver::new(vec![]);
        assert!(matches!(
            strict.resolve("127.0.0.1").await,
            Err(ResolveError::Private { .. })
        ));
        assert!(matches!(
            strict.resolve("localhost").await,
            Err(ResolveError::Private { .. })
        ));
        assert!(matches!(
            strict.resolve("169.254.169.254").await,
            Err(ResolveError::Private { .. })
        ));
        let open = GuardedResolver::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            &*open.resolve("127.0.0.1").await.unwrap(),
            &["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }
}
