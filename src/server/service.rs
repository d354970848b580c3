//! The hyper service of one connection. Per request it does the connection-level checks —
//! the framing guard's verdict for this request (request smuggling defence) and the head size
//! limit — then hands the request to the proxy: [`proxy::handle`], or for a CONNECT
//! [`proxy::connect::connect`], whose plan it carries out ([`super::tunnel`]).
//!
//! The service can only be made with the framing guard's verdicts ([`AgentService::new`] takes
//! them, and [`super::serve`] is the one caller, right after wrapping the stream in the
//! guard), so no connection can be served without its framing being judged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::proxy;
use crate::proxy::body::ResponseBody;
use crate::proxy::ctx::ConnCtx;
use crate::tls::ListenerTls;
use crate::watch::Watched;

use super::framing::{FramingVerdicts, FramingViolation};
use super::serve::AgentConn;
use super::{Server, tunnel};

/// The hyper service of one connection (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct AgentService(Arc<Connection>);

/// One connection, as its service sees it.
struct Connection {
    server: Arc<Server>,
    ctx: Arc<ConnCtx>,
    tls: Option<Arc<Watched<ListenerTls>>>,
    /// What the framing guard under hyper saw of each request on this connection.
    framing: Arc<FramingVerdicts>,
    /// How many requests this connection has handed over, in arrival order.
    requests: AtomicU64,
}

impl AgentService {
    /// The service of a connection whose bytes `framing` judges.
    pub(super) fn new(
        server: Arc<Server>,
        conn: AgentConn,
        framing: Arc<FramingVerdicts>,
    ) -> AgentService {
        AgentService(Arc::new(Connection {
            server,
            ctx: Arc::new(conn.ctx),
            tls: conn.tls,
            framing,
            requests: AtomicU64::new(0),
        }))
    }
}

impl hyper::service::Service<Request<Incoming>> for AgentService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let conn = self.0.clone();
        Box::pin(async move { Ok(conn.answer(request).await) })
    }
}

impl Connection {
    async fn answer(self: Arc<Self>, request: Request<Incoming>) -> Response<ResponseBody> {
        let proxy = &self.server.proxy;
        if let Err(error) = self.admit(&request) {
            return proxy::refuse(proxy, &self.ctx, request.method().clone(), &error);
        }
        // CONNECT opens a tunnel only on a forward listener's own connection: inside a tunnel,
        // or on a transparently redirected connection, the target stage refuses it.
        if request.method() != Method::CONNECT
            || self.ctx.tunnel.is_some()
            || self.ctx.original.is_some()
        {
            return proxy::handle(proxy, &self.ctx, request).await;
        }
        match proxy::connect::connect(proxy, &self.ctx, &request).await {
            Err(refusal) => refusal,
            Ok(plan) => {
                // The connection switches to tunnel bytes after this 200: stop reading them as
                // HTTP.
                self.framing.stop_tracking();
                let established = plan.established();
                tunnel::open(
                    self.server.clone(),
                    self.ctx.clone(),
                    self.tls.clone(),
                    plan,
                    request,
                );
                established
            }
        }
    }

    /// The connection-level checks of one request: its framing as the guard saw it, and the
    /// size of its head (HTTP/2 heads never pass the guard).
    fn admit(&self, request: &Request<Incoming>) -> Result<(), ProxyError> {
        let max = self.server.limits.max_header_bytes;
        let index = self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(violation) = self.framing.verdict(index) {
            return Err(match violation {
                FramingViolation::HeadersTooLarge => ProxyError::HeadersTooLarge(max),
                FramingViolation::Malformed => {
                    ProxyError::BadRequest("malformed HTTP/1.1 request".into())
                }
                FramingViolation::ContentLengthWithTransferEncoding
                | FramingViolation::ConflictingContentLength => ProxyError::AmbiguousFraming,
                FramingViolation::Unobserved => ProxyError::Internal(
                    "request framing was not observed; refusing to guess".into(),
                ),
            });
        }
        if head_size(request) > max {
            return Err(ProxyError::HeadersTooLarge(max));
        }
        Ok(())
    }
}

/// Bytes of the request head as received (request line + header lines), for the size limit.
fn head_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = request.method().as_str().len() + uri_len + 12;
    request.headers().iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    })
}
