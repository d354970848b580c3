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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
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
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;

use super::{SpiffeId, SpiffeIdError};
use crate::tls::TlsFileError;

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
    fn new(reason: SvidRejection, detail: impl Into<String>) -> SvidRejected {
        SvidRejected {
            reason,
            claimed_id: None,
            detail: detail.into(),
        }
    }

    fn claiming(mut self, id: &SpiffeId) -> SvidRejected {
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
        let provider = crate::tls::provider();
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
    let certs = crate::tls::load_certs(path)?;
    for (i, cert) in certs.iter().enumerate() {
        check_bundle_cert(cert).map_err(|reason| TlsFileError::Invalid {
            path: path.to_path_buf(),
            message: format!("certificate #{}: {reason}", i + 1),
        })?;
    }
    Ok(certs)
}

fn check_trust_domain_name(trust_domain: &str) -> Result<(), SvidVerifierError> {
    let invalid = |reason: String| SvidVerifierError::InvalidTrustDomain {
        trust_domain: trust_domain.to_string(),
        reason,
    };
    let id =
        SpiffeId::parse(&format!("spiffe://{trust_domain}")).map_err(|e| invalid(e.to_string()))?;
    if !id.path().is_empty() {
        return Err(invalid("a trust domain name has no '/'".to_string()));
    }
    Ok(())
}

/// A bundle entry must be a CA: a leaf used as a trust anchor would let its holder (a mere
/// workload) mint any ID of the trust domain.
fn check_bundle_cert(der: &CertificateDer<'_>) -> Result<(), String> {
    let cert = parse_certificate(der).map_err(|r| r.detail)?;
    match cert.get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS) {
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) if bc.ca => Ok(()),
            ParsedExtension::BasicConstraints(_) => Err(not_ca()),
            _ => Err("its basicConstraints extension does not parse".to_string()),
        },
        Ok(None) => Err(not_ca()),
        Err(e) => Err(format!("its extensions are invalid: {e}")),
    }
}

fn not_ca() -> String {
    "not a CA certificate (basicConstraints CA:TRUE); a trust bundle holds a trust domain's \
     signing certificates"
        .to_string()
}

fn parse_certificate<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, SvidRejected> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok((rest, _)) if !rest.is_empty() => Err(SvidRejected::new(
            SvidRejection::MalformedCertificate,
            "trailing bytes after the certificate",
        )),
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(SvidRejected::new(
            SvidRejection::MalformedCertificate,
            format!("not a DER X.509 certificate: {e}"),
        )),
    }
}

/// X.509-SVID §2: exactly one URI SAN, and it is the SPIFFE ID. Other SAN types are allowed.
fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidRejected> {
    let malformed = |detail: String| SvidRejected::new(SvidRejection::MalformedCertificate, detail);
    let san = match cert.get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME) {
        Err(e) => return Err(malformed(format!("subjectAltName: {e}"))),
        Ok(None) => {
            return Err(SvidRejected::new(
                SvidRejection::NoUriSan,
                "no subjectAltName extension",
            ));
        }
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => san,
            _ => {
                return Err(malformed(
                    "the subjectAltName extension does not parse".into(),
                ));
            }
        },
    };
    let mut uris = san.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let Some(uri) = uris.next() else {
        return Err(SvidRejected::new(
            SvidRejection::NoUriSan,
            "the subjectAltName has no URI",
        ));
    };
    let extra = uris.count();
    if extra > 0 {
        return Err(SvidRejected::new(
            SvidRejection::MultipleUriSans,
            format!("{} URI SANs; an X.509-SVID has exactly one", extra + 1),
        ));
    }
    let id = SpiffeId::parse(uri).map_err(|e| match e {
        // `SPIFFE:` or `spiffe:` without `//` is a broken SPIFFE ID, not some other scheme.
        SpiffeIdError::WrongScheme if !has_spiffe_scheme(uri) => SvidRejected::new(
            SvidRejection::NotSpiffe,
            "the URI SAN's scheme is not spiffe",
        ),
        other => SvidRejected::new(SvidRejection::InvalidSpiffeId, other.to_string()),
    })?;
    if id.path().is_empty() {
        return Err(SvidRejected::new(
            SvidRejection::InvalidSpiffeId,
            "a leaf SVID's SPIFFE ID must have a path (X.509-SVID §3.1)",
        )
        .claiming(&id));
    }
    Ok(id)
}

fn has_spiffe_scheme(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("spiffe"))
}

/// X.509-SVID §4.1, §4.3, §5.2: a leaf is not a CA, has `digitalSignature`, and has neither
/// `keyCertSign` nor `cRLSign`. (Criticality of keyUsage is not enforced, like go-spiffe.)
fn check_leaf_usage(cert: &X509Certificate<'_>) -> Result<(), SvidRejected> {
    let malformed = |detail: String| SvidRejected::new(SvidRejection::MalformedCertificate, detail);
    match cert.get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS) {
        Err(e) => return Err(malformed(format!("basicConstraints: {e}"))),
        Ok(None) => {}
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(SvidRejected::new(
                    SvidRejection::CaAsLeaf,
                    "the leaf is a CA certificate (basicConstraints CA:TRUE)",
                ));
            }
            ParsedExtension::BasicConstraints(_) => {}
            _ => {
                return Err(malformed(
                    "the basicConstraints extension does not parse".into(),
                ));
            }
        },
    }
    let usage = match cert.get_extension_unique(&OID_X509_EXT_KEY_USAGE) {
        Err(e) => return Err(malformed(format!("keyUsage: {e}"))),
        Ok(None) => {
            return Err(SvidRejected::new(
                SvidRejection::BadKeyUsage,
                "no keyUsage extension; a leaf SVID must set digitalSignature",
            ));
        }
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::KeyUsage(usage) => usage,
            _ => return Err(malformed("the keyUsage extension does not parse".into())),
        },
    };
    if usage.key_cert_sign() || usage.crl_sign() {
        return Err(SvidRejected::new(
            SvidRejection::BadKeyUsage,
            "the leaf's keyUsage sets keyCertSign or cRLSign",
        ));
    }
    if !usage.digital_signature() {
        return Err(SvidRejected::new(
            SvidRejection::BadKeyUsage,
            "the leaf's keyUsage lacks digitalSignature",
        ));
    }
    Ok(())
}

/// Maps webpki's verdict (through rustls) to a reason. Time comes first in webpki's checks of
/// each certificate, so an expired leaf is `expired` even when its issuer is also unknown.
fn chain_rejection(err: &rustls::Error, id: &SpiffeId) -> SvidRejected {
    let reason = match err {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                SvidRejection::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                SvidRejection::NotYetValid
            }
            CertificateError::BadEncoding | CertificateError::UnhandledCriticalExtension => {
                SvidRejection::MalformedCertificate
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                SvidRejection::BadExtendedKeyUsage
            }
            _ => SvidRejection::UntrustedChain,
        },
        _ => SvidRejection::UntrustedChain,
    };
    // The inner CertificateError's text, without rustls' "invalid peer certificate: " prefix.
    let what = match err {
        rustls::Error::InvalidCertificate(e) => e.to_string(),
        other => other.to_string(),
    };
    let detail = match reason {
        SvidRejection::UntrustedChain => format!(
            "the chain does not verify against the {} bundle: {what}",
            id.trust_domain()
        ),
        _ => what,
    };
    SvidRejected::new(reason, detail).claiming(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };

    /// A test CA made with rcgen (the chain rules get an openssl-made corpus in
    /// tests/svid_corpus.rs; these tests pin the parsing and extension checks).
    struct Ca {
        der: CertificateDer<'static>,
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Leaf shape: SAN URIs (plus one DNS name when `dns`), CA flag, key usages, EKU.
    struct Leaf {
        uris: Vec<&'static str>,
        dns: bool,
        is_ca: bool,
        usages: Vec<KeyUsagePurpose>,
        client_auth: bool,
    }

    impl Leaf {
        fn svid(uri: &'static str) -> Leaf {
            Leaf {
                uris: vec![uri],
                dns: false,
                is_ca: false,
                usages: vec![KeyUsagePurpose::DigitalSignature],
                client_auth: true,
            }
        }

        fn issue(&self, by: &Ca) -> CertificateDer<'static> {
            self.issue_cert(by).der().clone()
        }

        fn issue_cert(&self, by: &Ca) -> rcgen::Certificate {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            for uri in &self.uris {
                params
                    .subject_alt_names
                    .push(SanType::URI((*uri).try_into().unwrap()));
            }
            if self.dns {
                params
                    .subject_alt_names
                    .push(SanType::DnsName("agent.example.org".try_into().unwrap()));
            }
            params.is_ca = if self.is_ca {
                IsCa::Ca(BasicConstraints::Unconstrained)
            } else {
                IsCa::ExplicitNoCa
            };
            params.key_usages = self.usages.clone();
            // rcgen's default validity spans 1975..4096; the time tests need a real window.
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(1);
            params.extended_key_usages = if self.client_auth {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            } else {
                vec![ExtendedKeyUsagePurpose::ServerAuth]
            };
            let key = KeyPair::generate().unwrap();
            params.signed_by(&key, &by.issuer).unwrap()
        }
    }

    fn verifier(domains: &[(&str, &Ca)]) -> SpiffeClientVerifier {
        let bundles: TrustBundles = domains
            .iter()
            .map(|(td, ca)| (td.to_string(), vec![ca.der.clone()]))
            .collect();
        SpiffeClientVerifier::new(&bundles, ClientAuthMode::Required).unwrap()
    }

    fn reason(v: &SpiffeClientVerifier, leaf: &CertificateDer<'_>) -> SvidRejection {
        v.verify_svid(leaf, &[], UnixTime::now())
            .unwrap_err()
            .reason()
    }

    #[test]
    fn accepts_valid_svid_and_returns_its_id() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let leaf = Leaf::svid("spiffe://example.org/ns/agents/sa/triage").issue(&ca);
        let id = v.verify_svid(&leaf, &[], UnixTime::now()).unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/agents/sa/triage");
        assert_eq!(peer_spiffe_id_from_certificates(&[leaf]), Some(id));
    }

    #[test]
    fn accepts_svid_with_extra_dns_san() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let mut leaf = Leaf::svid("spiffe://example.org/a");
        leaf.dns = true;
        assert!(
            v.verify_svid(&leaf.issue(&ca), &[], UnixTime::now())
                .is_ok()
        );
    }

    #[test]
    fn rejects_garbage_as_malformed_certificate() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert_eq!(reason(&v, &junk), SvidRejection::MalformedCertificate);
        let empty = CertificateDer::from(Vec::new());
        assert_eq!(reason(&v, &empty), SvidRejection::MalformedCertificate);
    }

    #[test]
    fn rejects_trailing_bytes_as_malformed_certificate() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let mut bytes = Leaf::svid("spiffe://example.org/a").issue(&ca).to_vec();
        bytes.push(0);
        let leaf = CertificateDer::from(bytes);
        assert_eq!(reason(&v, &leaf), SvidRejection::MalformedCertificate);
    }

    #[test]
    fn rejects_each_broken_san_rule() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let cases: [(Vec<&'static str>, SvidRejection); 10] = [
            (vec![], SvidRejection::NoUriSan),
            (
                vec!["spiffe://example.org/a", "spiffe://example.org/b"],
                SvidRejection::MultipleUriSans,
            ),
            (
                vec!["spiffe://example.org/a", "https://example.org/a"],
                SvidRejection::MultipleUriSans,
            ),
            (vec!["https://example.org/a"], SvidRejection::NotSpiffe),
            (vec!["urn:uuid:1234"], SvidRejection::NotSpiffe),
            (
                vec!["SPIFFE://example.org/a"],
                SvidRejection::InvalidSpiffeId,
            ),
            (
                vec!["spiffe://Example.org/a"],
                SvidRejection::InvalidSpiffeId,
            ),
            (
                vec!["spiffe://example.org:443/a"],
                SvidRejection::InvalidSpiffeId,
            ),
            (
                vec!["spiffe://example.org/a?x=1"],
                SvidRejection::InvalidSpiffeId,
            ),
            (vec!["spiffe://example.org"], SvidRejection::InvalidSpiffeId),
        ];
        for (uris, expected) in cases {
            let mut shape = Leaf::svid("spiffe://example.org/unused");
            shape.uris = uris.clone();
            shape.dns = uris.is_empty(); // keep a SAN extension, with no URI in it
            let leaf = shape.issue(&ca);
            assert_eq!(reason(&v, &leaf), expected, "{uris:?}");
            let claim = leaf_spiffe_id(&leaf).map_err(|r| r.reason());
            assert_eq!(claim, Err(expected), "{uris:?}");
        }
    }

    #[test]
    fn rejects_leaf_without_san_extension_as_no_uri_san() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let mut shape = Leaf::svid("spiffe://example.org/unused");
        shape.uris.clear();
        assert_eq!(reason(&v, &shape.issue(&ca)), SvidRejection::NoUriSan);
    }

    #[test]
    fn rejects_unknown_trust_domain() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let leaf = Leaf::svid("spiffe://elsewhere.test/a").issue(&ca);
        let err = v.verify_svid(&leaf, &[], UnixTime::now()).unwrap_err();
        assert_eq!(err.reason(), SvidRejection::UnknownTrustDomain);
        assert_eq!(
            err.claimed_id().map(SpiffeId::as_str),
            Some("spiffe://elsewhere.test/a")
        );
    }

    #[test]
    fn rejects_id_vouched_for_by_another_trust_domains_ca() {
        let example = ca("example.org");
        let other = ca("other.test");
        let v = verifier(&[("example.org", &example), ("other.test", &other)]);
        let forged = Leaf::svid("spiffe://example.org/admin").issue(&other);
        assert_eq!(reason(&v, &forged), SvidRejection::UntrustedChain);
        let genuine = Leaf::svid("spiffe://other.test/a").issue(&other);
        assert!(v.verify_svid(&genuine, &[], UnixTime::now()).is_ok());
    }

    #[test]
    fn rejects_ca_as_leaf() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let mut shape = Leaf::svid("spiffe://example.org/a");
        shape.is_ca = true;
        assert_eq!(reason(&v, &shape.issue(&ca)), SvidRejection::CaAsLeaf);
    }

    #[test]
    fn rejects_each_bad_key_usage() {
        use KeyUsagePurpose::*;
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        for usages in [
            vec![],
            vec![KeyEncipherment],
            vec![KeyCertSign],
            vec![DigitalSignature, KeyCertSign],
            vec![DigitalSignature, CrlSign],
        ] {
            let mut shape = Leaf::svid("spiffe://example.org/a");
            shape.usages = usages.clone();
            assert_eq!(
                reason(&v, &shape.issue(&ca)),
                SvidRejection::BadKeyUsage,
                "{usages:?}"
            );
        }
    }

    #[test]
    fn accepts_key_encipherment_and_key_agreement_beside_digital_signature() {
        use KeyUsagePurpose::*;
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let mut shape = Leaf::svid("spiffe://example.org/a");
        shape.usages = vec![DigitalSignature, KeyEncipherment, KeyAgreement];
        assert!(
            v.verify_svid(&shape.issue(&ca), &[], UnixTime::now())
                .is_ok()
        );
    }

    #[test]
    fn rejects_server_only_extended_key_usage() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let mut shape = Leaf::svid("spiffe://example.org/a");
        shape.client_auth = false;
        assert_eq!(
            reason(&v, &shape.issue(&ca)),
            SvidRejection::BadExtendedKeyUsage
        );
    }

    #[test]
    fn rejects_expired_and_not_yet_valid_at_the_handshake_time() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let leaf = Leaf::svid("spiffe://example.org/a").issue(&ca);
        let far_future = UnixTime::since_unix_epoch(std::time::Duration::from_secs(4_102_444_800));
        let far_past = UnixTime::since_unix_epoch(std::time::Duration::from_secs(946_684_800));
        let at = |now| v.verify_svid(&leaf, &[], now).unwrap_err().reason();
        assert_eq!(at(far_future), SvidRejection::Expired);
        assert_eq!(at(far_past), SvidRejection::NotYetValid);
    }

    #[test]
    fn rejection_travels_through_the_rustls_error_and_io_error() {
        let ca = ca("example.org");
        let v = verifier(&[("example.org", &ca)]);
        let leaf = Leaf::svid("spiffe://example.org:8443/a").issue(&ca);
        let err = v
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .unwrap_err();
        assert_eq!(
            rejection_of(&err).map(|r| r.reason()),
            Some(SvidRejection::InvalidSpiffeId)
        );
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert_eq!(
            rejection_of_io(&io).map(|r| r.reason()),
            Some(SvidRejection::InvalidSpiffeId)
        );
        let none = rustls::Error::NoCertificatesPresented;
        assert_eq!(
            rejection_of(&none).map(|r| r.reason()),
            Some(SvidRejection::NoCertificate)
        );
        assert_eq!(rejection_of(&rustls::Error::DecryptError), None);
        assert_eq!(rejection_of_io(&std::io::Error::other("reset")), None);
    }

    #[test]
    fn reports_mandatory_per_mode_and_no_root_hints() {
        let ca = ca("example.org");
        let bundles: TrustBundles = [("example.org".to_string(), vec![ca.der.clone()])].into();
        let required = SpiffeClientVerifier::new(&bundles, ClientAuthMode::Required).unwrap();
        let optional = SpiffeClientVerifier::new(&bundles, ClientAuthMode::Optional).unwrap();
        assert!(required.offer_client_auth() && required.client_auth_mandatory());
        assert!(optional.offer_client_auth() && !optional.client_auth_mandatory());
        assert!(required.root_hint_subjects().is_empty());
        assert!(!required.supported_verify_schemes().is_empty());
    }

    #[test]
    fn rejects_bad_bundle_configurations() {
        let ca = ca("example.org");
        let build = |bundles: TrustBundles| {
            SpiffeClientVerifier::new(&bundles, ClientAuthMode::Required).unwrap_err()
        };
        assert_eq!(
            build(TrustBundles::new()),
            SvidVerifierError::NoTrustDomains
        );
        for td in ["Example.org", "example.org/x", "", "example.org:443"] {
            let err = build([(td.to_string(), vec![ca.der.clone()])].into());
            assert!(
                matches!(err, SvidVerifierError::InvalidTrustDomain { .. }),
                "{td}: {err}"
            );
        }
        assert_eq!(
            build([("example.org".to_string(), vec![])].into()),
            SvidVerifierError::EmptyBundle {
                trust_domain: "example.org".into()
            }
        );
        let leaf = Leaf::svid("spiffe://example.org/a").issue(&ca);
        let err = build([("example.org".to_string(), vec![ca.der.clone(), leaf])].into());
        assert!(
            matches!(
                err,
                SvidVerifierError::BadBundleCertificate { index: 2, .. }
            ),
            "{err}"
        );
        let junk = CertificateDer::from(vec![1, 2, 3]);
        let err = build([("example.org".to_string(), vec![junk])].into());
        assert!(
            matches!(
                err,
                SvidVerifierError::BadBundleCertificate { index: 1, .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn loads_a_pem_bundle_and_rejects_a_leaf_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("example.org");
        let good = dir.path().join("bundle.pem");
        std::fs::write(&good, &ca.pem).unwrap();
        assert_eq!(load_bundle(&good).unwrap(), vec![ca.der.clone()]);

        let leaf = Leaf::svid("spiffe://example.org/a").issue_cert(&ca);
        let bad = dir.path().join("with-leaf.pem");
        std::fs::write(&bad, ca.pem.clone() + &leaf.pem()).unwrap();
        let err = load_bundle(&bad).unwrap_err().to_string();
        assert!(err.contains("with-leaf.pem") && err.contains("#2"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            load_bundle(&empty),
            Err(TlsFileError::NoCertificate { .. })
        ));
    }

    #[test]
    fn reason_names_are_distinct_snake_case() {
        let names: std::collections::BTreeSet<_> =
            SvidRejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), SvidRejection::ALL.len());
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }
}
