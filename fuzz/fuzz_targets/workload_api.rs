//! libFuzzer entry of the `workload_api` target; the body is `fuzz/src/workload_api.rs` (also replayed over
//! `fuzz/corpus/workload_api/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::workload_api::run(data));
