//! libFuzzer entry of the `kill_file` target; the body is `fuzz/src/kill_file.rs` (also replayed over
//! `fuzz/corpus/kill_file/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::kill_file::run(data));
