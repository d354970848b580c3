//! PKI plumbing that identity and TLS both build on: the one crypto provider (ring) and PEM
//! files read into DER. Errors name the file, never its contents.

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
