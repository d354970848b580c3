//! libFuzzer entry of the `intent_headers` target; the body is `fuzz/src/intent_headers.rs` (also replayed over
//! `fuzz/corpus/intent_headers/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::intent_headers::run(data));
