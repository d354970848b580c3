//! Per-connection facts the stages share: which listener, who is calling, and — inside a
//! CONNECT tunnel — where the tunnel goes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::identity::Caller;
use crate::server::framing::FramingVerdicts;

use super::target::TunnelAuthority;

/// What is known about one agent connection before any request is read.
pub struct ConnCtx {
    pub listener: Arc<str>,
    /// Whether the listener terminates TLS inside CONNECT to authorize each request.
    pub intercept: bool,
    pub peer: SocketAddr,
    /// Established at connection time, never from a header.
    pub caller: Caller,
    /// True when `caller` is a verified SVID (not the configured workload identity).
    pub caller_verified: bool,
    /// Set for connections served inside an intercepted CONNECT tunnel.
    pub tunnel: Option<TunnelCtx>,
    /// Raw-byte framing verdicts of an HTTP/1 connection (request-smuggling defence).
    pub framing: Option<Arc<FramingVerdicts>>,
    /// For listeners with `tls.client_auth`: the verifier that also asks for an SVID inside
    /// intercepted TLS (optional mode; swapped when trust bundles rotate).
    pub inner_verifier: Option<Arc<arc_swap::ArcSwap<InnerVerifier>>>,
    requests: AtomicU64,
}

/// An SVID verifier for the TLS inside CONNECT tunnels.
pub struct InnerVerifier(pub Arc<dyn rustls::server::danger::ClientCertVerifier>);

/// The tunnel a request arrived through.
#[derive(Clone)]
pub struct TunnelCtx {
    pub authority: TunnelAuthority,
    /// `https` when TLS was terminated inside the tunnel, `http` otherwise.
    pub scheme: &'static str,
    pub sni: Option<String>,
    /// Addresses vetted when the tunnel was authorized.
    pub ips: Arc<[IpAddr]>,
}

impl ConnCtx {
    /// A connection accepted on a listener.
    pub fn new(listener: Arc<str>, intercept: bool, peer: SocketAddr, caller: Caller) -> ConnCtx {
        ConnCtx {
            listener,
            intercept,
            peer,
            caller,
            caller_verified: false,
            tunnel: None,
            framing: None,
            inner_verifier: None,
            requests: AtomicU64::new(0),
        }
    }

    /// The connection served inside a tunnel opened from this one, by `caller` (this
    /// connection's, or the SVID verified inside the tunnel).
    pub fn inside_tunnel(&self, tunnel: TunnelCtx, caller: Caller) -> ConnCtx {
        ConnCtx {
            listener: self.listener.clone(),
            intercept: self.intercept,
            peer: self.peer,
            caller,
            caller_verified: self.caller_verified,
            tunnel: Some(tunnel),
            framing: None,
            inner_verifier: None,
            requests: AtomicU64::new(0),
        }
    }

    /// The index of the next request on this connection (0, 1, …), in arrival order.
    pub fn next_request_index(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }
}
