//! libFuzzer entry of the `framing` target; the body is `fuzz/src/framing.rs` (also replayed over
//! `fuzz/corpus/framing/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::framing::run(data));
