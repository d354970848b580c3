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
    /// Set for connections served inside an intercepted CONNECT tunnel.
    pub tunnel: Option<TunnelCtx>,
    /// Raw-byte framing verdicts of an HTTP/1 connection (request-smuggling defence).
    pub framing: Option<Arc<FramingVerdicts>>,
    requests: AtomicU64,
}

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
            tunnel: None,
            framing: None,
            requests: AtomicU64::new(0),
        }
    }

    /// The connection served inside a tunnel opened from this one.
    pub fn inside_tunnel(&self, tunnel: TunnelCtx) -> ConnCtx {
        ConnCtx {
            listener: self.listener.clone(),
            intercept: self.intercept,
            peer: self.peer,
            caller: self.caller.clone(),
            tunnel: Some(tunnel),
            framing: None,
            requests: AtomicU64::new(0),
        }
    }

    /// The index of the next request on this connection (0, 1, …), in arrival order.
    pub fn next_request_index(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }
}
