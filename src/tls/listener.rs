//! The TLS configuration of a listener (and of the admin listener): its certificate (files, or
//! tollgate's own SVID from the Workload API), the SVID verifier its `client_auth` asks for,
//! and — for a proxy listener that verifies SVIDs — the verifier used again inside intercepted
//! tunnels. Built at start-up and rebuilt, whole, when a file or the trust bundles change.

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;

use crate::config::{ClientAuth, KeyPairPaths};
use crate::identity::svid::{
    ClientAuthMode, SpiffeClientVerifier, SvidVerifierError, TrustBundles,
};
use crate::identity::workload_api::WorkloadApiSource;

/// A listener's TLS, as one value that is replaced whole.
pub struct ListenerTls {
    /// What new handshakes on the listener use.
    pub server: Arc<rustls::ServerConfig>,
    /// With `client_auth` optional or required: the SVID verifier (optional mode) that also
    /// asks for an SVID inside intercepted TLS.
    pub inner_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// The SVID verifier for a `client_auth` mode (`none`: no client certificates asked).
pub fn client_verifier(
    bundles: &TrustBundles,
    mode: ClientAuth,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, SvidVerifierError> {
    let mode = match mode {
        ClientAuth::None => return Ok(None),
        ClientAuth::Optional => ClientAuthMode::Optional,
        ClientAuth::Required => ClientAuthMode::Required,
    };
    Ok(Some(Arc::new(SpiffeClientVerifier::new(bundles, mode)?)))
}

/// Builds a listener's TLS from its certificate `files` (or, without them, tollgate's own SVID
/// from the Workload API) and the trust bundles in force. `inner`: also build the verifier for
/// the TLS inside intercepted tunnels (proxy listeners with `client_auth`).
pub fn listener_tls(
    files: Option<&KeyPairPaths>,
    workload_api: Option<&WorkloadApiSource>,
    bundles: &TrustBundles,
    client_auth: ClientAuth,
    inner: bool,
) -> Result<ListenerTls, String> {
    let verifier = client_verifier(bundles, client_auth).map_err(|e| e.to_string())?;
    let server = match (files, workload_api) {
        (Some(files), _) => super::listener_server_config(&files.cert, &files.key, verifier)
            .map_err(|e| e.to_string())?,
        (None, Some(source)) => {
            let (chain, key, _id) = source
                .svid()
                .ok_or_else(|| "the Workload API has no SVID for tollgate".to_string())?;
            super::server_config_from_der(chain, key, verifier)?
        }
        (None, None) => {
            return Err("no certificate: neither tls files nor identity.workload_api".into());
        }
    };
    let inner_verifier = match (inner, client_auth) {
        (false, _) | (true, ClientAuth::None) => None,
        (true, _) => client_verifier(bundles, ClientAuth::Optional).map_err(|e| e.to_string())?,
    };
    Ok(ListenerTls {
        server,
        inner_verifier,
    })
}
