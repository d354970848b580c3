//! OPA's `io.jwt.*` builtins (decode and verify), which regorus does not implement.
//!
//! Semantics follow OPA's (`topdown/tokens.go`), because a policy that `opa test` passes must
//! decide the same here:
//! - `io.jwt.decode(jwt)` → `[header, payload, signature_hex]`; a JWS in compact form of
//!   exactly three parts; a JWE header (`enc`) is refused; `cty: "JWT"` recurses into the
//!   payload (quotes trimmed).
//! - `io.jwt.verify_<alg>(jwt, key)` → bool. For asymmetric algorithms `key` is a PEM
//!   certificate, a PEM public key (nothing may follow the PEM block), or a JWK / JWK set; a
//!   key whose `kid` matches the header's is the only one tried, else every key whose `alg`
//!   is absent or equal to the header's. `verify_hs*` takes the shared secret.
//! - `io.jwt.decode_verify(jwt, constraints)` → `[valid, header, payload]`, `[false, {}, {}]`
//!   when the signature, `alg`, `iss`, `aud`, `exp` or `nbf` does not check out; exactly one
//!   of `cert` / `secret`; `time` in nanoseconds (default: now); unknown constraints refused.
//!
//! What cannot be answered (a malformed token, an unparsable key, a non-string operand) is an
//! error, which makes the call undefined (OPA's non-strict mode). Signatures are verified with
//! ring, except ES512 (P-521, which ring lacks): RustCrypto's `p521`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use regorus::Value;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey as X509PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::BuiltinError;

fn undefined(message: impl Into<String>) -> BuiltinError {
    BuiltinError::Undefined(message.into())
}

fn text<'a>(name: &str, args: &'a [Value], index: usize) -> Result<&'a str, BuiltinError> {
    match args.get(index) {
        Some(Value::String(s)) => Ok(s.as_ref()),
        _ => Err(undefined(format!(
            "{name}: operand {} must be a string",
            index + 1
        ))),
    }
}

/// Base64url as OPA decodes it: padding optional.
fn b64url(part: &str) -> Result<Vec<u8>, BuiltinError> {
    let trimmed = part.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE.decode(part))
        .map_err(|e| undefined(format!("JWT had invalid base64url encoding: {e}")))
}

/// A compact JWS split into its three encoded parts.
struct Token<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Token<'a> {
    fn split(jwt: &'a str) -> Result<Token<'a>, BuiltinError> {
        if !jwt.contains('.') {
            return Err(undefined("encoded JWT had no period separators"));
        }
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err(undefined(format!(
                "encoded JWT must have 3 sections, found {}",
                parts.len()
            )));
        };
        Ok(Token {
            header,
            payload,
            signature,
        })
    }

    fn header(&self) -> Result<Value, BuiltinError> {
        let bytes = b64url(self.header)?;
        let header = json_object(&bytes, "bad JWT header")?;
        if header["enc"] != Value::Undefined {
            return Err(undefined("JWT is a JWE object, which is not supported"));
        }
        Ok(header)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + self.payload.len() + 1);
        out.extend_from_slice(self.header.as_bytes());
        out.push(b'.');
        out.extend_from_slice(self.payload.as_bytes());
        out
    }
}

fn json_object(bytes: &[u8], what: &str) -> Result<Value, BuiltinError> {
    let text = std::str::from_utf8(bytes).map_err(|e| undefined(format!("{what}: {e}")))?;
    let value = Value::from_json_str(text).map_err(|e| undefined(format!("{what}: {e}")))?;
    match value {
        Value::Object(_) => Ok(value),
        _ => Err(undefined(format!(
            "{what}: decoded JSON type was not an Object"
        ))),
    }
}

fn header_string(header: &Value, field: &str) -> Result<Option<String>, BuiltinError> {
    match &header[field] {
        Value::Undefined => Ok(None),
        Value::String(s) => Ok(Some(s.to_string())),
        _ => Err(undefined(format!("{field}: must be a string"))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `io.jwt.decode(jwt)`.
pub fn decode(args: &[Value]) -> Result<Value, BuiltinError> {
    let jwt = text("io.jwt.decode", args, 0)?;
    decode_token(jwt, 0)
}

/// Nested tokens are followed this deep at most (a token is finite, but its nesting should not
/// cost more than a handful of levels).
const MAX_NESTING: usize = 8;

fn decode_token(jwt: &str, depth: usize) -> Result<Value, BuiltinError> {
    if depth > MAX_NESTING {
        return Err(undefined("JWT nesting is too deep"));
    }
    let token = Token::split(jwt)?;
    let header = token.header()?;
    let payload = b64url(token.payload)?;
    if header_string(&header, "cty")?.as_deref() == Some("JWT") {
        let inner = String::from_utf8(payload)
            .map_err(|e| undefined(format!("JWT payload had invalid encoding: {e}")))?;
        return decode_token(inner.trim_matches(|c| c == '"' || c == '\''), depth + 1);
    }
    let payload = json_object(&payload, "invalid JSON")?;
    let signature = b64url(token.signature)?;
    Ok(Value::from(vec![
        header,
        payload,
        Value::from(hex(&signature)),
    ]))
}

/// A verification key: the key, and the `alg`/`kid` a JWK may carry.
struct Key {
    material: KeyMaterial,
    alg: Option<String>,
    kid: Option<String>,
}

enum KeyMaterial {
    /// PKCS#1 `RSAPublicKey` DER.
    Rsa(Vec<u8>),
    /// RSA from a JWK's modulus and exponent.
    RsaComponents {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed EC point, with its curve.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

/// The keys in `text`: a PEM certificate or public key, or a JWK (set).
fn keys(text: &str) -> Result<Vec<Key>, BuiltinError> {
    if text.trim_start().starts_with("-----BEGIN") {
        return pem_key(text).map(|material| {
            vec![Key {
                material,
                alg: None,
                kid: None,
            }]
        });
    }
    jwk_keys(text)
}

fn pem_key(text: &str) -> Result<KeyMaterial, BuiltinError> {
    let (rest, pem) = parse_x509_pem(text.as_bytes())
        .map_err(|e| undefined(format!("failed to parse PEM: {e}")))?;
    // As Go's pem.Decode: nothing may follow the block's END line.
    if !rest.is_empty() {
        return Err(undefined("extra data after a PEM certificate block"));
    }
    match pem.label.as_str() {
        "CERTIFICATE" => {
            let (_, cert) = X509Certificate::from_der(&pem.contents)
                .map_err(|e| undefined(format!("failed to parse a PEM certificate: {e}")))?;
            spki_key(cert.public_key())
        }
        "PUBLIC KEY" => {
            let (_, spki) = SubjectPublicKeyInfo::from_der(&pem.contents)
                .map_err(|e| undefined(format!("failed to parse a PEM public key: {e}")))?;
            spki_key(&spki)
        }
        _ => Err(undefined(
            "failed to extract a Key from the PEM certificate",
        )),
    }
}

fn spki_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyMaterial, BuiltinError> {
    let raw = spki.subject_public_key.data.to_vec();
    match spki.parsed() {
        Ok(X509PublicKey::RSA(_)) => Ok(KeyMaterial::Rsa(raw)),
        Ok(X509PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let curve = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => Curve::P256,
                Some("1.3.132.0.34") => Curve::P384,
                Some("1.3.132.0.35") => Curve::P521,
                _ => return Err(undefined("unsupported EC curve")),
            };
            Ok(KeyMaterial::Ec { curve, point: raw })
        }
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            Ok(KeyMaterial::Ed25519(raw))
        }
        _ => Err(undefined("unsupported public key type")),
    }
}

fn jwk_keys(text: &str) -> Result<Vec<Key>, BuiltinError> {
    let parsed: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| undefined(format!("failed to parse a JWK key (set): {e}")))?;
    let list = match parsed.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.clone(),
        Some(_) => {
            return Err(undefined(
                "failed to parse a JWK key set: keys is not a list",
            ));
        }
        None => vec![parsed],
    };
    let mut keys = Vec::with_capacity(list.len());
    for jwk in &list {
        let alg = jwk.get("alg").and_then(|a| a.as_str()).map(str::to_string);
        // Keys with an algorithm OPA does not know are skipped, as OPA does.
        if let Some(alg) = &alg
            && !ALGORITHMS.contains(&alg.as_str())
        {
            continue;
        }
        let kid = jwk.get("kid").and_then(|k| k.as_str()).map(str::to_string);
        keys.push(Key {
            material: jwk_material(jwk)?,
            alg,
            kid,
        });
    }
    Ok(keys)
}

fn jwk_field(jwk: &serde_json::Value, field: &str) -> Result<Vec<u8>, BuiltinError> {
    let text = jwk
        .get(field)
        .and_then(|v| v.as_str())
        .ok_or_else(|| undefined(format!("failed to parse a JWK key: {field} is missing")))?;
    b64url(text)
}

fn jwk_material(jwk: &serde_json::Value) -> Result<KeyMaterial, BuiltinError> {
    match jwk.get("kty").and_then(|k| k.as_str()) {
        Some("RSA") => Ok(KeyMaterial::RsaComponents {
            n: jwk_field(jwk, "n")?,
            e: jwk_field(jwk, "e")?,
        }),
        Some("EC") => {
            let curve = match jwk.get("crv").and_then(|c| c.as_str()) {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                Some("P-521") => Curve::P521,
                _ => return Err(undefined("failed to parse a JWK key: unsupported curve")),
            };
            let mut point = vec![0x04];
            point.extend(jwk_field(jwk, "x")?);
            point.extend(jwk_field(jwk, "y")?);
            Ok(KeyMaterial::Ec { curve, point })
        }
        Some("OKP") if jwk.get("crv").and_then(|c| c.as_str()) == Some("Ed25519") => {
            Ok(KeyMaterial::Ed25519(jwk_field(jwk, "x")?))
        }
        Some("oct") => Err(undefined(
            "failed to parse a JWK key: symmetric keys are verified with verify_hs*",
        )),
        _ => Err(undefined("failed to parse a JWK key: unsupported kty")),
    }
}

/// The JWS algorithms OPA knows.
const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

/// ring's parameters for the RSA JWS algorithms. Go accepts 1,024-bit RSA keys; ring does
/// where it has a "legacy" variant (PKCS#1 v1.5 with SHA-256/512), and needs 2,048 bits
/// otherwise.
fn rsa_params(alg: &str) -> Option<&'static signature::RsaParameters> {
    match alg {
        "RS256" => Some(&signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY),
        "RS384" => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Some(&signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY),
        "PS256" => Some(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Some(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Some(&signature::RSA_PSS_2048_8192_SHA512),
        _ => None,
    }
}

/// Verifies `signature` over `message` with `key` for the JWS algorithm `alg`.
fn verify_with(key: &KeyMaterial, alg: &str, message: &[u8], signature: &[u8]) -> bool {
    match key {
        KeyMaterial::Rsa(der) => rsa_params(alg).is_some_and(|params| {
            UnparsedPublicKey::new(params, der)
                .verify(message, signature)
                .is_ok()
        }),
        KeyMaterial::RsaComponents { n, e } => rsa_params(alg).is_some_and(|params| {
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok()
        }),
        KeyMaterial::Ec { curve, point } => {
            let algorithm: &'static dyn VerificationAlgorithm = match (curve, alg) {
                (Curve::P256, "ES256") => &signature::ECDSA_P256_SHA256_FIXED,
                (Curve::P384, "ES384") => &signature::ECDSA_P384_SHA384_FIXED,
                (Curve::P521, "ES512") => return verify_es512(point, message, signature),
                _ => return false,
            };
            UnparsedPublicKey::new(algorithm, point)
                .verify(message, signature)
                .is_ok()
        }
        KeyMaterial::Ed25519(raw) => {
            alg == "EdDSA"
                && UnparsedPublicKey::new(&signature::ED25519, raw)
                    .verify(message, signature)
                    .is_ok()
        }
    }
}

/// ES512 (ECDSA on P-521 with SHA-512; ring has no P-521): RustCrypto's `p521`, the
/// signature as JWS writes it (`r || s`, 66 bytes each).
fn verify_es512(point: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use p521::ecdsa::signature::Verifier;
    let Ok(key) = p521::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
        return false;
    };
    let Ok(signature) = p521::ecdsa::Signature::from_slice(signature) else {
        return false;
    };
    key.verify(message, &signature).is_ok()
}

/// OPA's key selection: a key whose `kid` matches the header's is the only one tried; else
/// every key without an `alg`, or with the token header's. The signature is checked with
/// `verify_alg` (the function's algorithm for `verify_*`, the header's for `decode_verify`).
fn verify_any(
    keys: &[Key],
    header: &Value,
    verify_alg: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, BuiltinError> {
    let kid = header_string(header, "kid")?;
    let header_alg = header_string(header, "alg")?.unwrap_or_default();
    if let Some(kid) = kid.as_deref().filter(|k| !k.is_empty())
        && let Some(key) = keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    {
        return Ok(verify_with(&key.material, verify_alg, message, signature));
    }
    Ok(keys
        .iter()
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == header_alg))
        .any(|k| verify_with(&k.material, verify_alg, message, signature)))
}

fn hmac_verify(alg: &str, secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let algorithm = match alg {
        "HS256" => ring::hmac::HMAC_SHA256,
        "HS384" => ring::hmac::HMAC_SHA384,
        "HS512" => ring::hmac::HMAC_SHA512,
        _ => return false,
    };
    ring::hmac::verify(&ring::hmac::Key::new(algorithm, secret), message, signature).is_ok()
}

/// `io.jwt.verify_<alg>(jwt, key)`: `alg` is the function's, not the token's.
fn verify_fixed(name: &str, alg: &str, args: &[Value]) -> Result<Value, BuiltinError> {
    let jwt = text(name, args, 0)?;
    let key = text(name, args, 1)?;
    let token = Token::split(jwt)?;
    let message = token.signed_bytes();
    if alg.starts_with("HS") {
        let signature = b64url(token.signature)?;
        return Ok(Value::Bool(hmac_verify(
            alg,
            key.as_bytes(),
            &message,
            &signature,
        )));
    }
    let keys = keys(key)?;
    let signature = b64url(token.signature)?;
    let header = token.header()?;
    Ok(Value::Bool(verify_any(
        &keys, &header, alg, &message, &signature,
    )?))
}

macro_rules! verify_builtins {
    ($($fn_name:ident => $alg:literal),* $(,)?) => {
        $(
            #[doc = concat!("`io.jwt.verify_", stringify!($fn_name), "(jwt, key)`.")]
            pub fn $fn_name(args: &[Value]) -> Result<Value, BuiltinError> {
                verify_fixed(concat!("io.jwt.verify_", stringify!($fn_name)), $alg, args)
            }
        )*
    };
}

verify_builtins! {
    rs256 => "RS256", rs384 => "RS384", rs512 => "RS512",
    ps256 => "PS256", ps384 => "PS384", ps512 => "PS512",
    es256 => "ES256", es384 => "ES384", es512 => "ES512",
    hs256 => "HS256", hs384 => "HS384", hs512 => "HS512",
    eddsa => "EdDSA",
}

/// The parsed constraints of `io.jwt.decode_verify`.
struct Constraints {
    keys: Option<Vec<Key>>,
    secret: Option<String>,
    alg: Option<String>,
    iss: Option<String>,
    aud: Option<String>,
    /// Nanoseconds since the epoch.
    time: f64,
}

fn constraints(value: &Value) -> Result<Constraints, BuiltinError> {
    let Value::Object(fields) = value else {
        return Err(undefined(
            "io.jwt.decode_verify: operand 2 must be an object",
        ));
    };
    let mut out = Constraints {
        keys: None,
        secret: None,
        alg: None,
        iss: None,
        aud: None,
        time: -1.0,
    };
    for (key, value) in fields.iter() {
        let name = match key {
            Value::String(s) => s.as_ref(),
            _ => return Err(undefined("unknown token validation constraint")),
        };
        let string = || match value {
            Value::String(s) => Ok(s.to_string()),
            _ => Err(undefined(format!("{name} constraint: must be a string"))),
        };
        match name {
            "cert" => out.keys = Some(keys(&string()?)?),
            "secret" => out.secret = Some(string()?),
            "alg" => out.alg = Some(string()?),
            "iss" => out.iss = Some(string()?),
            "aud" => out.aud = Some(string()?),
            "time" => {
                let t = lossy_f64(value)
                    .ok_or_else(|| undefined("token time constraint: must be a number"))?;
                if t < 0.0 {
                    return Err(undefined("token time constraint: must not be negative"));
                }
                out.time = t;
            }
            other => {
                return Err(undefined(format!(
                    "unknown token validation constraint: {other}"
                )));
            }
        }
    }
    // An empty secret counts as none, as in OPA.
    if out.secret.as_deref() == Some("") {
        out.secret = None;
    }
    match (out.keys.is_some(), out.secret.is_some()) {
        (true, true) => return Err(undefined("duplicate key constraints")),
        (false, false) => return Err(undefined("no key constraint")),
        _ => {}
    }
    if out.time < 0.0 {
        out.time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as f64)
            .unwrap_or(0.0);
    }
    Ok(out)
}

/// `io.jwt.decode_verify(jwt, constraints)`.
pub fn decode_verify(args: &[Value]) -> Result<Value, BuiltinError> {
    let jwt = text("io.jwt.decode_verify", args, 0)?;
    let constraints = constraints(args.get(1).unwrap_or(&Value::Undefined))?;
    let unverified = || {
        Value::from(vec![
            Value::Bool(false),
            Value::new_object(),
            Value::new_object(),
        ])
    };
    let mut current = jwt.to_string();
    let mut depth = 0;
    let (header, payload) = loop {
        if depth > MAX_NESTING {
            return Err(undefined("JWT nesting is too deep"));
        }
        depth += 1;
        let token = Token::split(&current)?;
        let header = token.header()?;
        let alg = header_string(&header, "alg")?.unwrap_or_default();
        let cty = header_string(&header, "cty")?;
        if !header_valid(&header, &alg)? {
            return Ok(unverified());
        }
        if constraints.alg.as_deref().is_some_and(|a| a != alg) {
            return Ok(unverified());
        }
        let signature = b64url(token.signature)?;
        let message = token.signed_bytes();
        let verified = match (&constraints.keys, &constraints.secret) {
            (Some(keys), _) => verify_any(keys, &header, &alg, &message, &signature)?,
            (None, Some(secret)) => hmac_verify(&alg, secret.as_bytes(), &message, &signature),
            (None, None) => false,
        };
        if !verified {
            return Ok(unverified());
        }
        let payload = b64url(token.payload)?;
        if cty.is_some_and(|c| c.eq_ignore_ascii_case("JWT")) {
            current = String::from_utf8(payload)
                .map_err(|e| undefined(format!("JWT payload had invalid encoding: {e}")))?;
            continue;
        }
        break (header, json_object(&payload, "invalid JSON")?);
    };
    if let Some(iss) = &constraints.iss {
        match &payload["iss"] {
            Value::String(s) if s.as_ref() == iss => {}
            _ => return Ok(unverified()),
        }
    }
    match &payload["aud"] {
        Value::Undefined => {
            if constraints.aud.is_some() {
                return Ok(unverified());
            }
        }
        aud => {
            if !audience_matches(aud, constraints.aud.as_deref()) {
                return Ok(unverified());
            }
        }
    }
    let now_seconds = constraints.time / 1_000_000_000.0;
    match &payload["exp"] {
        Value::Undefined => {}
        Value::Number(_) => {
            let exp = lossy_f64(&payload["exp"]).unwrap_or(f64::NEG_INFINITY);
            if now_seconds >= exp {
                return Ok(unverified());
            }
        }
        _ => return Err(undefined("exp value must be a number")),
    }
    match &payload["nbf"] {
        Value::Undefined => {}
        Value::Number(_) => {
            let nbf = lossy_f64(&payload["nbf"]).unwrap_or(f64::INFINITY);
            if now_seconds < nbf {
                return Ok(unverified());
            }
        }
        _ => return Err(undefined("nbf value must be a number")),
    }
    Ok(Value::from(vec![Value::Bool(true), header, payload]))
}

/// A number as a float, rounding integers beyond 2^53 (nanosecond timestamps) as OPA's
/// `Float64()` does; regorus' own `as_f64` refuses to round.
fn lossy_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64().or_else(|| n.as_i128().map(|i| i as f64)),
        _ => None,
    }
}

/// RFC 7515 §4.1.1 (`alg` present) and §4.1.11 (no critical parameter we do not know).
fn header_valid(header: &Value, alg: &str) -> Result<bool, BuiltinError> {
    if alg.is_empty() {
        return Ok(false);
    }
    let Value::Object(fields) = header else {
        return Ok(false);
    };
    let crit = match &header["crit"] {
        Value::Undefined => return Ok(true),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(undefined("crit: must be a nonempty list"));
            }
            items.clone()
        }
        _ => return Err(undefined("crit: must be a list")),
    };
    const KNOWN: &[&str] = &["alg", "kid", "typ", "cty", "crit"];
    for key in fields.keys() {
        if let Value::String(name) = key
            && !KNOWN.contains(&name.as_ref())
            && crit.iter().any(|c| c == key)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A token's `aud` (string or list) against the constraint (absent = "").
fn audience_matches(aud: &Value, wanted: Option<&str>) -> bool {
    let wanted = wanted.unwrap_or("");
    match aud {
        Value::String(s) => s.as_ref() == wanted,
        Value::Array(items) => items
            .iter()
            .any(|item| matches!(item, Value::String(s) if s.as_ref() == wanted)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn s(text: &str) -> Value {
        Value::from(text)
    }

    fn json(text: &str) -> Value {
        Value::from_json_str(text).unwrap()
    }

    /// A P-256 key, its public key as a JWK (with `kid`), and a signer of compact JWS.
    struct Es256 {
        pair: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Es256 {
        fn new() -> Es256 {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            Es256 { pair, rng }
        }

        fn jwk(&self, kid: &str) -> String {
            let point = self.pair.public_key().as_ref();
            format!(
                r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{}","y":"{}"}}"#,
                b64(&point[1..33]),
                b64(&point[33..65])
            )
        }

        fn sign(&self, header: &str, payload: &str) -> String {
            let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
            let sig = self.pair.sign(&self.rng, input.as_bytes()).unwrap();
            format!("{input}.{}", b64(sig.as_ref()))
        }
    }

    fn hs256(secret: &str, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    }

    #[test]
    fn decode_returns_header_payload_and_hex_signature() {
        let token = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(br#"{"sub":"agent","n":1}"#),
            b64(&[0xde, 0xad, 0xbe, 0xef])
        );
        assert_eq!(
            decode(&[s(&token)]).unwrap(),
            json(r#"[{"alg":"HS256","typ":"JWT"},{"sub":"agent","n":1},"deadbeef"]"#)
        );
    }

    #[test]
    fn decode_follows_a_nested_token() {
        let inner = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"none"}"#),
            b64(br#"{"inner":true}"#),
            b64(b"sig")
        );
        let outer = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"HS256","cty":"JWT"}"#),
            b64(format!("\"{inner}\"").as_bytes()),
            b64(b"x")
        );
        assert_eq!(decode(&[s(&outer)]).unwrap()[1], json(r#"{"inner":true}"#));
    }

    #[test]
    fn decode_refuses_what_is_not_a_compact_jws() {
        for token in [
            "nodots",
            "a.b",
            "a.b.c.d",
            &format!("{}.{}.", b64(b"not json"), b64(b"{}")),
            &format!("{}.{}.", b64(br#"{"alg":"x","enc":"A128GCM"}"#), b64(b"{}")),
            &format!("{}.{}.", b64(br#"{"alg":"x"}"#), b64(b"[1]")),
            &format!("{}.!!!.", b64(br#"{"alg":"x"}"#)),
        ] {
            assert!(
                matches!(decode(&[s(token)]), Err(BuiltinError::Undefined(_))),
                "{token}"
            );
        }
        assert!(matches!(
            decode(&[Value::from(1)]),
            Err(BuiltinError::Undefined(_))
        ));
    }

    #[test]
    fn verify_hs256_checks_the_mac() {
        let token = hs256("secret", r#"{"alg":"HS256"}"#, r#"{"a":1}"#);
        assert_eq!(hs256_fn(&token, "secret"), Value::Bool(true));
        assert_eq!(hs256_fn(&token, "other"), Value::Bool(false));
        // The function's algorithm decides: HS384 over an HS256 MAC does not verify.
        assert_eq!(
            hs384(&[s(&token), s("secret")]).unwrap(),
            Value::Bool(false)
        );
    }

    fn hs256_fn(token: &str, secret: &str) -> Value {
        hs256_builtin(&[s(token), s(secret)]).unwrap()
    }

    use super::hs256 as hs256_builtin;

    #[test]
    fn verify_es512_with_a_p521_jwk() {
        use p521::ecdsa::signature::Signer;
        use p521::elliptic_curve::sec1::ToEncodedPoint;
        // A fixed P-521 scalar (below the group order): the test needs no randomness.
        let mut scalar = [0x42u8; 66];
        scalar[0] = 0;
        let signing = p521::ecdsa::SigningKey::from_slice(&scalar).unwrap();
        let point = p521::ecdsa::VerifyingKey::from(&signing)
            .as_affine()
            .to_encoded_point(false);
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-521","x":"{}","y":"{}"}}"#,
            b64(point.x().unwrap()),
            b64(point.y().unwrap())
        );
        let input = format!("{}.{}", b64(br#"{"alg":"ES512"}"#), b64(br#"{"a":1}"#));
        let signature: p521::ecdsa::Signature = signing.sign(input.as_bytes());
        let token = format!("{input}.{}", b64(&signature.to_bytes()));
        assert_eq!(es512(&[s(&token), s(&jwk)]).unwrap(), Value::Bool(true));
        let tampered = format!("{}.{}", b64(br#"{"alg":"ES512"}"#), b64(br#"{"a":2}"#));
        let forged = format!("{tampered}.{}", b64(&signature.to_bytes()));
        assert_eq!(es512(&[s(&forged), s(&jwk)]).unwrap(), Value::Bool(false));
        // The same key does not verify as ES256.
        assert_eq!(es256(&[s(&token), s(&jwk)]).unwrap(), Value::Bool(false));
    }

    #[test]
    fn verify_es256_with_a_jwk_a_jwk_set_and_a_certificate() {
        let key = Es256::new();
        let token = key.sign(r#"{"alg":"ES256","kid":"k1"}"#, r#"{"a":1}"#);
        assert_eq!(
            es256(&[s(&token), s(&key.jwk("k1"))]).unwrap(),
            Value::Bool(true)
        );
        let other = Es256::new();
        let set = format!(r#"{{"keys":[{},{}]}}"#, other.jwk("k0"), key.jwk("k1"));
        assert_eq!(es256(&[s(&token), s(&set)]).unwrap(), Value::Bool(true));
        // The kid picks the key: a set whose "k1" is another key does not verify.
        let wrong = format!(r#"{{"keys":[{},{}]}}"#, other.jwk("k1"), key.jwk("k2"));
        assert_eq!(es256(&[s(&token), s(&wrong)]).unwrap(), Value::Bool(false));
        assert_eq!(
            es256(&[s(&token), s(&other.jwk("k1"))]).unwrap(),
            Value::Bool(false)
        );
        // An ES256 token is not an RS256 one.
        assert_eq!(
            rs256(&[s(&token), s(&key.jwk("k1"))]).unwrap(),
            Value::Bool(false)
        );
    }

    #[test]
    fn verify_with_pem_certificates_and_public_keys() {
        let rng = SystemRandom::new();
        let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["issuer.test".to_string()])
            .unwrap()
            .self_signed(&signing)
            .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &signing.serialize_der(),
            &rng,
        )
        .unwrap();
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256"}"#),
            b64(br#"{"iss":"issuer.test"}"#)
        );
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        let token = format!("{input}.{}", b64(sig.as_ref()));
        assert_eq!(
            es256(&[s(&token), s(&cert.pem())]).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            es256(&[s(&token), s(&signing.public_key_pem())]).unwrap(),
            Value::Bool(true)
        );
        // Nothing may follow the PEM block.
        let trailing = format!("{}junk", cert.pem());
        assert!(matches!(
            es256(&[s(&token), s(&trailing)]),
            Err(BuiltinError::Undefined(_))
        ));
        assert!(matches!(
            es256(&[s(&token), s("not a key")]),
            Err(BuiltinError::Undefined(_))
        ));
    }

    #[test]
    fn verify_eddsa() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let input = format!("{}.{}", b64(br#"{"alg":"EdDSA"}"#), b64(br#"{}"#));
        let token = format!("{input}.{}", b64(pair.sign(input.as_bytes()).as_ref()));
        let jwk = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"}}"#,
            b64(pair.public_key().as_ref())
        );
        assert_eq!(eddsa(&[s(&token), s(&jwk)]).unwrap(), Value::Bool(true));
        assert_eq!(es256(&[s(&token), s(&jwk)]).unwrap(), Value::Bool(false));
    }

    fn constraints(text: &str) -> Value {
        json(text)
    }

    fn decode_verify_ok(token: &str, c: &str) -> bool {
        decode_verify(&[s(token), constraints(c)]).unwrap()[0] == Value::Bool(true)
    }

    #[test]
    fn decode_verify_checks_signature_alg_iss_aud_exp_and_nbf() {
        let key = Es256::new();
        let jwk = key.jwk("k");
        let cert = |extra: &str| {
            format!(
                r#"{{"cert": {}, "time": 1500000000000000000{extra}}}"#,
                serde_json::to_string(&jwk).unwrap()
            )
        };
        let token = key.sign(
            r#"{"alg":"ES256"}"#,
            r#"{"iss":"orchestrator","aud":["tollgate","x"],"exp":1600000000,"nbf":1400000000}"#,
        );
        let result =
            decode_verify(&[s(&token), constraints(&cert(r#", "aud": "tollgate""#))]).unwrap();
        assert_eq!(result[0], Value::Bool(true));
        assert_eq!(result[1], json(r#"{"alg":"ES256"}"#));
        assert_eq!(result[2]["iss"], s("orchestrator"));
        // iss, aud, alg, exp, nbf each refuse on their own.
        assert!(decode_verify_ok(
            &token,
            &cert(r#", "aud": "tollgate", "iss": "orchestrator""#)
        ));
        assert!(!decode_verify_ok(
            &token,
            &cert(r#", "aud": "tollgate", "iss": "other""#)
        ));
        assert!(
            !decode_verify_ok(&token, &cert("")),
            "aud in token, none wanted"
        );
        assert!(!decode_verify_ok(&token, &cert(r#", "aud": "nope""#)));
        assert!(!decode_verify_ok(
            &token,
            &cert(r#", "aud": "tollgate", "alg": "RS256""#)
        ));
        let late = cert(r#", "aud": "tollgate""#).replace("1500000000", "1700000000");
        assert!(!decode_verify_ok(&token, &late), "expired");
        let early = cert(r#", "aud": "tollgate""#).replace("1500000000", "1300000000");
        assert!(!decode_verify_ok(&token, &early), "not yet valid");
        // Unverified is [false, {}, {}].
        assert_eq!(
            decode_verify(&[s(&token), constraints(&late)]).unwrap(),
            json("[false, {}, {}]")
        );
        // Another key: unverified.
        let other = Es256::new().jwk("k");
        let c = format!(
            r#"{{"cert": {}, "aud": "tollgate", "time": 1500000000000000000}}"#,
            serde_json::to_string(&other).unwrap()
        );
        assert!(!decode_verify_ok(&token, &c));
    }

    #[test]
    fn decode_verify_with_a_secret_and_bad_constraints() {
        let token = hs256("s3", r#"{"alg":"HS256"}"#, r#"{"sub":"a"}"#);
        assert!(decode_verify_ok(&token, r#"{"secret": "s3"}"#));
        assert!(!decode_verify_ok(&token, r#"{"secret": "nope"}"#));
        for bad in [
            r#"{}"#,
            r#"{"secret": "s3", "cert": "{\"kty\":\"EC\"}"}"#,
            r#"{"secret": "s3", "colour": "red"}"#,
            r#"{"secret": 3}"#,
            r#"{"secret": "s3", "time": -1}"#,
        ] {
            assert!(
                matches!(
                    decode_verify(&[s(&token), constraints(bad)]),
                    Err(BuiltinError::Undefined(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn decode_verify_refuses_unknown_critical_headers_and_missing_alg() {
        let crit = hs256("k", r#"{"alg":"HS256","crit":["exp2"],"exp2":1}"#, r#"{}"#);
        assert!(!decode_verify_ok(&crit, r#"{"secret": "k"}"#));
        let no_alg = hs256("k", r#"{"typ":"JWT"}"#, r#"{}"#);
        assert!(!decode_verify_ok(&no_alg, r#"{"secret": "k"}"#));
    }
}
