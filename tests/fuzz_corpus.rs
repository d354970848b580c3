//! Replays every fuzz target's corpus (`fuzz/corpus/NAME/`) on the stable toolchain: the same
//! target bodies libFuzzer runs (`fuzz/src/NAME.rs`, included here), each file of each corpus
//! once, so a seed or a crash found once (saved into the corpus as a regression input) is
//! checked by every `scripts/test`. See docs/TESTING.md, "Fuzzing".

#[path = "../fuzz/src/config_yaml.rs"]
mod config_yaml;
#[path = "../fuzz/src/framing.rs"]
mod framing;
#[path = "../fuzz/src/intent_headers.rs"]
mod intent_headers;
#[path = "../fuzz/src/intent_token.rs"]
mod intent_token;
#[path = "../fuzz/src/kill_file.rs"]
mod kill_file;
#[path = "../fuzz/src/opa_bundle.rs"]
mod opa_bundle;
#[path = "../fuzz/src/policy_decision.rs"]
mod policy_decision;
#[path = "../fuzz/src/svid.rs"]
mod svid;
#[path = "../fuzz/src/workload_api.rs"]
mod workload_api;

use std::path::PathBuf;

/// The corpus files of `target`, sorted; a target without seeds fails (each has some).
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
}

/// Runs `run` over every file of `target`'s corpus; a panic names the file.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let files = corpus(target);
    for file in &files {
        let data = std::fs::read(file).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
    files.len()
}

#[test]
fn the_intent_token_seed_is_accepted_so_the_oracle_is_live() {
    // The oracle compares accepted tokens with the fixed one: it must be accepted, and a
    // token with the signature of another payload must not.
    assert!(intent_token::fixed_issuer_accepts(intent_token::TOKEN));
    let (signed, signature) = intent_token::TOKEN.rsplit_once('.').unwrap();
    let (header, _) = signed.split_once('.').unwrap();
    let forged = format!("{header}.eyJpc3MiOiJ4In0.{signature}");
    assert!(!intent_token::fixed_issuer_accepts(&forged));
}

#[test]
fn the_svid_seed_verifies_so_the_oracle_is_live() {
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/svid");
    let good = std::fs::read(seeds.join("leaf_and_ca.pem")).unwrap();
    assert_eq!(
        svid::verify(&good).as_deref(),
        Some("spiffe://example.org/agent")
    );
    let reversed = std::fs::read(seeds.join("wrong_order.pem")).unwrap();
    assert_eq!(svid::verify(&reversed), None);
}

#[test]
fn the_kill_file_and_decision_seeds_are_accepted_so_the_round_trips_run() {
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let kills = std::fs::read(seeds.join("kill_file/kills")).unwrap();
    let parsed = tollgate::kill::store::parse(std::path::Path::new("kills.json"), &kills);
    assert_eq!(parsed.map(|k| k.len()), Ok(3));
    let full = std::fs::read_to_string(seeds.join("policy_decision/full")).unwrap();
    let value = regorus::Value::from_json_str(&full).unwrap();
    assert!(tollgate::policy::decision::Decision::from_value(&value).is_ok());
}

/// One test per target, named after it, replaying its corpus.
macro_rules! replays {
    ($($target:ident),* $(,)?) => {
        mod replays_the_corpus_of {
            $(
                #[test]
                fn $target() {
                    super::replay(stringify!($target), super::$target::run);
                }
            )*
        }
    };
}

replays!(
    framing,
    intent_headers,
    intent_token,
    svid,
    workload_api,
    config_yaml,
    opa_bundle,
    policy_decision,
    kill_file,
);
