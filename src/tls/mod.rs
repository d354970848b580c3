//! TLS: PEM loading, certificate authorities, interception, and the TLS configs of each side.
//!
//! One crypto provider (ring) is used everywhere; it is installed as the process default at
//! start-up (see [`install_crypto_provider`]) so no builder can pick another.

pub mod ca;
pub mod intercept;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file that could not be used; names the file, never its contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key (PKCS#8, SEC1 or PKCS#1)")]
    NoKey { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Installs ring as rustls' process-wide provider; idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider every config in tollgate is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (a chain or a bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|e| TlsFileError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsFileError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|e| TlsFileError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsFileError::NoKey {
        path: path.to_path_buf(),
    })
}

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
