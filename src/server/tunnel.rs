//! What an allowed CONNECT becomes, once the agent has its `200`: a blind tunnel (bytes copied
//! both ways, unread, until either side closes or the caller or task is killed), or
//! interception — TLS terminated with a leaf minted for the CONNECT host (an SVID asked for
//! again when the listener verifies them), then HTTP served inside with [`serve`], each request
//! decided on its own. Plain HTTP inside a tunnel (a CONNECT to port 80) is served the same
//! way, without TLS.

use std::net::IpAddr;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::identity::Caller;
use crate::kill::flows::{ConnAbort, FlowKind, Stop};
use crate::policy::ConnectionMode;
use crate::proxy::connect::TunnelPlan;
use crate::proxy::ctx::{ConnCtx, TunnelCtx};
use crate::proxy::target::TunnelAuthority;
use crate::tls::ListenerTls;
use crate::watch::Watched;

use super::Server;
use super::io::Prefixed;
use super::serve::{AgentConn, Protocol, serve};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Carries out `plan` on the connection `request` upgrades, in a task the drain waits for. The
/// task keeps the connection's span (listener, peer, caller) for its logs.
pub fn open(
    server: Arc<Server>,
    conn: Arc<ConnCtx>,
    tls: Option<Arc<Watched<ListenerTls>>>,
    plan: TunnelPlan,
    request: Request<Incoming>,
) {
    let tasks = server.lifecycle.clone();
    let task = async move {
        let upgraded = match hyper::upgrade::on(request).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        match plan.mode {
            ConnectionMode::Tunnel => blind(&server, &conn, &plan, TokioIo::new(upgraded)).await,
            ConnectionMode::Intercept => intercept(&server, &conn, tls, plan, upgraded).await,
        }
    };
    tasks.spawn(task.instrument(tracing::Span::current()));
}

/// `mode: tunnel`: copy bytes both ways, unread — until either side closes or a kill covering
/// the caller (or the task the CONNECT declared) cuts the tunnel: then the agent's connection
/// is reset (and the origin's), so nothing queued in tollgate is delivered. `agent` is the
/// upgraded CONNECT, or a transparent listener's connection (its unread first bytes still in
/// the socket; that connection is the flow, registered by the transparent listener).
pub(super) async fn blind<IO>(server: &Server, conn: &ConnCtx, plan: &TunnelPlan, agent: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let proxy = &server.proxy;
    let mut origin = match proxy
        .upstream()
        .connect_tcp(&plan.ips, plan.authority.port)
        .await
    {
        Ok(origin) => origin,
        Err(e) => {
            tracing::info!(error = %e, "tunnel could not reach the origin");
            return;
        }
    };
    let flow = conn.original.is_none().then(|| {
        proxy.kills.open_flow(
            FlowKind::Tunnel,
            conn.caller.spiffe_id(),
            plan.task.as_ref(),
            Stop::Connection(conn.abort.clone()),
        )
    });
    let cut = match &flow {
        Some(flow) => pipe(flow.meter(agent), &mut origin, &conn.abort).await,
        None => pipe(agent, &mut origin, &conn.abort).await,
    };
    if cut {
        // Bytes still queued toward the origin are dropped too.
        let _ = socket2::SockRef::from(&origin).set_linger(Some(std::time::Duration::ZERO));
        tracing::info!(listener = %conn.listener, "tunnel closed: caller or task killed");
    }
    drop(origin);
    if let Some(flow) = flow {
        conn.record_cut(
            proxy,
            flow,
            &plan.authority.host,
            plan.authority.port,
            plan.task.as_ref(),
        );
    }
}

/// Copies both ways until either side closes (false) or the connection is aborted (true).
async fn pipe<IO>(mut agent: IO, origin: &mut TcpStream, abort: &ConnAbort) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut agent, origin) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "tunnel closed with an error");
            }
            false
        }
        () = abort.aborted() => true,
    }
}

/// Interception: sniff TLS, terminate it with a leaf for the CONNECT host, and serve HTTP/1.1
/// or HTTP/2 inside, each request authorized on its own.
async fn intercept(
    server: &Arc<Server>,
    conn: &ConnCtx,
    listener_tls: Option<Arc<Watched<ListenerTls>>>,
    plan: TunnelPlan,
    upgraded: Upgraded,
) {
    let timeout = server.limits.header_read_timeout;
    // The intercepted connection is a flow of its own (the requests inside are flows too): a
    // kill of the caller, or of the task the CONNECT declared, resets it.
    let flow = server.proxy.kills.open_flow(
        FlowKind::InterceptedConnection,
        conn.caller.spiffe_id(),
        plan.task.as_ref(),
        Stop::Connection(conn.abort.clone()),
    );
    let TunnelPlan {
        authority,
        ips,
        task,
        ..
    } = plan;
    let (host, port) = (authority.host.clone(), authority.port);
    let mut io = flow.meter(TokioIo::new(upgraded));
    let mut first = [0u8; 1];
    let read = tokio::select! {
        read = tokio::time::timeout(timeout, io.read_exact(&mut first)) => Some(read),
        () = conn.abort.aborted() => None,
    };
    if !matches!(read, Some(Ok(Ok(_)))) {
        tracing::debug!("tunnel closed before the first byte");
        drop(io);
        conn.record_cut(&server.proxy, flow, &host, port, task.as_ref());
        return;
    }
    let io = Prefixed::new(first.to_vec(), io);
    if first[0] != TLS_HANDSHAKE {
        // Plain HTTP inside the tunnel (e.g. CONNECT to port 80): authorize each request too.
        let tunnel = TunnelCtx {
            authority,
            scheme: "http",
            sni: None,
            ips,
        };
        let inner = AgentConn {
            ctx: conn.inside_tunnel(tunnel, conn.caller.clone()),
            tls: None,
        };
        serve(server, io, inner, Protocol::Auto).await;
    } else {
        intercept_tls(server, conn, listener_tls, authority, ips, io).await;
    }
    conn.record_cut(&server.proxy, flow, &host, port, task.as_ref());
}

/// Terminates the agent's TLS on `io` with a leaf minted for `authority`'s host (the SNI, if
/// any, must name it), then serves HTTP/1.1 or HTTP/2 inside, each request authorized on its
/// own and sent only to `ips` (empty: resolved per request). Used inside an intercepted CONNECT
/// and by a transparent listener that sniffed a ClientHello.
pub(super) async fn intercept_tls<IO>(
    server: &Arc<Server>,
    conn: &ConnCtx,
    listener_tls: Option<Arc<Watched<ListenerTls>>>,
    authority: TunnelAuthority,
    ips: Arc<[IpAddr]>,
    io: IO,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = server.limits.header_read_timeout;
    // With `client_auth` on the listener, the leaf asks for an SVID too (optional mode).
    let inner_verifier = listener_tls.and_then(|tls| tls.load().inner_verifier.clone());
    let asks_svid = inner_verifier.is_some();
    let host = authority.host.clone();
    let choose = |hello: &rustls::server::ClientHello<'_>| {
        if let Some(sni) = hello.server_name()
            && sni.to_ascii_lowercase().trim_end_matches('.') != host
        {
            tracing::warn!(sni = %sni, connect = %host, "SNI does not match the CONNECT host; closing");
            return Err(());
        }
        let minted = match inner_verifier {
            Some(verifier) => server
                .intercept
                .server_config_with_client_auth(&host, verifier),
            None => server.intercept.server_config(&host),
        };
        minted.map_err(|e| tracing::error!(error = %e, "cannot intercept"))
    };
    let handshake = crate::tls::accept_agent(
        io,
        timeout,
        &server.proxy.metrics,
        Some(&authority.host),
        Some(&server.intercept.ca_cert_path),
        choose,
    )
    .await;
    let Ok(accepted) = handshake else {
        return;
    };
    // An SVID presented inside the tunnel names the caller; it may not contradict the one the
    // listener's own TLS established.
    let caller = match accepted.peer {
        None => conn.caller.clone(),
        Some(inner) => match conn.caller.spiffe_id() {
            Some(outer) if asks_svid && *outer != inner && conn.caller_verified => {
                tracing::warn!(outer = %outer, inner = %inner, "the SVID inside the tunnel differs from the listener's; closing");
                return;
            }
            _ => Caller::Authenticated(inner),
        },
    };
    let tunnel = TunnelCtx {
        authority,
        scheme: "https",
        sni: accepted.sni,
        ips,
    };
    let inner = AgentConn {
        ctx: conn.inside_tunnel(tunnel, caller),
        tls: None,
    };
    serve(server, accepted.stream, inner, Protocol::Auto).await;
}
