//! The native Rego engine: regorus' RVM, one VM per worker thread.
//!
//! A revision is compiled once (parse → `CompiledPolicy` → RVM `Program`) off the request path.
//! `RegoVM::execute` needs `&mut`, so each thread keeps its own VM in a thread-local and
//! reloads it only when it sees a new revision: evaluation never takes a lock shared between
//! workers (a `Mutex<RegoVM>` would serialize every request).
//!
//! Nor does it share reference counts. Evaluating clones values of the data and of the
//! program's literals (regorus values are `Arc`s), and two threads incrementing the same counts
//! bounce cache lines between cores: two threads evaluated at 1.0–1.6× the rate of one. So each
//! worker thread gets its own deep copy of the program and the data, built *by that thread*
//! (a copy built elsewhere measured no better: its memory sits next to other threads'
//! allocations) and built while the thread is idle: tokio calls [`RegoPolicy::prepare_thread`]
//! through the runtime's park hook (`policy::on_worker_park`). Until then — a thread's first
//! requests after a reload, or a thread that is never idle — the thread's VM works on the
//! shared originals: correct, only slower when threads contend. With their own copies two
//! threads evaluate at 1.89–2.05× the rate of one (docs/BENCHMARKS.md).

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::{DeserializationResult, Program};
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
    /// This thread's VM, the id of the program it has loaded, and whether it runs on the
    /// thread's own copy of program and data (`true`) or on the shared originals.
    static WORKER_VM: RefCell<Option<(u64, bool, RegoVM)>> = const { RefCell::new(None) };
}

/// One compiled revision of a Rego policy with its data.
pub struct RegoPolicy {
    id: u64,
    program: Arc<Program>,
    data: Value,
    entrypoint: String,
    /// The program and data serialized once at compile time, for per-thread copies; `None`
    /// if either does not round-trip (threads then share the originals).
    serialized: Option<(Arc<[u8]>, Arc<str>)>,
}

/// A deep copy of the program and data (regorus has no deep clone: through their serialized
/// forms), allocated by the calling thread.
fn build_copy(bytes: &[u8], json: &str) -> Option<(Arc<Program>, Value)> {
    let program = match Program::deserialize_binary(bytes).ok()? {
        DeserializationResult::Complete(program) => program,
        DeserializationResult::Partial(_) => return None,
    };
    let data = Value::from_json_str(json).ok()?;
    Some((Arc::new(program), data))
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
        let serialized = program
            .serialize_binary()
            .ok()
            .zip(data.to_json_str().ok())
            .map(|(bytes, json)| (Arc::from(bytes), Arc::from(json)));
        Ok(RegoPolicy {
            id: NEXT_PROGRAM_ID.fetch_add(1, Ordering::Relaxed),
            program,
            data,
            entrypoint: rule,
            serialized,
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
            let stale = !matches!(&*slot, Some((id, _, _)) if *id == self.id);
            if stale {
                // Never a copy here: that is work for an idle moment, not for a request.
                let vm = self.vm_over(self.program.clone(), self.data.clone())?;
                *slot = Some((self.id, false, vm));
            }
            let Some((_, _, vm)) = slot.as_mut() else {
                return Err(EvalError::Failed("no VM".into()));
            };
            vm.set_input(input);
            vm.execute().map_err(classify)
        })
    }

    /// Gives this thread a VM over its own copy of the program and data, unless it has one
    /// for this revision already. Called by idle worker threads; cheap when there is nothing
    /// to do (a thread-local check).
    pub fn prepare_thread(&self) {
        WORKER_VM.with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return;
            };
            if matches!(&*slot, Some((id, true, _)) if *id == self.id) {
                return;
            }
            let copy = self
                .serialized
                .as_ref()
                .and_then(|(bytes, json)| build_copy(bytes, json));
            let (program, data) = copy.unwrap_or_else(|| (self.program.clone(), self.data.clone()));
            // Marked prepared even when the copy failed: it would fail again.
            if let Ok(vm) = self.vm_over(program, data) {
                *slot = Some((self.id, true, vm));
            }
        });
    }

    /// Evaluates on a VM of its own over the shared originals, leaving the thread's VM alone
    /// (for one-off evaluations off the request path, such as reload probes).
    pub fn evaluate_once(&self, input: Value) -> Result<Value, EvalError> {
        let mut vm = self.vm_over(self.program.clone(), self.data.clone())?;
        vm.set_input(input);
        vm.execute().map_err(classify)
    }

    fn vm_over(&self, program: Arc<Program>, data: Value) -> Result<RegoVM, EvalError> {
        let mut vm = RegoVM::new();
        vm.load_program(program);
        vm.set_max_instructions(MAX_INSTRUCTIONS);
        vm.set_execution_timer_config(Some(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: NonZeroU32::new(256).unwrap_or(NonZeroU32::MIN),
        }));
        vm.set_data(data)
            .map_err(|e| EvalError::Failed(e.to_string()))?;
        Ok(vm)
    }
}

/// Whether this thread's VM runs on its own copy (`Some(true)`), on the shared originals
/// (`Some(false)`), or does not exist yet (`None`). For tests of the idle-time preparation.
#[cfg(test)]
pub(crate) fn thread_has_own_copy() -> Option<bool> {
    WORKER_VM.with(|c| c.borrow().as_ref().map(|(_, own, _)| *own))
}

fn classify(error: VmError) -> EvalError {
    match error {
        VmError::TimeLimitExceeded { .. } | VmError::InstructionLimitExceeded { .. } => {
            EvalError::Timeout
        }
        other => EvalError::Failed(other.to_string()),
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

    #[test]
    fn an_idle_thread_moves_to_its_own_copy_and_decides_the_same() {
        let p = Arc::new(policy(
            "package t\ndecision := {\"allow\": input.n < data.limit, \"reason\": \"below the limit\"}\n",
        ));
        assert!(
            p.serialized.is_some(),
            "program and data serialize for copies"
        );
        let input = Value::from_json_str(r#"{"n": 2}"#).unwrap();
        let expected = p.evaluate_once(input.clone()).unwrap();
        assert_eq!(expected["allow"], Value::from(true), "{expected}");
        let own = || WORKER_VM.with(|c| c.borrow().as_ref().map(|(_, own, _)| *own));
        let p2 = p.clone();
        std::thread::spawn(move || {
            assert_eq!(p2.evaluate(input.clone()).unwrap(), expected);
            assert_eq!(own(), Some(false), "a request never waits for a copy");
            p2.prepare_thread();
            assert_eq!(own(), Some(true));
            assert_eq!(p2.evaluate(input.clone()).unwrap(), expected);
            p2.prepare_thread();
            assert_eq!(own(), Some(true));
            // A new revision: shared first, then its own copy again.
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
