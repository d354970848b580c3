//! The native Rego engine: regorus' interpreter, one engine per worker thread.
//!
//! Why the interpreter: it is the evaluation path regorus checks against OPA's conformance
//! suite. regorus' bytecode VM (RVM), which this engine used before, is faster but not
//! OPA-exact, and it failed *open*: an assignment from an undefined reference succeeded
//! (`t := input.headers["x-ticket"]; not startswith(t, "revoked-")` allowed a request with no
//! ticket), comprehensions kept undefined elements, conflicting complete rules gave a value,
//! and `with` did not compile. A policy that `opa test` passes must decide the same here.
//!
//! A revision is parsed, checked (every call a known builtin or a function of the policy; no
//! network builtin) and prepared once, off the request path, into a template `Engine`.
//! Evaluation needs `&mut Engine`, so each worker thread keeps its own engine in a
//! thread-local — a cheap clone of the template, made on the thread's first request for the
//! revision — and evaluation never takes a lock shared between workers.
//!
//! Nor does it share reference counts. Evaluating clones values of the data and of the
//! policy's syntax tree (regorus values are `Arc`s); two threads incrementing the same counts
//! bounce cache lines between cores. So each worker thread also gets its own deep copy of the
//! policy and data — parsed from source *by that thread* and while it is idle: tokio calls
//! [`RegoPolicy::prepare_thread`] through the runtime's park hook (`policy::on_worker_park`).
//! Until then the thread's engine is the cheap clone: correct, only slower under contention.
//!
//! Builtin errors follow OPA's default (non-strict) mode: the call is undefined.

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, LimitError, Value};

use super::{
    PolicyLoadError, builtins, document_entrypoint, opa_rewrite, rules_check, source_limits,
};

/// Wall-clock bound on one decision: a runaway policy becomes a deny, not a stuck worker.
pub const DECISION_TIME_LIMIT: Duration = Duration::from_millis(100);

/// The bound on one evaluation of the Rego engine: [`DECISION_TIME_LIMIT`] in a release build.
/// An unoptimized (debug) build — the test suite's — runs the interpreter and the pattern
/// compilers many times slower, and on a loaded two-core CI machine the bundled policy's first
/// evaluation in a fresh process passed 1 s (a `glob.match` compiles its pattern once per
/// thread); there the bound is 5 s, still a deny. The Wasm engine's compiled code is optimized
/// in every build and keeps [`DECISION_TIME_LIMIT`].
#[cfg(not(debug_assertions))]
pub const EVAL_TIME_LIMIT: Duration = DECISION_TIME_LIMIT;
/// See the release value above.
#[cfg(debug_assertions)]
pub const EVAL_TIME_LIMIT: Duration = Duration::from_secs(5);
/// Interpreter work units between two looks at the clock.
const TIME_CHECK_INTERVAL: u32 = 64;

static NEXT_POLICY_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's engine, the id of the revision it holds, and whether it is the thread's
    /// own deep copy (`true`) or a clone sharing the template's values (`false`).
    static WORKER_ENGINE: RefCell<Option<(u64, bool, Engine)>> = const { RefCell::new(None) };
}

/// One compiled revision of a Rego policy with its data.
pub struct RegoPolicy {
    id: u64,
    /// Policies, data and builtins loaded and prepared; cloned per thread.
    template: Engine,
    /// The rule evaluated, e.g. `data.tollgate.decision`.
    entrypoint: String,
    /// The sources and the data's JSON, for the per-thread deep copies.
    modules: Arc<[(String, String)]>,
    data_json: Arc<str>,
}

/// Why an evaluation produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("policy evaluation exceeded its time limit")]
    Timeout,
    #[error("policy evaluation failed: {0}")]
    Failed(String),
}

/// Builds an engine over `modules` and `data`, with tollgate's builtins and limits, and every
/// call checked. Used for a revision's template, for the threads' deep copies, and by
/// `policy test`, so every path evaluates with the same builtins and the same semantics.
pub fn build_engine(
    modules: &[(String, String)],
    data: Option<Value>,
) -> Result<Engine, PolicyLoadError> {
    let mut engine = Engine::new();
    source_limits::apply(&mut engine);
    engine.set_strict_builtin_errors(false);
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: NonZeroU32::new(TIME_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
    });
    builtins::register(&mut engine)?;
    for (name, source) in modules {
        // OPA's meaning of `not` over undefined operands and of partial rule heads (see `opa_rewrite`); a module that does
        // not parse is reported with regorus' message on the text as written.
        let text = opa_rewrite::rewrite(name, source)
            .map_err(|e| PolicyLoadError::Compile(format!("{name}: {e}")))?;
        engine
            .add_policy(name.clone(), text)
            .map_err(|e| PolicyLoadError::Compile(format!("{name}: {e}")))?;
    }
    rules_check::check(&mut engine).map_err(|e| PolicyLoadError::Compile(e.to_string()))?;
    builtins::check_calls(&mut engine)?;
    if let Some(data) = data {
        engine
            .add_data(data)
            .map_err(|e| PolicyLoadError::Data(e.to_string()))?;
    }
    Ok(engine)
}

/// The packages the modules declare (`authz, tollgate.lib`), or `none`.
fn packages_found(engine: &Engine) -> String {
    let mut packages: Vec<String> = engine
        .get_packages()
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.strip_prefix("data.").unwrap_or(&p).to_string())
        .collect();
    packages.sort();
    packages.dedup();
    if packages.is_empty() {
        "none".into()
    } else {
        packages.join(", ")
    }
}

impl RegoPolicy {
    /// Parses and checks `modules` (name, source) for the rule path `entrypoint`
    /// (`tollgate/decision`), with `data` as the base document.
    pub fn compile(
        modules: &[(String, String)],
        data: Value,
        entrypoint: &str,
    ) -> Result<RegoPolicy, PolicyLoadError> {
        let data_json: Arc<str> = data
            .to_json_str()
            .map_err(|e| PolicyLoadError::Data(e.to_string()))?
            .into();
        let rule = format!("data.{}", entrypoint.replace('/', "."));
        let mut template = build_engine(modules, Some(data.clone()))?;
        // Refuses an entrypoint no rule defines, and prepares the engine (rule analysis and
        // scheduling), so that every clone starts prepared.
        let Err(error) = template.compile_with_entrypoint(&rule.as_str().into()) else {
            return Ok(RegoPolicy::prepared(
                template,
                rule,
                modules.into(),
                data_json,
            ));
        };
        let message = error.to_string();
        if !message.contains("not a valid rule path") {
            return Err(PolicyLoadError::Compile(format!(
                "entrypoint {rule}: {message}"
            )));
        }
        if !document_entrypoint::built_by_ref_heads(&mut template, &rule) {
            return Err(PolicyLoadError::EntrypointMissing {
                entrypoint: entrypoint.to_string(),
                rule,
                packages: packages_found(&template),
            });
        }
        // A document that rules with ref heads build: evaluated through one added rule.
        let mut with_rule = modules.to_vec();
        with_rule.push(document_entrypoint::module(&rule));
        let mut template = build_engine(&with_rule, Some(data))?;
        template
            .compile_with_entrypoint(&document_entrypoint::RULE.into())
            .map_err(|e| PolicyLoadError::Compile(format!("entrypoint {rule}: {e}")))?;
        Ok(RegoPolicy::prepared(
            template,
            document_entrypoint::RULE.to_string(),
            with_rule.into(),
            data_json,
        ))
    }

    /// A revision around a compiled `template`, evaluated once on an empty input: the result
    /// does not matter (an empty input may well be an error); the preparation does.
    fn prepared(
        mut template: Engine,
        entrypoint: String,
        modules: Arc<[(String, String)]>,
        data_json: Arc<str>,
    ) -> RegoPolicy {
        template.set_input(Value::new_object());
        let _ = template.eval_rule(entrypoint.clone());
        RegoPolicy {
            id: NEXT_POLICY_ID.fetch_add(1, Ordering::Relaxed),
            template,
            entrypoint,
            modules,
            data_json,
        }
    }

    /// The rule path evaluated, e.g. `data.tollgate.decision`.
    pub fn entrypoint(&self) -> &str {
        &self.entrypoint
    }

    /// Evaluates the entrypoint for one input on this thread's engine.
    pub fn evaluate(&self, input: Value) -> Result<Value, EvalError> {
        WORKER_ENGINE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let engine = match &mut *slot {
                Some((id, _, engine)) if *id == self.id => engine,
                other => {
                    // Never a deep copy here: that is work for an idle moment, not a request.
                    &mut other.insert((self.id, false, self.template.clone())).2
                }
            };
            eval(engine, input, &self.entrypoint)
        })
    }

    /// Gives this thread its own deep copy of the policy and data, unless it has one for this
    /// revision already. Called by idle worker threads; cheap when there is nothing to do.
    pub fn prepare_thread(&self) {
        WORKER_ENGINE.with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return;
            };
            if matches!(&*slot, Some((id, true, _)) if *id == self.id) {
                return;
            }
            // Marked prepared even when the copy fails (it would fail again): the thread then
            // works on a clone of the template, which decides the same.
            let engine = self.deep_copy().unwrap_or_else(|| self.template.clone());
            *slot = Some((self.id, true, engine));
        });
    }

    /// Evaluates on an engine of its own, leaving the thread's alone (for one-off
    /// evaluations off the request path: reload probes, `policy eval`).
    pub fn evaluate_once(&self, input: Value) -> Result<Value, EvalError> {
        let mut engine = self.template.clone();
        eval(&mut engine, input, &self.entrypoint)
    }

    /// Evaluates another rule of the same revision once (e.g. a data-validation entrypoint).
    pub fn evaluate_rule_once(&self, rule: &str, input: Value) -> Result<Value, EvalError> {
        let mut engine = self.template.clone();
        eval(&mut engine, input, rule)
    }

    /// A new engine parsed from the sources by the calling thread: shares no value with the
    /// template or with other threads.
    fn deep_copy(&self) -> Option<Engine> {
        let data = Value::from_json_str(&self.data_json).ok()?;
        let mut engine = build_engine(&self.modules, Some(data)).ok()?;
        engine.set_input(Value::new_object());
        let _ = engine.eval_rule(self.entrypoint.clone());
        Some(engine)
    }
}

fn eval(engine: &mut Engine, input: Value, rule: &str) -> Result<Value, EvalError> {
    engine.set_input(input);
    engine.eval_rule(rule.to_string()).map_err(classify)
}

/// Whether this thread's engine is its own deep copy (`Some(true)`), a clone of the template
/// (`Some(false)`), or does not exist yet (`None`). For tests of the idle-time preparation.
#[cfg(test)]
pub(crate) fn thread_has_own_copy() -> Option<bool> {
    WORKER_ENGINE.with(|c| c.borrow().as_ref().map(|(_, own, _)| *own))
}

fn classify(error: anyhow::Error) -> EvalError {
    if error.chain().any(|cause| {
        matches!(
            cause.downcast_ref(),
            Some(LimitError::TimeLimitExceeded { .. })
        )
    }) {
        return EvalError::Timeout;
    }
    EvalError::Failed(format!("{error:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(source: &str) -> RegoPolicy {
        RegoPolicy::compile(
            &[("p.rego".into(), source.into())],
            Value::from_json_str(r#"{"limit": 3}"#).unwrap(),
            "t/decision",
        )
        .unwrap()
    }

    fn input(json: &str) -> Value {
        Value::from_json_str(json).unwrap()
    }

    #[test]
    fn evaluates_with_input_and_data() {
        let p = policy("package t\ndecision := {\"allow\": input.n < data.limit}\n");
        assert_eq!(
            p.evaluate(input(r#"{"n": 1}"#)).unwrap(),
            input(r#"{"allow": true}"#)
        );
        assert_eq!(
            p.evaluate(input(r#"{"n": 5}"#)).unwrap(),
            input(r#"{"allow": false}"#)
        );
    }

    #[test]
    fn an_assignment_from_an_undefined_reference_fails_the_body() {
        // The RVM let this through (fail open); OPA fails the body, so the default holds.
        let p = policy(
            "package t\ndefault allow := false\n\
             allow if {\n  t := input.headers[\"x-ticket\"]\n  not startswith(t, \"revoked-\")\n}\n\
             decision := {\"allow\": allow}\n",
        );
        assert_eq!(
            p.evaluate(input(r#"{"headers": {}}"#)).unwrap(),
            input(r#"{"allow": false}"#)
        );
        assert_eq!(
            p.evaluate(input(r#"{"headers": {"x-ticket": "ok"}}"#))
                .unwrap(),
            input(r#"{"allow": true}"#)
        );
    }

    #[test]
    fn conflicting_complete_rules_are_an_error_not_a_decision() {
        let p = policy(
            "package t\ndecision := {\"allow\": true} if input.a\n\
             decision := {\"allow\": false} if input.b\n",
        );
        let error = p.evaluate(input(r#"{"a": true, "b": true}"#)).unwrap_err();
        assert!(matches!(error, EvalError::Failed(_)), "{error}");
    }

    #[test]
    fn reuses_the_thread_engine_across_revisions() {
        let a = policy("package t\ndecision := {\"allow\": true}\n");
        let b = policy("package t\ndecision := {\"allow\": false}\n");
        for _ in 0..3 {
            assert_eq!(
                a.evaluate(Value::new_object()).unwrap()["allow"],
                Value::from(true)
            );
            assert_eq!(
                b.evaluate(Value::new_object()).unwrap()["allow"],
                Value::from(false)
            );
        }
    }

    #[test]
    fn rejects_syntax_errors_and_missing_entrypoints_at_compile_time() {
        for source in [
            "package t\ndecision := {\n",
            "package t\nallow := true\n",
            "package other\ndecision := {\"allow\": true}\n",
        ] {
            let result = RegoPolicy::compile(
                &[("p.rego".into(), source.into())],
                Value::new_object(),
                "t/decision",
            );
            assert!(
                matches!(
                    result,
                    Err(PolicyLoadError::Compile(_) | PolicyLoadError::EntrypointMissing { .. })
                ),
                "{source}"
            );
        }
    }

    #[test]
    fn a_missing_entrypoint_names_it_and_the_packages_found() {
        for (source, packages) in [
            ("package authz\ndecision := {\"allow\": true}\n", "authz"),
            ("package t\nallow := true\n", "t"),
        ] {
            let error = RegoPolicy::compile(
                &[("p.rego".into(), source.into())],
                Value::new_object(),
                "t/decision",
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(error.contains("entrypoint t/decision"), "{error}");
            assert!(error.contains("data.t.decision"), "{error}");
            assert!(
                error.contains(&format!("packages found: {packages}")),
                "{error}"
            );
        }
    }

    #[test]
    fn refuses_network_and_unknown_builtins_at_load_naming_them() {
        for (source, name) in [
            (
                "package t\ndecision := {\"allow\": http.send({}).status_code == 200}\n",
                "http.send",
            ),
            (
                "package t\ndecision := {\"allow\": count(net.lookup_ip_addr(\"a\")) > 0}\n",
                "net.lookup_ip_addr",
            ),
            (
                "package t\ndecision := {\"allow\": regex.matches(\"a\", \"a\")}\n",
                "regex.matches",
            ),
            (
                "package t\ndecision := {\"allow\": true} if { x := nosuch(1); x }\n",
                "nosuch",
            ),
        ] {
            let error = RegoPolicy::compile(
                &[("p.rego".into(), source.into())],
                Value::new_object(),
                "t/decision",
            )
            .err()
            .unwrap_or_else(|| panic!("{source} loaded"));
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn accepts_calls_of_the_policys_own_functions_and_imports() {
        let modules = [
            (
                "lib.rego".to_string(),
                "package lib\nok(x) if x > 1\n".to_string(),
            ),
            (
                "p.rego".to_string(),
                "package t\nimport data.lib\nlocal(x) := x * 2\n\
                 decision := {\"allow\": lib.ok(local(input.n))}\n"
                    .to_string(),
            ),
        ];
        let p = RegoPolicy::compile(&modules, Value::new_object(), "t/decision").unwrap();
        assert_eq!(
            p.evaluate(input(r#"{"n": 1}"#)).unwrap(),
            input(r#"{"allow": true}"#)
        );
    }

    #[test]
    fn a_runaway_policy_times_out() {
        let p = policy(
            "package t\ndecision := {\"allow\": count([x | some x in numbers.range(1, 100000000)]) > 0}\n",
        );
        assert_eq!(
            p.evaluate(Value::new_object()).unwrap_err(),
            EvalError::Timeout
        );
    }

    #[test]
    fn returns_undefined_when_no_rule_matches() {
        let p = policy("package t\ndecision := {\"allow\": true} if input.never\n");
        assert_eq!(p.evaluate(Value::new_object()).unwrap(), Value::Undefined);
    }

    #[test]
    fn an_idle_thread_moves_to_its_own_copy_and_decides_the_same() {
        let p = Arc::new(policy(
            "package t\ndecision := {\"allow\": input.n < data.limit, \"reason\": \"below the limit\"}\n",
        ));
        let input = input(r#"{"n": 2}"#);
        let expected = p.evaluate_once(input.clone()).unwrap();
        assert_eq!(expected["allow"], Value::from(true), "{expected}");
        let own = || WORKER_ENGINE.with(|c| c.borrow().as_ref().map(|(_, own, _)| *own));
        let p2 = p.clone();
        std::thread::spawn(move || {
            assert_eq!(p2.evaluate(input.clone()).unwrap(), expected);
            assert_eq!(own(), Some(false), "a request never waits for a copy");
            p2.prepare_thread();
            assert_eq!(own(), Some(true));
            assert_eq!(p2.evaluate(input.clone()).unwrap(), expected);
            p2.prepare_thread();
            assert_eq!(own(), Some(true));
            // A new revision: a clone first, then its own copy again.
            let other = policy("package t\ndecision := {\"allow\": false}\n");
            other.evaluate(input.clone()).unwrap();
            assert_eq!(own(), Some(false));
            other.prepare_thread();
            assert_eq!(own(), Some(true));
            assert_eq!(other.evaluate(input).unwrap()["allow"], Value::from(false));
        })
        .join()
        .unwrap();
    }
}
