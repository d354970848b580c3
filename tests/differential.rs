//! The differential harness (issue 11): every case of the fail-open trap corpus
//! (`tests/traps/`), of the decision corpus (`tests/decisions/`) and every test of the bundled
//! policy (`policy-wasm/*_test.rego`) is evaluated by every engine path tollgate has and by two
//! independent engines; any answer that is not the stated one (OPA's) fails the test, and the
//! failure report prints the case.
//!
//! The paths (docs/TESTING.md, "The differential harness"):
//! - `native-fresh-thread`: the native engine on a thread that has never evaluated (the
//!   thread-local engine over the shared originals), raw value; for decision cases also
//!   `PolicyRevision::evaluate_value` (`native-revision`), the decision the proxy would act on.
//! - `native-own-copy`: the same thread after `prepare_thread()` (its own deep copy).
//! - `native-one-off`: the one-off evaluation the reload probe uses (`evaluate_once`).
//! - `cli-policy-eval`: `tollgate policy eval` (one process per case, two at a time). A
//!   decision case is evaluated as it is; any other query through a probe module whose
//!   decision carries the query's value as JSON in its reason.
//! - `cli-policy-test`: `tollgate policy test` over generated `test_*` rules (`with input as
//!   …`), cases batched into folders whose packages and data do not overlap; the bundled
//!   policy's tests by `tollgate policy test policy-wasm/` itself.
//! - `proxy`: the running proxy, for the trap cases that name a request (`proxy:`): 200 for
//!   an allow, 403 with the decision's reason for a deny, 403 `policy_error` otherwise.
//! - `wasm`: `opa build -t wasm` and tollgate's Wasm engine, when `opa` is on PATH (else the
//!   run prints `skipped: opa not on PATH`).
//! - `reference-opa`: OPA itself (Go, v1.20.2, strict builtin errors) — checks that each
//!   stated answer is OPA's.
//! - `reference-regopy`: rego-cpp, a second independent opinion; a case where it differs
//!   states why (`regopy:`), and the harness checks that it still differs.

#[path = "support/rego_cases.rs"]
mod rego_cases;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use rego_cases::{
    Case, Outcome, Source, Want, bundled_test_cases, decision_corpus_cases, json_to_value,
    one_line, repo_root, trap_cases, value_to_json, write_modules,
};
use serde_json::{Value as Json, json};
use support::{PyOrigin, Tollgate, command, curl, python, run_with_timeout};
use tollgate::policy::PolicyRevision;
use tollgate::policy::rego::RegoPolicy;

/// What the proxy (or any decision consumer) does with a policy's answer.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// A valid decision, as `Decision::to_json` renders it.
    Decided(Json),
    /// Anything else: a 403 `policy_error` (or `policy_timeout`).
    PolicyError(String),
    /// The process ended (signal): never acceptable.
    Crash(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Decided(d) => write!(f, "{d}"),
            Verdict::PolicyError(e) => write!(f, "policy_error ({})", one_line(e, 120)),
            Verdict::Crash(e) => write!(f, "CRASH ({})", one_line(e, 120)),
        }
    }
}

impl Verdict {
    fn same(&self, other: &Verdict) -> bool {
        match (self, other) {
            (Verdict::Decided(a), Verdict::Decided(b)) => a == b,
            (Verdict::PolicyError(_), Verdict::PolicyError(_)) => true,
            _ => false,
        }
    }
}

/// The verdict a stated answer leads to.
fn verdict_of(want: &Want) -> Verdict {
    match want {
        Want::Value(v) => match tollgate::policy::Decision::from_value(&json_to_value(v)) {
            Ok(d) => Verdict::Decided(d.to_json()),
            Err(e) => Verdict::PolicyError(e.to_string()),
        },
        Want::Undefined => Verdict::PolicyError("the decision is undefined".into()),
        Want::Error(kind) => Verdict::PolicyError(kind.clone()),
    }
}

/// The verdicts OPA's answers (either builtin-error mode) lead to.
fn expected_verdicts(case: &Case) -> Vec<Verdict> {
    vec![verdict_of(&case.want), verdict_of(case.strict_want())]
}

/// One path's answer to one case.
#[derive(Debug, Clone)]
enum Answer {
    Raw(Outcome),
    Decision(Verdict),
    /// `policy test`: whether the generated test (which asserts the stated answer) passed.
    Test(TestVerdict),
}

#[derive(Debug, Clone, PartialEq)]
enum TestVerdict {
    Pass,
    Fail,
    Error(String),
    Crash(String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Raw(o) => write!(f, "{o}"),
            Answer::Decision(v) => write!(f, "decision {v}"),
            Answer::Test(TestVerdict::Pass) => write!(f, "test PASS"),
            Answer::Test(TestVerdict::Fail) => write!(f, "test FAIL (another answer)"),
            Answer::Test(TestVerdict::Error(e)) => write!(f, "test ERROR ({})", one_line(e, 120)),
            Answer::Test(TestVerdict::Crash(e)) => write!(f, "test CRASH ({})", one_line(e, 120)),
        }
    }
}

/// Whether a raw outcome is the stated answer. For the decision corpus the value must be the
/// expected decision (compared as `Decision::to_json` renders both).
fn raw_agrees(case: &Case, outcome: &Outcome, mode: Mode) -> bool {
    if case.source == Source::DecisionCorpus {
        let got = match outcome {
            Outcome::Value(v) => verdict_of(&Want::Value(v.clone())),
            Outcome::Undefined => verdict_of(&Want::Undefined),
            Outcome::Error(e) => Verdict::PolicyError(e.clone()),
            Outcome::Crash(e) => Verdict::Crash(e.clone()),
        };
        return matches!(got, Verdict::Decided(_)) && got == verdict_of(&case.want);
    }
    match mode {
        Mode::Strict => case.strict_want().matches(outcome),
        Mode::Default => case.want.matches(outcome),
        Mode::Either => case.accepts(outcome),
    }
}

/// Which of OPA's builtin-error modes a path is held to.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `--strict-builtin-errors`: OPA's Go library as the reference driver runs it.
    Strict,
    /// OPA's default: rego-cpp.
    Default,
    /// tollgate's own paths: either of OPA's answers, the same on every path.
    Either,
}

fn agrees(case: &Case, answer: &Answer, mode: Mode) -> bool {
    match answer {
        Answer::Raw(o) => raw_agrees(case, o, mode),
        Answer::Decision(v) => {
            if case.source == Source::DecisionCorpus {
                *v == verdict_of(&case.want)
            } else {
                expected_verdicts(case).iter().any(|e| e.same(v))
            }
        }
        Answer::Test(t) => match (t, &case.want, case.strict_want()) {
            (TestVerdict::Pass, Want::Error(_), _) => false,
            (TestVerdict::Pass, _, _) => true,
            (TestVerdict::Error(_), Want::Error(_), _) => true,
            (TestVerdict::Error(_), _, Want::Error(_)) => true,
            _ => false,
        },
    }
}

/// Answers per case name, per path.
type Answers = BTreeMap<String, BTreeMap<&'static str, Answer>>;

fn record(answers: &Mutex<Answers>, case: &Case, path: &'static str, answer: Answer) {
    answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(case.name.clone())
        .or_default()
        .insert(path, answer);
}

// --- native engine paths -------------------------------------------------------------------

/// The stack of the threads that evaluate: tokio's worker threads get 2 MiB by default, and
/// the debug build recurses deeper than the release build does.
const EVAL_STACK: usize = 16 << 20;

fn native_outcome(result: Result<regorus::Value, impl std::fmt::Display>) -> Outcome {
    match result {
        Ok(v) => match value_to_json(&v) {
            Some(json) => Outcome::Value(json),
            None => Outcome::Undefined,
        },
        Err(e) => Outcome::Error(e.to_string()),
    }
}

fn evaluation_verdict(evaluation: tollgate::policy::Evaluation) -> Verdict {
    match evaluation.outcome {
        Ok(decision) => Verdict::Decided(decision.to_json()),
        Err(failure) => Verdict::PolicyError(failure.detail().to_string()),
    }
}

/// Paths (a), (b), (c), and for decisions the revision's own evaluation: a fresh thread, the
/// same thread with its own copy, the one-off path of the reload probe.
fn native_answers(case: &Case) -> Vec<(&'static str, Answer)> {
    let data = json_to_value(&case.data);
    let input = json_to_value(&case.input);
    let mut out = Vec::new();
    match RegoPolicy::compile(&case.modules, data, &case.entrypoint()) {
        Ok(policy) => {
            let (fresh, own) = std::thread::scope(|s| {
                std::thread::Builder::new()
                    .stack_size(EVAL_STACK)
                    .spawn_scoped(s, || {
                        let fresh = native_outcome(policy.evaluate(input.clone()));
                        policy.prepare_thread();
                        let own = native_outcome(policy.evaluate(input.clone()));
                        (fresh, own)
                    })
                    .expect("spawn an evaluating thread")
                    .join()
                    .unwrap_or_else(|_| {
                        let panicked = Outcome::Crash("the evaluating thread panicked".into());
                        (panicked.clone(), panicked)
                    })
            });
            out.push(("native-fresh-thread", Answer::Raw(fresh)));
            out.push(("native-own-copy", Answer::Raw(own)));
            let once = native_outcome(policy.evaluate_once(input.clone()));
            out.push(("native-one-off", Answer::Raw(once)));
        }
        Err(e) => {
            let failed = Answer::Raw(Outcome::Error(format!("load: {e}")));
            for path in NATIVE_PATHS {
                out.push((path, failed.clone()));
            }
        }
    }
    if case.is_decision() {
        let verdict = match PolicyRevision::compile(
            &case.modules,
            &case.data.to_string(),
            &case.entrypoint(),
        ) {
            Ok(revision) => std::thread::scope(|s| {
                std::thread::Builder::new()
                    .stack_size(EVAL_STACK)
                    .spawn_scoped(s, || {
                        evaluation_verdict(revision.evaluate_value(input.clone()))
                    })
                    .expect("spawn an evaluating thread")
                    .join()
                    .unwrap_or_else(|_| Verdict::Crash("the evaluating thread panicked".into()))
            }),
            Err(e) => Verdict::PolicyError(format!("load: {e}")),
        };
        out.push(("native-revision", Answer::Decision(verdict)));
    }
    out
}

fn answer_to_json(answer: &Answer) -> Json {
    match answer {
        Answer::Raw(Outcome::Value(v)) => json!({"value": v}),
        Answer::Raw(Outcome::Undefined) => json!({"undefined": true}),
        Answer::Raw(Outcome::Error(e)) => json!({"error": e}),
        Answer::Raw(Outcome::Crash(e)) => json!({"crash": e}),
        Answer::Decision(Verdict::Decided(d)) => json!({"decided": d}),
        Answer::Decision(Verdict::PolicyError(e)) => json!({"policy_error": e}),
        Answer::Decision(Verdict::Crash(e)) => json!({"decision_crash": e}),
        Answer::Test(_) => json!({"error": "not a native answer"}),
    }
}

fn answer_from_json(json: &Json) -> Answer {
    let text = |k: &str| json[k].as_str().unwrap_or_default().to_string();
    if let Some(v) = json.get("value") {
        Answer::Raw(Outcome::Value(v.clone()))
    } else if json.get("undefined").is_some() {
        Answer::Raw(Outcome::Undefined)
    } else if json.get("error").is_some() {
        Answer::Raw(Outcome::Error(text("error")))
    } else if json.get("crash").is_some() {
        Answer::Raw(Outcome::Crash(text("crash")))
    } else if let Some(d) = json.get("decided") {
        Answer::Decision(Verdict::Decided(d.clone()))
    } else if json.get("policy_error").is_some() {
        Answer::Decision(Verdict::PolicyError(text("policy_error")))
    } else {
        Answer::Decision(Verdict::Crash(text("decision_crash")))
    }
}

const WORKER_ENV: &str = "TOLLGATE_DIFFERENTIAL_NATIVE_WORKER";

/// The in-process paths run in a child process (this test binary, filtered to
/// [`native_worker`]), so that an engine that ends its process (a stack overflow) is reported
/// as a crash of that case instead of ending the harness; the child resumes after it.
fn run_native_isolated(cases: &[&Case], answers: &Mutex<Answers>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut from = 0;
    // Bounded: every round answers at least one case (or records one crash).
    for _round in 0..=cases.len() {
        if from >= cases.len() {
            return;
        }
        let out_file = dir.path().join(format!("native-{from}.jsonl"));
        let names = dir.path().join(format!("names-{from}.json"));
        let wanted: Vec<&str> = cases[from..].iter().map(|c| c.name.as_str()).collect();
        std::fs::write(&names, json!(wanted).to_string()).expect("write names");
        let exe = std::env::current_exe().expect("the test binary");
        let status = run_with_timeout(
            command(exe)
                .args([
                    "native_worker",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    WORKER_ENV,
                    format!("{}\n{}", names.display(), out_file.display()),
                ),
            Duration::from_secs(600),
        )
        .status;
        let text = std::fs::read_to_string(&out_file).unwrap_or_default();
        let mut answered = 0;
        for line in text.lines() {
            let Ok(reply) = serde_json::from_str::<Json>(line) else {
                break;
            };
            let Some(case) = cases.get(from + answered) else {
                break;
            };
            if reply["name"] != json!(case.name) {
                break;
            }
            if let Some(map) = reply["answers"].as_object() {
                for (path, answer) in map {
                    let path = [
                        "native-fresh-thread",
                        "native-own-copy",
                        "native-one-off",
                        "native-revision",
                    ]
                    .into_iter()
                    .find(|p| p == path)
                    .unwrap_or("native-fresh-thread");
                    record(answers, case, path, answer_from_json(answer));
                }
            }
            answered += 1;
        }
        from += answered;
        if from < cases.len() {
            let case = cases[from];
            let crash = format!("the process ended ({status}) evaluating this case");
            for path in NATIVE_PATHS {
                record(
                    answers,
                    case,
                    path,
                    Answer::Raw(Outcome::Crash(crash.clone())),
                );
            }
            if case.is_decision() {
                record(
                    answers,
                    case,
                    "native-revision",
                    Answer::Decision(Verdict::Crash(crash)),
                );
            }
            from += 1;
        }
    }
}

/// The child side of [`run_native_isolated`]; does nothing in a normal test run.
#[test]
fn native_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let (names, out) = spec.split_once('\n').expect("names and output file");
    let wanted: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(names).expect("read names")).expect("names");
    let all: Vec<Case> = trap_cases()
        .into_iter()
        .chain(decision_corpus_cases())
        .chain(bundled_test_cases())
        .collect();
    let by_name: BTreeMap<&str, &Case> = all.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut file = std::fs::File::create(out).expect("create the output file");
    for name in &wanted {
        let case = by_name.get(name.as_str()).expect("a known case");
        let answers: serde_json::Map<String, Json> = native_answers(case)
            .iter()
            .map(|(path, a)| (path.to_string(), answer_to_json(a)))
            .collect();
        writeln!(file, "{}", json!({"name": name, "answers": answers})).expect("write an answer");
        file.flush().expect("flush");
    }
}

// --- tollgate policy eval ------------------------------------------------------------------

const PROBE_PACKAGE: &str = "tollgate_harness_probe";

/// A module whose decision carries the query's value (as JSON, in the reason): undefined when
/// the query is, an error when the query errs.
fn probe_module(query: &str) -> String {
    format!(
        "package {PROBE_PACKAGE}\nimport rego.v1\n\
         decision := {{\"allow\": true, \"reason\": json.marshal({{\"value\": {query}}})}}\n"
    )
}

/// Turns a probe's verdict back into the query's outcome.
fn probe_outcome(verdict: Verdict) -> Outcome {
    match verdict {
        Verdict::Decided(d) => {
            let reason = d["reason"].as_str().unwrap_or_default();
            match serde_json::from_str::<Json>(reason) {
                Ok(v) if v.get("value").is_some() => Outcome::Value(v["value"].clone()),
                _ => Outcome::Error(format!("probe decision without a value: {d}")),
            }
        }
        Verdict::PolicyError(detail) if detail.contains("the decision is undefined") => {
            Outcome::Undefined
        }
        Verdict::PolicyError(detail) => Outcome::Error(detail),
        Verdict::Crash(detail) => Outcome::Crash(detail),
    }
}

/// Writes a case's modules (plus a probe when its query is not a decision), data and input
/// into `dir`; returns the entrypoint to evaluate.
fn lay_out_case(case: &Case, dir: &Path) -> String {
    // `policy eval` loads a folder's policy without its `*_test.rego` files (as the proxy does);
    // a bundled test's rules are evaluated here as ordinary rules, so they get another name.
    for path in write_modules(dir, &case.modules) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some(stem) = name.strip_suffix("_test.rego") {
            std::fs::rename(&path, dir.join(format!("{stem}_test_rules.rego"))).expect("rename");
        }
    }
    std::fs::write(dir.join("data.json"), case.data.to_string()).expect("write data.json");
    std::fs::write(dir.join("input.json"), case.input.to_string()).expect("write input.json");
    if case.is_decision() {
        case.entrypoint()
    } else {
        std::fs::write(dir.join("zz_probe.rego"), probe_module(&case.query))
            .expect("write the probe");
        format!("{PROBE_PACKAGE}/decision")
    }
}

fn run_cli_eval(case: &Case, answers: &Mutex<Answers>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).expect("mkdir");
    let entrypoint = lay_out_case(case, &policy);
    let out = run_with_timeout(
        command(Tollgate::bin())
            .args(["policy", "eval", "-p"])
            .arg(&policy)
            .arg("-i")
            .arg(policy.join("input.json"))
            .arg("-d")
            .arg(policy.join("data.json"))
            .args(["-e", &entrypoint, "--explain"]),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let verdict = match out.status.code() {
        None => Verdict::Crash(format!("{}: {}", out.status, one_line(&stderr, 200))),
        // `--explain`: `applied` is the decision tollgate would act on.
        Some(0) => match serde_json::from_str::<Json>(stdout.trim()) {
            Ok(d) => Verdict::Decided(d["applied"].clone()),
            Err(e) => Verdict::PolicyError(format!("unreadable stdout {stdout:?}: {e}")),
        },
        _ => Verdict::PolicyError(format!("exit {:?}: {}", out.status.code(), stderr.trim())),
    };
    let answer = if case.is_decision() {
        Answer::Decision(verdict)
    } else {
        Answer::Raw(probe_outcome(verdict))
    };
    record(answers, case, "cli-policy-eval", answer);
}

// --- tollgate policy test ------------------------------------------------------------------

const TEST_PACKAGE: &str = "tollgate_harness_tests";

/// The package paths and data keys a case occupies in a shared folder.
fn footprint(case: &Case) -> (Vec<Vec<String>>, BTreeSet<String>) {
    let packages = case
        .modules
        .iter()
        .filter_map(|(_, text)| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix("package "))
                .map(|p| p.trim().split('.').map(str::to_string).collect())
        })
        .collect();
    let keys = case
        .data
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    (packages, keys)
}

fn overlaps(
    a: &(Vec<Vec<String>>, BTreeSet<String>),
    b: &(Vec<Vec<String>>, BTreeSet<String>),
) -> bool {
    let prefix = |x: &Vec<String>, y: &Vec<String>| {
        let n = x.len().min(y.len());
        x[..n] == y[..n]
    };
    a.0.iter().any(|p| b.0.iter().any(|q| prefix(p, q)))
        || !a.1.is_disjoint(&b.1)
        || a.0.iter().any(|p| b.1.contains(&p[0]))
        || b.0.iter().any(|p| a.1.contains(&p[0]))
}

/// The modules and data of a case, as a key: cases with the same key share them in a folder.
fn setup_key(case: &Case) -> String {
    format!("{:?}{}", case.modules, case.data)
}

/// Groups cases into folders where no two share a package path or a data key (unless they
/// share the very same modules and data); a case whose stated answer is a compile error is
/// alone (it would refuse the whole folder).
fn batches(cases: &[&Case]) -> Vec<Vec<usize>> {
    let compile_error = |c: &Case| matches!(c.want, Want::Error(ref k) if k == "compile");
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let fp = footprint(case);
        let key = setup_key(case);
        let slot = if compile_error(case) {
            None
        } else {
            groups.iter().position(|members| {
                !compile_error(cases[members[0]])
                    && members.iter().all(|&m| {
                        setup_key(cases[m]) == key || !overlaps(&footprint(cases[m]), &fp)
                    })
            })
        };
        match slot {
            Some(g) => groups[g].push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// The generated test for one case: it holds exactly when the query gives `want`.
fn test_rule(id: usize, case: &Case, want: &Want) -> String {
    let input = case.input.to_string();
    match want {
        Want::Value(v) => format!(
            "test_c{id} if {{\n\tx := {q} with input as {input}\n\tjson.unmarshal(json.marshal(x)) == {v}\n}}\n",
            q = case.query
        ),
        Want::Undefined => format!(
            "defined_c{id} if {{\n\t_ = {q} with input as {input}\n}}\n\ntest_c{id} if not defined_c{id}\n",
            q = case.query
        ),
        Want::Error(_) => format!(
            "test_c{id} if {{\n\t_ = {q} with input as {input}\n}}\n",
            q = case.query
        ),
    }
}

/// `tollgate policy test DIR`: the verdict of each test by its full name, or the load error.
fn policy_test(dir: &Path) -> Result<BTreeMap<String, TestVerdict>, String> {
    let out = run_with_timeout(
        command(Tollgate::bin()).args(["policy", "test"]).arg(dir),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut verdicts = BTreeMap::new();
    for line in stdout.lines() {
        let (verdict, rest) = if let Some(rest) = line.strip_prefix("PASS ") {
            (TestVerdict::Pass, rest)
        } else if let Some(rest) = line.strip_prefix("FAIL ") {
            (TestVerdict::Fail, rest)
        } else if let Some(rest) = line.strip_prefix("ERROR ") {
            let message = rest.split_once("): ").map(|(_, m)| m).unwrap_or(rest);
            (TestVerdict::Error(message.to_string()), rest)
        } else {
            continue;
        };
        let name = rest.split(' ').next().unwrap_or_default().to_string();
        verdicts.insert(name, verdict);
    }
    if out.status.code().is_none() {
        return Err(format!(
            "CRASH {}: {}",
            out.status,
            one_line(&String::from_utf8_lossy(&out.stderr), 300)
        ));
    }
    if verdicts.is_empty() {
        return Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            one_line(&String::from_utf8_lossy(&out.stderr), 300)
        ));
    }
    Ok(verdicts)
}

/// Runs `cases` (with the answer each generated test asserts) through `policy test`, in
/// batches; a batch that does not load is retried case by case.
fn run_policy_test_batches(cases: &[(&Case, Want)], answers: &Mutex<Answers>) {
    let refs: Vec<&Case> = cases.iter().map(|(c, _)| *c).collect();
    let mut queue: Vec<Vec<usize>> = batches(&refs);
    while let Some(batch) = queue.pop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = serde_json::Map::new();
        let mut tests = format!("package {TEST_PACKAGE}\nimport rego.v1\n\n");
        let mut written = BTreeSet::new();
        for &i in &batch {
            let (case, want) = &cases[i];
            if written.insert(setup_key(case)) {
                let sub = dir.path().join(format!("c{i}"));
                std::fs::create_dir(&sub).expect("mkdir");
                write_modules(&sub, &case.modules);
            }
            if let Some(obj) = case.data.as_object() {
                data.extend(obj.clone());
            }
            tests.push_str(&test_rule(i, case, want));
            tests.push('\n');
        }
        std::fs::write(dir.path().join("data.json"), Json::Object(data).to_string())
            .expect("write data.json");
        std::fs::write(dir.path().join("harness_test.rego"), tests).expect("write tests");
        match policy_test(dir.path()) {
            Ok(verdicts) => {
                for &i in &batch {
                    let name = format!("data.{TEST_PACKAGE}.test_c{i}");
                    let verdict = verdicts
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| TestVerdict::Error(format!("{name} did not run")));
                    record(
                        answers,
                        cases[i].0,
                        "cli-policy-test",
                        Answer::Test(verdict),
                    );
                }
            }
            Err(e) if batch.len() > 1 => {
                eprintln!(
                    "policy test: a batch of {} did not load ({e}); case by case",
                    batch.len()
                );
                queue.extend(batch.into_iter().map(|i| vec![i]));
            }
            Err(e) => {
                let case = cases[batch[0]].0;
                let verdict = if e.starts_with("CRASH") {
                    TestVerdict::Crash(e)
                } else {
                    TestVerdict::Error(e)
                };
                record(answers, case, "cli-policy-test", Answer::Test(verdict));
            }
        }
    }
}

/// The bundled policy's tests through `tollgate policy test policy-wasm/` as users run it.
fn run_bundled_policy_test(cases: &[&Case], answers: &Mutex<Answers>) {
    let verdicts = policy_test(&repo_root().join("policy-wasm"));
    for case in cases {
        let verdict = match &verdicts {
            Ok(v) => v
                .get(&case.query)
                .cloned()
                .unwrap_or_else(|| TestVerdict::Error("not reported".into())),
            Err(e) => TestVerdict::Error(e.clone()),
        };
        record(answers, case, "cli-policy-test", Answer::Test(verdict));
    }
}

// --- the running proxy ---------------------------------------------------------------------

const DEFAULT_CALLER: &str = "spiffe://tollgate.local/harness/agent";

fn run_proxy(case: &Case, origin: &PyOrigin, answers: &Mutex<Answers>) {
    let Some(request) = &case.proxy else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    write_modules(dir.path(), &case.modules);
    let data = dir.path().join("data.json");
    std::fs::write(&data, case.data.to_string()).expect("write data.json");
    let caller = request.spiffe_id.as_deref().unwrap_or(DEFAULT_CALLER);
    let started = Tollgate::builder()
        .config(format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             identity: {{workload_spiffe_id: '{caller}'}}\n\
             policy: {{path: '{}', data: '{}'}}\n\
             upstream: {{allow_private: [127.0.0.0/8]}}\n",
            dir.path().display(),
            data.display()
        ))
        .try_start();
    let tg = match started {
        Ok(tg) => tg,
        Err(e) => {
            let v = Verdict::PolicyError(format!("tollgate did not start: {e}"));
            record(answers, case, "proxy", Answer::Decision(v));
            return;
        }
    };
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "20".into(),
        "-x".into(),
        tg.proxy_url(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    for (name, value) in &request.headers {
        args.push("-H".into());
        args.push(format!("{name}: {value}"));
    }
    args.push(origin.url("/echo"));
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let verdict = match status.trim() {
        "200" => Verdict::Decided(json!({"allow": true})),
        "403" => {
            let reason = serde_json::from_str::<Json>(body)
                .ok()
                .and_then(|b| b["reason"].as_str().map(str::to_string))
                .unwrap_or_default();
            if reason == "policy_error" {
                Verdict::PolicyError(body.to_string())
            } else {
                Verdict::Decided(json!({"allow": false, "reason": reason}))
            }
        }
        other => Verdict::PolicyError(format!("HTTP {other}: {}", one_line(body, 200))),
    };
    record(answers, case, "proxy", Answer::Decision(verdict));
}

/// What the proxy shows of a verdict: the status, and the reason of a deny.
fn proxy_view(v: &Verdict) -> Verdict {
    match v {
        Verdict::Decided(d) if d["allow"] == json!(true) => {
            Verdict::Decided(json!({"allow": true}))
        }
        Verdict::Decided(d) => {
            Verdict::Decided(json!({"allow": false, "reason": d["reason"].as_str().unwrap_or("")}))
        }
        other => other.clone(),
    }
}

// --- the Wasm engine -----------------------------------------------------------------------

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn run_wasm(case: &Case, answers: &Mutex<Answers>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let entrypoint = lay_out_case(case, dir.path());
    let bundle = dir.path().join("bundle.tar.gz");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())
        .expect("read the case folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rego"))
        .collect();
    files.sort();
    files.push(dir.path().join("data.json"));
    let out = run_with_timeout(
        command("opa")
            .args(["build", "-t", "wasm", "-e", &entrypoint, "-o"])
            .arg(&bundle)
            .args(&files),
        Duration::from_secs(120),
    );
    let verdict = if !out.status.success() {
        Verdict::PolicyError(format!(
            "opa build: {}",
            one_line(&String::from_utf8_lossy(&out.stderr), 300)
        ))
    } else {
        match PolicyRevision::load_wasm_bundle(&bundle, &entrypoint) {
            Ok(revision) => evaluation_verdict(revision.evaluate_value(json_to_value(&case.input))),
            Err(e) => Verdict::PolicyError(format!("load: {e}")),
        }
    };
    let answer = if case.is_decision() {
        Answer::Decision(verdict)
    } else {
        Answer::Raw(probe_outcome(verdict))
    };
    record(answers, case, "wasm", answer);
}

// --- the reference engines -----------------------------------------------------------------

/// Asks `tests/support/rego_reference.py --engine ENGINE` about every case: one process,
/// cases that share modules and data in one group.
fn run_reference(engine: &str, cases: &[&Case], path: &'static str, answers: &Mutex<Answers>) {
    let script = repo_root().join("tests/support/rego_reference.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let request = dir.path().join("cases.jsonl");
    let mut groups: Vec<(Json, Vec<Json>)> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for case in cases {
        let key = format!("{:?}{}", case.modules, case.data);
        let g = *index.entry(key).or_insert_with(|| {
            groups.push((
                json!({"modules": case.modules, "data": case.data}),
                Vec::new(),
            ));
            groups.len() - 1
        });
        groups[g]
            .1
            .push(json!({"id": case.name, "input": case.input, "query": case.query}));
    }
    let mut file = std::fs::File::create(&request).expect("create cases.jsonl");
    for (mut group, members) in groups {
        group["cases"] = Json::Array(members);
        writeln!(file, "{group}").expect("write cases.jsonl");
    }
    drop(file);
    let out = run_with_timeout(
        command(python())
            .arg(&script)
            .args(["--engine", engine])
            .stdin(Stdio::from(
                std::fs::File::open(&request).expect("open cases.jsonl"),
            )),
        Duration::from_secs(600),
    );
    assert!(
        out.status.success(),
        "{} --engine {engine} failed ({}): {}\nInstall the reference engines with \
         scripts/install-test-deps (PyPI regopy and opa-golib-python-bindings).",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let by_name: BTreeMap<&str, &Case> = cases.iter().map(|c| (c.name.as_str(), *c)).collect();
    for line in stdout.lines() {
        let reply: Json = serde_json::from_str(line).expect("the driver answers JSON lines");
        let Some(case) = reply["id"].as_str().and_then(|id| by_name.get(id)) else {
            continue;
        };
        let outcome = match reply["outcome"].as_str() {
            Some("value") => Outcome::Value(reply["value"].clone()),
            Some("undefined") => Outcome::Undefined,
            _ => Outcome::Error(reply["error"].as_str().unwrap_or("").to_string()),
        };
        record(answers, case, path, Answer::Raw(outcome));
    }
}

/// The error kind of an OPA error message (`eval_conflict_error`, …).
fn opa_error_kind(message: &str) -> &'static str {
    if message.contains("eval_conflict_error") {
        "conflict"
    } else if message.contains("eval_builtin_error") {
        "builtin"
    } else if message.contains("eval_type_error") {
        "type"
    } else {
        "compile"
    }
}

// --- the run -------------------------------------------------------------------------------

const NATIVE_PATHS: [&str; 3] = ["native-fresh-thread", "native-own-copy", "native-one-off"];

/// Module sets (outside the trap corpus) that rego-cpp refuses to load while OPA loads them:
/// every case of the set answered with the same parse error. Their cases are not compared with
/// rego-cpp; the run prints each such set once with rego-cpp's message.
fn regopy_refusals(cases: &[Case], answers: &Answers) -> BTreeMap<String, String> {
    // Per module set: each case with its rego-cpp and OPA answers.
    type Member<'a> = (&'a Case, Option<&'a Answer>, Option<&'a Answer>);
    let mut by_setup: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for case in cases.iter().filter(|c| c.source != Source::Trap) {
        let got = answers.get(&case.name);
        by_setup.entry(setup_key(case)).or_default().push((
            case,
            got.and_then(|g| g.get("reference-regopy")),
            got.and_then(|g| g.get("reference-opa")),
        ));
    }
    let mut refused = BTreeMap::new();
    for (key, members) in by_setup {
        let parse_error = |a: Option<&Answer>| match a {
            Some(Answer::Raw(Outcome::Error(m))) if m.starts_with("(rego-errorseq") => {
                Some(m.clone())
            }
            _ => None,
        };
        let opa_loaded = members.iter().any(|(_, _, o)| {
            !matches!(o, Some(Answer::Raw(Outcome::Error(m))) if opa_error_kind(m) == "compile")
        });
        let messages: BTreeSet<Option<String>> =
            members.iter().map(|(_, r, _)| parse_error(*r)).collect();
        if opa_loaded
            && messages.len() == 1
            && let Some(Some(message)) = messages.into_iter().next()
        {
            say(&format!(
                "differential: reference-regopy: rego-cpp refuses the modules of {} cases ({} …), \
                 which OPA loads: {}",
                members.len(),
                members[0].0.name,
                one_line(&message, 300)
            ));
            refused.insert(key, message);
        }
    }
    refused
}

/// Why rego-cpp answers differently on a case outside the trap corpus (whose cases carry
/// their own `regopy:` note): `tests/regopy_differences.yaml`, case name → reason.
fn regopy_notes() -> BTreeMap<String, String> {
    let path = repo_root().join("tests/regopy_differences.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str::<Option<BTreeMap<String, String>>>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .unwrap_or_default()
}

/// Checks every recorded answer; returns the failures as printable blocks.
fn judge(
    cases: &[Case],
    answers: &Answers,
    paths: &[&'static str],
) -> (Vec<String>, BTreeMap<&'static str, (usize, usize)>) {
    let mut failures = Vec::new();
    let mut tally: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let regopy_refused = regopy_refusals(cases, answers);
    let notes = regopy_notes();
    for case in cases {
        let empty = BTreeMap::new();
        let got = answers.get(&case.name).unwrap_or(&empty);
        let mut problems = Vec::new();
        let mut known_difference = false;
        for &path in paths {
            let Some(answer) = got.get(path) else {
                continue;
            };
            let (mode, is_regopy) = match path {
                "reference-opa" => (Mode::Strict, false),
                "reference-regopy" => (Mode::Default, true),
                _ => (Mode::Either, false),
            };
            let mut ok = agrees(case, answer, mode);
            if path == "proxy" {
                ok = match answer {
                    Answer::Decision(v) => expected_verdicts(case)
                        .iter()
                        .any(|e| proxy_view(e).same(v)),
                    _ => false,
                };
            }
            if path == "reference-opa"
                && let (Want::Error(kind), Answer::Raw(Outcome::Error(message))) =
                    (case.strict_want(), answer)
                && opa_error_kind(message) != kind
            {
                ok = false;
            }
            // A module set rego-cpp refuses is reported once (regopy_refusals), not per case.
            if is_regopy
                && !ok
                && case.regopy.is_none()
                && regopy_refused.contains_key(&setup_key(case))
            {
                ok = true;
            }
            if is_regopy {
                let note = case.regopy.as_ref().or_else(|| notes.get(&case.name));
                match (note, ok) {
                    (Some(_), true) => {
                        problems.push(format!(
                            "    {path}: now gives the stated answer; drop its `regopy:` note"
                        ));
                        ok = false;
                    }
                    (Some(_), false) => ok = true,
                    (None, _) => {}
                }
            }
            // A known difference of tollgate's engine (the case's `tollgate:` note): its own
            // paths may differ; that they still do is checked below.
            if !ok && case.tollgate.is_some() && !path.starts_with("reference-") {
                known_difference = true;
                ok = true;
            }
            let entry = tally.entry(path).or_default();
            entry.1 += 1;
            if ok {
                entry.0 += 1;
            } else {
                problems.push(format!("    {path}: {answer}"));
            }
        }
        // Between tollgate's own paths: one answer (e.g. the same builtin-error mode).
        let own: Vec<(&str, &Outcome)> = NATIVE_PATHS
            .iter()
            .chain(["cli-policy-eval", "wasm"].iter())
            .filter_map(|p| match got.get(*p) {
                Some(Answer::Raw(o)) => Some((*p, o)),
                _ => None,
            })
            .collect();
        if case.tollgate.is_some() && !known_difference {
            problems.push(
                "    every tollgate path now gives the stated answer; drop its `tollgate:` note"
                    .to_string(),
            );
        }
        if let Some((first_path, first)) = own.first().filter(|_| case.tollgate.is_none()) {
            for (path, o) in &own[1..] {
                let same = match (first, o) {
                    (Outcome::Value(a), Outcome::Value(b)) => rego_cases::same_value(a, b),
                    (Outcome::Undefined, Outcome::Undefined) => true,
                    (Outcome::Error(_), Outcome::Error(_)) => true,
                    _ => false,
                };
                if !same {
                    problems.push(format!(
                        "    {path} and {first_path} disagree: {o} vs {first}"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            let mut block = format!(
                "{} [{:?}]\n    query {}  input {}\n    stated answer: {}{}\n",
                case.name,
                case.source,
                case.query,
                one_line(&case.input.to_string(), 200),
                case.want,
                case.want_strict
                    .as_ref()
                    .map(|w| format!(" (strict builtin errors: {w})"))
                    .unwrap_or_default()
            );
            if case.source == Source::Trap {
                for (name, text) in &case.modules {
                    block.push_str(&format!("    --- {name}\n"));
                    for line in text.lines() {
                        block.push_str(&format!("    | {line}\n"));
                    }
                }
            }
            block.push_str(&problems.join("\n"));
            failures.push(block);
        }
    }
    (failures, tally)
}

fn say(line: &str) {
    // Straight to stderr: cargo's harness captures eprintln! of a passing test.
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

#[test]
fn every_engine_path_gives_opas_answer_on_every_case() {
    let traps = trap_cases();
    let corpus = decision_corpus_cases();
    let bundled = bundled_test_cases();
    let all: Vec<Case> = traps
        .iter()
        .chain(&corpus)
        .chain(&bundled)
        .cloned()
        .collect();
    let answers = Mutex::new(Answers::new());
    let with_opa = on_path("opa");
    let started = std::time::Instant::now();

    let refs: Vec<&Case> = all.iter().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        // The reference engines, each one process.
        s.spawn(|| run_reference("opa", &refs, "reference-opa", &answers));
        s.spawn(|| run_reference("regopy", &refs, "reference-regopy", &answers));
        // The CLI, one process per case, two at a time.
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(case) = all.get(i) else { break };
                    run_cli_eval(case, &answers);
                }
            });
        }
        // The proxy, for the cases that name a request.
        s.spawn(|| {
            let proxied: Vec<&Case> = traps.iter().filter(|c| c.proxy.is_some()).collect();
            if proxied.is_empty() {
                return;
            }
            let origin = PyOrigin::start(None);
            for case in proxied {
                run_proxy(case, &origin, &answers);
            }
        });
        // The native engine, then `policy test` (which for the decision corpus asserts the
        // exact value the fresh-thread path gave, so that the two are compared exactly).
        s.spawn(|| {
            run_native_isolated(&refs, &answers);
            let mut generated: Vec<(&Case, Want)> =
                traps.iter().map(|c| (c, c.want.clone())).collect();
            let fresh: BTreeMap<String, Outcome> = {
                let a = answers.lock().unwrap_or_else(|e| e.into_inner());
                corpus
                    .iter()
                    .filter_map(|c| {
                        match a.get(&c.name).and_then(|m| m.get("native-fresh-thread")) {
                            Some(Answer::Raw(o)) => Some((c.name.clone(), o.clone())),
                            _ => None,
                        }
                    })
                    .collect()
            };
            for case in &corpus {
                let want = match fresh.get(&case.name) {
                    Some(Outcome::Value(v)) => Want::Value(v.clone()),
                    Some(Outcome::Undefined) => Want::Undefined,
                    _ => Want::Error("evaluation".into()),
                };
                generated.push((case, want));
            }
            run_policy_test_batches(&generated, &answers);
            let bundled_refs: Vec<&Case> = bundled.iter().collect();
            run_bundled_policy_test(&bundled_refs, &answers);
            if with_opa {
                for case in &all {
                    run_wasm(case, &answers);
                }
            }
        });
    });

    let answers = answers.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut paths = vec![
        "native-fresh-thread",
        "native-own-copy",
        "native-one-off",
        "native-revision",
        "cli-policy-eval",
        "cli-policy-test",
        "proxy",
    ];
    if with_opa {
        paths.push("wasm");
    } else {
        say("differential: wasm: skipped: opa not on PATH");
    }
    paths.extend(["reference-opa", "reference-regopy"]);
    // Each case must have been answered by every path that applies to it.
    for case in &all {
        let got = answers.get(&case.name);
        for path in [
            "native-fresh-thread",
            "cli-policy-eval",
            "cli-policy-test",
            "reference-opa",
            "reference-regopy",
        ] {
            assert!(
                got.is_some_and(|g| g.contains_key(path)),
                "{}: no answer from {path}",
                case.name
            );
        }
    }
    let (failures, tally) = judge(&all, &answers, &paths);
    say(&format!(
        "differential: {} cases ({} traps, {} decision corpus, {} bundled tests) in {:.1}s",
        all.len(),
        traps.len(),
        corpus.len(),
        bundled.len(),
        started.elapsed().as_secs_f64()
    ));
    for (path, (ok, n)) in &tally {
        say(&format!("differential: {path:22} {ok:4} of {n:4} agree"));
    }
    let regopy_notes = traps.iter().filter(|c| c.regopy.is_some()).count();
    say(&format!(
        "differential: rego-cpp differs from OPA, with the reason stated, on {regopy_notes} trap cases"
    ));
    let known: Vec<&str> = traps
        .iter()
        .filter(|c| c.tollgate.is_some())
        .map(|c| c.name.as_str())
        .collect();
    say(&format!(
        "differential: tollgate's native engine differs from OPA, with the reason stated, on {} trap cases: {}",
        known.len(),
        known.join(", ")
    ));
    assert!(
        failures.is_empty(),
        "{} of {} cases: a path does not give the stated answer (OPA's):\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_trap_corpus_covers_the_issue_and_states_every_answer() {
    let traps = trap_cases();
    assert!(traps.len() >= 80, "{} trap cases; at least 80", traps.len());
    // The families of issue 11, each with at least one case.
    for family in [
        "undefined/assignment",
        "undefined/unification",
        "undefined/array-comprehension",
        "undefined/function",
        "undefined/in-on-missing",
        "undefined/object-lookup",
        "undefined/array-index",
        "negation/",
        "every/empty",
        "every/undefined",
        "every/number",
        "rules/default-on-a-partial-set",
        "rules/default-on-a-partial-object",
        "rules/else-chain",
        "rules/complete-rule-conflict",
        "rules/function-conflicting",
        "rules/partial-object-key-conflict",
        "with/input",
        "with/base-data",
        "with/function",
        "with/builtin",
        "numbers/int-equals-float",
        "numbers/big-integers",
        "numbers/one-third",
        "decisions/issue-ticket-policy-without-ticket",
        "decisions/team-lookup-unknown-caller",
        "decisions/credential-rule-without-credential",
        "decisions/conflicting-decisions-are-a-policy-error",
    ] {
        assert!(
            traps.iter().any(|c| c.name.starts_with(family)),
            "no trap case for {family}"
        );
    }
    let proxied = traps.iter().filter(|c| c.proxy.is_some()).count();
    assert!(
        proxied >= 10,
        "{proxied} decision cases name a proxy request"
    );
}
