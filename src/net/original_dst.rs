//! The destination a client dialled before the kernel redirected its connection to tollgate
//! (`REDIRECT` in the nat `OUTPUT` chain, installed by `tollgate redirect install`).
//!
//! Linux keeps it in the connection-tracking entry and returns it from `getsockopt`:
//! `SO_ORIGINAL_DST` (optname 80 at `SOL_IP`, a `sockaddr_in`) for IPv4 and
//! `IP6T_SO_ORIGINAL_DST` (optname 80 at `SOL_IPV6`, a `sockaddr_in6`) for IPv6. The calls go
//! through `socket2`, which wraps exactly these two options behind a safe API (it sizes the
//! buffer as `sockaddr_storage` and checks the length and family the kernel writes back), so the
//! crate keeps `#![forbid(unsafe_code)]` with no hand-written `getsockopt` of its own.
//!
//! What the kernel answers, and what callers must keep in mind:
//! - a redirected connection: the original destination (address and port);
//! - a connection that was tracked but not translated (someone dialled the listener directly):
//!   the listener's own address — the transparent listener's loop guard refuses that;
//! - no conntrack entry at all (conntrack not loaded, or an untracked socket): an error
//!   (`ENOENT`), never a made-up address.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use socket2::SockRef;

/// Why the original destination could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OriginalDstError {
    /// The `getsockopt` call failed (most often: no conntrack entry, `ENOENT`).
    #[error("cannot read the original destination ({option}): {source}")]
    Getsockopt {
        /// `SO_ORIGINAL_DST` or `IP6T_SO_ORIGINAL_DST`.
        option: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel answered with something that is not an IP socket address.
    #[error("the original destination ({option}) is not an IP socket address")]
    NotIp {
        /// `SO_ORIGINAL_DST` or `IP6T_SO_ORIGINAL_DST`.
        option: &'static str,
    },
}

/// The original destination of the accepted TCP connection `socket`, whose local address is
/// `local` (the listener's side of it). The address family of `local` picks the option: IPv4
/// (and IPv4-mapped IPv6, on a dual-stack socket) → `SO_ORIGINAL_DST`, IPv6 →
/// `IP6T_SO_ORIGINAL_DST`. An IPv4 answer on a dual-stack socket is returned as plain IPv4.
pub fn original_dst(socket: &impl AsFd, local: SocketAddr) -> Result<SocketAddr, OriginalDstError> {
    let sock = SockRef::from(socket);
    let ipv4 = match local.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    let (option, answer) = if ipv4 {
        ("SO_ORIGINAL_DST", sock.original_dst_v4())
    } else {
        ("IP6T_SO_ORIGINAL_DST", sock.original_dst_v6())
    };
    let addr = answer.map_err(|source| OriginalDstError::Getsockopt { option, source })?;
    let addr = addr.as_socket().ok_or(OriginalDstError::NotIp { option })?;
    Ok(match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On loopback, without a redirect, the kernel reports the listener itself (tracked,
    /// not translated) or no entry at all; never some other address.
    #[test]
    fn unredirected_connection_reports_the_listener_or_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        match original_dst(&server, server.local_addr().unwrap()) {
            Ok(found) => assert_eq!(found, addr),
            Err(OriginalDstError::Getsockopt { option, .. }) => {
                assert_eq!(option, "SO_ORIGINAL_DST")
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }
}
