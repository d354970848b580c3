//! Parsing and extension checks of X.509-SVIDs with rcgen-made certificates (the chain rules
//! get an openssl-made corpus in tests/svid_corpus.rs).

use super::*;
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;

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
