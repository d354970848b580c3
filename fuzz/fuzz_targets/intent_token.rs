//! libFuzzer entry of the `intent_token` target; the body is `fuzz/src/intent_token.rs` (also replayed over
//! `fuzz/corpus/intent_token/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::intent_token::run(data));
