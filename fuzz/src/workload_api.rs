//! Fuzz target `workload_api`: what a Workload API `X509SVIDResponse` carries into tollgate —
//! the SVID's certificate chain and key (DER), its trust domain's bundle and federated bundles
//! (DER) — through the parsers tollgate's source applies to each message (`spiffe::X509Svid`,
//! `spiffe::X509Bundle`, tollgate's own SVID checks on the leaf). The protobuf decoding itself
//! is private to the `spiffe` crate (generated `prost` code) and is not reachable from here.
//!
//! The input is a sequence of fields, each a 2-byte big-endian length and that many bytes:
//! chain, key, bundle, then (trust domain, bundle) pairs of federated bundles. Property: no
//! panic, whatever the agent sends.

use spiffe::{TrustDomain, X509Bundle, X509Svid};
use tollgate::identity::svid::leaf_spiffe_id;

/// Splits the input into length-prefixed fields (at most 16).
fn fields(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while out.len() < 16 && data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let take = len.min(rest.len());
        out.push(&rest[..take]);
        data = &rest[take..];
    }
    out
}

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let fields = fields(data);
    let field = |i: usize| fields.get(i).copied().unwrap_or_default();
    if let Ok(svid) = X509Svid::parse_from_der(field(0), field(1)) {
        if let Some(leaf) = svid.cert_chain().first() {
            let der = rustls::pki_types::CertificateDer::from(leaf.as_ref().to_vec());
            let _ = leaf_spiffe_id(&der);
        }
        let domain = svid.spiffe_id().trust_domain().clone();
        let _ = X509Bundle::parse_from_der(domain, field(2));
    }
    for pair in fields.get(3..).unwrap_or_default().chunks(2) {
        let [name, bundle] = pair else { continue };
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if let Ok(domain) = TrustDomain::new(name) {
            let _ = X509Bundle::parse_from_der(domain, bundle);
        }
    }
}
