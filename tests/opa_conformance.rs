//! OPA's own conformance cases (`open-policy-agent/opa`, `v1/test/cases/testdata/v1/`) on the
//! native engine: regorus' interpreter with tollgate's builtins registered
//! (`tollgate::policy::builtins::register`). Opt-in: the cases are not part of this
//! repository (docs/TESTING.md says how to get them).
//!
//! ```text
//! TOLLGATE_OPA_CASES=/work/opa-cases/v1 cargo test --test opa_conformance -- --nocapture
//! ```
//!
//! Without `TOLLGATE_OPA_CASES` the test prints `skipped: TOLLGATE_OPA_CASES not set`. With it,
//! every `*.yaml`/`*.yml` file under the folder is read in OPA's format (`cases:` with `note`,
//! `modules`, `data`, `input` or `input_term`, `query`, `want_result`, `want_error`,
//! `want_error_code`, `strict_error`, `sort_bindings`) and each case is evaluated as OPA's own
//! runner does: the query's result set is a list of binding objects (or of the last
//! expression's value when the query binds nothing), compared with `want_result`; a case that
//! wants an error passes when evaluation fails — with any error: the `ERRPASS` column counts
//! those passes and an `ERROR-PASS` line names each with the error it got (a policy refused at
//! load for an unrelated reason also "passes" such a case). The run prints pass/fail counts per
//! folder and each failing case's note. `TOLLGATE_OPA_CASES_STRICT=1` makes any failure fail
//! the test.
//! `TOLLGATE_OPA_CASES_FOLDERS=a,b` limits the run to those folders.
//!
//! The format is read as regorus' own runner reads it (regorus-0.14.1/tests/opa.rs).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use regorus::Value;
use serde::Deserialize;
use serde_json::Value as Json;

#[derive(Debug, Deserialize)]
struct CaseFile {
    cases: Vec<OpaCase>,
}

/// One case of OPA's format; fields the runner does not use (e.g. `traces`) are accepted.
#[derive(Debug, Deserialize)]
struct OpaCase {
    note: String,
    query: String,
    modules: Option<Vec<String>>,
    data: Option<Json>,
    input: Option<Json>,
    input_term: Option<String>,
    want_result: Option<Json>,
    want_error: Option<String>,
    want_error_code: Option<String>,
    strict_error: Option<bool>,
    sort_bindings: Option<bool>,
    skip: Option<bool>,
}

fn value(json: &Json) -> Result<Value, String> {
    Value::from_json_str(&json.to_string()).map_err(|e| e.to_string())
}

/// The query's result set in OPA's shape: bindings per result, or the last expression's value.
fn evaluate(case: &OpaCase) -> Result<Value, String> {
    // The engine every tollgate decision runs on: tollgate's builtins, OPA's rewrites, the
    // load-time rule and call checks (a policy tollgate refuses fails here as it would at load).
    let modules: Vec<(String, String)> = case
        .modules
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, m)| (format!("case_{i}.rego"), m.clone()))
        .collect();
    let data = case.data.as_ref().map(value).transpose()?;
    let mut engine =
        tollgate::policy::rego::build_engine(&modules, data).map_err(|e| e.to_string())?;
    if let Some(input) = &case.input {
        engine.set_input(value(input)?);
    }
    if let Some(term) = &case.input_term {
        let results = engine
            .eval_query(term.clone(), false)
            .map_err(|e| e.to_string())?;
        let input = results
            .result
            .last()
            .and_then(|r| r.expressions.last())
            .map(|e| e.value.clone())
            .ok_or("input_term has no value")?;
        engine.set_input(input);
    }
    engine.set_strict_builtin_errors(case.strict_error.unwrap_or(false));
    let results = engine
        .eval_query(case.query.clone(), false)
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for r in results.result {
        let has_bindings = r.bindings.as_object().is_ok_and(|b| !b.is_empty());
        rows.push(if has_bindings {
            r.bindings.clone()
        } else if let Some(e) = r.expressions.last() {
            e.value.clone()
        } else {
            Value::Undefined
        });
    }
    // Through JSON, as OPA's runner compares: sets become arrays, and `sort_bindings` sorts
    // each binding's array in JSON order afterwards.
    let mut json: Json =
        serde_json::from_str(&Value::from(rows).to_string()).map_err(|e| e.to_string())?;
    if case.sort_bindings == Some(true) {
        for row in json.as_array_mut().into_iter().flatten() {
            for binding in row.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                if let Some(items) = binding.as_array_mut() {
                    items.sort_by(json_order);
                }
            }
        }
    }
    value(&json)
}

/// JSON values in the order OPA's `util.Compare` gives them: null < boolean < number < string
/// < array < object; arrays element by element, objects by sorted keys then values.
fn json_order(a: &Json, b: &Json) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn rank(v: &Json) -> u8 {
        match v {
            Json::Null => 0,
            Json::Bool(_) => 1,
            Json::Number(_) => 2,
            Json::String(_) => 3,
            Json::Array(_) => 4,
            Json::Object(_) => 5,
        }
    }
    match (a, b) {
        (Json::Bool(x), Json::Bool(y)) => x.cmp(y),
        (Json::Number(x), Json::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Json::String(x), Json::String(y)) => x.cmp(y),
        (Json::Array(x), Json::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| json_order(p, q))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (Json::Object(x), Json::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            xs.iter()
                .zip(&ys)
                .map(|(p, q)| p.0.cmp(q.0).then_with(|| json_order(p.1, q.1)))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| xs.len().cmp(&ys.len()))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Whether the case passes (with the error it got, when it wanted one), and what was got when
/// it does not.
fn run_case(case: &OpaCase) -> Result<Option<String>, String> {
    // `strict_error` only selects strict builtin errors; an error is wanted only when the case
    // names one.
    let wants_error = case.want_error.is_some() || case.want_error_code.is_some();
    match (evaluate(case), &case.want_result) {
        (Ok(got), Some(want)) => {
            let want = value(want)?;
            if got == want {
                Ok(None)
            } else {
                Err(format!("got {got}, want {want}"))
            }
        }
        (Ok(got), None) if !wants_error && got == Value::new_array() => Ok(None),
        (Ok(got), None) => Err(format!(
            "got {got}, want an error ({:?})",
            case.want_error_code
        )),
        (Err(e), _) if wants_error => Ok(Some(e)),
        (Err(e), _) => Err(format!(
            "error: {}",
            e.split_whitespace().collect::<Vec<_>>().join(" ")
        )),
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
}

fn say(line: &str) {
    let _ = std::io::stdout().write_all(format!("{line}\n").as_bytes());
}

#[test]
fn opa_conformance_cases_on_the_native_engine() {
    let Some(root) = std::env::var_os("TOLLGATE_OPA_CASES").map(PathBuf::from) else {
        let _ = std::io::stderr()
            .write_all(b"opa_conformance: skipped: TOLLGATE_OPA_CASES not set (docs/TESTING.md)\n");
        return;
    };
    let only: Option<Vec<String>> = std::env::var("TOLLGATE_OPA_CASES_FOLDERS")
        .ok()
        .map(|s| s.split(',').map(|f| f.trim().to_string()).collect());
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no case files under {}", root.display());
    // folder → (pass, fail, files, passes on an error)
    let mut status: BTreeMap<String, (usize, usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut error_passes = Vec::new();
    for file in &files {
        let folder = file
            .parent()
            .and_then(|p| p.strip_prefix(&root).ok())
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        if only.as_ref().is_some_and(|o| !o.contains(&folder)) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read a case file");
        let parsed: CaseFile = match serde_yaml::from_str(&text) {
            Ok(p) => p,
            Err(e) => panic!("{}: not OPA's case format: {e}", file.display()),
        };
        let entry = status.entry(folder.clone()).or_default();
        entry.2 += 1;
        for case in parsed.cases.iter().filter(|c| c.skip != Some(true)) {
            // An engine that panics on a case fails that case, not the run.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case)))
                .unwrap_or_else(|_| Err("panicked".into()));
            match outcome {
                Ok(None) => entry.0 += 1,
                Ok(Some(error)) => {
                    entry.0 += 1;
                    entry.3 += 1;
                    error_passes.push(format!("{folder}: {} — {}", case.note, one_line(&error)));
                }
                Err(why) => {
                    entry.1 += 1;
                    failures.push(format!("{folder}: {} — {}", case.note, one_line(&why)));
                }
            }
        }
    }
    say(&format!("OPA conformance cases under {}", root.display()));
    say(&format!(
        "    {:32} {:>5} {:>5} {:>5} {:>7}",
        "FOLDER", "FILES", "PASS", "FAIL", "ERRPASS"
    ));
    let (mut run, mut pass, mut fail, mut by_error) = (0, 0, 0, 0);
    for (folder, (p, f, n, e)) in &status {
        say(&format!("    {folder:32} {n:>5} {p:>5} {f:>5} {e:>7}"));
        run += n;
        pass += p;
        fail += f;
        by_error += e;
    }
    // The files of the folders run (all of them unless TOLLGATE_OPA_CASES_FOLDERS limits it).
    say(&format!(
        "    {:32} {run:>5} {pass:>5} {fail:>5} {by_error:>7}",
        "TOTAL"
    ));
    for f in &failures {
        say(&format!("FAIL {f}"));
    }
    for e in &error_passes {
        say(&format!("ERROR-PASS {e}"));
    }
    assert!(pass + fail > 0, "no case ran");
    if std::env::var_os("TOLLGATE_OPA_CASES_STRICT").is_some() {
        assert_eq!(fail, 0, "{fail} conformance cases failed");
    }
}

/// The text on one line, at most about 300 characters: its start and its end (regorus puts the
/// source line first and the error message last).
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = flat.chars().collect();
    if chars.len() <= 300 {
        return flat;
    }
    let head: String = chars[..100].iter().collect();
    let tail: String = chars[chars.len() - 190..].iter().collect();
    format!("{head} … {tail}")
}
