//! X.509-SVID verification of TLS client certificates, per the SPIFFE X.509-SVID
//! specification (§2, §3.1, §4.1, §4.3 and §5).
//!
//! This module owns deciding whether a client certificate chain proves a SPIFFE ID:
//! [`SpiffeClientVerifier`] is a rustls [`ClientCertVerifier`] that a TLS listener (or an
//! intercepted TLS flow) installs, and [`peer_spiffe_id`] reads the proven ID back after the
//! handshake. It does not own where trust bundles come from (config, Workload API), rotating
//! them, or counting and logging rejections: a rejection travels to the server inside the
//! handshake error (see [`rejection_of_io`]), because only the server knows the peer's address
//! and the listener.
//!
//! Why not rustls' `WebPkiClientVerifier` alone: it verifies the chain but knows nothing of
//! SPIFFE, and it would let a CA of *any* configured trust domain vouch for an ID of another.
//! Why not the `spiffe` crate: it never verifies a chain, and its peer-certificate parser skips
//! the leaf rules and lower-cases upper-case trust domains. So the checks are, in this order:
//!
//! 1. the leaf parses as X.509 (`malformed_certificate`);
//! 2. it has exactly one URI SAN (`no_uri_san`, `multiple_uri_sans`), whose scheme is `spiffe`
//!    (`not_spiffe`) and which is a valid SPIFFE ID with a path, by the strict
//!    [`SpiffeId::parse`] (`invalid_spiffe_id`);
//! 3. its trust domain is configured (`unknown_trust_domain`);
//! 4. the leaf is not a CA (`ca_as_leaf`) and its key usage has `digitalSignature` but neither
//!    `keyCertSign` nor `cRLSign` (`bad_key_usage`);
//! 5. the chain verifies, by webpki, against the bundle of *that* trust domain only, at the
//!    handshake's time and for client authentication (`expired`, `not_yet_valid`,
//!    `bad_extended_key_usage`, `untrusted_chain`).
//!
//! A required verifier also refuses a client that sends no certificate (`no_certificate`, raised
//! by rustls itself and recognised by [`rejection_of`]). Not enforced, like go-spiffe: keyUsage
//! criticality, serverAuth in the EKU, and the SPIFFE IDs of signing certificates.
//!
//! The ID is checked before the chain so that a cross-domain forgery (a CA of `other.test`
//! signing `spiffe://example.org/...`) is tried against `example.org`'s bundle and fails there.

mod checks;
mod verifier;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, OtherError};

use super::SpiffeId;
use crate::pki::TlsFileError;
use checks::{check_bundle_cert, parse_certificate, spiffe_id_of};
pub use verifier::{ClientAuthMode, SpiffeClientVerifier, SvidVerifierError};

/// The CA certificates of each trust domain, keyed by trust domain name (`example.org`): what a
/// verifier is built from. A bundle vouches only for IDs of its own trust domain.
pub type TrustBundles = BTreeMap<String, Vec<CertificateDer<'static>>>;

/// Why a client certificate was refused: a closed set, used as the `reason` label of
/// `tollgate_identity_rejections_total` and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SvidRejection {
    /// Client authentication is required and the peer sent no certificate.
    NoCertificate,
    /// The leaf (or an extension the checks read) is not valid DER X.509, or carries a critical
    /// extension webpki does not understand.
    MalformedCertificate,
    /// The leaf has no URI SAN.
    NoUriSan,
    /// The leaf has more than one URI SAN (SPIFFE X.509-SVID §2: MUST be rejected).
    MultipleUriSans,
    /// The URI SAN's scheme is not `spiffe`.
    NotSpiffe,
    /// The URI SAN is a `spiffe:` URI but not a valid leaf SPIFFE ID (upper-case trust domain,
    /// port, user info, query, fragment, bad segment, too long, or no path).
    InvalidSpiffeId,
    /// The ID's trust domain has no configured bundle.
    UnknownTrustDomain,
    /// The leaf is a CA certificate (basicConstraints CA:TRUE).
    CaAsLeaf,
    /// The leaf's key usage lacks `digitalSignature`, is absent, or sets `keyCertSign`/`cRLSign`.
    BadKeyUsage,
    /// The leaf's extended key usage does not allow client authentication.
    BadExtendedKeyUsage,
    /// The chain does not lead to a CA of the ID's own trust domain (unknown issuer, bad
    /// signature, unsupported algorithm, CA constraints broken).
    UntrustedChain,
    /// A certificate of the chain is past its notAfter.
    Expired,
    /// A certificate of the chain is before its notBefore.
    NotYetValid,
}

impl SvidRejection {
    /// Every reason, in a fixed order: lets the metrics layer pre-create each label value.
    pub const ALL: [SvidRejection; 13] = [
        SvidRejection::NoCertificate,
        SvidRejection::MalformedCertificate,
        SvidRejection::NoUriSan,
        SvidRejection::MultipleUriSans,
        SvidRejection::NotSpiffe,
        SvidRejection::InvalidSpiffeId,
        SvidRejection::UnknownTrustDomain,
        SvidRejection::CaAsLeaf,
        SvidRejection::BadKeyUsage,
        SvidRejection::BadExtendedKeyUsage,
        SvidRejection::UntrustedChain,
        SvidRejection::Expired,
        SvidRejection::NotYetValid,
    ];

    /// The stable snake_case name: the metric label value and the log field.
    pub fn as_str(self) -> &'static str {
        match self {
            SvidRejection::NoCertificate => "no_certificate",
            SvidRejection::MalformedCertificate => "malformed_certificate",
            SvidRejection::NoUriSan => "no_uri_san",
            SvidRejection::MultipleUriSans => "multiple_uri_sans",
            SvidRejection::NotSpiffe => "not_spiffe",
            SvidRejection::InvalidSpiffeId => "invalid_spiffe_id",
            SvidRejection::UnknownTrustDomain => "unknown_trust_domain",
            SvidRejection::CaAsLeaf => "ca_as_leaf",
            SvidRejection::BadKeyUsage => "bad_key_usage",
            SvidRejection::BadExtendedKeyUsage => "bad_extended_key_usage",
            SvidRejection::UntrustedChain => "untrusted_chain",
            SvidRejection::Expired => "expired",
            SvidRejection::NotYetValid => "not_yet_valid",
        }
    }
}

impl fmt::Display for SvidRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused client certificate: the closed reason plus what a log line needs. It is the
/// payload of the handshake error the verifier returns; get it back with [`rejection_of`] /
/// [`rejection_of_io`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidRejected {
    reason: SvidRejection,
    claimed_id: Option<SpiffeId>,
    detail: String,
}

impl SvidRejected {
    pub(super) fn new(reason: SvidRejection, detail: impl Into<String>) -> SvidRejected {
        SvidRejected {
            reason,
            claimed_id: None,
            detail: detail.into(),
        }
    }

    pub(super) fn claiming(mut self, id: &SpiffeId) -> SvidRejected {
        self.claimed_id = Some(id.clone());
        self
    }

    /// The closed reason (metric label).
    pub fn reason(&self) -> SvidRejection {
        self.reason
    }

    /// The SPIFFE ID the certificate *claimed*, when its URI SAN parsed. Not verified: log it
    /// as a claim, never use it as an identity. Safe to log (the strict parser admits only
    /// `[a-zA-Z0-9._-/:]`).
    pub fn claimed_id(&self) -> Option<&SpiffeId> {
        self.claimed_id.as_ref()
    }

    /// Human-readable detail for the log (never certificate bytes or raw SAN text).
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for SvidRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X.509-SVID rejected ({})", self.reason)?;
        if let Some(id) = &self.claimed_id {
            write!(f, " for claimed {id}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

impl std::error::Error for SvidRejected {}

/// The SPIFFE ID of a connection's client, re-read from its leaf certificate (one parse).
///
/// Only meaningful on a connection whose handshake was verified by a [`SpiffeClientVerifier`]:
/// this function checks nothing but the URI SAN, so on any other connection it would return an
/// unverified claim. `None` when the client sent no certificate (optional mode) or before the
/// handshake completed. A resumed session reports the certificate of its original handshake.
pub fn peer_spiffe_id(conn: &rustls::ServerConnection) -> Option<SpiffeId> {
    peer_spiffe_id_from_certificates(conn.peer_certificates()?)
}

/// Like [`peer_spiffe_id`], from `peer_certificates()` (leaf first) — for code that holds the
/// chain rather than the connection. Same caveat: only for chains this verifier accepted.
pub fn peer_spiffe_id_from_certificates(chain: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    leaf_spiffe_id(chain.first()?).ok()
}

/// The SPIFFE ID named by a leaf's single URI SAN, with the SAN and ID rules of X.509-SVID §2
/// and §3.1 (one URI SAN, a valid ID with a path) but *no* chain, time or usage check: a claim,
/// not a proof.
pub fn leaf_spiffe_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidRejected> {
    spiffe_id_of(&parse_certificate(leaf)?)
}

/// The SVID rejection carried by a rustls handshake error, if that is why it failed. A
/// certificate-less client refused by a required verifier maps to
/// [`SvidRejection::NoCertificate`]. Other errors (protocol, I/O) return `None`.
pub fn rejection_of(err: &rustls::Error) -> Option<SvidRejected> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<SvidRejected>().cloned()
        }
        rustls::Error::NoCertificatesPresented => Some(SvidRejected::new(
            SvidRejection::NoCertificate,
            "client authentication is required and the client sent no certificate",
        )),
        _ => None,
    }
}

/// [`rejection_of`] for the `io::Error` that `tokio_rustls::TlsAcceptor::accept` returns (it
/// wraps the `rustls::Error`): the server's accept path calls this to count
/// `tollgate_identity_rejections_total{reason}` and log the refusal with the peer's address.
pub fn rejection_of_io(err: &std::io::Error) -> Option<SvidRejected> {
    rejection_of(err.get_ref()?.downcast_ref::<rustls::Error>()?)
}

/// Reads a trust bundle from a PEM file: at least one certificate, each a parsable CA
/// certificate (basicConstraints CA:TRUE). Errors name the file, never its contents.
pub fn load_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = crate::pki::load_certs(path)?;
    for (i, cert) in certs.iter().enumerate() {
        check_bundle_cert(cert).map_err(|reason| TlsFileError::Invalid {
            path: path.to_path_buf(),
            message: format!("certificate #{}: {reason}", i + 1),
        })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
