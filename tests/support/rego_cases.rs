//! The cases `tests/differential.rs` runs on every engine path, read from the files they live
//! in (never copied): the trap corpus (`tests/traps/*.yaml`, format in tests/traps/README.md),
//! the decision corpus of the bundled policy (`tests/decisions/`), and the bundled policy's own
//! `test_*` rules (`policy-wasm/*_test.rego`, each an entrypoint whose answer is `true`).
//!
//! Include it with `#[path = "support/rego_cases.rs"] mod rego_cases;` (it does not depend on
//! the rest of `support`).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value as Json, json};

/// What an engine said about one query.
#[derive(Debug, Clone)]
pub enum Outcome {
    Value(Json),
    Undefined,
    /// An error at load or at evaluation time, with the engine's message.
    Error(String),
    /// The engine ended its process (a stack overflow, an abort): never an acceptable answer,
    /// whatever the stated one.
    Crash(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Value(v) => write!(f, "{v}"),
            Outcome::Undefined => write!(f, "undefined"),
            Outcome::Error(e) => write!(f, "error ({})", one_line(e, 160)),
            Outcome::Crash(e) => write!(f, "CRASH ({})", one_line(e, 160)),
        }
    }
}

/// A stated answer: OPA's, from the corpus.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    Value(Json),
    Undefined,
    /// conflict | builtin | type | compile
    Error(String),
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Value(v) => write!(f, "{v}"),
            Want::Undefined => write!(f, "undefined"),
            Want::Error(kind) => write!(f, "error ({kind})"),
        }
    }
}

impl Want {
    /// Whether `outcome` is this answer (an error of any kind matches an error: engines word
    /// and classify their errors differently; the kind is checked against OPA's own code).
    pub fn matches(&self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (Want::Value(want), Outcome::Value(got)) => same_value(want, got),
            (Want::Undefined, Outcome::Undefined) => true,
            (Want::Error(_), Outcome::Error(_)) => true,
            _ => false,
        }
    }
}

/// Where a case comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Trap,
    DecisionCorpus,
    BundledTest,
}

/// A request that makes the proxy build an input on which a decision case decides as on its
/// `input` (tests/traps/README.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRequest {
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub spiffe_id: Option<String>,
}

/// One query with its modules, data, input and stated answer.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub source: Source,
    pub modules: Vec<(String, String)>,
    pub data: Json,
    pub input: Json,
    /// A rule's full path: `data.tollgate.decision`.
    pub query: String,
    pub want: Want,
    /// The answer with strict builtin errors, where it differs from `want`.
    pub want_strict: Option<Want>,
    pub proxy: Option<ProxyRequest>,
    /// Why rego-cpp answers differently, where it does.
    pub regopy: Option<String>,
    /// Why tollgate's native engine still answers differently, where it does (a known
    /// difference, documented in docs/POLICY.md; the harness checks it is still real).
    pub tollgate: Option<String>,
}

impl Case {
    /// The entrypoint as tollgate's configuration writes it: `tollgate/decision`.
    pub fn entrypoint(&self) -> String {
        self.query
            .strip_prefix("data.")
            .unwrap_or(&self.query)
            .replace('.', "/")
    }

    /// Whether the entrypoint is a tollgate decision (SPEC §4.2).
    pub fn is_decision(&self) -> bool {
        self.query == "data.tollgate.decision"
    }

    /// The answer an engine with strict builtin errors must give.
    pub fn strict_want(&self) -> &Want {
        self.want_strict.as_ref().unwrap_or(&self.want)
    }

    /// Whether `outcome` is OPA's answer in either builtin-error mode.
    pub fn accepts(&self, outcome: &Outcome) -> bool {
        self.want.matches(outcome) || self.strict_want().matches(outcome)
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrapFile {
    cases: Vec<TrapCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrapCase {
    name: String,
    why: String,
    modules: Vec<String>,
    data: Option<Json>,
    input: Option<Json>,
    query: String,
    want: serde_yaml::Value,
    want_strict: Option<serde_yaml::Value>,
    proxy: Option<ProxyRequest>,
    regopy: Option<String>,
    tollgate: Option<String>,
}

fn parse_want(value: &serde_yaml::Value, case: &str) -> Want {
    if value.as_str() == Some("undefined") {
        return Want::Undefined;
    }
    let map = value.as_mapping().unwrap_or_else(|| {
        panic!("{case}: want must be `undefined`, {{value: …}} or {{error: …}}")
    });
    assert_eq!(map.len(), 1, "{case}: want has exactly one key");
    if let Some(v) = map.get("value") {
        let json: Json = serde_yaml::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{case}: want.value is not JSON: {e}"));
        return Want::Value(json);
    }
    let kind = map
        .get("error")
        .and_then(|k| k.as_str())
        .unwrap_or_else(|| {
            panic!("{case}: want must be `undefined`, {{value: …}} or {{error: …}}")
        });
    assert!(
        ["conflict", "builtin", "type", "compile"].contains(&kind),
        "{case}: unknown error kind {kind:?}"
    );
    Want::Error(kind.to_string())
}

/// The trap corpus: every case of `tests/traps/*.yaml`, in file order.
pub fn trap_cases() -> Vec<Case> {
    let dir = repo_root().join("tests/traps");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read tests/traps")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file).expect("read a trap file");
        let parsed: TrapFile =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (i, c) in parsed.cases.into_iter().enumerate() {
            assert!(
                c.name.contains('/'),
                "{}: case name {:?} is not <family>/<slug>",
                file.display(),
                c.name
            );
            assert!(!c.why.trim().is_empty(), "{}: no why", c.name);
            let want = parse_want(&c.want, &c.name);
            let want_strict = c.want_strict.as_ref().map(|w| parse_want(w, &c.name));
            if c.proxy.is_some() {
                assert_eq!(
                    c.query, "data.tollgate.decision",
                    "{}: only decision cases run through the proxy",
                    c.name
                );
            }
            cases.push(Case {
                modules: c
                    .modules
                    .into_iter()
                    .enumerate()
                    .map(|(j, text)| (format!("{stem}-{i}-{j}.rego"), text))
                    .collect(),
                data: c.data.unwrap_or_else(|| json!({})),
                input: c.input.unwrap_or_else(|| json!({})),
                query: c.query,
                want,
                want_strict,
                proxy: c.proxy,
                regopy: c.regopy,
                tollgate: c.tollgate,
                source: Source::Trap,
                name: c.name,
            });
        }
    }
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "trap case names must be unique");
    cases
}

/// The bundled policy's modules, read from `policy-wasm/` (without its tests, as `tollgate
/// run` loads them).
pub fn bundled_modules(include_tests: bool) -> Vec<(String, String)> {
    tollgate::policy::read_modules(&repo_root().join("policy-wasm"), include_tests)
        .expect("read policy-wasm")
}

/// The decision corpus: the bundled policy with `tests/decisions/data.json`, each case's
/// expected decision as the policy states it (compared as `Decision::to_json` renders it).
pub fn decision_corpus_cases() -> Vec<Case> {
    let root = repo_root();
    let data: Json = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/decisions/data.json")).expect("read data.json"),
    )
    .expect("tests/decisions/data.json is JSON");
    let modules = bundled_modules(false);
    let text = std::fs::read_to_string(root.join("tests/decisions/cases.jsonl"))
        .expect("read tests/decisions/cases.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let case: Json = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("cases.jsonl line {}: {e}", n + 1));
            Case {
                name: format!(
                    "decision-corpus/{}",
                    case["name"].as_str().unwrap_or("unnamed")
                ),
                source: Source::DecisionCorpus,
                modules: modules.clone(),
                data: data.clone(),
                input: case["input"].clone(),
                query: "data.tollgate.decision".into(),
                want: Want::Value(case["expect"].clone()),
                want_strict: None,
                proxy: None,
                regopy: None,
                tollgate: None,
            }
        })
        .collect()
}

/// The bundled policy's own tests: every `test_*` rule of `policy-wasm/*_test.rego` (found as
/// `tollgate policy test` finds them: a rule name at the start of a line), answer `true`, with
/// the folder's `data.json` as data.
pub fn bundled_test_cases() -> Vec<Case> {
    let root = repo_root();
    let modules = bundled_modules(true);
    let data_file = root.join("policy-wasm/data.json");
    let data: Json = if data_file.is_file() {
        serde_json::from_str(&std::fs::read_to_string(&data_file).expect("read data.json"))
            .expect("policy-wasm/data.json is JSON")
    } else {
        json!({})
    };
    let mut cases = Vec::new();
    for (name, text) in &modules {
        if !name.ends_with("_test.rego") {
            continue;
        }
        let package = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("package ")
                    .map(|p| p.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{name}: no package"));
        let mut seen = BTreeSet::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("test_") else {
                continue;
            };
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let rule = format!("test_{ident}");
            if !seen.insert(rule.clone()) {
                continue;
            }
            cases.push(Case {
                name: format!("bundled-test/{rule}"),
                source: Source::BundledTest,
                modules: modules.clone(),
                data: data.clone(),
                input: json!({}),
                query: format!("data.{package}.{rule}"),
                want: Want::Value(json!(true)),
                want_strict: None,
                proxy: None,
                regopy: None,
                tollgate: None,
            });
        }
    }
    cases
}

/// Rego values compare by value: numbers by magnitude (`1 == 1.0`), objects by their pairs,
/// arrays (and sets, which JSON renders as arrays) element by element.
pub fn same_value(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i128(), y.as_i128()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// The first `max` characters of `text` on one line.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

/// An engine value as JSON (sets become arrays), `None` for undefined.
pub fn value_to_json(value: &regorus::Value) -> Option<Json> {
    if *value == regorus::Value::Undefined {
        return None;
    }
    let text = value.to_json_str().ok()?;
    serde_json::from_str(&text).ok()
}

/// A JSON document as an engine value (exact integers kept as written).
pub fn json_to_value(json: &Json) -> regorus::Value {
    regorus::Value::from_json_str(&json.to_string()).unwrap_or(regorus::Value::Undefined)
}

/// Writes `modules` into `dir` under their base names, returning the paths.
pub fn write_modules(dir: &Path, modules: &[(String, String)]) -> Vec<PathBuf> {
    modules
        .iter()
        .enumerate()
        .map(|(i, (name, text))| {
            let base = Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| format!("m{i}.rego"));
            let path = dir.join(base);
            std::fs::write(&path, text).expect("write a module");
            path
        })
        .collect()
}
