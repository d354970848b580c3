//! OPA's digest and HMAC builtins, which regorus does not implement.
//!
//! `crypto.md5`, `crypto.sha1`, `crypto.sha256` and `crypto.hmac.{md5,sha1,sha256,sha512}`
//! return the lower-case hex digest of a string, as OPA does; `crypto.hmac.equal` compares two
//! MACs in constant time. SHA-1/SHA-2 come from ring (tollgate's crypto provider); MD5, which
//! ring does not carry, from RustCrypto's `md-5`.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use regorus::Value;
use ring::{digest, hmac as ring_hmac};
use subtle::ConstantTimeEq;

use super::BuiltinError;

fn text<'a>(name: &str, args: &'a [Value], index: usize) -> Result<&'a str, BuiltinError> {
    match args.get(index) {
        Some(Value::String(s)) => Ok(s.as_ref()),
        _ => Err(BuiltinError::Undefined(format!(
            "{name}: operand {} must be a string",
            index + 1
        ))),
    }
}

fn hex(bytes: &[u8]) -> Value {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
    }
    Value::from(out)
}

/// `crypto.md5(x)`.
pub fn md5(args: &[Value]) -> Result<Value, BuiltinError> {
    let x = text("crypto.md5", args, 0)?;
    Ok(hex(&Md5::digest(x.as_bytes())))
}

/// `crypto.sha1(x)`.
pub fn sha1(args: &[Value]) -> Result<Value, BuiltinError> {
    let x = text("crypto.sha1", args, 0)?;
    Ok(hex(digest::digest(
        &digest::SHA1_FOR_LEGACY_USE_ONLY,
        x.as_bytes(),
    )
    .as_ref()))
}

/// `crypto.sha256(x)`.
pub fn sha256(args: &[Value]) -> Result<Value, BuiltinError> {
    let x = text("crypto.sha256", args, 0)?;
    Ok(hex(digest::digest(&digest::SHA256, x.as_bytes()).as_ref()))
}

fn ring_mac(
    name: &str,
    algorithm: ring_hmac::Algorithm,
    args: &[Value],
) -> Result<Value, BuiltinError> {
    let x = text(name, args, 0)?;
    let key = text(name, args, 1)?;
    let key = ring_hmac::Key::new(algorithm, key.as_bytes());
    Ok(hex(ring_hmac::sign(&key, x.as_bytes()).as_ref()))
}

/// `crypto.hmac.md5(x, key)`.
pub fn hmac_md5(args: &[Value]) -> Result<Value, BuiltinError> {
    let x = text("crypto.hmac.md5", args, 0)?;
    let key = text("crypto.hmac.md5", args, 1)?;
    let mut mac = Hmac::<Md5>::new_from_slice(key.as_bytes())
        .map_err(|e| BuiltinError::Undefined(format!("crypto.hmac.md5: {e}")))?;
    mac.update(x.as_bytes());
    Ok(hex(&mac.finalize().into_bytes()))
}

/// `crypto.hmac.sha1(x, key)`.
pub fn hmac_sha1(args: &[Value]) -> Result<Value, BuiltinError> {
    ring_mac(
        "crypto.hmac.sha1",
        ring_hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        args,
    )
}

/// `crypto.hmac.sha256(x, key)`.
pub fn hmac_sha256(args: &[Value]) -> Result<Value, BuiltinError> {
    ring_mac("crypto.hmac.sha256", ring_hmac::HMAC_SHA256, args)
}

/// `crypto.hmac.sha512(x, key)`.
pub fn hmac_sha512(args: &[Value]) -> Result<Value, BuiltinError> {
    ring_mac("crypto.hmac.sha512", ring_hmac::HMAC_SHA512, args)
}

/// `crypto.hmac.equal(mac1, mac2)`: constant-time comparison, so a policy that checks a MAC
/// does not leak how much of it matched.
pub fn hmac_equal(args: &[Value]) -> Result<Value, BuiltinError> {
    let a = text("crypto.hmac.equal", args, 0)?;
    let b = text("crypto.hmac.equal", args, 1)?;
    Ok(Value::Bool(a.as_bytes().ct_eq(b.as_bytes()).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    // Expected values: the standard test vectors (RFC 1321, FIPS 180, RFC 2202/4231) and
    // what `opa eval 'crypto.sha256("")'` prints, lower-case hex.
    #[test]
    fn digests_match_the_standard_vectors() {
        assert_eq!(
            md5(&[s("abc")]).unwrap(),
            s("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(
            sha1(&[s("abc")]).unwrap(),
            s("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            sha256(&[s("")]).unwrap(),
            s("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    #[test]
    fn hmacs_match_the_rfc_vectors() {
        // RFC 2202 test case 2 (MD5, SHA-1), RFC 4231 test case 2 (SHA-256, SHA-512).
        let args = [s("what do ya want for nothing?"), s("Jefe")];
        assert_eq!(
            hmac_md5(&args).unwrap(),
            s("750c783e6ab0b503eaa86e310a5db738")
        );
        assert_eq!(
            hmac_sha1(&args).unwrap(),
            s("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        );
        assert_eq!(
            hmac_sha256(&args).unwrap(),
            s("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            hmac_sha512(&args).unwrap(),
            s(
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
            )
        );
        assert_eq!(hmac_equal(&[s("ab"), s("ab")]).unwrap(), Value::Bool(true));
        assert_eq!(hmac_equal(&[s("ab"), s("ac")]).unwrap(), Value::Bool(false));
        assert_eq!(
            hmac_equal(&[s("ab"), s("abc")]).unwrap(),
            Value::Bool(false)
        );
    }

    #[test]
    fn a_non_string_operand_is_undefined() {
        assert!(matches!(
            sha256(&[Value::from(1)]),
            Err(BuiltinError::Undefined(_))
        ));
        assert!(matches!(
            hmac_sha256(&[s("x"), Value::Null]),
            Err(BuiltinError::Undefined(_))
        ));
    }
}
