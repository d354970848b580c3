//! libFuzzer entry of the `config_yaml` target; the body is `fuzz/src/config_yaml.rs` (also replayed over
//! `fuzz/corpus/config_yaml/` by `tests/fuzz_corpus.rs` on the stable toolchain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::config_yaml::run(data));
