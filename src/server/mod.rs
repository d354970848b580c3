//! The connection layer: every step between a socket and a request the proxy decides. The
//! proxy ([`crate::proxy`]) only decides; the server accepts, identifies and serves.
//!
//! - accept loops with a connection limit ([`accept_loop`]), listener TLS through the one
//!   handshake function ([`crate::tls::accept_agent`]), the caller established from a verified
//!   SVID or the configured identity;
//! - [`serve`]: one way to serve HTTP on a connection — the framing guard under hyper, the
//!   HTTP settings that enforce the limits (header size, header read timeout), the graceful
//!   drain — for agent connections and for connections inside tunnels alike;
//! - [`service`]: the hyper service of a connection: the framing and size checks of each
//!   request, then the proxy's [`handle`](crate::proxy::handle) or
//!   [`connect`](crate::proxy::connect::connect);
//! - [`tunnel`]: what an allowed CONNECT becomes — a blind tunnel, or interception (TLS
//!   terminated with a minted leaf, then [`serve`] again inside);
//! - [`framing`]: the raw-byte HTTP/1 framing guard (request smuggling defence); [`lifecycle`]:
//!   the drain.
//!
//! - [`transparent`]: the third way in, a transparent listener's redirected connection — the
//!   original destination from the kernel, the first bytes peeked ([`sniff`]), then the same
//!   steps: a [`ConnCtx`] bound to the original destination, [`crate::tls::accept_agent`] with
//!   a leaf chosen by SNI, [`serve`] with [`Protocol::Auto`], or a blind tunnel.

pub mod framing;
pub mod io;
pub mod lifecycle;
pub mod serve;
pub mod service;
pub mod sniff;
pub mod transparent;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::{ListenerConfig, ListenerMode};
use crate::error::ProxyError;
use crate::identity::Caller;
use crate::kill::flows::ConnAbort;
use crate::proxy::Proxy;
use crate::proxy::ctx::ConnCtx;
use crate::tls::ListenerTls;
use crate::tls::intercept::InterceptAuthority;
use crate::watch::Watched;

pub use serve::{AgentConn, Protocol, serve};

/// A bound listener, ready to accept.
pub struct BoundListener {
    pub config: ListenerConfig,
    pub tcp: TcpListener,
    /// The listener's TLS; rebuilt when its files or the trust bundles change (new handshakes
    /// only).
    pub tls: Option<Arc<Watched<ListenerTls>>>,
    pub local_addr: SocketAddr,
    /// Who callers without a verified SVID are on this listener: `identity.workload_spiffe_id`,
    /// or on a transparent listener without one, the SPIFFE ID of tollgate's own SVID from the
    /// Workload API (in a sidecar every caller is the pod whose SVID SPIRE gave tollgate).
    pub default_caller: Caller,
}

/// The limits the connection layer enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest request head (`limits.max_header_bytes`).
    pub max_header_bytes: usize,
    /// How long a client may take for a request head or a TLS handshake.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams open at once on one connection (`limits.max_concurrent_streams`).
    pub max_concurrent_streams: u32,
}

/// What every connection shares.
pub struct Server {
    /// What decides.
    pub proxy: Arc<Proxy>,
    /// Mints the leaves of intercepted TLS.
    pub intercept: InterceptAuthority,
    /// Tracks every task serving agent traffic, for the graceful drain.
    pub lifecycle: lifecycle::Lifecycle,
    /// Permits for open agent connections (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Identity of callers without a client certificate (`identity.workload_spiffe_id`).
    pub default_caller: Caller,
    pub limits: ConnLimits,
    /// The ports tollgate itself listens on (listeners, admin): a transparent connection to one
    /// of them is refused, so redirected traffic can never loop back into tollgate.
    pub own_ports: Arc<[u16]>,
    http: serve::Http,
}

impl Server {
    /// Prepares the connection layer (the HTTP settings are built here, once).
    pub fn new(
        proxy: Arc<Proxy>,
        intercept: InterceptAuthority,
        lifecycle: lifecycle::Lifecycle,
        max_connections: usize,
        default_caller: Caller,
        limits: ConnLimits,
        own_ports: Arc<[u16]>,
    ) -> Server {
        let http = serve::Http::new(limits, proxy.clone());
        Server {
            proxy,
            intercept,
            lifecycle,
            connections: Arc::new(Semaphore::new(max_connections)),
            default_caller,
            http,
            limits,
            own_ports,
        }
    }
}

/// Accepts connections on one listener until the drain starts.
pub async fn accept_loop(server: Arc<Server>, listener: BoundListener) {
    let listener = Arc::new(listener);
    let name: Arc<str> = Arc::from(listener.config.name.as_str());
    let lifecycle = server.lifecycle.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            // Draining: stop accepting; the socket closes when this loop returns, so new
            // connections are refused.
            () = lifecycle.draining() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = server.connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse_overloaded(stream, listener.tls.is_none()));
            continue;
        };
        // A span per connection: every log line of this connection names its listener, peer
        // and caller.
        let caller = listener
            .default_caller
            .spiffe_id()
            .map_or_else(|| "unauthenticated".to_string(), ToString::to_string);
        let span = tracing::info_span!("connection", listener = %name, %peer, %caller);
        let (server, listener, name) = (server.clone(), listener.clone(), name.clone());
        lifecycle.spawn(
            async move {
                let _permit = permit;
                agent_connection(&server, &listener, name, stream, peer).await;
            }
            .instrument(span),
        );
    }
}

/// One agent connection: its TLS (if the listener has any), who is calling, then HTTP; a
/// transparent listener's connection goes its own way in ([`transparent`]).
async fn agent_connection(
    server: &Arc<Server>,
    listener: &BoundListener,
    name: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let proxy = &server.proxy;
    let _open = proxy.metrics.connection_opened(&name);
    // A kill must be able to reset this connection; one that cannot be (no descriptor left
    // to duplicate) is not served: fail closed.
    let abort = match ConnAbort::of(&stream) {
        Ok(abort) => abort,
        Err(e) => {
            tracing::warn!(error = %e, "cannot prepare the connection's abort handle; closing");
            return;
        }
    };
    let ctx = ConnCtx::new(
        name,
        listener.config.mode,
        listener.config.intercept,
        peer,
        listener.default_caller.clone(),
        abort,
    );
    // The transparent and the TLS ways are boxed: a task's future is as large as its largest
    // state, and each of those is more than twice the plain one (13,312 bytes for the whole task
    // against 4,096 for plain HTTP's serve, release build); boxed, a plain connection keeps
    // only what it uses — about 9 KiB less per open connection — for one allocation on the
    // other ways, beside a handshake.
    if listener.config.mode == ListenerMode::Transparent {
        Box::pin(transparent::connection(server, listener, ctx, stream)).await;
        return;
    }
    let Some(tls) = &listener.tls else {
        let conn = AgentConn { ctx, tls: None };
        serve(server, stream, conn, Protocol::Http1).await;
        return;
    };
    Box::pin(tls_connection(server, tls, ctx, stream)).await;
}

/// An agent connection on a listener with TLS: the handshake, the caller its SVID names, then
/// HTTP inside.
async fn tls_connection(
    server: &Arc<Server>,
    tls: &Arc<Watched<ListenerTls>>,
    mut ctx: ConnCtx,
    stream: TcpStream,
) {
    let config = tls.load().server.clone();
    let handshake = crate::tls::accept_agent(
        stream,
        server.limits.header_read_timeout,
        &server.proxy.metrics,
        None,
        None,
        move |_| Ok(config),
    )
    .await;
    let Ok(accepted) = handshake else {
        return;
    };
    // A verified SVID names the caller; without one (client_auth: optional or none) the
    // configured workload identity does. Never a header.
    if let Some(id) = accepted.peer {
        tracing::Span::current().record("caller", id.as_str());
        ctx.caller = Caller::Authenticated(id);
        ctx.caller_verified = true;
    }
    let conn = AgentConn {
        ctx,
        tls: Some(tls.clone()),
    };
    serve(server, accepted.stream, conn, Protocol::Http1).await;
}

/// Answers a connection over the limit with a JSON 503 and closes it.
async fn refuse_overloaded(mut stream: TcpStream, plain: bool) {
    if plain {
        let id = crate::proxy::record::new_decision_id();
        let body = ProxyError::Overloaded.body(&id).to_string();
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nx-tollgate-decision-id: {id}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            stream.write_all(response.as_bytes()),
        )
        .await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a closure returns, without running it.
    fn future_size<F: std::future::Future>(_: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A value of any type, for a closure that is never called.
    fn never<T>() -> T {
        unreachable!("the closure is only measured")
    }

    /// Every open agent connection holds its task's future; the transparent and the TLS ways
    /// are boxed so a plain connection does not carry their states (13,312 bytes in a release
    /// build when they were inline, against 4,096 for plain HTTP's `serve`).
    #[test]
    fn a_plain_connection_task_does_not_carry_the_other_ways() {
        let plain = future_size(|| {
            let server: &Arc<Server> = never();
            let stream: TcpStream = never();
            let ctx: ConnCtx = never();
            let conn = AgentConn { ctx, tls: None };
            serve(server, stream, conn, Protocol::Http1)
        });
        let whole = future_size(|| {
            let server: &Arc<Server> = never();
            let listener: &BoundListener = never();
            let stream: TcpStream = never();
            let peer: SocketAddr = never();
            agent_connection(server, listener, Arc::from("agents"), stream, peer)
        });
        eprintln!("serve (plain) {plain} bytes, agent_connection {whole} bytes");
        assert!(
            whole <= plain + 2048,
            "agent_connection's future is {whole} bytes against {plain} for plain serve"
        );
    }
}
