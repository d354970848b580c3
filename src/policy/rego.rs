//! The native Rego engine: regorus' RVM, one VM per worker thread.
//!
//! A revision is compiled once (parse → `CompiledPolicy` → RVM `Program`) off the request path.
//! `RegoVM::execute` needs `&mut`, so each thread keeps its own VM in a thread-local and
//! reloads it only when it sees a new revision: evaluation never takes a lock shared between
//! workers (a `Mutex<RegoVM>` would serialize every request).

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::{RegoVM, VmError};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::PolicyLoadError;

/// Wall-clock bound on one evaluation: a runaway policy becomes a deny, not a stuck worker.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(100);
/// Instruction bound on one evaluation (regorus' default of 25,000 is too tight for large data).
const MAX_INSTRUCTIONS: usize = 5_000_000;

static NEXT_PROGRAM_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's VM and the id of the program it has loaded.
    static WORKER_VM: RefCell<Option<(u64, RegoVM)>> = const { RefCell::new(None) };
}

/// One compiled revision of a Rego policy with its data.
pub struct RegoPolicy {
    id: u64,
    program: Arc<Program>,
    data: Value,
    entrypoint: String,
}

/// Why an evaluation produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("policy evaluation exceeded its time or instruction limit")]
    Timeout,
    #[error("policy evaluation failed: {0}")]
    Failed(String),
}

impl RegoPolicy {
    /// Parses and compiles `modules` (name, source) for the rule path `entrypoint`
    /// (`tollgate/decision`), with `data` as the base document.
    pub fn compile(
        modules: &[(String, String)],
        data: Value,
        entrypoint: &str,
    ) -> Result<RegoPolicy, PolicyLoadError> {
        let mut engine = Engine::new();
        for (name, source) in modules {
            engine
                .add_policy(name.clone(), source.clone())
                .map_err(|e| PolicyLoadError::Compile(format!("{name}: {e}")))?;
        }
        let rule = format!("data.{}", entrypoint.replace('/', "."));
        let compiled = engine
            .compile_with_entrypoint(&rule.as_str().into())
            .map_err(|e| PolicyLoadError::Compile(e.to_string()))?;
        let program = Compiler::compile_from_policy(&compiled, &[rule.as_str()])
            .map_err(|e| PolicyLoadError::Compile(e.to_string()))?;
        // Load once here so a data document that conflicts with the rules fails at load time.
        let mut probe = RegoVM::new();
        probe.load_program(program.clone());
        probe
            .set_data(data.clone())
            .map_err(|e| PolicyLoadError::Data(e.to_string()))?;
        Ok(RegoPolicy {
            id: NEXT_PROGRAM_ID.fetch_add(1, Ordering::Relaxed),
            program,
            data,
            entrypoint: rule,
        })
    }

    /// The rule path evaluated, e.g. `data.tollgate.decision`.
    pub fn entrypoint(&self) -> &str {
        &self.entrypoint
    }

    /// Evaluates the entrypoint for one input on this thread's VM.
    pub fn evaluate(&self, input: Value) -> Result<Value, EvalError> {
        WORKER_VM.with(|cell| {
            let mut slot = cell.borrow_mut();
            let stale = !matches!(&*slot, Some((id, _)) if *id == self.id);
            if stale {
                *slot = Some((self.id, self.new_vm()?));
            }
            let Some((_, vm)) = slot.as_mut() else {
                return Err(EvalError::Failed("no VM".into()));
            };
            vm.set_input(input);
            vm.execute().map_err(|e| match e {
                VmError::TimeLimitExceeded { .. } | VmError::InstructionLimitExceeded { .. } => {
                    EvalError::Timeout
                }
                other => EvalError::Failed(other.to_string()),
            })
        })
    }

    fn new_vm(&self) -> Result<RegoVM, EvalError> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_max_instructions(MAX_INSTRUCTIONS);
        vm.set_execution_timer_config(Some(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: NonZeroU32::new(256).unwrap_or(NonZeroU32::MIN),
        }));
        vm.set_data(self.data.clone())
            .map_err(|e| EvalError::Failed(e.to_string()))?;
        Ok(vm)
    }
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

    #[test]
    fn evaluates_with_input_and_data() {
        let p = policy("package t\ndecision := {\"allow\": input.n < data.limit}\n");
        let yes = p
            .evaluate(Value::from_json_str(r#"{"n": 1}"#).unwrap())
            .unwrap();
        let no = p
            .evaluate(Value::from_json_str(r#"{"n": 5}"#).unwrap())
            .unwrap();
        assert_eq!(yes, Value::from_json_str(r#"{"allow": true}"#).unwrap());
        assert_eq!(no, Value::from_json_str(r#"{"allow": false}"#).unwrap());
    }

    #[test]
    fn reuses_the_thread_vm_across_revisions() {
        let a = policy("package t\ndecision := {\"allow\": true}\n");
        let b = policy("package t\ndecision := {\"allow\": false}\n");
        let input = Value::new_object();
        for _ in 0..3 {
            assert_eq!(
                a.evaluate(input.clone()).unwrap()["allow"],
                Value::from(true)
            );
            assert_eq!(
                b.evaluate(input.clone()).unwrap()["allow"],
                Value::from(false)
            );
        }
    }

    #[test]
    fn rejects_syntax_errors_at_compile_time() {
        let result = RegoPolicy::compile(
            &[("p.rego".into(), "package t\ndecision := {\n".into())],
            Value::new_object(),
            "t/decision",
        );
        assert!(matches!(result, Err(PolicyLoadError::Compile(_))));
    }

    #[test]
    fn returns_undefined_when_no_rule_matches() {
        let p = policy("package t\ndecision := {\"allow\": true} if input.never\n");
        assert_eq!(p.evaluate(Value::new_object()).unwrap(), Value::Undefined);
    }
}
