//! The TLS client config for origins: full verification against webpki roots plus
//! `upstream.ca`, ALPN offering h2 and http/1.1 (set by the connector).

use std::path::Path;
use std::sync::Arc;

use super::{TlsFileError, load_certs, provider};

/// Builds the origin-side TLS config. There is no way to turn verification off.
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| TlsFileError::Invalid {
                path: path.to_path_buf(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::Invalid {
            path: extra_ca.map(Path::to_path_buf).unwrap_or_default(),
            message: e.to_string(),
        })?
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    Ok(config)
}
