//! The builtin functions tollgate adds to regorus, shared by both engines.
//!
//! regorus implements most of OPA's builtins itself; this module adds the ones it lacks
//! (crypto digests and HMAC, `io.jwt.*`) and replaces the ones a policy calls on every request
//! with versions that cache their compiled patterns per thread (`glob.match`, `regex.match`).
//! The Wasm engine's host builtins delegate to a regorus engine prepared with [`register`],
//! so a builtin decides the same on both engines: there is one implementation of each.

pub mod sprintf;

use regorus::Engine;

use super::PolicyLoadError;

/// Builtins that reach the network: a policy that calls one is refused at load, naming it.
pub const REFUSED_NETWORK_BUILTINS: &[&str] = &["http.send", "net.lookup_ip_addr"];

/// Adds tollgate's builtins to `engine` (call before adding policies).
pub fn register(engine: &mut Engine) -> Result<(), PolicyLoadError> {
    sprintf::register(engine)
        .map_err(|e| PolicyLoadError::Compile(format!("cannot add builtin `sprintf`: {e}")))?;
    Ok(())
}
