//! [`serve`]: the one way tollgate serves HTTP on a connection — an agent's connection to a
//! listener, a connection inside an intercepted tunnel, and (later) one a transparent listener
//! took in.
//!
//! Every connection gets the framing guard under hyper (its verdicts go to the service, which
//! cannot be built without them), the HTTP settings that enforce the limits (built once, at
//! start-up), and the graceful drain: when draining starts, HTTP/1.1 finishes the exchange in
//! flight and closes, HTTP/2 sends GOAWAY and finishes its open streams. A kill that covers
//! a flow on the connection aborts it instead ([`ConnAbort`]): dropped at once, with a reset.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::kill::flows::ConnAbort;
use crate::proxy::ctx::ConnCtx;
use crate::tls::ListenerTls;
use crate::watch::Watched;

use super::framing::FramingGuard;
use super::lifecycle::Lifecycle;
use super::service::AgentService;
use super::{ConnLimits, Server};

/// The HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// An agent's connection to a forward listener: HTTP/1.1, absolute-form requests and
    /// CONNECT (which upgrades the connection into a tunnel).
    Http1,
    /// A connection whose destination is already fixed (inside a tunnel): HTTP/1.1 or HTTP/2,
    /// chosen by the HTTP/2 preface (ALPN offered it inside TLS).
    Auto,
}

/// One agent connection, as the server serves it: what the proxy sees, and the listener TLS
/// it came through (whose SVID verifier interception asks with again).
pub struct AgentConn {
    pub ctx: ConnCtx,
    pub tls: Option<Arc<Watched<ListenerTls>>>,
}

/// The HTTP settings of every connection, built once from the limits.
pub(super) struct Http {
    http1: hyper::server::conn::http1::Builder,
    auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
}

/// Heads up to `max_header_bytes` reach the service, which answers 431 in JSON; beyond this
/// buffer hyper answers 431 itself.
fn read_buffer(limits: ConnLimits) -> usize {
    (limits.max_header_bytes + 16 * 1024).max(8192)
}

/// How many header lines hyper parses (the byte limit is the one that matters).
const MAX_HEADERS: usize = 1024;

impl Http {
    pub(super) fn new(limits: ConnLimits) -> Http {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(read_buffer(limits))
            .max_headers(MAX_HEADERS);
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(read_buffer(limits))
            .max_headers(MAX_HEADERS);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Http { http1, auto }
    }
}

/// Serves HTTP on `io` until the client closes it or the drain ends it.
pub async fn serve<IO>(server: &Arc<Server>, io: IO, conn: AgentConn, protocol: Protocol)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (guarded, verdicts) = FramingGuard::new(io, server.limits.max_header_bytes);
    let abort = conn.ctx.abort.clone();
    let service = AgentService::new(server.clone(), conn, verdicts);
    let io = TokioIo::new(guarded);
    let lifecycle = &server.lifecycle;
    let result = match protocol {
        Protocol::Http1 => {
            let connection = server
                .http
                .http1
                .serve_connection(io, service)
                .with_upgrades();
            until_drained(connection, lifecycle, &abort)
                .await
                .map_err(|e| e.to_string())
        }
        Protocol::Auto => {
            let connection = server.http.auto.serve_connection(io, service);
            until_drained(connection, lifecycle, &abort)
                .await
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A hyper connection that can finish gracefully.
trait Drainable: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    fn start_graceful_shutdown(self: Pin<&mut Self>);
}

/// What every connection's hyper I/O is: the client's stream under the framing guard.
type Guarded<IO> = TokioIo<FramingGuard<IO>>;

impl<IO> Drainable for hyper::server::conn::http1::UpgradeableConnection<Guarded<IO>, AgentService>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Error = hyper::Error;
    fn start_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<IO> Drainable
    for hyper_util::server::conn::auto::Connection<'_, Guarded<IO>, AgentService, TokioExecutor>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn start_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives `connection`; once draining starts, lets it finish what is in flight, then close.
/// A kill that aborts the connection drops it at once, mid-exchange: the abort already set
/// `SO_LINGER` 0, so the close is a reset and nothing queued reaches the agent.
async fn until_drained<C: Drainable>(
    connection: C,
    lifecycle: &Lifecycle,
    abort: &ConnAbort,
) -> Result<(), C::Error> {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = abort.aborted() => Ok(()),
        () = lifecycle.draining() => {
            connection.as_mut().start_graceful_shutdown();
            tokio::select! {
                result = connection => result,
                () = abort.aborted() => Ok(()),
            }
        }
    }
}
