//! TLS interception: a server config per destination host, with a leaf minted by the
//! interception CA and cached.
//!
//! Minting costs ≈ 70 µs (STACK-NOTES), so each host's config is made once and reused until the
//! leaf reaches half its lifetime. The cache is sharded and bounded; concurrent first requests
//! for one host mint once (the cache's placeholder makes other callers wait for the first). A
//! listener with `client_auth` gets a second config per host (asking for an SVID), built once
//! per verifier.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use quick_cache::sync::Cache;
use rustls::pki_types::PrivateKeyDer;

use super::ca::{CaError, SigningCa};

/// How long a minted leaf is valid.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Re-mint once a cached leaf is this old.
const LEAF_REFRESH: Duration = Duration::from_secs(3 * 24 * 3600);
/// Hosts whose configs are kept.
const CACHE_CAPACITY: usize = 10_000;

#[derive(Clone)]
struct CachedConfig {
    config: Arc<rustls::ServerConfig>,
    /// The leaf and its PKCS#8 key, to build configs that also ask for client certificates.
    leaf: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
    minted: Instant,
    /// The config that also asks for a client certificate, with the verifier it checks them
    /// against: built on the first tunnel of a listener with `client_auth`, reused until the
    /// listener's verifier is replaced (a trust bundle rotated).
    with_client_auth: Arc<ArcSwapOption<ClientAuthConfig>>,
}

/// A host's server config that asks for a client certificate, and the verifier it was built
/// with.
struct ClientAuthConfig {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    config: Arc<rustls::ServerConfig>,
}

/// Signs per-host leaves and hands out their TLS server configs.
pub struct InterceptAuthority {
    ca: SigningCa,
    /// The CA certificate file agents must trust (for the startup banner).
    pub ca_cert_path: PathBuf,
    cache: Cache<String, CachedConfig>,
    /// Leaves minted so far.
    mints: AtomicU64,
}

/// Why a host's TLS config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("cannot mint a certificate for {host}: {source}")]
    Mint { host: String, source: CaError },
    #[error("cannot build a TLS config for {host}: {message}")]
    Config { host: String, message: String },
}

impl InterceptAuthority {
    /// Uses the CA in `cert`/`key`.
    pub fn new(ca: SigningCa, ca_cert_path: PathBuf) -> InterceptAuthority {
        InterceptAuthority {
            ca,
            ca_cert_path,
            cache: Cache::new(CACHE_CAPACITY),
            mints: AtomicU64::new(0),
        }
    }

    /// Loads the configured interception CA.
    pub fn load(cert: &Path, key: &Path) -> Result<InterceptAuthority, CaError> {
        Ok(Self::new(SigningCa::load(cert, key)?, cert.to_path_buf()))
    }

    /// Loads the development CA from `state_dir`, creating it on first use.
    pub fn development(state_dir: &Path) -> Result<InterceptAuthority, CaError> {
        let cert = state_dir.join("intercept-ca.pem");
        let key = state_dir.join("intercept-ca-key.pem");
        if !cert.exists() || !key.exists() {
            let ca = SigningCa::generate("tollgate development interception CA")?;
            ca.save(&cert, &key)?;
        }
        Self::load(&cert, &key)
    }

    /// The TLS server config presenting a leaf for `host` (lower-case DNS name or IP).
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, InterceptError> {
        Ok(self.cached(host)?.config)
    }

    /// Like [`Self::server_config`], also asking the agent for a client certificate checked by
    /// `verifier` (for listeners with `tls.client_auth`). Built once per host and verifier from
    /// the cached leaf, and built again when the verifier changes (trust bundles rotated): not
    /// per tunnel, since building one parses the leaf's private key.
    pub fn server_config_with_client_auth(
        &self,
        host: &str,
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Result<Arc<rustls::ServerConfig>, InterceptError> {
        let cached = self.cached(host)?;
        if let Some(built) = &*cached.with_client_auth.load()
            && Arc::ptr_eq(&built.verifier, &verifier)
        {
            return Ok(built.config.clone());
        }
        let config_error = |message: String| InterceptError::Config {
            host: host.to_string(),
            message,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(
                vec![cached.leaf.clone()],
                PrivateKeyDer::Pkcs8(cached.key.clone().into()),
            )
            .map_err(|e| config_error(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        cached
            .with_client_auth
            .store(Some(Arc::new(ClientAuthConfig {
                verifier,
                config: config.clone(),
            })));
        Ok(config)
    }

    /// The host's cached config, minted when absent or due for refresh. Single flight:
    /// concurrent first CONNECTs to one host wait on the cache's placeholder for the one
    /// minting, instead of each minting a leaf.
    fn cached(&self, host: &str) -> Result<CachedConfig, InterceptError> {
        if let Some(cached) = self.cache.get(host) {
            if cached.minted.elapsed() < LEAF_REFRESH {
                return Ok(cached);
            }
            // Removed only while still the stale one: a fresh leaf another CONNECT just
            // minted stays.
            self.cache
                .remove_if(host, |c| c.minted.elapsed() >= LEAF_REFRESH);
        }
        self.cache.get_or_insert_with(host, || {
            self.mints.fetch_add(1, Ordering::Relaxed);
            self.mint(host)
        })
    }

    /// How many leaves this authority has minted (for tests of the single flight).
    pub fn leaves_minted(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    fn mint(&self, host: &str) -> Result<CachedConfig, InterceptError> {
        let (leaf, key) = self
            .ca
            .mint_server_leaf(host, LEAF_LIFETIME)
            .map_err(|source| InterceptError::Mint {
                host: host.to_string(),
                source,
            })?;
        let config_error = |message: String| InterceptError::Config {
            host: host.to_string(),
            message,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.clone()], PrivateKeyDer::Pkcs8(key.clone().into()))
            .map_err(|e| config_error(e.to_string()))?;
        // h2 first: agents that speak HTTP/2 get it inside the tunnel.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(CachedConfig {
            config: Arc::new(config),
            leaf,
            key,
            minted: Instant::now(),
            with_client_auth: Arc::new(ArcSwapOption::empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_one_config_per_host() {
        crate::tls::install_crypto_provider();
        let ca = SigningCa::generate("test").unwrap();
        let authority = InterceptAuthority::new(ca, PathBuf::from("ca.pem"));
        let a = authority.server_config("api.github.com").unwrap();
        let b = authority.server_config("api.github.com").unwrap();
        let c = authority.server_config("api.openai.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.alpn_protocols[0], b"h2");
    }

    /// Concurrent first CONNECTs to one host mint one leaf between them (single flight), and
    /// all get the same config.
    #[test]
    fn concurrent_first_requests_for_a_host_mint_once() {
        crate::tls::install_crypto_provider();
        let ca = SigningCa::generate("test").unwrap();
        let authority = Arc::new(InterceptAuthority::new(ca, PathBuf::from("ca.pem")));
        let start = Arc::new(std::sync::Barrier::new(8));
        let configs: Vec<_> = (0..8)
            .map(|_| {
                let (authority, start) = (authority.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    authority.server_config("api.example.test").unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(authority.leaves_minted(), 1);
        assert!(configs.iter().all(|c| Arc::ptr_eq(c, &configs[0])));
    }

    /// The config that asks for a client certificate is built once per host and verifier, and
    /// again (from the same leaf) when the verifier is replaced.
    #[test]
    fn the_client_auth_config_is_reused_until_the_verifier_changes() {
        crate::tls::install_crypto_provider();
        let ca = SigningCa::generate("test").unwrap();
        let authority = InterceptAuthority::new(ca, PathBuf::from("ca.pem"));
        let verifier = || -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
            let client_ca = SigningCa::generate("clients").unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(client_ca.cert_der.clone()).unwrap();
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                crate::pki::provider(),
            )
            .allow_unauthenticated()
            .build()
            .unwrap()
        };
        let (first_verifier, second_verifier) = (verifier(), verifier());
        let a = authority
            .server_config_with_client_auth("api.example.test", first_verifier.clone())
            .unwrap();
        let b = authority
            .server_config_with_client_auth("api.example.test", first_verifier)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = authority
            .server_config_with_client_auth("api.example.test", second_verifier)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let plain = authority.server_config("api.example.test").unwrap();
        assert!(!Arc::ptr_eq(&a, &plain));
        assert_eq!(authority.leaves_minted(), 1);
        assert_eq!(c.alpn_protocols[0], b"h2");
    }

    #[test]
    fn creates_the_development_ca_once() {
        let dir = tempfile::tempdir().unwrap();
        InterceptAuthority::development(dir.path()).unwrap();
        let first = std::fs::read(dir.path().join("intercept-ca.pem")).unwrap();
        InterceptAuthority::development(dir.path()).unwrap();
        let second = std::fs::read(dir.path().join("intercept-ca.pem")).unwrap();
        assert_eq!(first, second);
    }
}
