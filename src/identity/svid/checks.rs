//! The X.509 checks of an SVID and of a trust bundle entry (X.509-SVID §2, §3.1, §4.1, §4.3,
//! §5.2): parse the leaf, read its one SPIFFE ID, check its usage, name a failed chain's reason.

use rustls::CertificateError;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;

use super::verifier::SvidVerifierError;
use super::{SvidRejected, SvidRejection};
use crate::identity::{SpiffeId, SpiffeIdError};

pub(super) fn check_trust_domain_name(trust_domain: &str) -> Result<(), SvidVerifierError> {
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
pub(super) fn check_bundle_cert(der: &CertificateDer<'_>) -> Result<(), String> {
    let cert = parse_certificate(der).map_err(|r| r.detail().to_owned())?;
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

pub(super) fn parse_certificate<'a>(
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, SvidRejected> {
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
pub(super) fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidRejected> {
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
pub(super) fn check_leaf_usage(cert: &X509Certificate<'_>) -> Result<(), SvidRejected> {
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
pub(super) fn chain_rejection(err: &rustls::Error, id: &SpiffeId) -> SvidRejected {
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
