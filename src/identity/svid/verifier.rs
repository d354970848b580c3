//! [`SpiffeClientVerifier`]: the rustls client-certificate verifier that accepts only
//! X.509-SVIDs, each checked against the bundle of its own trust domain (the order of the
//! checks is in the parent module's documentation).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use super::checks::{
    chain_rejection, check_bundle_cert, check_leaf_usage, check_trust_domain_name,
    parse_certificate, spiffe_id_of,
};
use super::{SvidRejected, SvidRejection, TrustBundles};
use crate::identity::SpiffeId;

/// Whether a client without a certificate may finish the handshake (as anonymous). A client
/// that *does* present a certificate is verified, and refused if invalid, in both modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// No certificate, no connection (`client_auth: required`).
    Required,
    /// No certificate is allowed; [`peer_spiffe_id`] is then `None` (`client_auth: optional`).
    Optional,
}

/// Why a verifier could not be built from the given bundles (a configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidVerifierError {
    #[error("no trust bundle is configured: a SPIFFE verifier needs at least one trust domain")]
    NoTrustDomains,
    #[error("\"{trust_domain}\" is not a valid SPIFFE trust domain name: {reason}")]
    InvalidTrustDomain {
        trust_domain: String,
        reason: String,
    },
    #[error("the trust bundle of {trust_domain} holds no certificate")]
    EmptyBundle { trust_domain: String },
    #[error("certificate #{index} of the {trust_domain} bundle cannot be used: {reason}")]
    BadBundleCertificate {
        trust_domain: String,
        /// 1-based position in the bundle, as a user counts PEM blocks.
        index: usize,
        reason: String,
    },
    #[error("the trust bundle of {trust_domain} cannot be used: {reason}")]
    UnusableBundle {
        trust_domain: String,
        reason: String,
    },
}

/// A rustls client-certificate verifier that accepts only X.509-SVIDs, each checked against the
/// bundle of its own trust domain (see the module docs for the order of the checks).
///
/// Install it with `ServerConfig::builder_with_provider(..).with_client_cert_verifier(Arc::new(v))`.
/// A refused certificate fails the handshake with
/// `rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc<SvidRejected>)))`;
/// rustls then sends the `certificate_unknown` alert (the precise reason stays in our log, not
/// on the wire). It sends no CA names in its CertificateRequest (`root_hint_subjects` is empty),
/// so it does not advertise the configured trust domains.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    /// One webpki verifier per trust domain, each with only that domain's CAs as roots.
    domains: HashMap<String, Arc<dyn ClientCertVerifier>>,
    mode: ClientAuthMode,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// Builds the verifier; fails closed on an empty set, a badly named trust domain, an empty
    /// bundle, or a bundle entry that is not a parsable CA certificate.
    pub fn new(
        bundles: &TrustBundles,
        mode: ClientAuthMode,
    ) -> Result<SpiffeClientVerifier, SvidVerifierError> {
        if bundles.is_empty() {
            return Err(SvidVerifierError::NoTrustDomains);
        }
        let provider = crate::pki::provider();
        let mut domains = HashMap::with_capacity(bundles.len());
        for (trust_domain, certs) in bundles {
            check_trust_domain_name(trust_domain)?;
            if certs.is_empty() {
                return Err(SvidVerifierError::EmptyBundle {
                    trust_domain: trust_domain.clone(),
                });
            }
            let mut roots = RootCertStore::empty();
            for (i, cert) in certs.iter().enumerate() {
                let bad = |reason: String| SvidVerifierError::BadBundleCertificate {
                    trust_domain: trust_domain.clone(),
                    index: i + 1,
                    reason,
                };
                check_bundle_cert(cert).map_err(bad)?;
                roots
                    .add(cert.clone())
                    .map_err(|e| bad(format!("not a usable trust anchor: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .clear_root_hint_subjects()
                    .build()
                    .map_err(|e| SvidVerifierError::UnusableBundle {
                        trust_domain: trust_domain.clone(),
                        reason: e.to_string(),
                    })?;
            domains.insert(trust_domain.clone(), verifier);
        }
        Ok(SpiffeClientVerifier {
            domains,
            mode,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// The configured trust domains (unordered), for start-up logs.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// Whether a certificate-less client is refused.
    pub fn mode(&self) -> ClientAuthMode {
        self.mode
    }

    /// Verifies a presented chain (leaf first, then intermediates) at `now` and returns the
    /// SPIFFE ID it proves. This is the whole of [`ClientCertVerifier::verify_client_cert`],
    /// callable without a handshake (tests, a future non-TLS use).
    pub fn verify_svid(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidRejected> {
        let cert = parse_certificate(end_entity)?;
        let id = spiffe_id_of(&cert)?;
        let Some(domain) = self.domains.get(id.trust_domain()) else {
            return Err(SvidRejected::new(
                SvidRejection::UnknownTrustDomain,
                format!("no trust bundle for trust domain {}", id.trust_domain()),
            )
            .claiming(&id));
        };
        check_leaf_usage(&cert).map_err(|r| r.claiming(&id))?;
        domain
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| chain_rejection(&e, &id))?;
        Ok(id)
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuthMode::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.verify_svid(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(rejected) => {
                // debug only: the server logs the rejection once, with the peer's address.
                tracing::debug!(reason = rejected.reason().as_str(), "{rejected}");
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(rejected)),
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
