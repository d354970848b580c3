//! The admin listener (SPEC §7): health, readiness, metrics, reload, the kill switch, tasks,
//! recent decisions and the JWKS of `jwt` credentials. Bound to loopback (a non-loopback
//! address is refused at configuration time until admin mTLS exists).
//!
//! Every route answers JSON (`/metrics` excepted); errors carry `error` and `message`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::kill::KillSwitch;
use crate::telemetry::decision_log::{RECENT_CAPACITY, Recent};
use crate::telemetry::metrics::Metrics;

/// Largest admin request body read (kill requests are tiny).
const MAX_BODY: usize = 64 * 1024;
/// `GET /v1/decisions` without `limit`.
const DEFAULT_DECISIONS: usize = 100;

/// Readiness: listeners up and a policy loaded; false while draining.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the proxy ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Reloads configuration and policy (`POST /v1/reload`, SIGHUP).
pub trait Reload: Send + Sync {
    /// Reloads; `Ok(revision in force)` or `Err(why the running state was kept)`.
    fn reload(&self) -> Result<String, String>;
}

/// mTLS on the admin listener: who may call it.
pub struct AdminTls {
    /// Swapped when trust bundles rotate.
    pub config: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    /// SPIFFE IDs allowed to use the API (empty: any verified SVID).
    pub allowed: Vec<crate::identity::SpiffeId>,
}

/// What the admin routes read and steer.
pub struct AdminState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub kills: Arc<KillSwitch>,
    /// Credentials: tasks end here, kills drop cached tokens, the JWKS is served.
    pub credentials: Arc<arc_swap::ArcSwap<crate::credentials::CredentialStore>>,
    pub recent: Arc<Recent>,
    pub reloader: Arc<dyn Reload>,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"error": code, "message": message}))
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "admin request bodies are limited to 64 KiB",
        )),
    }
}

/// Runs a kill-switch handler (which may fsync) off the async workers.
async fn kill_call(
    state: &Arc<AdminState>,
    call: impl FnOnce(&KillSwitch) -> (StatusCode, Value) + Send + 'static,
) -> Response<Full<Bytes>> {
    let kills = state.kills.clone();
    let result = tokio::task::spawn_blocking(move || call(&kills)).await;
    state
        .metrics
        .kills_active
        .set(i64::try_from(state.kills.active()).unwrap_or(i64::MAX));
    match result {
        Ok((status, body)) => json_response(status, &body),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the kill switch failed",
        ),
    }
}

fn decisions(state: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut limit = DEFAULT_DECISIONS;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", value)) => match value.parse::<usize>() {
                Ok(n) if n >= 1 => limit = n.min(RECENT_CAPACITY),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "limit must be a whole number of at least 1",
                    );
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the only parameter is limit",
                );
            }
        }
    }
    let lines: Vec<Value> = state
        .recent
        .newest(limit)
        .iter()
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    json_response(StatusCode::OK, &json!({ "decisions": lines }))
}

/// After a kill is in force, the cached credentials it covers are dropped (and oauth2 tokens
/// revoked), so lifting the kill later means fresh tokens.
async fn drop_killed_credentials(state: &AdminState, response: &Response<Full<Bytes>>) {
    if !response.status().is_success() {
        return;
    }
    let Ok(body) = response.body().clone().collect().await;
    let target = serde_json::from_slice::<Value>(&body.to_bytes())
        .ok()
        .and_then(|v| {
            serde_json::from_value::<crate::kill::KillTarget>(v["kill"]["target"].clone()).ok()
        });
    if let Some(target) = target {
        let store = state.credentials.load_full();
        let (dropped, revoked) = store.drop_matching(&target).await;
        tracing::info!(%target, dropped, revoked, "kill: cached credentials dropped");
    }
}

async fn route(
    state: Arc<AdminState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_owned);
    let response = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            if state.health.is_ready() {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not ready"}),
                )
            }
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::POST, "/v1/reload") => {
            let reloader = state.reloader.clone();
            match tokio::task::spawn_blocking(move || reloader.reload()).await {
                Ok(Ok(revision)) => json_response(
                    StatusCode::OK,
                    &json!({"result": "success", "revision": revision}),
                ),
                Ok(Err(why)) => error(StatusCode::UNPROCESSABLE_ENTITY, "reload_failed", &why),
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "reload panicked",
                ),
            }
        }
        (&Method::GET, "/v1/kill") => kill_call(&state, |kills| kills.handle_list()).await,
        (&Method::POST, "/v1/kill") => match read_body(request).await {
            Ok(body) => {
                let response = kill_call(&state, move |kills| kills.handle_post(&body)).await;
                drop_killed_credentials(&state, &response).await;
                response
            }
            Err(response) => response,
        },
        (&Method::DELETE, p) if p == "/v1/kill" || p.starts_with("/v1/kill/") => {
            let rest = p["/v1/kill".len()..].to_string();
            match read_body(request).await {
                Ok(body) => kill_call(&state, move |kills| kills.handle_delete(&rest, &body)).await,
                Err(response) => response,
            }
        }
        (&Method::DELETE, p) if p.starts_with("/v1/tasks/") => {
            let task = &p["/v1/tasks/".len()..];
            let valid = !task.is_empty()
                && task.len() <= 128
                && task.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-')
                });
            if valid {
                let store = state.credentials.load_full();
                let (dropped, revoked) = store.end_task(task).await;
                tracing::info!(
                    task,
                    dropped,
                    revoked,
                    "task ended: its credentials were dropped and revoked"
                );
                json_response(
                    StatusCode::OK,
                    &json!({"task": task, "credentials_dropped": dropped, "credentials_revoked": revoked}),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "a task is 1..128 bytes of A-Z a-z 0-9 . _ : / -",
                )
            }
        }
        (&Method::GET, "/v1/decisions") => decisions(&state, query.as_deref()),
        (&Method::GET, "/.well-known/jwks.json") => {
            json_response(StatusCode::OK, state.credentials.load().jwks())
        }
        (
            _,
            "/healthz"
            | "/readyz"
            | "/metrics"
            | "/v1/reload"
            | "/v1/kill"
            | "/v1/decisions"
            | "/.well-known/jwks.json",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin route"),
    };
    Ok(response)
}

/// Answers every request of a caller that is not allowed.
async fn refuse(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    drop(request);
    Ok(error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this SPIFFE ID is not in admin.allowed_spiffe_ids",
    ))
}

async fn serve_http<IO>(io: IO, state: Arc<AdminState>, allowed: bool)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let io = TokioIo::new(io);
    let _ = if allowed {
        let service = hyper::service::service_fn(move |request| route(state.clone(), request));
        builder.serve_connection(io, service).await
    } else {
        builder
            .serve_connection(io, hyper::service::service_fn(refuse))
            .await
    };
}

/// Serves the admin API until the process stops; with `tls`, every caller must present an
/// X.509-SVID (verified against `identity.trust_domains`) and, when an allow-list is set, be on it.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, tls: Option<Arc<AdminTls>>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                serve_http(stream, state, true).await;
                return;
            };
            let accepted = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio_rustls::TlsAcceptor::from(tls.config.load_full()).accept(stream),
            )
            .await;
            let stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    let reason = crate::identity::svid::rejection_of_io(&e)
                        .map_or("tls_error", |r| r.reason().as_str());
                    if reason != "tls_error" {
                        state.metrics.identity_rejected(reason);
                    }
                    tracing::warn!(%peer, reason, "admin caller refused during the TLS handshake");
                    return;
                }
                Err(_) => return,
            };
            let caller = crate::identity::svid::peer_spiffe_id(stream.get_ref().1);
            let allowed = match &caller {
                Some(id) => tls.allowed.is_empty() || tls.allowed.contains(id),
                None => false,
            };
            if !allowed {
                tracing::warn!(%peer, caller = ?caller.as_ref().map(|id| id.as_str()), "admin caller not in admin.allowed_spiffe_ids");
            }
            serve_http(stream, state, allowed).await;
        });
    }
}
