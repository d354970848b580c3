//! CONNECT: a connection-level decision before any byte flows, then either interception
//! (TLS terminated with a minted leaf; every request inside authorized on its own) or, when the
//! policy asks for `mode: tunnel` or the listener does not intercept, bytes passed unread.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

use crate::error::ProxyError;
use crate::intent::Intent;
use crate::policy::ConnectionMode;
use crate::policy::input::{ConnectionFacts, DestinationFacts, SourceFacts};
use crate::server::io::Prefixed;

use super::authorize::{Subject, authorize};
use super::body::ResponseBody;
use super::ctx::{ConnCtx, TunnelCtx};
use super::record::Recorder;
use super::target::{TunnelAuthority, connect_authority};
use super::{Proxy, error_response, forward};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Answers a CONNECT: authorize the destination, then hand the upgraded stream to a task.
pub async fn handle_connect(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let mut record = Recorder::start(
        proxy.decision_log.clone(),
        proxy.metrics.clone(),
        conn.listener.clone(),
        conn.peer,
        conn.caller.spiffe_id().cloned(),
        "CONNECT",
    );
    match authorize_connect(&proxy, &conn, &request, &mut record).await {
        Err(error) => error_response(&error, &mut record),
        Ok((authority, ips, mode, task)) => {
            let decision_id = record.decision_id.clone();
            drop(record);
            // The connection switches to tunnel bytes after this 200: stop reading them as HTTP.
            if let Some(framing) = &conn.framing {
                framing.stop_tracking();
            }
            let tasks = proxy.lifecycle.clone();
            let proxy = proxy.clone();
            // The tunnel keeps the connection's span (listener, peer, caller) for its logs.
            let span = tracing::Span::current();
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    match hyper::upgrade::on(request).await {
                        Ok(upgraded) => match mode {
                            ConnectionMode::Tunnel => {
                                tunnel(
                                    &proxy,
                                    &conn,
                                    task.as_deref(),
                                    upgraded,
                                    &ips,
                                    authority.port,
                                )
                                .await;
                            }
                            ConnectionMode::Intercept => {
                                intercept(proxy, conn, upgraded, authority, ips).await;
                            }
                        },
                        Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                    }
                },
                span,
            ));
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::OK;
            if let Ok(id) = HeaderValue::from_str(&decision_id) {
                response.headers_mut().insert(forward::DECISION_ID, id);
            }
            response
        }
    }
}

async fn authorize_connect(
    proxy: &Proxy,
    conn: &ConnCtx,
    request: &Request<Incoming>,
    record: &mut Recorder,
) -> Result<
    (
        TunnelAuthority,
        Arc<[std::net::IpAddr]>,
        ConnectionMode,
        Option<String>,
    ),
    ProxyError,
> {
    let authority = connect_authority(request.uri())?;
    record.host = Some(authority.host.clone());
    record.port = Some(authority.port);
    let (ips, dns_failure) = super::resolve_destination(proxy, &authority.host).await?;
    // Intent headers on the CONNECT itself are optional context for the connection check.
    let intent: Intent = super::resolve_intent(proxy, conn, request.headers())?;
    let task = intent.task.clone();
    record.intent = Some((intent.name.clone(), intent.task.clone(), intent.verified));
    let subject = Subject {
        request: None,
        destination: DestinationFacts {
            host: authority.host.clone(),
            port: authority.port,
            ip: ips.first().copied(),
        },
        connection: ConnectionFacts {
            mode: "forward",
            intercepted: conn.intercept,
            tls_sni: None,
        },
    };
    let source = SourceFacts {
        caller: conn.caller.clone(),
        listener: conn.listener.clone(),
        address: conn.peer,
    };
    let permit = authorize(proxy, source, intent, subject, record)?;
    let mode = if conn.intercept {
        permit.decision().mode
    } else {
        ConnectionMode::Tunnel
    };
    // Intercepted tunnels stay open so each request inside gets its own precise answer; a
    // blind tunnel to a name that does not resolve can carry nothing.
    if let (ConnectionMode::Tunnel, Some(failure)) = (mode, dns_failure) {
        return Err(ProxyError::Upstream(
            crate::upstream::UpstreamError::Resolve(failure),
        ));
    }
    Ok((authority, ips, mode, task))
}

/// `mode: tunnel`: copy bytes both ways, unread — until either side closes or the caller (or
/// the task the CONNECT declared) is killed.
async fn tunnel(
    proxy: &Proxy,
    conn: &ConnCtx,
    task: Option<&str>,
    upgraded: hyper::upgrade::Upgraded,
    ips: &[std::net::IpAddr],
    port: u16,
) {
    let mut agent = TokioIo::new(upgraded);
    let mut origin = match proxy.upstream.connect_tcp(ips, port).await {
        Ok(origin) => origin,
        Err(e) => {
            tracing::info!(error = %e, "tunnel could not reach the origin");
            return;
        }
    };
    let spiffe_id = conn.caller.spiffe_id().map(|id| id.as_str());
    let mut kills = proxy.kills.subscribe();
    let killed = async {
        loop {
            if proxy.kills.check(spiffe_id, task).is_some() {
                return;
            }
            if kills.changed().await.is_err() {
                // The switch is gone (shutting down): never fire.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut agent, &mut origin) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "tunnel closed with an error");
            }
        }
        () = killed => tracing::info!(listener = %conn.listener, "tunnel closed: caller or task killed"),
    }
}

/// Whether the connection's caller came from a verified SVID on the listener (rather than
/// the configured workload identity, which an inner SVID may replace).
fn outer_is_verified(conn: &ConnCtx) -> bool {
    conn.caller_verified
}

/// Interception: sniff TLS, terminate it with a leaf for the CONNECT host, and serve HTTP/1.1
/// or HTTP/2 inside, each request authorized on its own.
async fn intercept(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    upgraded: hyper::upgrade::Upgraded,
    authority: TunnelAuthority,
    ips: Arc<[std::net::IpAddr]>,
) {
    let mut io = TokioIo::new(upgraded);
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(proxy.header_read_timeout, io.read_exact(&mut first)).await;
    if !matches!(read, Ok(Ok(_))) {
        tracing::debug!("tunnel closed before the first byte");
        return;
    }
    let io = Prefixed::new(first.to_vec(), io);
    if first[0] != TLS_HANDSHAKE {
        // Plain HTTP inside the tunnel (e.g. CONNECT to port 80): authorize each request too.
        let inner = conn.inside_tunnel(
            TunnelCtx {
                authority,
                scheme: "http",
                sni: None,
                ips,
            },
            conn.caller.clone(),
        );
        crate::server::serve_tunneled(proxy, Arc::new(inner), io).await;
        return;
    }
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(proxy.header_read_timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            proxy.metrics.agent_tls_error();
            tracing::info!(error = %e, host = %authority.host, "TLS handshake inside the tunnel failed");
            return;
        }
        Err(_) => {
            proxy.metrics.agent_tls_error();
            tracing::info!(host = %authority.host, "TLS handshake inside the tunnel timed out");
            return;
        }
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| s.to_ascii_lowercase());
    if let Some(sni) = &sni
        && sni.trim_end_matches('.') != authority.host
    {
        tracing::warn!(sni = %sni, connect = %authority.host, "SNI does not match the CONNECT host; closing");
        return;
    }
    let minted = match &conn.inner_verifier {
        Some(verifier) => proxy
            .intercept
            .server_config_with_client_auth(&authority.host, verifier.load().0.clone()),
        None => proxy.intercept.server_config(&authority.host),
    };
    let config = match minted {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "cannot intercept");
            return;
        }
    };
    let tls = match tokio::time::timeout(proxy.header_read_timeout, start.into_stream(config)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            if let Some(rejection) = crate::identity::svid::rejection_of_io(&e) {
                proxy.metrics.identity_rejected(rejection.reason().as_str());
                tracing::warn!(host = %authority.host, reason = rejection.reason().as_str(), "{rejection}");
            }
            proxy.metrics.agent_tls_error();
            tracing::info!(error = %e, host = %authority.host, "TLS handshake inside the tunnel failed");
            return;
        }
        Err(_) => return,
    };
    // An SVID presented inside the tunnel names the caller; it may not contradict the one the
    // listener's own TLS established.
    let caller = match crate::identity::svid::peer_spiffe_id(tls.get_ref().1) {
        None => conn.caller.clone(),
        Some(inner_id) => match conn.caller.spiffe_id() {
            Some(outer)
                if conn.inner_verifier.is_some()
                    && *outer != inner_id
                    && outer_is_verified(&conn) =>
            {
                tracing::warn!(outer = %outer, inner = %inner_id, "the SVID inside the tunnel differs from the listener's; closing");
                return;
            }
            _ => crate::identity::Caller::Authenticated(inner_id),
        },
    };
    let inner = conn.inside_tunnel(
        TunnelCtx {
            authority,
            scheme: "https",
            sni,
            ips,
        },
        caller,
    );
    crate::server::serve_tunneled(proxy, Arc::new(inner), tls).await;
}
