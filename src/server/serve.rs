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
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::kill::flows::ConnAbort;
use crate::proxy::Proxy;
use crate::proxy::ctx::ConnCtx;
use crate::telemetry::h2_errors::H2ConnectionError;
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
    auto: hyper_util::server::conn::auto::Builder<StreamExecutor>,
}

/// How long past `upstream.request_timeout` an HTTP/2 stream may live at most.
const STREAM_GRACE: Duration = Duration::from_secs(1);

/// Runs each HTTP/2 stream hyper spawns, with a backstop on its lifetime:
/// `upstream.request_timeout` (read when the stream starts) plus [`STREAM_GRACE`].
///
/// Why: a response body enforces the request's deadline only when hyper polls it, and hyper
/// polls it only while the agent's receive window has room. An agent that never opens its
/// window (a slow-reader attack) would hold the stream, its place among the caller's requests
/// in flight and the origin connection for ever; the backstop drops the stream (hyper then
/// resets it with `CANCEL`) and the decision-log line says `upstream_timeout`.
#[derive(Clone)]
pub(super) struct StreamExecutor {
    proxy: Arc<Proxy>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        let limit = self.proxy.upstream().request_timeout() + STREAM_GRACE;
        tokio::spawn(async move {
            // The elapsed case drops the stream: that is the point.
            let _ = tokio::time::timeout(limit, stream).await;
        });
    }
}

/// Heads up to `max_header_bytes` reach the service, which answers 431 in JSON; beyond this
/// buffer hyper answers 431 itself.
fn read_buffer(limits: ConnLimits) -> usize {
    (limits.max_header_bytes + 16 * 1024).max(8192)
}

/// How many header lines hyper parses (the byte limit is the one that matters).
const MAX_HEADERS: usize = 1024;

/// HTTP/2 streams the agent opened and reset before tollgate accepted them, at most, before the
/// connection ends with GOAWAY(ENHANCE_YOUR_CALM): the rapid-reset defence (CVE-2023-44487);
/// hyper's default, stated here so it is documented and tested.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// HTTP/2 streams tollgate reset because the agent broke a rule on them (a stream over
/// `limits.max_concurrent_streams` is refused with `REFUSED_STREAM`; a malformed head…), at
/// most per connection, before the connection ends with GOAWAY(ENHANCE_YOUR_CALM).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Bytes of response body buffered per HTTP/2 stream for an agent that does not open its
/// receive window: beyond it tollgate stops reading the origin (backpressure), so a slow
/// reader holds at most this much per stream.
const MAX_SEND_BUF_SIZE: usize = 400 * 1024;

/// The receive windows tollgate grants an agent (per stream, per connection): how much of an
/// upload it buffers before the origin reads it.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

impl Http {
    pub(super) fn new(limits: ConnLimits, proxy: Arc<Proxy>) -> Http {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(read_buffer(limits))
            .max_headers(MAX_HEADERS);
        let mut auto = hyper_util::server::conn::auto::Builder::new(StreamExecutor { proxy });
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(read_buffer(limits))
            .max_headers(MAX_HEADERS);
        // The h2 crate itself bounds the rest: one pending SETTINGS ack and one pending PING
        // reply at a time (a flood is read only as fast as the agent reads the answers), and
        // CONTINUATION frames by the header list size (a flood of them is ENHANCE_YOUR_CALM).
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
            .max_send_buf_size(MAX_SEND_BUF_SIZE)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
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
                .map_err(|e| {
                    if let Some(h2) = H2ConnectionError::of(&*e) {
                        server.proxy.metrics.h2_connection_error(h2);
                    }
                    e.to_string()
                })
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
    for hyper_util::server::conn::auto::Connection<'_, Guarded<IO>, AgentService, StreamExecutor>
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
