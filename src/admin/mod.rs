//! The admin listener (SPEC §7), one file per resource: [`health`] (`/healthz`, `/readyz`),
//! `/metrics`, [`reload`] (`/v1/reload`), [`kill`] (`/v1/kill`), [`tasks`] (`/v1/tasks`),
//! [`decisions`] (`/v1/decisions`) and the JWKS of `jwt` credentials
//! (`/.well-known/jwks.json`).
//!
//! Bound to loopback by default; a non-loopback address needs `admin.tls` (mTLS with an
//! X.509-SVID, verified against the trust bundles) and `admin.allowed_spiffe_ids`, checked at
//! configuration time. A sidecar's admin API is a Unix socket instead ([`unix`]: mode 0600,
//! each peer's UID checked), with `/metrics`, `/healthz` and `/readyz` alone on a TCP
//! `admin.metrics_address` ([`Access::Scrape`]). Every route answers JSON (`/metrics`
//! excepted); errors carry `error` and `message`. Each resource returns typed results; this
//! file routes and turns them into responses.

pub mod decisions;
pub mod health;
pub mod kill;
pub mod reload;
pub mod tasks;
pub mod unix;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::credentials::CredentialStore;
use crate::kill::KillSwitch;
use crate::telemetry::decision_log::Recent;
use crate::telemetry::metrics::{AdminRefusal, Metrics};
use crate::watch::Watched;
pub use health::Health;
pub use reload::{Reload, ReloadOutcome, Reloaded};

/// Largest admin request body read (kill requests are tiny).
const MAX_BODY: usize = 64 * 1024;
/// How long an admin client may take for its TLS handshake and for a request head.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// mTLS on the admin listener: who may call it.
pub struct AdminTls {
    /// Rebuilt when the certificate, key or trust bundles change.
    pub config: Arc<Watched<crate::tls::ListenerTls>>,
    /// SPIFFE IDs allowed to use the API (empty: any verified SVID).
    pub allowed: Vec<crate::identity::SpiffeId>,
}

/// What the admin routes read and steer.
pub struct AdminState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub kills: Arc<KillSwitch>,
    /// The credentials in force: tasks end here, kills drop cached tokens, the JWKS is served.
    pub credentials: Arc<dyn Fn() -> Arc<CredentialStore> + Send + Sync>,
    pub recent: Arc<Recent>,
    pub reloader: Arc<dyn Reload>,
}

/// An admin answer: a status and its body.
pub enum Reply {
    /// A JSON document.
    Json(StatusCode, Value),
    /// JSON already serialized.
    RawJson(StatusCode, Vec<u8>),
    /// The Prometheus text exposition.
    Metrics(Vec<u8>),
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: StatusCode, body: Value) -> Reply {
        Reply::Json(status, body)
    }

    /// A JSON answer already serialized.
    pub fn raw_json(status: StatusCode, body: Vec<u8>) -> Reply {
        Reply::RawJson(status, body)
    }

    /// An error answer: `{"error": code, "message": message}`.
    pub fn error(status: StatusCode, code: &str, message: &str) -> Reply {
        Reply::Json(status, json!({"error": code, "message": message}))
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, body, content_type) = match self {
            Reply::Json(status, body) => {
                (status, body.to_string().into_bytes(), "application/json")
            }
            Reply::RawJson(status, body) => (status, body, "application/json"),
            Reply::Metrics(text) => (
                StatusCode::OK,
                text,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, Reply> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "admin request bodies are limited to 64 KiB",
        )),
    }
}

/// Runs a kill-switch call (which may fsync) off the async workers, then publishes the gauge.
async fn kill_call<T: Send + 'static>(
    state: &AdminState,
    call: impl FnOnce(&KillSwitch) -> T + Send + 'static,
) -> Result<T, Reply> {
    let kills = state.kills.clone();
    let result = tokio::task::spawn_blocking(move || call(&kills)).await;
    state
        .metrics
        .kills_active
        .set(i64::try_from(state.kills.active()).unwrap_or(i64::MAX));
    result.map_err(|_| {
        Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the kill switch failed",
        )
    })
}

/// What one admin connection may do, decided once by its transport before any request.
#[derive(Debug, Clone)]
pub enum Access {
    /// Every route (a caller the transport proved allowed).
    Full,
    /// Only `GET /metrics`, `/healthz`, `/readyz` (`admin.metrics_address`); any other path
    /// is 404, as if the steering routes did not exist.
    Scrape,
    /// Nothing: every request gets 403 with this message.
    Refused(Arc<str>),
}

/// The read-only routes a scrape or probe needs, shared by both surfaces.
fn scrape_route(state: &AdminState, method: &Method, path: &str) -> Option<Reply> {
    match (method, path) {
        (&Method::GET, "/healthz") => Some(health::live()),
        (&Method::GET, "/readyz") => Some(health::ready(&state.health)),
        (&Method::GET, "/metrics") => Some(Reply::Metrics(state.metrics.encode())),
        (_, "/healthz" | "/readyz" | "/metrics") => Some(Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )),
        _ => None,
    }
}

/// Routes one request of a metrics-only connection.
fn route_scrape(state: &AdminState, request: &Request<Incoming>) -> Reply {
    scrape_route(state, request.method(), request.uri().path()).unwrap_or_else(|| {
        Reply::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin.metrics_address serves only /metrics, /healthz and /readyz",
        )
    })
}

/// Routes one request to its resource.
async fn route(state: &AdminState, request: Request<Incoming>) -> Reply {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if let Some(reply) = scrape_route(state, &method, &path) {
        return reply;
    }
    match (&method, path.as_str()) {
        (&Method::POST, "/v1/reload") => reload::reload(state.reloader.clone()).await,
        (&Method::GET, "/v1/kill") => match kill_call(state, kill::list).await {
            Ok(listed) => Reply::from(Ok(listed)),
            Err(reply) => reply,
        },
        (&Method::POST, "/v1/kill") => {
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            let engaged = match kill_call(state, move |kills| kill::engage(kills, &body)).await {
                Ok(engaged) => engaged,
                Err(reply) => return reply,
            };
            if let Ok(kill::KillReply::Engaged { kill, .. }) = &engaged {
                // The cached credentials a kill covers are dropped (oauth2 tokens revoked), so
                // lifting it later means fresh tokens.
                let store = (state.credentials)();
                let (dropped, revoked) = store.drop_matching(&kill.target).await;
                tracing::info!(kill_target = %kill.target, dropped, revoked, "kill: cached credentials dropped");
            }
            Reply::from(engaged)
        }
        (&Method::DELETE, p) if p == "/v1/kill" || p.starts_with("/v1/kill/") => {
            let rest = p["/v1/kill".len()..].to_string();
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            match kill_call(state, move |kills| kill::lift(kills, &rest, &body)).await {
                Ok(lifted) => Reply::from(lifted),
                Err(reply) => reply,
            }
        }
        (&Method::DELETE, p) if p.starts_with("/v1/tasks/") => {
            let store = (state.credentials)();
            Reply::from(tasks::end(&store, &state.kills, &p["/v1/tasks/".len()..]).await)
        }
        (&Method::GET, "/v1/decisions") => decisions::recent(&state.recent, request.uri().query()),
        (&Method::GET, "/.well-known/jwks.json") => {
            Reply::json(StatusCode::OK, (state.credentials)().jwks().clone())
        }
        (_, "/v1/reload" | "/v1/kill" | "/v1/decisions" | "/.well-known/jwks.json") => {
            Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        }
        _ => Reply::error(StatusCode::NOT_FOUND, "not_found", "no such admin route"),
    }
}

/// Serves one admin connection with what its transport allowed; a refused caller gets a 403
/// on every request.
async fn serve_http<IO>(io: IO, state: Arc<AdminState>, access: Access)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_TIMEOUT);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        let access = access.clone();
        async move {
            let reply = match access {
                Access::Full => route(&state, request).await,
                Access::Scrape => route_scrape(&state, &request),
                Access::Refused(message) => {
                    Reply::error(StatusCode::FORBIDDEN, "forbidden", &message)
                }
            };
            Ok::<_, Infallible>(reply.into_response())
        }
    });
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

/// Serves the admin API until the process stops; with `tls`, every caller must present an
/// X.509-SVID (verified against `identity.trust_domains`) and, when an allow-list is set, be on
/// it.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, tls: Option<Arc<AdminTls>>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                serve_http(stream, state, Access::Full).await;
                return;
            };
            let config = tls.config.current().server.clone();
            let accepted = match crate::tls::accept(stream, ADMIN_TIMEOUT, move |_| Ok(config))
                .await
            {
                Ok(accepted) => accepted,
                Err(failure) => {
                    if let Some(rejection) = failure.rejection() {
                        state.metrics.identity_rejected(rejection.reason());
                    }
                    let reason = failure
                        .rejection()
                        .map_or("tls_error", |r| r.reason().as_str());
                    tracing::warn!(%peer, reason, "admin caller refused during the TLS handshake");
                    return;
                }
            };
            let allowed = match &accepted.peer {
                Some(id) => tls.allowed.is_empty() || tls.allowed.contains(id),
                None => false,
            };
            let access = if allowed {
                Access::Full
            } else {
                tracing::warn!(%peer, caller = ?accepted.peer.as_ref().map(|id| id.as_str()), "admin caller not in admin.allowed_spiffe_ids");
                state.metrics.admin_refused(AdminRefusal::SpiffeId);
                Access::Refused("this SPIFFE ID is not in admin.allowed_spiffe_ids".into())
            };
            serve_http(accepted.stream, state, access).await;
        });
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` alone (`admin.metrics_address`), to anyone who
/// can connect: nothing there steers the proxy or names a caller.
pub async fn serve_scrape(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        tokio::spawn(serve_http(stream, state.clone(), Access::Scrape));
    }
}

/// After a failed accept (out of file descriptors, most often): log and pause briefly so the
/// loop does not spin while nothing can be accepted.
async fn accept_failed(error: &std::io::Error) {
    tracing::warn!(error = %error, "admin accept failed");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

#[cfg(test)]
mod tests;
