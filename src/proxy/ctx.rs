//! Per-connection facts the stages read: which listener, who is calling, and — for a
//! connection served inside a CONNECT tunnel, or one a transparent listener took in — where it
//! goes. The server establishes them when it accepts the connection;
//! no request can change them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::ListenerMode;
use crate::identity::Caller;
use crate::intent::{Intent, TaskName};
use crate::kill::flows::{ConnAbort, Flow};
use crate::policy::input::{ConnectionFacts, SourceFacts};

use super::Proxy;
use super::record::Recorder;
use super::target::TunnelAuthority;

/// What is known about one agent connection before any request is read.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub listener: Arc<str>,
    /// How the listener receives traffic (`connection.mode` of the policy input).
    pub mode: ListenerMode,
    /// Whether the listener terminates TLS inside CONNECT to authorize each request.
    pub intercept: bool,
    pub peer: SocketAddr,
    /// `peer` as the policy input and the decision log write it, formatted once.
    pub peer_text: Arc<str>,
    /// Established at connection time, never from a header.
    pub caller: Caller,
    /// True when `caller` is a verified SVID (not the configured workload identity).
    pub caller_verified: bool,
    /// Set for connections whose destination is fixed before any request: inside an
    /// intercepted CONNECT tunnel, or a transparent connection whose TLS was intercepted.
    pub tunnel: Option<TunnelCtx>,
    /// A transparent listener's connection: the address the agent dialled before the kernel
    /// redirected it. tollgate connects only there, and only for a name that resolves to it.
    pub original: Option<SocketAddr>,
    /// Aborts the agent's TCP connection with a reset: what a kill does to the flows on an
    /// HTTP/1 connection, a tunnel or a transparent connection. Shared with the connections
    /// served inside a tunnel (they ride the same TCP connection).
    pub abort: Arc<ConnAbort>,
}

/// The fixed destination of a connection served inside a tunnel.
#[derive(Debug, Clone)]
pub struct TunnelCtx {
    pub authority: TunnelAuthority,
    /// `https` when TLS was terminated inside the tunnel, `http` otherwise.
    pub scheme: &'static str,
    pub sni: Option<String>,
    /// Addresses vetted when the tunnel was authorized (empty: its name did not resolve then).
    pub ips: Arc<[IpAddr]>,
}

impl ConnCtx {
    /// A connection accepted on a listener, by the configured workload identity (a verified
    /// SVID replaces it once the TLS handshake proved one); `abort` resets its TCP connection.
    pub fn new(
        listener: Arc<str>,
        mode: ListenerMode,
        intercept: bool,
        peer: SocketAddr,
        caller: Caller,
        abort: Arc<ConnAbort>,
    ) -> ConnCtx {
        ConnCtx {
            listener,
            mode,
            intercept,
            peer,
            peer_text: crate::policy::input::peer_text(peer),
            caller,
            caller_verified: false,
            tunnel: None,
            original: None,
            abort,
        }
    }

    /// The connection served inside a tunnel opened from this one, by `caller` (this
    /// connection's, or the SVID verified inside the tunnel).
    pub fn inside_tunnel(&self, tunnel: TunnelCtx, caller: Caller) -> ConnCtx {
        ConnCtx {
            caller,
            tunnel: Some(tunnel),
            ..self.clone()
        }
    }

    /// Starts the decision-log record of one request (or CONNECT) on this connection.
    pub fn recorder(&self, proxy: &Proxy, method: http::Method) -> Recorder {
        Recorder::start(
            proxy.decision_log.clone(),
            proxy.metrics.clone(),
            self.listener.clone(),
            self.peer_text.clone(),
            self.caller.spiffe_id().cloned(),
            method,
        )
    }

    /// Writes the decision-log line of a connection-level flow (tunnel, intercepted or
    /// transparent connection) when a kill cut it: method `CONNECT`, its destination and
    /// task, `reason: killed`, the kill's id, the bytes each way. Nothing when the flow ended
    /// on its own (its CONNECT decision already has its line). Not counted as a request.
    pub fn record_cut(
        &self,
        proxy: &Proxy,
        flow: Flow,
        host: &str,
        port: u16,
        task: Option<&TaskName>,
    ) {
        if flow.killed().is_none() {
            return;
        }
        let mut record = self.recorder(proxy, http::Method::CONNECT);
        record.authority(host, port);
        record.intent(&Intent {
            task: task.cloned(),
            ..Intent::default()
        });
        record.uncounted();
        record.attach_flow(flow);
    }

    /// `input.source`: who is calling, through which listener, from where.
    pub fn source(&self) -> SourceFacts {
        SourceFacts {
            caller: self.caller.clone(),
            listener: self.listener.clone(),
            address: self.peer_text.clone(),
        }
    }

    /// `input.connection` of a request on this connection (a CONNECT says itself whether it
    /// will be intercepted).
    pub fn connection(&self, intercepted: bool) -> ConnectionFacts {
        ConnectionFacts {
            mode: self.mode.as_str(),
            intercepted,
            tls_sni: self.tunnel.as_ref().and_then(|t| t.sni.clone()),
        }
    }
}
