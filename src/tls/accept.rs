//! The TLS handshake with a client, in one place for every way in: a TLS listener, the TLS
//! inside an intercepted CONNECT tunnel, the admin listener (and, later, a transparent listener
//! sniffing TLS).
//!
//! The ClientHello is read first ([`LazyConfigAcceptor`]), so the caller picks the server
//! config knowing the SNI — a listener's own config, or a leaf minted for the tunnel's host.
//! The whole handshake is bounded by one deadline. A failure is a [`HandshakeFailure`];
//! [`accept_agent`] also counts it (`tollgate_tls_handshake_errors_total{side="agent"}`, and
//! `tollgate_identity_rejections_total{reason}` for a refused SVID) and logs it once, so no way
//! in can forget to.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::identity::SpiffeId;
use crate::identity::svid::{SvidRejected, peer_spiffe_id, rejection_of_io};
use crate::telemetry::metrics::Metrics;

/// A completed handshake.
pub struct Accepted<IO> {
    /// The decrypted stream.
    pub stream: TlsStream<IO>,
    /// The SNI the client sent, lower-cased.
    pub sni: Option<String>,
    /// The SPIFFE ID of the client's verified X.509-SVID (only meaningful when the config's
    /// verifier is an SVID verifier; `None` without a client certificate).
    pub peer: Option<SpiffeId>,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    /// The client's certificate is not an acceptable X.509-SVID (or it sent none when one is
    /// required).
    #[error("{0}")]
    Rejected(SvidRejected),
    /// The handshake failed otherwise (protocol, I/O).
    #[error("{0}")]
    Failed(std::io::Error),
    /// The deadline passed first.
    #[error("the TLS handshake did not finish in time")]
    TimedOut,
    /// The caller declined the ClientHello (it logged why).
    #[error("the ClientHello was declined")]
    Declined,
}

impl HandshakeFailure {
    /// The refused SVID, if that is why.
    pub fn rejection(&self) -> Option<&SvidRejected> {
        match self {
            HandshakeFailure::Rejected(rejected) => Some(rejected),
            _ => None,
        }
    }
}

/// Runs a handshake with a client within `timeout`; `config` picks the server config from the
/// ClientHello, or declines it (and logs why) with `Err(())`. Counts and logs nothing: see
/// [`accept_agent`].
pub async fn accept<IO>(
    io: IO,
    timeout: Duration,
    config: impl FnOnce(&ClientHello<'_>) -> Result<Arc<rustls::ServerConfig>, ()>,
) -> Result<Accepted<IO>, HandshakeFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let start =
        match tokio::time::timeout_at(deadline, LazyConfigAcceptor::new(Acceptor::default(), io))
            .await
        {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => return Err(HandshakeFailure::Failed(e)),
            Err(_) => return Err(HandshakeFailure::TimedOut),
        };
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_ascii_lowercase);
    let config = config(&hello).map_err(|()| HandshakeFailure::Declined)?;
    let stream = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(match rejection_of_io(&e) {
                Some(rejected) => HandshakeFailure::Rejected(rejected),
                None => HandshakeFailure::Failed(e),
            });
        }
        Err(_) => return Err(HandshakeFailure::TimedOut),
    };
    let peer = peer_spiffe_id(stream.get_ref().1);
    Ok(Accepted { stream, sni, peer })
}

/// Whether the agent ended the handshake with an `unknown_ca` alert: it does not trust the
/// certificate's issuer.
fn refused_as_unknown_ca(error: &std::io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA
        ))
    )
}

/// [`accept`] for an agent: every failure is counted in
/// `tollgate_tls_handshake_errors_total{side="agent"}` and logged here (a declined ClientHello
/// only counted: the caller logged why), with the connection's span (listener, peer) and `host`
/// when the handshake is inside a tunnel. `intercept_ca` is the interception CA's certificate
/// file when tollgate presents a leaf it minted: an agent that refuses it (`UnknownCA`) is
/// told, at WARN, which file to trust, and counted in `tollgate_tls_agent_unknown_ca_total`.
pub async fn accept_agent<IO>(
    io: IO,
    timeout: Duration,
    metrics: &Metrics,
    host: Option<&str>,
    intercept_ca: Option<&std::path::Path>,
    config: impl FnOnce(&ClientHello<'_>) -> Result<Arc<rustls::ServerConfig>, ()>,
) -> Result<Accepted<IO>, HandshakeFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let failure = match accept(io, timeout, config).await {
        Ok(accepted) => return Ok(accepted),
        Err(failure) => failure,
    };
    let host = host.unwrap_or("");
    match &failure {
        // The caller logged why (e.g. an SNI that is not the CONNECT host: domain fronting);
        // counted like any other refused handshake.
        HandshakeFailure::Declined => {}
        HandshakeFailure::Rejected(rejected) => {
            metrics.identity_rejected(rejected.reason());
            tracing::warn!(host, reason = rejected.reason().as_str(), "{rejected}");
            tracing::info!(host, error = %failure, "TLS handshake with agent failed");
        }
        HandshakeFailure::Failed(e) if refused_as_unknown_ca(e) => match intercept_ca {
            Some(ca) => {
                metrics.agent_unknown_ca();
                tracing::warn!(
                    host,
                    ca = %ca.display(),
                    "the agent does not trust the interception CA (UnknownCA): give it this CA file (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE)"
                );
            }
            None => {
                tracing::warn!(host, error = %e, "the agent does not trust the listener's TLS certificate (UnknownCA)");
            }
        },
        HandshakeFailure::Failed(e) => {
            tracing::info!(host, error = %e, "TLS handshake with agent failed");
        }
        HandshakeFailure::TimedOut => {
            tracing::info!(host, "TLS handshake with agent timed out");
        }
    }
    metrics.agent_tls_error();
    Err(failure)
}
