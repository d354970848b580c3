//! Trust bundles and tollgate's own X.509-SVID from the SPIFFE Workload API
//! (`identity.workload_api`, e.g. `unix:///run/spire/sockets/agent.sock`).
//!
//! The client is the `spiffe` crate's [`X509Source`]: it opens the `FetchX509SVID` server stream
//! (gRPC over the unix socket, with the `workload.spiffe.io: true` metadata header), waits for the
//! first complete response, and then keeps the latest one current as the agent pushes rotations,
//! reconnecting with backoff when the stream breaks. Each `X509SVIDResponse` carries the SVIDs,
//! the bundle of their own trust domain and the bundles of federated trust domains, so one stream
//! gives both tollgate's SVID and every trust domain's X.509 bundle (this is also how go-spiffe's
//! `X509Source` works). The separate `FetchX509Bundles` stream is not consumed.
//!
//! When the agent withdraws permission (`PermissionDenied`), [`WorkloadApiSource::svid`] returns
//! `None` and [`WorkloadApiSource::bundles`] is empty until the agent authorizes the workload
//! again: trust is never kept after the agent revoked it. Malformed or over-limit updates are
//! ignored and the last good material stays in force (the crate's behaviour).
//!
//! **What was tested, and against what.** SPIRE cannot be installed on the machines this was
//! built on, so *nothing here has been tested against SPIRE itself*. `tests/workload_api.rs`
//! tests it against `tests/origins/workload_api_server.py`, a Python `grpcio` server whose stubs
//! are generated at test time from SPIFFE's published `workload.proto`
//! (`tests/origins/workload.proto`), listening on a unix socket and requiring the
//! `workload.spiffe.io` header as SPIRE does: first SVID and bundle, a rotated SVID pushed on the
//! open stream, then a federated trust domain added. JWT-SVIDs, CRLs, several SVIDs with hints,
//! permission withdrawal and reconnection after the agent restarts are not tested.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::X509Source;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::SpiffeId;
use super::svid::TrustBundles;

/// How long [`WorkloadApiSource::connect`] waits for the first SVID and bundles.
pub const INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the Workload API source could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    /// The endpoint is not a `unix://` URI with an absolute path.
    #[error("identity.workload_api: {0:?} is not a unix:///absolute/path endpoint")]
    Endpoint(String),
    /// The agent could not be reached, refused the workload, or sent nothing usable in time.
    #[error("identity.workload_api {endpoint}: {source}")]
    Source {
        /// The configured endpoint.
        endpoint: String,
        /// What the `spiffe` crate reported.
        #[source]
        source: spiffe::X509SourceError,
    },
}

/// A live Workload API connection: the current X.509 bundles and SVID, kept up to date by a
/// background task as the agent pushes updates. Dropping it stops the background work.
#[derive(Debug)]
pub struct WorkloadApiSource {
    source: X509Source,
    updates: watch::Receiver<u64>,
    forwarder: JoinHandle<()>,
}

/// Checks the `unix:///absolute/path` form SPEC §2 documents (the crate also accepts `tcp://`,
/// which SPIRE serves without any peer authentication; tollgate does not offer it).
fn check_endpoint(endpoint: &str) -> Result<(), WorkloadApiError> {
    match endpoint.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') && path.len() > 1 => Ok(()),
        _ => Err(WorkloadApiError::Endpoint(endpoint.to_string())),
    }
}

impl WorkloadApiSource {
    /// Connects to the agent at `endpoint` (`unix:///path/to/agent.sock`) and waits, at most
    /// [`INITIAL_SYNC_TIMEOUT`], for the first complete SVID + bundles response.
    pub async fn connect(endpoint: &str) -> Result<WorkloadApiSource, WorkloadApiError> {
        Self::connect_with_timeout(endpoint, INITIAL_SYNC_TIMEOUT).await
    }

    /// [`WorkloadApiSource::connect`] with another bound on the wait for the first response.
    pub async fn connect_with_timeout(
        endpoint: &str,
        timeout: Duration,
    ) -> Result<WorkloadApiSource, WorkloadApiError> {
        check_endpoint(endpoint)?;
        let source = X509Source::builder()
            .endpoint(endpoint)
            .initial_sync_timeout(timeout)
            .reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10))
            .build()
            .await
            .map_err(|source| WorkloadApiError::Source {
                endpoint: endpoint.to_string(),
                source,
            })?;
        let (tx, updates) = watch::channel(0u64);
        let mut crate_updates = source.updated();
        let forwarder = tokio::spawn(async move {
            // Ends when the source is shut down or dropped, or nobody listens any more.
            while crate_updates.changed().await.is_ok() {
                tx.send_modify(|n| *n = n.wrapping_add(1));
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(WorkloadApiSource {
            source,
            updates,
            forwarder,
        })
    }

    /// The current X.509 bundles, by trust domain name (`example.org`): the SVID's own trust
    /// domain and every federated one the agent sent. Empty if the agent withdrew permission.
    pub fn bundles(&self) -> TrustBundles {
        let mut bundles = TrustBundles::new();
        let Ok(context) = self.source.state().context() else {
            return bundles;
        };
        for (domain, bundle) in context.bundle_set().iter() {
            let certs = bundle
                .authorities()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect();
            bundles.insert(domain.as_str().to_string(), certs);
        }
        bundles
    }

    /// tollgate's own SVID: certificate chain (leaf first), PKCS#8 private key and SPIFFE ID.
    /// `None` when the agent sent none, it has expired, permission was withdrawn, or its ID
    /// is not a valid SPIFFE ID under tollgate's stricter rules (e.g. an upper-case trust
    /// domain, which the crate lower-cases silently).
    pub fn svid(
        &self,
    ) -> Option<(
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        SpiffeId,
    )> {
        let svid = self.source.state().svid().ok()?;
        let leaf_id = spiffe::cert::spiffe_id_from_der(svid.leaf().as_bytes()).ok()?;
        let id = SpiffeId::parse(&leaf_id.to_string()).ok()?;
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            svid.private_key().as_bytes().to_vec(),
        ));
        Some((chain, key, id))
    }

    /// A receiver whose value is bumped on every update the agent pushes after the first
    /// (SVID rotation, bundle change, withdrawal or recovery). Rebuild TLS configs on change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.updates.clone()
    }

    /// How many updates the agent pushed after the first: a value built from this source is
    /// rebuilt when it moves.
    pub fn version(&self) -> u64 {
        *self.updates.borrow()
    }

    /// Whether the connection is running and holds an unexpired SVID.
    pub fn is_healthy(&self) -> bool {
        self.source.is_healthy()
    }

    /// Stops the background work and closes the stream (bounded by `timeout`).
    pub async fn shutdown(self, timeout: Duration) {
        self.forwarder.abort();
        if let Err(e) = self.source.shutdown_with_timeout(timeout).await {
            tracing::warn!(error = %e, "identity.workload_api: shutdown did not finish cleanly");
        }
    }
}

impl Drop for WorkloadApiSource {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_must_be_an_absolute_unix_path() {
        assert!(check_endpoint("unix:///run/spire/agent.sock").is_ok());
        for bad in [
            "",
            "unix://",
            "unix:///",
            "unix:relative.sock",
            "unix://relative.sock",
            "tcp://127.0.0.1:8081",
            "/run/spire/agent.sock",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn connect_to_a_missing_socket_fails_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoint = format!("unix://{}/nothing.sock", dir.path().display());
        let started = std::time::Instant::now();
        let result =
            WorkloadApiSource::connect_with_timeout(&endpoint, Duration::from_millis(500)).await;
        assert!(matches!(result, Err(WorkloadApiError::Source { .. })));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
