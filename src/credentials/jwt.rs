//! `jwt` credentials: tollgate mints a JWT per task and destination (SPEC §5).
//!
//! Signing uses ring directly on the PKCS#8 key (ES256 with P-256, or EdDSA with Ed25519):
//! ring accepts the PKCS#8 v1 Ed25519 keys `openssl genpkey` writes, which jsonwebtoken's
//! Ed25519 path does not, and a compact JWS is three base64url parts. The key, its `kid`
//! (RFC 7638 thumbprint) and its JWK are prepared once per load, so minting costs one
//! signature and two small JSON encodings.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::config::credentials::JwtConfig;

use super::secret::Secret;

/// Why a signing key could not be used (names the file, never its contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtKeyError {
    #[error("cannot read the signing key {0}")]
    Read(PathBuf),
    #[error("{0} is not a PKCS#8 PEM private key (openssl genpkey writes one)")]
    NotPkcs8(PathBuf),
    #[error("{0} is neither a P-256 (ES256) nor an Ed25519 (EdDSA) key")]
    Unsupported(PathBuf),
}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("the caller has no SPIFFE ID to put in `sub`")]
    NoSubject,
    #[error("signing failed")]
    Signing,
}

enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A loaded `jwt` credential: key, `kid`, JWK and claim settings.
pub struct JwtSigner {
    key: Key,
    rng: SystemRandom,
    kid: String,
    jwk: Value,
    /// `base64url({"alg","kid","typ"})`, encoded once.
    header: String,
    issuer: String,
    max_ttl: Duration,
    default_ttl: Duration,
}

/// The claims of one token besides `iss`, `iat`, `exp`.
pub struct Claims<'a> {
    pub subject: &'a str,
    pub audience: &'a str,
    pub intent: Option<&'a str>,
    pub task: Option<&'a str>,
    pub scopes: &'a [String],
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint of the required members, in lexicographic order.
fn thumbprint(members: &str) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, members.as_bytes()).as_ref())
}

impl JwtSigner {
    /// Loads the key named by the configuration.
    pub fn load(config: &JwtConfig) -> Result<JwtSigner, JwtKeyError> {
        let key = load_key(&config.signing_key)?;
        let (jwk, kid, alg) = match &key {
            Key::Es256(pair) => {
                let public = pair.public_key().as_ref();
                // Uncompressed point: 0x04 || x (32) || y (32).
                let (x, y) = (b64(&public[1..33]), b64(&public[33..65]));
                let kid = thumbprint(&format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
                ));
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y,
                                 "use": "sig", "alg": "ES256", "kid": kid});
                (jwk, kid, "ES256")
            }
            Key::EdDsa(pair) => {
                let x = b64(pair.public_key().as_ref());
                let kid = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x,
                                 "use": "sig", "alg": "EdDSA", "kid": kid});
                (jwk, kid, "EdDSA")
            }
        };
        let header = b64(json!({"alg": alg, "kid": kid, "typ": "JWT"})
            .to_string()
            .as_bytes());
        Ok(JwtSigner {
            key,
            rng: SystemRandom::new(),
            kid,
            jwk,
            header,
            issuer: config.issuer.clone(),
            max_ttl: config.max_ttl,
            default_ttl: config.default_ttl,
        })
    }

    /// The public key as a JWK (for `/.well-known/jwks.json`).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The key id every token carries.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The lifetime of a token for a decision's ttl: the ttl (or `default_ttl`), capped by
    /// `max_ttl`.
    pub fn lifetime(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.default_ttl).min(self.max_ttl)
    }

    /// Mints one token; returns it and its expiry.
    pub fn mint(
        &self,
        claims: &Claims<'_>,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<(Secret, SystemTime), MintError> {
        let lifetime = self.lifetime(ttl);
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| MintError::Signing)?
            .as_secs();
        let exp = iat + lifetime.as_secs().max(1);
        let mut body = json!({
            "iss": self.issuer,
            "sub": claims.subject,
            "aud": claims.audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(),
            "scope": claims.scopes.join(" "),
        });
        if let Some(intent) = claims.intent {
            body["intent"] = intent.into();
        }
        if let Some(task) = claims.task {
            body["task"] = task.into();
        }
        let signing_input = format!("{}.{}", self.header, b64(body.to_string().as_bytes()));
        let signature = match &self.key {
            Key::Es256(pair) => pair
                .sign(&self.rng, signing_input.as_bytes())
                .map_err(|_| MintError::Signing)?
                .as_ref()
                .to_vec(),
            Key::EdDsa(pair) => pair.sign(signing_input.as_bytes()).as_ref().to_vec(),
        };
        let token = format!("{signing_input}.{}", b64(&signature));
        Ok((Secret::new(token), UNIX_EPOCH + Duration::from_secs(exp)))
    }
}

fn load_key(path: &Path) -> Result<Key, JwtKeyError> {
    let bytes = std::fs::read(path).map_err(|_| JwtKeyError::Read(path.to_path_buf()))?;
    let bytes = zeroize::Zeroizing::new(bytes);
    let der = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(PrivateKeyDer::Pkcs8(der)) => der,
        _ => return Err(JwtKeyError::NotPkcs8(path.to_path_buf())),
    };
    let der = der.secret_pkcs8_der();
    if let Ok(pair) = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        der,
        &SystemRandom::new(),
    ) {
        return Ok(Key::Es256(pair));
    }
    if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        return Ok(Key::EdDsa(pair));
    }
    Err(JwtKeyError::Unsupported(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(pem: &str) -> JwtSigner {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, pem).unwrap();
        JwtSigner::load(&JwtConfig {
            signing_key: path,
            issuer: "tollgate".into(),
            max_ttl: Duration::from_secs(900),
            default_ttl: Duration::from_secs(300),
        })
        .unwrap()
    }

    fn p256_pem() -> String {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        pair.serialize_pem()
    }

    fn ed25519_pem() -> String {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        pair.serialize_pem()
    }

    fn claims<'a>(scopes: &'a [String]) -> Claims<'a> {
        Claims {
            subject: "spiffe://example.org/agent",
            audience: "api.example.com",
            intent: Some("issues.read"),
            task: Some("t-1"),
            scopes,
        }
    }

    fn verify(signer: &JwtSigner, token: &str) -> Value {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let message = format!("{}.{}", parts[0], parts[1]);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let jwk = signer.jwk();
        let result = if jwk["kty"] == "EC" {
            let mut point = vec![4u8];
            point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
            point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message.as_bytes(), &signature)
        } else {
            let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
            signature::UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message.as_bytes(), &signature)
        };
        result.expect("signature verifies with the published JWK");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["kid"], signer.kid());
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
    }

    #[test]
    fn mints_es256_and_eddsa_tokens_that_verify_with_the_jwk() {
        let scopes = vec!["issues:read".to_string(), "repo".to_string()];
        for pem in [p256_pem(), ed25519_pem()] {
            let signer = signer(&pem);
            let now = SystemTime::now();
            let (token, exp) = signer
                .mint(&claims(&scopes), Some(Duration::from_secs(60)), now)
                .unwrap();
            let body = verify(&signer, token.expose());
            assert_eq!(body["iss"], "tollgate");
            assert_eq!(body["sub"], "spiffe://example.org/agent");
            assert_eq!(body["aud"], "api.example.com");
            assert_eq!(body["intent"], "issues.read");
            assert_eq!(body["task"], "t-1");
            assert_eq!(body["scope"], "issues:read repo");
            let iat = body["iat"].as_u64().unwrap();
            assert_eq!(body["exp"].as_u64().unwrap(), iat + 60);
            assert_eq!(exp, UNIX_EPOCH + Duration::from_secs(iat + 60));
        }
    }

    #[test]
    fn ttl_is_capped_by_max_ttl_and_defaults() {
        let signer = signer(&p256_pem());
        assert_eq!(
            signer.lifetime(Some(Duration::from_secs(3600))),
            Duration::from_secs(900)
        );
        assert_eq!(signer.lifetime(None), Duration::from_secs(300));
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1 example key (RSA) is not supported; check the EC member order instead.
        let signer = signer(&p256_pem());
        let jwk = signer.jwk();
        let expected = thumbprint(&format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        ));
        assert_eq!(signer.kid(), expected);
        assert_eq!(signer.kid().len(), 43);
    }

    #[test]
    fn refuses_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "not a key").unwrap();
        let config = JwtConfig {
            signing_key: path.clone(),
            issuer: "tollgate".into(),
            max_ttl: Duration::from_secs(900),
            default_ttl: Duration::from_secs(300),
        };
        assert_eq!(
            JwtSigner::load(&config).err(),
            Some(JwtKeyError::NotPkcs8(path))
        );
    }
}
