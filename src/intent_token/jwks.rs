//! Issuers' keys: JWK Set files read strictly (public EC P-256, Ed25519 and RSA keys only, each
//! pinned to the one algorithm its type allows).

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// One public key, pinned to the single algorithm it may verify.
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) alg: Alg,
    pub(super) key: DecodingKey,
}

/// The algorithms tollgate accepts; nothing else can even be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alg {
    Es256,
    EdDsa,
    Rs256,
}

impl Alg {
    pub(super) fn from_name(name: &str) -> Option<Alg> {
        match name {
            "ES256" => Some(Alg::Es256),
            // "Ed25519" is RFC 9864's fully-specified name for EdDSA on Ed25519.
            "EdDSA" | "Ed25519" => Some(Alg::EdDsa),
            "RS256" => Some(Alg::Rs256),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Rs256 => "RS256",
        }
    }

    pub(super) fn jwt(self) -> Algorithm {
        match self {
            Alg::Es256 => Algorithm::ES256,
            Alg::EdDsa => Algorithm::EdDSA,
            Alg::Rs256 => Algorithm::RS256,
        }
    }
}

/// The members of a JWK this module reads; anything else (`x5c`, `x5t`, …) is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    d: Option<Value>,
    #[serde(default)]
    k: Option<Value>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

/// Reads a JWK Set file; the error names the file and the key at fault.
pub(super) fn load_jwks(path: &PathBuf) -> Result<Vec<VerifyKey>, String> {
    let file = path.display();
    let text = std::fs::read(path).map_err(|e| format!("cannot read {file}: {e}"))?;
    let jwks: RawJwks = serde_json::from_slice(&text)
        .map_err(|e| format!("{file} is not a JWK Set ({{\"keys\": [...]}}): {e}"))?;
    if jwks.keys.is_empty() {
        return Err(format!("{file} holds no keys"));
    }
    let mut keys: Vec<VerifyKey> = Vec::with_capacity(jwks.keys.len());
    for (index, value) in jwks.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(Value::as_str).map(str::to_string);
        let name = match &kid {
            Some(kid) => format!("keys[{index}] (kid {kid:?})"),
            None => format!("keys[{index}]"),
        };
        let key = parse_jwk(value).map_err(|why| format!("{file}: {name}: {why}"))?;
        if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) {
            return Err(format!(
                "{file}: {name}: this kid is used by an earlier key"
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn parse_jwk(value: Value) -> Result<VerifyKey, String> {
    let jwk: RawJwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if jwk.d.is_some() || jwk.k.is_some() {
        return Err(
            "holds private or symmetric key material (d or k): publish public keys only".into(),
        );
    }
    if let Some(use_) = jwk.use_.as_deref()
        && use_ != "sig"
    {
        return Err(format!("use is {use_:?}, not \"sig\""));
    }
    let (alg, key) = match jwk.kty.as_str() {
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err(format!(
                    "EC keys must be on curve P-256 (ES256), not {:?}",
                    jwk.crv.as_deref().unwrap_or("")
                ));
            }
            let x = member(&jwk.x, "x", 32..=32)?;
            let y = member(&jwk.y, "y", 32..=32)?;
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?;
            (Alg::Es256, key)
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!(
                    "OKP keys must be Ed25519 (EdDSA), not {:?}",
                    jwk.crv.as_deref().unwrap_or("")
                ));
            }
            let x = member(&jwk.x, "x", 32..=32)?;
            (
                Alg::EdDsa,
                DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?,
            )
        }
        "RSA" => {
            let n = member(&jwk.n, "n", 1..=MAX_RSA_BITS / 8)?;
            let bits = rsa_bits(n);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(format!(
                    "RSA modulus is {bits} bits; RS256 keys must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits"
                ));
            }
            let e = member(&jwk.e, "e", 1..=8)?;
            (
                Alg::Rs256,
                DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?,
            )
        }
        "oct" => {
            return Err(
                "symmetric (oct) keys are refused: intent tokens are verified with public keys only"
                    .into(),
            );
        }
        other => return Err(format!("kty {other:?} is not EC, OKP or RSA")),
    };
    if let Some(declared) = jwk.alg.as_deref()
        && Alg::from_name(declared) != Some(alg)
    {
        return Err(format!(
            "alg is {declared:?}, but tollgate verifies this key type only with {}",
            alg.name()
        ));
    }
    Ok(VerifyKey {
        kid: jwk.kid,
        alg,
        key,
    })
}

/// A required base64url member whose decoded length lies in `len`.
fn member<'a>(
    value: &'a Option<String>,
    name: &str,
    len: std::ops::RangeInclusive<usize>,
) -> Result<&'a str, String> {
    let text = value.as_deref().ok_or_else(|| format!("has no {name:?}"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("{name:?} is not base64url"))?;
    if !len.contains(&bytes.len()) {
        return Err(format!(
            "{name:?} has {} bytes, expected {len:?}",
            bytes.len()
        ));
    }
    Ok(text)
}

/// Bit length of a big-endian base64url integer (already checked to decode).
fn rsa_bits(n: &str) -> usize {
    let bytes = URL_SAFE_NO_PAD.decode(n).unwrap_or_default();
    let Some(first) = bytes.iter().position(|&b| b != 0) else {
        return 0;
    };
    (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize)
}
