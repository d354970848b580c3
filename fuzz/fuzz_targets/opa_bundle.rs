//! libFuzzer entry of the `opa_bundle` target; the body is `fuzz/src/opa_bundle.rs` (also replayed over
//! `fuzz/corpus/opa_bundle/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::opa_bundle::run(data));
