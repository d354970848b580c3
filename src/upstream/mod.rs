//! The origin side: resolution with the private-address guard, a pooled HTTP/1.1 + HTTP/2
//! client with verified TLS, and raw TCP for `mode: tunnel`.
//!
//! hyper-util's pool is keyed by scheme and authority and multiplexes HTTP/2 when the origin
//! negotiates it by ALPN. Its pool sits behind one `Mutex`, taken on every checkout and return,
//! so each worker thread gets its own client (and pool), built lazily from the shared connector:
//! no lock is shared between workers on the request path.

pub mod resolve;

use std::cell::RefCell;
use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::Incoming;

use crate::kill::flows::UploadBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;

use crate::config::UpstreamConfig;
use crate::per_thread::{self, OwnerId};
use crate::tls::TlsFileError;
pub use resolve::{GuardedResolver, PinnedResolver, ResolveError};

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;
type OriginClient = Client<Connector, UploadBody>;
type PinnedClient = Client<hyper_rustls::HttpsConnector<HttpConnector<PinnedResolver>>, UploadBody>;

/// How many pinned clients (one per original destination address) are kept.
const PINNED_CLIENTS: usize = 1024;

thread_local! {
    /// This worker thread's client, and the `Upstream` it was built for.
    static THREAD_CLIENT: per_thread::Slot<OriginClient> = const { RefCell::new(None) };
}

/// Why a call to an origin failed; each maps to one status and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("cannot connect to the origin: {0}")]
    Connect(String),
    #[error("origin TLS failed: {0}")]
    Tls(String),
    #[error("the origin did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the origin broke the protocol: {0}")]
    Protocol(String),
}

/// The origin side: connector and settings shared, clients per worker thread.
pub struct Upstream {
    id: OwnerId,
    connector: Connector,
    /// The resolver the target stage uses, shared with the connector.
    pub resolver: GuardedResolver,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// The origin TLS configuration, for the pinned clients' connectors.
    tls: rustls::ClientConfig,
    /// Clients whose every connection goes to one address (transparent connections), by
    /// address; each pools by scheme and authority like the main client.
    pinned: quick_cache::sync::Cache<IpAddr, PinnedClient>,
}

impl Upstream {
    /// Builds the connector from `upstream` configuration.
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, TlsFileError> {
        let resolver = GuardedResolver::new(config.allow_private.clone());
        let mut http = HttpConnector::new_with_resolver(resolver.clone());
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let tls = crate::tls::upstream::client_config(config.ca.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Upstream {
            id: OwnerId::new(),
            connector,
            resolver,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            tls,
            pinned: quick_cache::sync::Cache::new(PINNED_CLIENTS),
        })
    }

    /// The client whose connections all go to `ip` (built on first use, then kept).
    fn pinned_client(&self, ip: IpAddr) -> PinnedClient {
        if let Some(client) = self.pinned.get(&ip) {
            return client;
        }
        let mut http = HttpConnector::new_with_resolver(PinnedResolver(ip));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        self.pinned.insert(ip, client.clone());
        client
    }

    /// Like [`Self::send`], but every connection goes to `ip` whatever the URI's host resolves
    /// to (TLS is still verified for the URI's host): a transparent connection's requests,
    /// which may go only to the address the agent dialled.
    pub async fn send_pinned(
        &self,
        request: http::Request<UploadBody>,
        ip: IpAddr,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let client = self.pinned_client(ip);
        match tokio::time::timeout(self.request_timeout, client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout(self.request_timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(&error, self.connect_timeout)),
        }
    }

    /// This thread's client (a cheap handle), built on first use.
    fn client(&self) -> OriginClient {
        let build = || {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .build(self.connector.clone())
        };
        per_thread::with(&THREAD_CLIENT, self.id, build, |client| client.clone())
    }

    /// The configured total time a call may take (response headers and streamed body).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends a request (absolute URI) and waits for the response head, bounded by the request
    /// timeout; the body streams afterwards.
    pub async fn send(
        &self,
        request: http::Request<UploadBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let client = self.client();
        match tokio::time::timeout(self.request_timeout, client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout(self.request_timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(&error, self.connect_timeout)),
        }
    }

    /// Opens a raw TCP connection for `mode: tunnel`, to the addresses already vetted.
    pub async fn connect_tcp(&self, ips: &[IpAddr], port: u16) -> Result<TcpStream, UpstreamError> {
        let mut last = UpstreamError::Connect("no address".into());
        for ip in ips {
            let addr = SocketAddr::new(*ip, port);
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = UpstreamError::Connect(e.to_string()),
                Err(_) => last = UpstreamError::Timeout(self.connect_timeout),
            }
        }
        Err(last)
    }
}

/// Maps a client error to what went wrong, by walking its source chain.
fn classify(error: &hyper_util::client::legacy::Error, connect_timeout: Duration) -> UpstreamError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    let mut io_timed_out = false;
    while let Some(current) = source {
        if let Some(resolve) = current.downcast_ref::<ResolveError>() {
            return UpstreamError::Resolve(resolve.clone());
        }
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return UpstreamError::Tls(tls.to_string());
        }
        // io::Errors nest (hyper-rustls wraps tokio-rustls' InvalidData error in an Other
        // error), and io::Error::source() skips the wrapped error itself: unwrap by hand.
        let mut io = current.downcast_ref::<std::io::Error>();
        while let Some(error) = io {
            if error.kind() == std::io::ErrorKind::TimedOut {
                io_timed_out = true;
            }
            let inner = error.get_ref();
            if let Some(tls) = inner.and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return UpstreamError::Tls(tls.to_string());
            }
            io = inner.and_then(|e| e.downcast_ref::<std::io::Error>());
        }
        source = current.source();
    }
    if io_timed_out {
        return UpstreamError::Timeout(connect_timeout);
    }
    let chain = error_chain(error);
    if error.is_connect() {
        UpstreamError::Connect(chain)
    } else {
        UpstreamError::Protocol(chain)
    }
}

/// "outer: inner: innermost" — errors from hyper say little at the top level.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}
