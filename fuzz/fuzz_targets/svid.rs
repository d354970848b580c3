//! libFuzzer entry of the `svid` target; the body is `fuzz/src/svid.rs` (also replayed over
//! `fuzz/corpus/svid/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::svid::run(data));
