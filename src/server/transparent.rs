//! A transparent listener's connection: one the kernel redirected to tollgate
//! (`tollgate redirect install`), whose agent thinks it is talking to the origin. It enters the
//! same path as every other connection:
//!
//! 1. the original destination, from the kernel (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`);
//!    none (no conntrack entry) → closed; one of tollgate's own ports → closed (loop guard);
//! 2. the first bytes, peeked ([`sniff`](super::sniff)) within the listener's `sniff_timeout`;
//! 3. by what they show:
//!    - HTTP → [`serve`] with [`Protocol::Auto`]: each request decided on its `Host` as on a
//!      forward listener, bound to the original destination (`proxy::target::bind_original`);
//!    - TLS → a connection-level decision on the SNI (else the original IP) at the original
//!      port ([`connect::transparent`]), then interception ([`tunnel::intercept_tls`]: a leaf
//!      for the SNI, each request inside decided) or a blind tunnel, as the policy says;
//!    - anything else, or silence → a connection-level decision on the original IP and port:
//!      a blind tunnel, or closed.
//!
//! Every refusal that has no HTTP to answer in closes the connection after its decision-log
//! line; nothing is ever sent anywhere but the original destination.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::kill::flows::{Flow, FlowKind, Metered, Stop};
use crate::net::original_dst::original_dst;
use crate::policy::ConnectionMode;
use crate::proxy::connect;
use crate::proxy::ctx::{ConnCtx, TunnelCtx};
use crate::proxy::target::{TunnelAuthority, normalize_host};

use super::serve::{AgentConn, Protocol, serve};
use super::sniff::{Sniffed, sniff};
use super::{BoundListener, Server, tunnel};

/// Serves one redirected connection (see the module documentation).
pub(super) async fn connection(
    server: &Arc<Server>,
    listener: &BoundListener,
    mut ctx: ConnCtx,
    stream: TcpStream,
) {
    let original = match original_dst(&stream, listener.local_addr) {
        Ok(original) => original,
        Err(e) => {
            tracing::warn!(error = %e, "no original destination; closing");
            return;
        }
    };
    if is_own_port(server, listener, original) {
        tracing::warn!(%original, "connection to tollgate's own port refused (loop guard)");
        return;
    }
    ctx.original = Some(original);
    let sniffed = sniff(&stream, listener.config.sniff_timeout).await;
    if matches!(sniffed, Sniffed::Closed) {
        return;
    }
    // The whole redirected connection is one flow (the requests inside are flows too): a kill
    // of its caller resets it. The task is unknown at this level (no CONNECT declares one).
    // Nothing is decided yet, so a kill already in force does not reset it here: each request
    // gets the kill's 403, a TLS or opaque connection its logged refusal.
    let proxy = &server.proxy;
    let flow = proxy.kills.open_undecided_flow(
        FlowKind::TransparentConnection,
        ctx.caller.spiffe_id(),
        Stop::Connection(ctx.abort.clone()),
    );
    let stream = flow.meter(stream);
    redirected(server, &mut ctx, original, sniffed, stream).await;
    conn_record_cut(server, &ctx, flow, original);
}

/// The line of a transparent connection a kill cut (its destination: the original address).
fn conn_record_cut(server: &Server, ctx: &ConnCtx, flow: Flow, original: SocketAddr) {
    ctx.record_cut(
        &server.proxy,
        flow,
        &original.ip().to_string(),
        original.port(),
        None,
    );
}

/// Serves a redirected connection by what its first bytes showed (step 3 above).
async fn redirected(
    server: &Arc<Server>,
    ctx: &mut ConnCtx,
    original: SocketAddr,
    sniffed: Sniffed,
    stream: Metered<TcpStream>,
) {
    match sniffed {
        Sniffed::Closed => {}
        Sniffed::Http => {
            let conn = AgentConn {
                ctx: ctx.clone(),
                tls: None,
            };
            serve(server, stream, conn, Protocol::Auto).await;
        }
        Sniffed::Tls { sni } => {
            let host = sni.clone().unwrap_or_else(|| original.ip().to_string());
            let Ok(host) = normalize_host(&host) else {
                tracing::info!("ClientHello with an empty SNI; closing");
                return;
            };
            // The authority is fixed before the decision, so the policy sees the SNI
            // (`connection.tls_sni`) and requests inside must name the same host.
            ctx.tunnel = Some(TunnelCtx {
                authority: TunnelAuthority {
                    host: host.clone(),
                    port: original.port(),
                },
                scheme: "https",
                sni,
                ips: Arc::from([original.ip()]),
            });
            let Ok(plan) = connect::transparent(&server.proxy, ctx, &host, original).await else {
                return;
            };
            match plan.mode {
                ConnectionMode::Tunnel => tunnel::blind(server, ctx, &plan, stream).await,
                ConnectionMode::Intercept => {
                    tunnel::intercept_tls(server, ctx, None, plan.authority, plan.ips, stream)
                        .await;
                }
            }
        }
        Sniffed::Opaque => {
            // Nothing tollgate can read: never intercepted, the policy says so
            // (`connection.intercepted` false) and can only tunnel or refuse.
            ctx.intercept = false;
            let host = original.ip().to_string();
            let Ok(plan) = connect::transparent(&server.proxy, ctx, &host, original).await else {
                return;
            };
            tunnel::blind(server, ctx, &plan, stream).await;
        }
    }
}

/// Whether `original` is one of tollgate's own listening ports (a listener or the admin API)
/// on this host: a redirected connection must never come back to tollgate. Any address with
/// such a port counts when it is local (loopback, unspecified, the listener's own address).
fn is_own_port(server: &Server, listener: &BoundListener, original: SocketAddr) -> bool {
    if original == listener.local_addr {
        return true;
    }
    let local =
        |ip: IpAddr| ip.is_loopback() || ip.is_unspecified() || ip == listener.local_addr.ip();
    server.own_ports.contains(&original.port()) && local(original.ip())
}
