//! Listeners: accept loops, connection limits, listener TLS, and the HTTP server settings that
//! enforce the limits (header size, header read timeout).
//!
//! The forward listener speaks HTTP/1.1 to agents (absolute-form and CONNECT). Connections
//! inside intercepted tunnels speak HTTP/1.1 or HTTP/2, chosen by ALPN or the h2 preface.

pub mod framing;
pub mod io;
pub mod lifecycle;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::ListenerConfig;
use crate::identity::Caller;
use crate::proxy::ctx::ConnCtx;
use crate::proxy::{Proxy, ProxyService};
use framing::FramingGuard;

/// A bound listener, ready to accept.
pub struct BoundListener {
    pub config: ListenerConfig,
    pub tcp: TcpListener,
    /// The listener's TLS config; swapped when trust bundles rotate (new handshakes only).
    pub tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
    /// With `tls.client_auth`: the SVID verifier also used inside intercepted TLS.
    pub inner_verifier: Option<Arc<arc_swap::ArcSwap<crate::proxy::ctx::InnerVerifier>>>,
    pub local_addr: SocketAddr,
}

/// What every accept loop shares.
pub struct ServerContext {
    pub proxy: Arc<Proxy>,
    pub connections: Arc<Semaphore>,
    /// Identity of callers without a client certificate (`identity.workload_spiffe_id`).
    pub default_caller: Caller,
}

fn http1_builder(proxy: &Proxy) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.header_read_timeout)
        // Heads up to max_header_bytes reach the service, which answers 431 in JSON; beyond
        // this buffer hyper answers 431 itself.
        .max_buf_size((proxy.max_header_bytes + 16 * 1024).max(8192))
        .max_headers(1024);
    builder
}

/// Accepts connections on one listener until the process stops.
pub async fn accept_loop(server: Arc<ServerContext>, listener: BoundListener) {
    let name: Arc<str> = Arc::from(listener.config.name.as_str());
    let listener = Arc::new(listener);
    let lifecycle = server.proxy.lifecycle.clone();
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
        let server = server.clone();
        let listener = listener.clone();
        let name = name.clone();
        // A span per connection: every log line of this connection names its listener, peer
        // and caller.
        let caller = server
            .default_caller
            .spiffe_id()
            .map_or_else(|| "unauthenticated".to_string(), ToString::to_string);
        let span = tracing::info_span!("connection", listener = %name, %peer, %caller);
        lifecycle.spawn(
            async move {
                let _permit = permit;
                serve_agent_connection(server, listener, name, stream, peer).await;
            }
            .instrument(span),
        );
    }
}

async fn serve_agent_connection(
    server: Arc<ServerContext>,
    listener: Arc<BoundListener>,
    name: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let proxy = server.proxy.clone();
    let _open = proxy.metrics.connection_opened(&name);
    let default_caller = server.default_caller.clone();
    match &listener.tls {
        None => {
            let conn = ConnCtx::new(
                name.clone(),
                listener.config.intercept,
                peer,
                default_caller,
            );
            serve_http1(proxy, conn, stream).await;
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.load_full());
            match tokio::time::timeout(proxy.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // A verified SVID names the caller; without one (client_auth: optional or
                    // none) the configured workload identity does. Never a header.
                    let verified = crate::identity::svid::peer_spiffe_id(tls.get_ref().1);
                    let caller_verified = verified.is_some();
                    let caller = verified.map_or(default_caller, Caller::Authenticated);
                    if let Some(id) = caller.spiffe_id() {
                        tracing::Span::current().record("caller", id.as_str());
                    }
                    let mut conn =
                        ConnCtx::new(name.clone(), listener.config.intercept, peer, caller);
                    conn.caller_verified = caller_verified;
                    conn.inner_verifier = listener.inner_verifier.clone();
                    serve_http1(proxy, conn, tls).await;
                }
                Ok(Err(e)) => {
                    if let Some(rejection) = crate::identity::svid::rejection_of_io(&e) {
                        proxy.metrics.identity_rejected(rejection.reason().as_str());
                        tracing::warn!(
                            listener = %name,
                            %peer,
                            reason = rejection.reason().as_str(),
                            "{rejection}"
                        );
                    }
                    proxy.metrics.agent_tls_error();
                    tracing::info!(listener = %name, %peer, error = %e, "TLS handshake with agent failed");
                }
                Err(_) => {
                    proxy.metrics.agent_tls_error();
                    tracing::info!(listener = %name, %peer, "TLS handshake with agent timed out");
                }
            }
        }
    }
}

/// Serves the proxy protocol (HTTP/1.1 with CONNECT upgrades) on an agent connection.
async fn serve_http1<IO>(proxy: Arc<Proxy>, mut conn: ConnCtx, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (guarded, verdicts) = FramingGuard::new(io, proxy.max_header_bytes);
    conn.framing = Some(verdicts);
    let service = ProxyService {
        proxy: proxy.clone(),
        conn: Arc::new(conn),
    };
    let connection = http1_builder(&proxy)
        .serve_connection(TokioIo::new(guarded), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = proxy.lifecycle.draining() => {
            // Finish the exchange in flight, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "agent connection ended with an error");
    }
}

/// Serves HTTP/1.1 or HTTP/2 on a connection inside a tunnel. Boxed: the service it runs can
/// itself open tunnels, and the future type would otherwise be infinitely recursive.
pub fn serve_tunneled<IO>(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    io: IO,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let (guarded, verdicts) = FramingGuard::new(io, proxy.max_header_bytes);
        let conn = match Arc::try_unwrap(conn) {
            Ok(mut owned) => {
                owned.framing = Some(verdicts);
                Arc::new(owned)
            }
            Err(shared) => shared,
        };
        let service = ProxyService {
            proxy: proxy.clone(),
            conn,
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(proxy.header_read_timeout)
            .max_buf_size((proxy.max_header_bytes + 16 * 1024).max(8192))
            .max_headers(1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(proxy.max_header_bytes).unwrap_or(u32::MAX));
        let connection = builder.serve_connection(TokioIo::new(guarded), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = proxy.lifecycle.draining() => {
                // HTTP/1.1: finish the exchange in flight; HTTP/2: GOAWAY, finish open streams.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "tunneled connection ended with an error");
        }
    })
}

/// Answers a connection over the limit with a JSON 503 and closes it.
async fn refuse_overloaded(mut stream: TcpStream, plain: bool) {
    if plain {
        let id = crate::proxy::record::new_decision_id();
        let body = crate::error::ProxyError::Overloaded.body(&id).to_string();
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
