//! Fuzz target `svid`: X.509-SVID verification (`tollgate::identity::svid`), DER and PEM. The
//! input is a PEM text or one DER certificate. The last certificate of a PEM input becomes the
//! trust bundle of `example.org`, the first is the leaf, the ones between are intermediates.
//! Properties: no panic; a chain the verifier accepts names an ID of `example.org`, the same
//! ID the leaf's URI SAN gives (`leaf_spiffe_id`).

use rustls::pki_types::{CertificateDer, UnixTime};
use tollgate::identity::svid::{
    ClientAuthMode, SpiffeClientVerifier, TrustBundles, leaf_spiffe_id,
    peer_spiffe_id_from_certificates,
};

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let _ = verify(data);
}

/// The ID the input's chain proves to the `example.org` bundle made of its last certificate,
/// checking the target's properties on the way.
pub fn verify(data: &[u8]) -> Option<String> {
    let mut certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &data[..])
        .take(8)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        certs.push(CertificateDer::from(data.to_vec()));
    }
    for cert in &certs {
        let _ = leaf_spiffe_id(cert);
    }
    let _ = peer_spiffe_id_from_certificates(&certs);
    let (anchor, chain) = certs.split_last()?;
    let (leaf, intermediates) = chain.split_first()?;
    let bundles = TrustBundles::from([("example.org".to_owned(), vec![anchor.clone()])]);
    let verifier = SpiffeClientVerifier::new(&bundles, ClientAuthMode::Required).ok()?;
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
    let id = verifier.verify_svid(leaf, intermediates, now).ok()?;
    assert_eq!(id.trust_domain(), "example.org");
    let claimed = leaf_spiffe_id(leaf).expect("an accepted leaf names its ID");
    assert_eq!(claimed, id);
    Some(id.as_str().to_owned())
}
