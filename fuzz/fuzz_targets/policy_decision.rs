//! libFuzzer entry of the `policy_decision` target; the body is `fuzz/src/policy_decision.rs` (also replayed over
//! `fuzz/corpus/policy_decision/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::policy_decision::run(data));
