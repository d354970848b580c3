//! The bodies of tollgate's fuzz targets, one module a target (docs/TESTING.md, "Fuzzing").
//! `fuzz_targets/NAME.rs` hands libFuzzer's input to `NAME::run`; `tests/fuzz_corpus.rs` in the
//! main crate includes the same files and replays every corpus on the stable toolchain.

pub mod config_yaml;
pub mod framing;
pub mod intent_headers;
pub mod intent_token;
pub mod kill_file;
pub mod opa_bundle;
pub mod policy_decision;
pub mod svid;
pub mod workload_api;
