//! The builtin functions tollgate adds to regorus, shared by both engines.
//!
//! regorus implements most of OPA's builtins itself; this module adds the ones it lacks
//! (crypto digests and HMAC, `io.jwt.*`, `strings.split_n`, `array.flatten`) and replaces
//! the ones a policy calls on every request with versions that cache their compiled
//! patterns per thread (`glob.match`, `regex.match`).
//! The Wasm engine's host builtins delegate to a regorus engine prepared with [`register`],
//! so a builtin decides the same on both engines: there is one implementation of each.
//!
//! Errors follow OPA's default (non-strict) mode: a builtin that cannot answer — a wrong
//! argument type, a malformed token, an invalid pattern — makes its call undefined, exactly
//! as a failing regorus builtin does with strict errors off. Only a resource limit is an
//! error, so that a limit can never turn `not builtin(...)` into true.

pub mod arrays;
pub mod calls;
pub mod crypto;
pub mod jwt;
pub mod net;
mod opa_strings;
pub mod patterns;
pub mod sprintf;
#[cfg(test)]
mod vendored_tests;

use regorus::{Engine, Value};

use super::PolicyLoadError;

/// Builtins that reach the network: a policy that calls one is refused at load, naming it.
pub const REFUSED_NETWORK_BUILTINS: &[&str] = &["http.send", "net.lookup_ip_addr"];

/// Why one of tollgate's builtins gave no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuiltinError {
    /// The call is undefined (OPA's non-strict builtin error).
    #[error("{0}")]
    Undefined(String),
    /// A resource limit: the evaluation fails.
    #[error("{0}")]
    Limit(String),
}

impl From<patterns::PatternError> for BuiltinError {
    fn from(error: patterns::PatternError) -> Self {
        match error {
            patterns::PatternError::Invalid(m) => BuiltinError::Undefined(m),
            limit @ patterns::PatternError::TooBig => BuiltinError::Limit(limit.to_string()),
        }
    }
}

/// One builtin of tollgate's: its OPA name, its number of arguments, and its implementation.
struct Builtin {
    name: &'static str,
    arity: u8,
    call: fn(&[Value]) -> Result<Value, BuiltinError>,
}

/// A table row: OPA's name, the number of arguments, the function.
macro_rules! builtin {
    ($name:literal, $arity:literal, $call:path) => {
        Builtin {
            name: $name,
            arity: $arity,
            call: $call,
        }
    };
}

/// Every builtin tollgate adds or replaces.
const BUILTINS: &[Builtin] = &[
    builtin!("array.flatten", 1, arrays::flatten),
    builtin!("crypto.md5", 1, crypto::md5),
    builtin!("crypto.sha1", 1, crypto::sha1),
    builtin!("crypto.sha256", 1, crypto::sha256),
    builtin!("crypto.hmac.md5", 2, crypto::hmac_md5),
    builtin!("crypto.hmac.sha1", 2, crypto::hmac_sha1),
    builtin!("crypto.hmac.sha256", 2, crypto::hmac_sha256),
    builtin!("crypto.hmac.sha512", 2, crypto::hmac_sha512),
    builtin!("crypto.hmac.equal", 2, crypto::hmac_equal),
    builtin!("io.jwt.decode", 1, jwt::decode),
    builtin!("io.jwt.decode_verify", 2, jwt::decode_verify),
    builtin!("io.jwt.verify_rs256", 2, jwt::rs256),
    builtin!("io.jwt.verify_rs384", 2, jwt::rs384),
    builtin!("io.jwt.verify_rs512", 2, jwt::rs512),
    builtin!("io.jwt.verify_ps256", 2, jwt::ps256),
    builtin!("io.jwt.verify_ps384", 2, jwt::ps384),
    builtin!("io.jwt.verify_ps512", 2, jwt::ps512),
    builtin!("io.jwt.verify_es256", 2, jwt::es256),
    builtin!("io.jwt.verify_es384", 2, jwt::es384),
    builtin!("io.jwt.verify_es512", 2, jwt::es512),
    builtin!("io.jwt.verify_hs256", 2, jwt::hs256),
    builtin!("io.jwt.verify_hs384", 2, jwt::hs384),
    builtin!("io.jwt.verify_hs512", 2, jwt::hs512),
    builtin!("io.jwt.verify_eddsa", 2, jwt::eddsa),
    builtin!("net.cidr_intersects", 2, net::cidr_intersects),
    builtin!("net.cidr_merge", 1, net::cidr_merge),
    builtin!("net.cidr_contains_matches", 2, net::cidr_contains_matches),
    builtin!("sprintf", 2, sprintf::call),
    builtin!("strings.split_n", 3, opa_strings::split_n),
    Builtin {
        name: "glob.match",
        arity: 3,
        call: |args| Ok(patterns::glob_match(args)?),
    },
    Builtin {
        name: "regex.match",
        arity: 2,
        call: |args| Ok(patterns::regex_match(args)?),
    },
];

/// The names of tollgate's own builtins (the native engine's extensions).
pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// Adds tollgate's builtins to `engine` (call before adding policies).
pub fn register(engine: &mut Engine) -> Result<(), PolicyLoadError> {
    for builtin in BUILTINS {
        let call = builtin.call;
        engine
            .add_extension(
                builtin.name.to_string(),
                builtin.arity,
                Box::new(move |args: Vec<Value>| match call(&args) {
                    Ok(value) => Ok(value),
                    Err(BuiltinError::Undefined(_)) => Ok(Value::Undefined),
                    Err(BuiltinError::Limit(message)) => Err(anyhow::anyhow!(message)),
                }),
            )
            .map_err(|e| PolicyLoadError::Compile(format!("builtin {}: {e}", builtin.name)))?;
    }
    opa_strings::register(engine)?;
    Ok(())
}

/// Checks the functions the engine's policies call (see [`calls`]).
pub fn check_calls(engine: &mut Engine) -> Result<(), PolicyLoadError> {
    calls::check(engine, &names()).map_err(|e| PolicyLoadError::Compile(e.to_string()))
}
