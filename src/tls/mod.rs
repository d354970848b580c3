//! TLS: the handshake with clients ([`accept`]), listener TLS ([`listener`]), certificate
//! authorities ([`ca`]), interception ([`intercept`]) and the origin side ([`upstream`]).
//!
//! One crypto provider (ring) is used everywhere ([`crate::pki`]); it is installed as the
//! process default at start-up (see [`install_crypto_provider`]) so no builder can pick
//! another.

pub mod accept;
pub mod ca;
pub mod intercept;
pub mod listener;
pub mod upstream;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::pki::{TlsFileError, install_crypto_provider, load_certs, load_key, provider};
pub use accept::{Accepted, HandshakeFailure, accept, accept_agent};
pub use listener::{ListenerTls, client_verifier, listener_tls};

/// Server config for a TLS listener ("HTTPS proxy"): the agent speaks HTTP/1.1 to the proxy.
/// With a `client_verifier`, agents authenticate with X.509-SVIDs.
pub fn listener_server_config(
    cert: &Path,
    key: &Path,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    server_config_from_der(chain, key_der, client_verifier).map_err(|message| {
        TlsFileError::Invalid {
            path: key.to_path_buf(),
            message,
        }
    })
}

/// Server config from a certificate chain and key in memory (tollgate's own SVID from the
/// Workload API), with an optional SVID client verifier.
pub fn server_config_from_der(
    chain: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
