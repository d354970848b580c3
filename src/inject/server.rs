//! The webhook's HTTPS server: `POST /mutate` (AdmissionReview), `GET /healthz` and
//! `GET /readyz` (its own probes), `GET /metrics` (the trust-boundary exceptions taken,
//! `tollgate_injector_exceptions_total{exception}`). The serving certificate is re-read when its files change
//! (cert-manager or the chart rotate it), checked every [`RELOAD_EVERY`]; a broken pair keeps
//! the last good one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::boundary::Exception;
use super::review;
use super::settings::Settings;

/// How often the serving certificate's files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// The largest AdmissionReview accepted (the API server's own object limit is ~3 MiB).
const MAX_BODY: usize = 4 << 20;
/// A TLS handshake or a request head slower than this is cut off.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pods admitted with a trust-boundary rule waived, per [`Exception`] (in `Exception::ALL`
/// order): what `/metrics` reports, so a waiver is never silent.
#[derive(Debug, Default)]
pub struct ExceptionCounts([AtomicU64; Exception::ALL.len()]);

impl ExceptionCounts {
    /// One more admission took `exception`.
    pub fn add(&self, exception: Exception) {
        if let Some(i) = Exception::ALL.iter().position(|e| *e == exception) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition, every series present from start-up.
    pub fn exposition(&self) -> String {
        let mut text = String::from(
            "# HELP tollgate_injector_exceptions_total Pods admitted with a trust-boundary rule \
             waived by the tollgate.io/agent-exceptions annotation.\n\
             # TYPE tollgate_injector_exceptions_total counter\n",
        );
        for (exception, count) in Exception::ALL.iter().zip(&self.0) {
            text.push_str(&format!(
                "tollgate_injector_exceptions_total{{exception=\"{}\"}} {}\n",
                exception.as_str(),
                count.load(Ordering::Relaxed)
            ));
        }
        text
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub struct ServingCert {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl ServingCert {
    /// The TLS config, with the files' bytes it was built from.
    fn load(&self) -> Result<(Arc<rustls::ServerConfig>, Vec<u8>), String> {
        let fingerprint = self.fingerprint();
        let config = crate::tls::listener_server_config(&self.cert, &self.key, None)
            .map_err(|e| e.to_string())?;
        Ok((config, fingerprint))
    }

    /// The files' current bytes (empty when unreadable): a change means reload.
    fn fingerprint(&self) -> Vec<u8> {
        let mut bytes = std::fs::read(&self.cert).unwrap_or_default();
        bytes.extend(std::fs::read(&self.key).unwrap_or_default());
        bytes
    }
}

/// A webhook that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The serving certificate or key cannot be used.
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(String),
    /// The address cannot be bound.
    #[error("--listen {addr}: {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        message: String,
    },
}

/// Binds `listen` and loads the certificate, so start-up errors surface before serving.
pub async fn bind(
    listen: SocketAddr,
    cert: ServingCert,
) -> Result<(TcpListener, Arc<ArcSwap<rustls::ServerConfig>>, ServingCert), ServeError> {
    let (config, _) = cert.load().map_err(ServeError::Tls)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: listen,
            message: e.to_string(),
        })?;
    Ok((listener, Arc::new(ArcSwap::new(config)), cert))
}

/// Serves until the process is stopped.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    cert: ServingCert,
    settings: Arc<Settings>,
) {
    tokio::spawn(reload_loop(cert, tls.clone()));
    let counts = Arc::new(ExceptionCounts::default());
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = TlsAcceptor::from(tls.load_full());
        let settings = settings.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper::service::service_fn(move |request| {
                route(settings.clone(), counts.clone(), request)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn reload_loop(cert: ServingCert, tls: Arc<ArcSwap<rustls::ServerConfig>>) {
    let mut current = cert.fingerprint();
    let mut ticker = tokio::time::interval(RELOAD_EVERY);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if cert.fingerprint() == current {
            continue;
        }
        match cert.load() {
            Ok((config, fingerprint)) => {
                tls.store(config);
                current = fingerprint;
                tracing::info!(cert = %cert.cert.display(), "webhook serving certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook serving certificate changed but cannot be used; keeping the last good one");
                // Retry on every tick until the pair is usable again.
            }
        }
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn route(
    settings: Arc<Settings>,
    counts: Arc<ExceptionCounts>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz" | "/readyz") => {
            reply(StatusCode::OK, &b"{\"status\":\"ok\"}"[..])
        }
        (&Method::GET, "/metrics") => {
            let mut response = reply(StatusCode::OK, counts.exposition());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::POST, "/mutate") => {
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return Ok(reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &b"{\"error\":\"payload_too_large\",\"message\":\"an AdmissionReview is at most 4 MiB\"}"[..],
                    ));
                }
            };
            let answer = review::handle(&body, &settings);
            tracing::info!(pod = %answer.pod, outcome = %answer.outcome, "admission review");
            if !answer.exceptions.is_empty() {
                let names: Vec<&str> = answer.exceptions.iter().map(|e| e.as_str()).collect();
                tracing::warn!(
                    pod = %answer.pod,
                    exceptions = %names.join(","),
                    "pod admitted with trust-boundary exceptions (tollgate.io/agent-exceptions): \
                     its agent can step around tollgate"
                );
                for exception in &answer.exceptions {
                    counts.add(*exception);
                }
            }
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_REQUEST);
            reply(status, answer.body)
        }
        (_, "/mutate" | "/healthz" | "/readyz" | "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &b"{\"error\":\"method_not_allowed\"}"[..],
        ),
        _ => reply(StatusCode::NOT_FOUND, &b"{\"error\":\"not_found\"}"[..]),
    };
    Ok(response)
}
