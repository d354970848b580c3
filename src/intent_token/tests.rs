//! Verification and key loading, rule by rule, with keys and tokens made in the test.

use jsonwebtoken::Algorithm;

use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const ISS: &str = "https://orchestrator.example.org";
const CALLER: &str = "spiffe://example.org/ns/agents/sa/triage";
const NOW: u64 = 1_800_000_000;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key with its public JWK (rcgen + ring: independent of the verifier's parsing).
struct TestKey {
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn ec_key(kid: &str) -> TestKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65);
    TestKey {
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
    }
}

fn ed_key(kid: &str) -> TestKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    TestKey {
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key_raw())}),
    }
}

fn claims() -> Value {
    json!({
        "iss": ISS, "sub": CALLER, "aud": "tollgate", "intent": "issues.read", "task": "t-42",
        "exp": NOW + 300, "iat": NOW, "scope": "issues:read",
        "delegation": ["spiffe://example.org/orchestrator"],
    })
}

fn sign(key: &TestKey, claims: &Value, kid: bool) -> String {
    let mut header = Header::new(key.alg);
    if kid {
        header.kid = key.jwk["kid"].as_str().map(str::to_string);
    }
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    issuers: IntentIssuers,
}

fn write_jwks(path: &PathBuf, keys: &[&Value]) {
    std::fs::write(path, json!({ "keys": keys }).to_string()).unwrap();
}

fn fixture(keys: &[&TestKey]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &keys.iter().map(|k| &k.jwk).collect::<Vec<_>>());
    let issuers = IntentIssuers::load(&[IssuerConfig {
        issuer: ISS.into(),
        jwks: path.clone(),
        audience: None,
    }])
    .unwrap();
    Fixture {
        _dir: dir,
        path,
        issuers,
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn caller() -> SpiffeId {
    SpiffeId::parse(CALLER).unwrap()
}

fn check(f: &Fixture, token: &str) -> Result<VerifiedIntent, TokenError> {
    f.issuers.verify(token, Some(&caller()), now())
}

#[test]
fn accepts_es256_and_eddsa_with_and_without_kid() {
    let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
    let f = fixture(&[&ec, &ed]);
    for key in [&ec, &ed] {
        for kid in [true, false] {
            let verified = check(&f, &sign(key, &claims(), kid)).unwrap();
            assert_eq!(verified.name, "issues.read");
            assert_eq!(verified.task.as_str(), "t-42");
            assert_eq!(verified.issuer, ISS);
            assert_eq!(
                verified.delegation[0].as_str(),
                "spiffe://example.org/orchestrator"
            );
            assert_eq!(verified.claims["scope"], "issues:read");
        }
    }
}

#[test]
fn accepts_token_merged_over_plain_headers() {
    let ec = ec_key("ec-1");
    let f = fixture(&[&ec]);
    let plain = Intent {
        name: Some("repos.delete".into()),
        purpose: Some("audit text".into()),
        ..Intent::default()
    };
    let intent = f
        .issuers
        .apply(&sign(&ec, &claims(), true), Some(&caller()), now(), plain)
        .unwrap();
    assert_eq!(intent.name.as_deref(), Some("issues.read"));
    assert_eq!(intent.task.as_deref(), Some("t-42"));
    assert_eq!(intent.purpose.as_deref(), Some("audit text"));
    assert!(intent.verified);
    assert_eq!(intent.issuer.as_deref(), Some(ISS));
    assert_eq!(intent.claims["sub"], CALLER);
}

#[test]
fn accepts_within_leeway_and_rejects_beyond() {
    let ec = ec_key("ec-1");
    let f = fixture(&[&ec]);
    let mut c = claims();
    c["exp"] = json!(NOW - 29);
    assert!(check(&f, &sign(&ec, &c, true)).is_ok());
    c["exp"] = json!(NOW - 30);
    assert_eq!(check(&f, &sign(&ec, &c, true)), Err(TokenError::Expired));
    let mut c = claims();
    c["nbf"] = json!(NOW + 30);
    assert!(check(&f, &sign(&ec, &c, true)).is_ok());
    c["nbf"] = json!(NOW + 31);
    assert_eq!(
        check(&f, &sign(&ec, &c, true)),
        Err(TokenError::NotYetValid)
    );
    let mut c = claims();
    c["iat"] = json!(NOW + 3600);
    assert_eq!(
        check(&f, &sign(&ec, &c, true)),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn rejects_none_and_hmac_before_key_lookup() {
    let ec = ec_key("ec-1");
    let f = fixture(&[&ec]);
    let body = b64(claims().to_string().as_bytes());
    for alg in [
        "none", "HS256", "HS384", "HS512", "ES384", "PS256", "RS512", "ES256K",
    ] {
        let header = b64(json!({"alg": alg, "kid": "ec-1"}).to_string().as_bytes());
        for sig in ["", "c2ln", "not base64!"] {
            let token = format!("{header}.{body}.{sig}");
            assert_eq!(check(&f, &token), Err(TokenError::AlgNotAllowed), "{alg}");
        }
    }
    // HS256 keyed with the issuer's public key, in every form an attacker might try.
    let public_forms = [
        ec.jwk.to_string(),
        ec.jwk["x"].as_str().unwrap().to_string(),
    ];
    for secret in public_forms {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(check(&f, &token), Err(TokenError::AlgNotAllowed));
    }
}

#[test]
fn rejects_key_of_another_type_even_with_its_kid() {
    let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
    let f = fixture(&[&ec]);
    // An EdDSA token naming the EC key's kid: no key may verify an algorithm it was not
    // loaded for.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ec-1".into());
    let token = jsonwebtoken::encode(&header, &claims(), &ed.encoding).unwrap();
    assert_eq!(check(&f, &token), Err(TokenError::UnknownKey));
}

#[test]
fn rejects_unknown_kid_and_foreign_key() {
    let (ec, other) = (ec_key("ec-1"), ec_key("ec-2"));
    let f = fixture(&[&ec]);
    assert_eq!(
        check(&f, &sign(&other, &claims(), true)),
        Err(TokenError::UnknownKey)
    );
    assert_eq!(
        check(&f, &sign(&other, &claims(), false)),
        Err(TokenError::BadSignature)
    );
    let mut impostor = ec_key("ec-1");
    impostor.jwk = ec.jwk.clone();
    assert_eq!(
        check(&f, &sign(&impostor, &claims(), true)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn rejects_tampered_claims() {
    let ec = ec_key("ec-1");
    let f = fixture(&[&ec]);
    let token = sign(&ec, &claims(), true);
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c["intent"] = json!("repos.delete");
    let forged = b64(c.to_string().as_bytes());
    parts[1] = &forged;
    assert_eq!(check(&f, &parts.join(".")), Err(TokenError::BadSignature));
}

#[test]
fn rejects_wrong_audience_subject_issuer() {
    let ec = ec_key("ec-1");
    let f = fixture(&[&ec]);
    let mut c = claims();
    c["aud"] = json!(["other", "api.github.com"]);
    assert_eq!(
        check(&f, &sign(&ec, &c, true)),
        Err(TokenError::WrongAudience)
    );
    c["aud"] = json!(["other", "tollgate"]);
    assert!(check(&f, &sign(&ec, &c, true)).is_ok());

    let token = sign(&ec, &claims(), true);
    let thief = SpiffeId::parse("spiffe://example.org/ns/agents/sa/other").unwrap();
    assert_eq!(
        f.issuers.verify(&token, Some(&thief), now()),
        Err(TokenError::SubjectMismatch)
    );
    assert_eq!(
        f.issuers.verify(&token, None, now()),
        Err(TokenError::SubjectMismatch)
    );

    let mut c = claims();
    c["iss"] = json!("https://evil.example");
    assert_eq!(
        check(&f, &sign(&ec, &c, true)),
        Err(TokenError::UnknownIssuer)
    );
    assert_eq!(
        IntentIssuers::none().verify(&token, Some(&caller()), now()),
        Err(TokenError::UnknownIssuer)
    );
}

#[test]
fn rejects_missing_and_invalid_claims() {
    let ec = ec_key("ec-1");
    let f = fixture(&[&ec]);
    for name in ["iss", "exp", "aud", "sub", "intent", "task"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(name);
        assert_eq!(
            check(&f, &sign(&ec, &c, true)),
            Err(TokenError::MissingClaim(name)),
            "{name}"
        );
    }
    let bad: [(&str, Value); 7] = [
        ("exp", json!("tomorrow")),
        ("nbf", json!(null)),
        ("aud", json!(7)),
        ("intent", json!("issues read")),
        ("task", json!("")),
        ("delegation", Value::from(vec!["spiffe://e.org/a"; 9])),
        ("delegation", json!(["https://e.org/a"])),
    ];
    for (name, value) in bad {
        let mut c = claims();
        c[name] = value;
        assert_eq!(
            check(&f, &sign(&ec, &c, true)),
            Err(TokenError::InvalidClaim(name)),
            "{name}"
        );
    }
}

#[test]
fn rejects_malformed_and_oversized() {
    let ec = ec_key("ec-1");
    let f = fixture(&[&ec]);
    let token = sign(&ec, &claims(), true);
    for bad in ["", "a.b", "a.b.c.d", "!!.e30.c2ln", &format!("{token}.")] {
        assert!(
            matches!(check(&f, bad), Err(TokenError::Malformed(_))),
            "{bad}"
        );
    }
    let crit = b64(json!({"alg": "ES256", "crit": ["exp"], "exp": 1})
        .to_string()
        .as_bytes());
    let (_, rest) = token.split_once('.').unwrap();
    assert!(matches!(
        check(&f, &format!("{crit}.{rest}")),
        Err(TokenError::Malformed(_))
    ));
    let mut c = claims();
    c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    assert_eq!(check(&f, &sign(&ec, &c, true)), Err(TokenError::TooLarge));
}

#[test]
fn rejects_jwks_with_unusable_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let ec = ec_key("ec-1");
    let mut p384 = ec.jwk.clone();
    p384["crv"] = json!("P-384");
    let mut private = ec.jwk.clone();
    private["d"] = json!("AAAA");
    let mut hs = ec.jwk.clone();
    hs["alg"] = json!("HS256");
    let mut enc = ec.jwk.clone();
    enc["use"] = json!("enc");
    let cases = [
        (
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            "keys[0]",
        ),
        (json!({"keys": [p384]}), "P-256"),
        (json!({"keys": [private]}), "private"),
        (json!({"keys": [hs]}), "HS256"),
        (json!({"keys": [enc]}), "\"enc\""),
        (json!({"keys": [ec.jwk, ec.jwk]}), "earlier key"),
        (json!({"keys": []}), "no keys"),
        (
            json!({"keys": [{"kty": "RSA", "n": b64(&[0xff; 128]), "e": "AQAB"}]}),
            "1024 bits",
        ),
        (json!([1]), "not a JWK Set"),
    ];
    for (jwks, needle) in cases {
        std::fs::write(&path, jwks.to_string()).unwrap();
        let errors = IntentIssuers::load(&[IssuerConfig {
            issuer: ISS.into(),
            jwks: path.clone(),
            audience: None,
        }])
        .err()
        .unwrap();
        let text = errors[0].to_string();
        assert_eq!(errors[0].key, "intent_tokens.issuers[0].jwks");
        assert!(
            text.contains(needle) && text.contains("jwks.json"),
            "{text}"
        );
    }
}

#[test]
fn rejects_duplicate_issuers_and_missing_file() {
    let ec = ec_key("ec-1");
    let f = fixture(&[&ec]);
    let config = IssuerConfig {
        issuer: ISS.into(),
        jwks: f.path.clone(),
        audience: None,
    };
    let missing = IssuerConfig {
        issuer: "other".into(),
        jwks: f.path.with_file_name("missing.json"),
        audience: Some(String::new()),
    };
    let errors = IntentIssuers::load(&[config.clone(), config, missing])
        .err()
        .unwrap();
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "intent_tokens.issuers[1].issuer",
            "intent_tokens.issuers[2].audience",
            "intent_tokens.issuers[2].jwks"
        ]
    );
}

#[test]
fn accepts_rotated_jwks_and_keeps_last_good_on_garbage() {
    let (old, new) = (ec_key("old"), ed_key("new"));
    let f = fixture(&[&old]);
    assert_eq!(f.issuers.reload_if_changed(), Ok(0));
    write_jwks(&f.path, &[&new.jwk]);
    assert_eq!(f.issuers.reload_if_changed(), Ok(1));
    assert!(check(&f, &sign(&new, &claims(), true)).is_ok());
    assert_eq!(
        check(&f, &sign(&old, &claims(), true)),
        Err(TokenError::UnknownKey)
    );

    std::fs::write(&f.path, "{ not json").unwrap();
    let errors = f.issuers.reload_if_changed().err().unwrap();
    assert!(errors[0].message.contains("jwks.json"), "{}", errors[0]);
    assert!(check(&f, &sign(&new, &claims(), true)).is_ok());
    // Reported once, not on every poll.
    assert_eq!(f.issuers.reload_if_changed(), Ok(0));
}

#[test]
fn accepts_sharing_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<IntentIssuers>();
    shared::<TokenError>();
}

#[test]
fn reasons_are_distinct() {
    let all = [
        TokenError::TooLarge,
        TokenError::Malformed(""),
        TokenError::AlgNotAllowed,
        TokenError::MissingClaim(""),
        TokenError::InvalidClaim(""),
        TokenError::UnknownIssuer,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongAudience,
        TokenError::SubjectMismatch,
    ];
    let reasons: std::collections::BTreeSet<_> = all.iter().map(TokenError::reason).collect();
    assert_eq!(reasons.len(), all.len());
    assert!(reasons.iter().all(|r| r.as_str().starts_with("token_")));
}
