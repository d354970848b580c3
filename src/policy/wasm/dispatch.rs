//! Host builtins: a module's calls to the builtins OPA does not compile into Wasm (`sprintf`,
//! `time.*`, `crypto.*`, `io.jwt.*`, …) are answered by regorus, with tollgate's builtins
//! registered ([`crate::policy::builtins::register`]), so a builtin has one implementation
//! shared by both engines.
//!
//! Per revision, [`HostBuiltins::prepare`] checks every builtin the module lists and builds one
//! regorus engine holding, for each, rules that call it on `input` — `b<id>_<n> :=
//! name(input[0], …, input[n-1])` for every arity `n` the ABI has (0–4; the module's
//! `opa_builtin<n>` call says which). Each instance clones that engine (off the request path);
//! a call sets the input and evaluates one rule.
//!
//! Semantics follow OPA's Go SDK (`internal/wasm/sdk/internal/wasm/bindings.go`): an undefined
//! result is returned as NULL (undefined in the module); a builtin error is also undefined
//! ("non-strict eval is the only mode in wasm"), and is recorded so that tollgate can refuse an
//! allow reached after it ([`super::WasmPolicy::evaluate`]); an error that must stop evaluation
//! (regorus' resource limits) ends it.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use crate::policy::builtins::{REFUSED_NETWORK_BUILTINS, calls, names, register};

/// The package of the generated policy (not a name a module's builtin can take).
const PACKAGE: &str = "tollgate_wasm_host";
/// Arities the ABI can call (`opa_builtin0` … `opa_builtin4`).
pub const MAX_ARITY: usize = 4;
/// Builtins whose result OPA fixes for one evaluation (regorus' `must_cache` list): asked twice
/// in one evaluation, they answer the same.
const PER_EVALUATION: &[&str] = &["opa.runtime", "rand.intn", "time.now_ns", "uuid.rfc4122"];

/// Why a module's builtins cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuiltinError {
    #[error("the policy needs builtin `{0}`, which reaches the network; tollgate refuses it")]
    Network(String),
    #[error("the policy needs builtin `{name}`, which tollgate does not provide ({detail})")]
    Missing { name: String, detail: String },
    #[error("the module lists a builtin with an unusable name: {0:?}")]
    BadName(String),
}

/// A builtin that failed during one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinFailure {
    /// The builtin's name.
    pub name: String,
    /// regorus' message.
    pub message: String,
}

/// What a call came to.
#[derive(Debug)]
pub enum CallOutcome {
    /// A value for the module.
    Value(Value),
    /// Undefined (NULL in the module), also after a recorded builtin error.
    Undefined,
    /// The evaluation must stop (a resource limit), with the reason.
    Stop(String),
}

/// One builtin of the module.
#[derive(Debug)]
struct Entry {
    name: String,
    /// `data.tollgate_wasm_host.b<id>_<n>` for n = 0..=MAX_ARITY.
    rules: Vec<String>,
    per_evaluation: bool,
}

/// A revision's host builtins, prepared and checked once.
pub struct HostBuiltins {
    entries: BTreeMap<i32, Entry>,
    engine: Option<Engine>,
}

impl std::fmt::Debug for HostBuiltins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuiltins")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HostInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostInstance")
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// Is `name` a dotted Rego reference (`io.jwt.decode`), safe to write into a policy?
fn is_reference(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

impl HostBuiltins {
    /// No builtins (a module that imports none).
    pub fn none() -> Arc<HostBuiltins> {
        Arc::new(HostBuiltins {
            entries: BTreeMap::new(),
            engine: None,
        })
    }

    /// Checks and prepares the builtins a module lists (`builtins()`: name → id). Fails naming
    /// the first one that is refused (network) or that neither regorus nor tollgate provides.
    pub fn prepare(listed: &BTreeMap<String, i64>) -> Result<Arc<HostBuiltins>, BuiltinError> {
        if listed.is_empty() {
            return Ok(HostBuiltins::none());
        }
        let mut source = format!("package {PACKAGE}\n");
        let mut entries = BTreeMap::new();
        // The native engine's own list (regorus' builtins and tollgate's), so both engines
        // accept exactly the same builtins.
        let supported = calls::supported(&names());
        for (name, id) in listed {
            if REFUSED_NETWORK_BUILTINS.contains(&name.as_str()) {
                return Err(BuiltinError::Network(name.clone()));
            }
            let id = i32::try_from(*id).map_err(|_| BuiltinError::BadName(name.clone()))?;
            if !is_reference(name) || name.starts_with(PACKAGE) {
                return Err(BuiltinError::BadName(name.clone()));
            }
            if !supported.contains_key(name) {
                return Err(BuiltinError::Missing {
                    name: name.clone(),
                    detail: "neither regorus nor tollgate implements it".to_string(),
                });
            }
            let mut rules = Vec::with_capacity(MAX_ARITY + 1);
            for arity in 0..=MAX_ARITY {
                let args: Vec<String> = (0..arity).map(|i| format!("input[{i}]")).collect();
                let rule = format!("b{}_{arity}", id.unsigned_abs());
                source.push_str(&format!("{rule} := {name}({})\n", args.join(", ")));
                rules.push(format!("data.{PACKAGE}.{rule}"));
            }
            entries.insert(
                id,
                Entry {
                    name: name.clone(),
                    rules,
                    per_evaluation: PER_EVALUATION.contains(&name.as_str()),
                },
            );
        }
        let missing = |name: &str, detail: String| BuiltinError::Missing {
            name: name.to_string(),
            detail,
        };
        let mut engine = Engine::new();
        let first = entries
            .values()
            .next()
            .map(|e| e.name.clone())
            .unwrap_or_default();
        register(&mut engine).map_err(|e| missing(&first, e.to_string()))?;
        engine.set_strict_builtin_errors(true);
        engine
            .add_policy("tollgate-wasm-host.rego".to_string(), source)
            .map_err(|e| missing(&first, one_line(&e.to_string())))?;
        // A known builtin (or extension) called on undefined arguments is undefined; an unknown
        // one is an error ("could not find function"). Arity 1 is probed: undefined arguments
        // stop every builtin before its arity is checked.
        engine.set_input(Value::new_array());
        for entry in entries.values() {
            if let Err(e) = engine.eval_rule(entry.rules[1].clone()) {
                return Err(missing(&entry.name, one_line(&e.to_string())));
            }
        }
        Ok(Arc::new(HostBuiltins {
            entries,
            engine: Some(engine),
        }))
    }

    /// Host builtin names, for `tollgate check` and the docs.
    pub fn names(&self) -> Vec<String> {
        self.entries.values().map(|e| e.name.clone()).collect()
    }

    /// The per-instance state: its own clone of the engine.
    pub fn instance(self: &Arc<Self>) -> HostInstance {
        HostInstance {
            builtins: self.clone(),
            engine: self.engine.clone(),
            memo: BTreeMap::new(),
            failure: None,
            deadline: None,
        }
    }
}

/// regorus errors carry a source excerpt over several lines: keep the last, the message.
fn one_line(message: &str) -> String {
    message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

/// One instance's builtin state.
pub struct HostInstance {
    builtins: Arc<HostBuiltins>,
    engine: Option<Engine>,
    /// Results fixed for this evaluation ([`PER_EVALUATION`]).
    memo: BTreeMap<(i32, Value), Value>,
    /// The first builtin that failed in this evaluation.
    failure: Option<BuiltinFailure>,
    /// When this evaluation's time is up.
    deadline: Option<Instant>,
}

impl HostInstance {
    /// Forgets the previous evaluation (its per-evaluation results and failure).
    pub fn begin(&mut self, deadline: Instant) {
        self.memo.clear();
        self.failure = None;
        self.deadline = Some(deadline);
    }

    /// The first builtin that failed in this evaluation, if any.
    pub fn failure(&self) -> Option<&BuiltinFailure> {
        self.failure.as_ref()
    }

    /// The builtin's name for a call's id.
    pub fn name(&self, id: i32) -> Option<&str> {
        self.builtins.entries.get(&id).map(|e| e.name.as_str())
    }

    /// Calls builtin `id` with `args`.
    pub fn call(&mut self, id: i32, args: Vec<Value>) -> CallOutcome {
        let Some(entry) = self.builtins.entries.get(&id) else {
            return CallOutcome::Stop(format!("the module called unknown builtin id {id}"));
        };
        let Some(rule) = entry.rules.get(args.len()) else {
            return CallOutcome::Stop(format!(
                "`{}` called with {} arguments",
                entry.name,
                args.len()
            ));
        };
        let Some(engine) = self.engine.as_mut() else {
            return CallOutcome::Stop("no builtins were prepared".to_string());
        };
        let input = Value::from(args);
        let key = entry.per_evaluation.then(|| (id, input.clone()));
        if let Some(key) = &key
            && let Some(value) = self.memo.get(key)
        {
            return CallOutcome::Value(value.clone());
        }
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(100));
        if left.is_zero() {
            return CallOutcome::Stop("evaluation exceeded its limit".to_string());
        }
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: left,
            check_interval: NonZeroU32::MIN,
        });
        engine.set_input(input);
        match engine.eval_rule(rule.clone()) {
            Ok(Value::Undefined) => CallOutcome::Undefined,
            Ok(value) => {
                if let Some(key) = key {
                    self.memo.insert(key, value.clone());
                }
                CallOutcome::Value(value)
            }
            Err(e) if e.downcast_ref::<regorus::LimitError>().is_some() => CallOutcome::Stop(
                format!("builtin `{}`: {}", entry.name, one_line(&e.to_string())),
            ),
            Err(e) => {
                if self.failure.is_none() {
                    self.failure = Some(BuiltinFailure {
                        name: entry.name.clone(),
                        message: one_line(&e.to_string()),
                    });
                }
                CallOutcome::Undefined
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(names: &[(&str, i64)]) -> BTreeMap<String, i64> {
        names.iter().map(|(n, i)| (n.to_string(), *i)).collect()
    }

    fn json(text: &str) -> Value {
        Value::from_json_str(text).unwrap()
    }

    #[test]
    fn calls_builtins_by_id_and_arity() {
        let host = HostBuiltins::prepare(&listed(&[("sprintf", 0), ("base64.encode", 3)])).unwrap();
        let mut instance = host.instance();
        instance.begin(Instant::now() + Duration::from_secs(5));
        match instance.call(0, vec![json(r#""%q and %d""#), json(r#"["x", 7]"#)]) {
            CallOutcome::Value(v) => assert_eq!(v, Value::from("\"x\" and 7")),
            other => panic!("{other:?}"),
        }
        match instance.call(3, vec![json(r#""hi""#)]) {
            CallOutcome::Value(v) => assert_eq!(v, Value::from("aGk=")),
            other => panic!("{other:?}"),
        }
        assert!(instance.failure().is_none());
    }

    #[test]
    fn a_builtin_error_is_undefined_and_recorded() {
        let host = HostBuiltins::prepare(&listed(&[("base64.decode", 1)])).unwrap();
        let mut instance = host.instance();
        instance.begin(Instant::now() + Duration::from_secs(5));
        assert!(matches!(
            instance.call(1, vec![json("7")]),
            CallOutcome::Undefined
        ));
        let failure = instance.failure().unwrap();
        assert_eq!(failure.name, "base64.decode");
        // The next evaluation starts clean.
        instance.begin(Instant::now() + Duration::from_secs(5));
        assert!(instance.failure().is_none());
    }

    #[test]
    fn refuses_unknown_network_and_malformed_builtins() {
        let error = HostBuiltins::prepare(&listed(&[("custom.nobody_provides", 0)])).unwrap_err();
        assert!(
            matches!(&error, BuiltinError::Missing { name, .. } if name == "custom.nobody_provides"),
            "{error}"
        );
        for network in REFUSED_NETWORK_BUILTINS {
            let error = HostBuiltins::prepare(&listed(&[(network, 0)])).unwrap_err();
            assert_eq!(error, BuiltinError::Network(network.to_string()));
        }
        for bad in ["x := 1\nallow", "a..b", "", "tollgate_wasm_host.x", "1x"] {
            let error = HostBuiltins::prepare(&listed(&[(bad, 0)])).unwrap_err();
            assert_eq!(error, BuiltinError::BadName(bad.to_string()));
        }
    }

    #[test]
    fn time_is_fixed_for_one_evaluation() {
        let host = HostBuiltins::prepare(&listed(&[("time.now_ns", 0)])).unwrap();
        let mut instance = host.instance();
        instance.begin(Instant::now() + Duration::from_secs(5));
        let first = instance.call(0, vec![]);
        let second = instance.call(0, vec![]);
        match (first, second) {
            (CallOutcome::Value(a), CallOutcome::Value(b)) => assert_eq!(a, b),
            other => panic!("{other:?}"),
        }
    }
}
