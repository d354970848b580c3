//! Fuzz target `opa_bundle`: OPA bundle archives (`tollgate::policy::wasm::bundle::parse`), a
//! gzip'd tar with `/policy.wasm`, data files and `.manifest`. Property: no panic, no hang, and
//! memory bounded (libFuzzer's `-rss_limit_mb` turns a decompression bomb into a finding).

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let _ = tollgate::policy::wasm::bundle::parse(data);
}
