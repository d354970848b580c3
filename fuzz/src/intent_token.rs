//! Fuzz target `intent_token`: signed intent tokens (compact JWS) and the JWK sets they are
//! verified with (`tollgate::intent_token`). The first byte picks the mode: even, the rest is a
//! token verified against a fixed ES256 issuer; odd, the rest is a JWK set loaded as an
//! issuer's `jwks` file (then the fixed token is verified against it). Properties: no panic;
//! a token is accepted only if its signed part is exactly the fixed token's (the fuzzer holds
//! no private key, so anything else accepted would be a forgery).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate::identity::SpiffeId;
use tollgate::intent_token::{IntentIssuers, IssuerConfig};

/// The fixed issuer's public key (P-256, kid `fuzz-1`).
pub const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "fuzz-1", "alg": "ES256", "use": "sig", "x": "LVYqYX6d-wQ31mE6A4b7ucJBjo6JV9TXqf17FRiIMno", "y": "OOzX2baxZnRthbl0-4prn9K6s4uaQO3bYAijgNB4bM8"}]}"#;
/// A token the fixed issuer signed (`intent: files.read`, `task: t-1`, expires in 2100).
pub const TOKEN: &str = "eyJhbGciOiAiRVMyNTYiLCAia2lkIjogImZ1enotMSIsICJ0eXAiOiAiSldUIn0.eyJpc3MiOiAiaHR0cHM6Ly9pc3N1ZXIuZnV6eiIsICJzdWIiOiAic3BpZmZlOi8vZnV6ei50ZXN0L2FnZW50IiwgImF1ZCI6ICJ0b2xsZ2F0ZSIsICJleHAiOiA0MTAyNDQ0ODAwLCAiaWF0IjogMTcwMDAwMDAwMCwgImludGVudCI6ICJmaWxlcy5yZWFkIiwgInRhc2siOiAidC0xIn0.q41dIJpneGekLUp3fzMyhwAvHUG8SXuAv_VsGoV0a1vL-FH0WkXny2U83InDPdrbtEixSg1lUJBQNvQE5hbQSw";
const ISSUER: &str = "https://issuer.fuzz";
const CALLER: &str = "spiffe://fuzz.test/agent";

/// A file of this process's own in the temp folder.
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tollgate-fuzz-{}-{:?}-{name}",
        std::process::id(),
        std::thread::current().id()
    ))
}

fn issuers(jwks: &[u8]) -> Option<IntentIssuers> {
    let path = scratch("jwks.json");
    std::fs::write(&path, jwks).ok()?;
    IntentIssuers::load(&[IssuerConfig {
        issuer: ISSUER.into(),
        jwks: path,
        audience: None,
    }])
    .ok()
}

/// Whether the fixed issuer accepts `token` from the fixed caller (the oracle's premise: the
/// fixed token is accepted, so the target reaches the signature check and beyond).
pub fn fixed_issuer_accepts(token: &str) -> bool {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let caller = SpiffeId::parse(CALLER).ok();
    issuers(JWKS.as_bytes()).is_some_and(|i| i.verify(token, caller.as_ref(), now).is_ok())
}

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let caller = SpiffeId::parse(CALLER).ok();
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        let Some(issuers) = issuers(JWKS.as_bytes()) else {
            panic!("the fixed JWK set must load");
        };
        if issuers.verify(token, caller.as_ref(), now).is_ok() {
            let signed = |t: &str| t.rsplit_once('.').map(|(s, _)| s.to_owned());
            assert_eq!(
                signed(token),
                signed(TOKEN),
                "accepted a token the fixed key did not sign"
            );
        }
        let _ = issuers.verify(token, None, SystemTime::now());
    } else if let Some(issuers) = issuers(rest) {
        let _ = issuers.verify(TOKEN, caller.as_ref(), now);
    }
}
