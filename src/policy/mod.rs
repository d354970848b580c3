//! Policy: the input contract, the decision contract, the engine, and the current revision.
//!
//! A revision is loaded and compiled completely before it is published, and published by
//! swapping one `Arc` ([`PolicyStore`]): a request reads the current revision once, without a
//! lock, and is decided entirely by it. Anything that is not a valid decision — an evaluation
//! error, a timeout, an undefined or mistyped result — becomes a deny (fail closed).

pub mod ast_walk;
pub mod builtins;
pub mod decision;
pub mod document_entrypoint;
pub mod input;
pub mod opa_rewrite;
pub mod rego;
pub mod rules_check;
pub mod source_limits;
pub mod testing;
pub mod validate;
pub mod wasm;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use regorus::Value;

use crate::config::{DataSource, EngineKind, PolicyConfig, PolicySource};
pub use decision::{ConnectionMode, CredentialRequest, Decision, DecisionError};
pub use input::PolicyInput;
use rego::{EvalError, RegoPolicy};
use wasm::WasmPolicy;

/// The bundled policy's modules, compiled into the binary so `tollgate run` works anywhere.
pub const BUNDLED_MODULES: &[(&str, &str)] = &[(
    "policy-wasm/tollgate.rego",
    include_str!("../../policy-wasm/tollgate.rego"),
)];
/// The bundled example data.
pub const BUNDLED_DATA: &str = include_str!("../../policy-wasm/data.json");

/// Why a policy revision could not be loaded; the previous revision (if any) stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("no .rego files in {0}")]
    NoModules(PathBuf),
    #[error("policy does not compile: {0}")]
    Compile(String),
    #[error("policy data is not usable: {0}")]
    Data(String),
    /// No rule is at the entrypoint: the operator sees what was looked for and what exists.
    #[error(
        "no rule at the entrypoint {entrypoint} (policy.entrypoint; looked for rule {rule}); packages found: {packages}"
    )]
    EntrypointMissing {
        entrypoint: String,
        rule: String,
        packages: String,
    },
    #[error("{path}: not a usable OPA bundle: {message}")]
    Bundle { path: PathBuf, message: String },
    #[error("the policy's decision has the wrong type: {0}")]
    DecisionType(String),
    /// The policy's own data check (`data_errors`, see [`validate`]) refused the data.
    #[error(transparent)]
    DataRefused(#[from] validate::DataCheckError),
}

/// Representative inputs (SPEC §4.1: a request, and a connection-level check) on which a new
/// revision is tried before a reload publishes it.
const PROBE_INPUTS: [&str; 2] = [
    r#"{"version": 1, "time": "2026-11-23T10:00:00.000Z",
        "source": {"spiffe_id": "spiffe://tollgate.probe/agent", "trust_domain": "tollgate.probe",
                   "path": "/agent", "authenticated": true, "listener": "probe", "address": "127.0.0.1:1"},
        "intent": {"name": "probe.read", "task": "probe", "purpose": null, "delegation": [],
                   "verified": false, "issuer": null, "claims": {}},
        "request": {"method": "GET", "scheme": "https", "host": "probe.invalid", "port": 443,
                    "path": "/", "query": "", "headers": {}, "protocol": "HTTP/1.1"},
        "destination": {"host": "probe.invalid", "port": 443, "ip": null},
        "connection": {"mode": "forward", "intercepted": true, "tls_sni": "probe.invalid"}}"#,
    r#"{"version": 1, "time": "2026-11-23T10:00:00.000Z",
        "source": {"spiffe_id": "spiffe://tollgate.probe/agent", "trust_domain": "tollgate.probe",
                   "path": "/agent", "authenticated": true, "listener": "probe", "address": "127.0.0.1:1"},
        "intent": {"name": null, "task": null, "purpose": null, "delegation": [],
                   "verified": false, "issuer": null, "claims": {}},
        "request": null,
        "destination": {"host": "probe.invalid", "port": 443, "ip": null},
        "connection": {"mode": "forward", "intercepted": false, "tls_sni": null}}"#,
];

/// Why an evaluation gave no usable decision; both are denies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyFailure {
    /// Error, undefined or invalid decision: reason `policy_error`.
    Error(String),
    /// Time or instruction limit: reason `policy_timeout`.
    Timeout,
}

impl PolicyFailure {
    /// The closed reason used in responses, the decision log and metrics.
    pub fn reason(&self) -> crate::reason::Reason {
        match self {
            PolicyFailure::Error(_) => crate::reason::Reason::PolicyError,
            PolicyFailure::Timeout => crate::reason::Reason::PolicyTimeout,
        }
    }

    /// Human-readable detail for the operational log (never contains input values).
    pub fn detail(&self) -> &str {
        match self {
            PolicyFailure::Error(detail) => detail,
            PolicyFailure::Timeout => "evaluation exceeded its limit",
        }
    }
}

/// The result of asking one revision about one input.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub outcome: Result<Decision, PolicyFailure>,
    pub eval_us: u64,
}

/// One loaded, compiled policy revision.
pub struct PolicyRevision {
    /// Which revision decided, e.g. `3f2a…` (a content hash of the policy and its data) or an
    /// OPA bundle's `.manifest` revision: tells operators which revision decided.
    pub revision: Arc<str>,
    pub engine: EngineKind,
    evaluator: Evaluator,
}

/// The compiled policy of one engine.
enum Evaluator {
    Rego(Box<RegoPolicy>),
    Wasm(Box<WasmPolicy>),
}

impl PolicyRevision {
    /// Loads the policy named by the configuration.
    pub fn load(config: &PolicyConfig) -> Result<PolicyRevision, PolicyLoadError> {
        let modules = match &config.source {
            PolicySource::Bundled => BUNDLED_MODULES
                .iter()
                .map(|(name, text)| (name.to_string(), text.to_string()))
                .collect(),
            PolicySource::Path(path) => read_modules(path, false)?,
            PolicySource::WasmModule(path) => {
                let data = match &config.data {
                    DataSource::Bundled => BUNDLED_DATA.to_string(),
                    DataSource::File(path) => read(path)?,
                    DataSource::Empty => "{}".to_string(),
                };
                return Self::load_wasm_module(path, &data, &config.entrypoint);
            }
            PolicySource::WasmBundle(path) => {
                return Self::load_wasm_bundle(path, &config.entrypoint);
            }
        };
        let data_text = match &config.data {
            DataSource::Bundled => BUNDLED_DATA.to_string(),
            DataSource::File(path) => read(path)?,
            DataSource::Empty => "{}".to_string(),
        };
        Self::compile(&modules, &data_text, &config.entrypoint)
    }

    /// Loads a bare OPA Wasm module with `data_json` as its data document.
    pub fn load_wasm_module(
        path: &Path,
        data_json: &str,
        entrypoint: &str,
    ) -> Result<PolicyRevision, PolicyLoadError> {
        let wasm = std::fs::read(path).map_err(|e| PolicyLoadError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let data: serde_json::Value =
            serde_json::from_str(data_json).map_err(|e| PolicyLoadError::Data(e.to_string()))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        wasm.hash(&mut hasher);
        data_json.hash(&mut hasher);
        let revision = format!("{:016x}", hasher.finish());
        Self::from_wasm(&wasm, data, entrypoint, revision)
    }

    /// Loads an OPA bundle: its `/policy.wasm`, its data, and `.manifest`'s revision (a content
    /// hash of the module and data when the manifest has none).
    pub fn load_wasm_bundle(
        path: &Path,
        entrypoint: &str,
    ) -> Result<PolicyRevision, PolicyLoadError> {
        let bundle = wasm::bundle::read(path)?;
        let revision = match bundle.revision {
            Some(revision) => revision,
            None => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                bundle.wasm.hash(&mut hasher);
                bundle.data.to_string().hash(&mut hasher);
                format!("{:016x}", hasher.finish())
            }
        };
        Self::from_wasm(&bundle.wasm, bundle.data, entrypoint, revision)
    }

    /// A Wasm revision from module bytes and parsed data.
    pub fn from_wasm(
        wasm: &[u8],
        data: serde_json::Value,
        entrypoint: &str,
        revision: String,
    ) -> Result<PolicyRevision, PolicyLoadError> {
        let policy = WasmPolicy::load(wasm, data.clone(), entrypoint)?;
        validate::check_wasm(&policy, entrypoint)?;
        Ok(PolicyRevision {
            revision: Arc::from(revision),
            engine: EngineKind::Wasm,
            evaluator: Evaluator::Wasm(Box::new(policy)),
        })
    }

    /// Compiles modules and a JSON data document into a revision.
    pub fn compile(
        modules: &[(String, String)],
        data_json: &str,
        entrypoint: &str,
    ) -> Result<PolicyRevision, PolicyLoadError> {
        let data =
            Value::from_json_str(data_json).map_err(|e| PolicyLoadError::Data(e.to_string()))?;
        if !matches!(data, Value::Object(_)) {
            return Err(PolicyLoadError::Data(
                "the data document must be a JSON object".into(),
            ));
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        modules.hash(&mut hasher);
        data_json.hash(&mut hasher);
        let revision = format!("{:016x}", hasher.finish());
        let policy = RegoPolicy::compile(modules, data.clone(), entrypoint)?;
        validate::check_rego(modules, &data, entrypoint)?;
        Ok(PolicyRevision {
            revision: Arc::from(revision),
            engine: EngineKind::Rego,
            evaluator: Evaluator::Rego(Box::new(policy)),
        })
    }

    /// Decides one input. Never panics and never returns an allow it could not verify.
    pub fn evaluate(&self, input: &PolicyInput) -> Evaluation {
        match &self.evaluator {
            Evaluator::Rego(_) => self.evaluate_value(input.to_value()),
            // The module takes JSON: serialize the facts directly (same document, no value).
            Evaluator::Wasm(wasm) => {
                let start = Instant::now();
                let result = wasm.evaluate(input);
                Self::conclude(result, start)
            }
        }
    }

    /// Decides one input given as an engine value.
    pub fn evaluate_value(&self, input: Value) -> Evaluation {
        self.evaluate_explained(input).1
    }

    /// Decides one input and keeps what the policy itself returned (`policy eval`): the
    /// entrypoint's own value (`None` when undefined or the evaluation failed), and the
    /// decision tollgate applies to it — so a policy author sees both, not one mixed into
    /// the other.
    pub fn evaluate_explained(&self, input: Value) -> (Option<Value>, Evaluation) {
        let start = Instant::now();
        let result = match &self.evaluator {
            Evaluator::Rego(rego) => rego.evaluate(input),
            Evaluator::Wasm(wasm) => wasm.evaluate(&input),
        };
        let own = match &result {
            Ok(Value::Undefined) | Err(_) => None,
            Ok(value) => Some(value.clone()),
        };
        (own, Self::conclude(result, start))
    }

    /// Prepares this thread for evaluating the revision (see `rego`'s module doc): called by
    /// idle worker threads, never on a request.
    pub fn prepare_thread(&self) {
        if let Evaluator::Rego(rego) = &self.evaluator {
            rego.prepare_thread();
        }
    }

    /// Tries the revision on [`PROBE_INPUTS`]: a decision that comes back *defined* but is not
    /// a valid decision (`{"allow": "yes"}`) is a type error in the policy, and a reload refuses
    /// it so the last good revision stays in force. An undefined result, an evaluation error or
    /// a timeout says nothing certain about other inputs and is left to fail closed per request.
    pub fn check_decision_type(&self) -> Result<(), PolicyLoadError> {
        for text in PROBE_INPUTS {
            let input = Value::from_json_str(text)
                .map_err(|e| PolicyLoadError::DecisionType(format!("probe input: {e}")))?;
            let result = match &self.evaluator {
                Evaluator::Rego(rego) => rego.evaluate_once(input),
                Evaluator::Wasm(wasm) => wasm.evaluate(&input),
            };
            if let Ok(value) = result
                && value != Value::Undefined
                && let Err(e) = Decision::from_value(&value)
            {
                return Err(PolicyLoadError::DecisionType(e.to_string()));
            }
        }
        Ok(())
    }

    fn conclude(result: Result<Value, EvalError>, start: Instant) -> Evaluation {
        let eval_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let outcome = match result {
            Ok(value) => {
                Decision::from_value(&value).map_err(|e| PolicyFailure::Error(e.to_string()))
            }
            Err(EvalError::Timeout) => Err(PolicyFailure::Timeout),
            Err(EvalError::Failed(message)) => Err(PolicyFailure::Error(message)),
        };
        Evaluation { outcome, eval_us }
    }
}

/// Where idle worker threads find the revision in force: a [`PolicyStore`], or the value the
/// reload keeps current (`app::reload`'s `Watched`).
pub trait RevisionInForce: Send + Sync {
    /// Prepares this thread for the revision in force now.
    fn prepare_thread(&self);
}

impl RevisionInForce for PolicyStore {
    fn prepare_thread(&self) {
        self.current.load().prepare_thread();
    }
}

/// The revision idle worker threads prepare for (set once by `app::run`).
static IDLE_PREPARE: std::sync::OnceLock<Arc<dyn RevisionInForce>> = std::sync::OnceLock::new();

/// Names where [`on_worker_park`] finds the revision to prepare worker threads for. The first
/// call wins: a process serves one policy.
pub fn prepare_on_idle(store: Arc<dyn RevisionInForce>) {
    let _ = IDLE_PREPARE.set(store);
}

/// The runtime's park hook (`tokio::runtime::Builder::on_thread_park`): an idle worker
/// thread prepares its per-thread evaluation state for the revision in force (the Rego
/// engine's own copy of program and data), so that requests never pay for it.
pub fn on_worker_park() {
    if let Some(store) = IDLE_PREPARE.get() {
        store.prepare_thread();
    }
}

/// The revision in force; swapped atomically on reload.
pub struct PolicyStore {
    current: ArcSwap<PolicyRevision>,
}

impl PolicyStore {
    /// Starts with a loaded revision: the proxy never runs without a policy.
    pub fn new(revision: PolicyRevision) -> PolicyStore {
        PolicyStore {
            current: ArcSwap::from_pointee(revision),
        }
    }

    /// The revision in force now; a request holds it for its whole decision.
    pub fn current(&self) -> Arc<PolicyRevision> {
        self.current.load_full()
    }

    /// Publishes a new revision; requests already holding the old one finish with it.
    pub fn publish(&self, revision: PolicyRevision) {
        self.current.store(Arc::new(revision));
    }
}

fn read(path: &Path) -> Result<String, PolicyLoadError> {
    std::fs::read_to_string(path).map_err(|e| PolicyLoadError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads `.rego` modules from a file or a folder (recursively, sorted); `*_test.rego` files are
/// included only for `policy test`.
pub fn read_modules(
    path: &Path,
    include_tests: bool,
) -> Result<Vec<(String, String)>, PolicyLoadError> {
    let mut files = Vec::new();
    if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        collect_rego_files(path, &mut files)?;
    }
    files.sort();
    let mut modules = Vec::new();
    for file in files {
        let name = file.to_string_lossy().to_string();
        if !include_tests && name.ends_with("_test.rego") {
            continue;
        }
        modules.push((name, read(&file)?));
    }
    if modules.is_empty() {
        return Err(PolicyLoadError::NoModules(path.to_path_buf()));
    }
    Ok(modules)
}

fn collect_rego_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyLoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| PolicyLoadError::Read {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rego_files(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "rego") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(source: &str) -> PolicyRevision {
        PolicyRevision::compile(
            &[("p.rego".to_string(), source.to_string())],
            "{}",
            "tollgate/decision",
        )
        .unwrap()
    }

    #[test]
    fn idle_tokio_workers_move_to_their_own_copy_through_the_park_hook() {
        let store = Arc::new(PolicyStore::new(revision(
            "package tollgate\ndecision := {\"allow\": true}\n",
        )));
        prepare_on_idle(store.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_park(on_worker_park)
            .build()
            .unwrap();
        let input = Value::from_json_str("{}").unwrap();
        let evaluate_and_report = |store: Arc<PolicyStore>, input: Value| async move {
            let outcome = store.current().evaluate_value(input).outcome.unwrap();
            (outcome.reason, rego::thread_has_own_copy())
        };
        let (before, after) = runtime.block_on(async move {
            // Idle: the worker parks while the timer runs, and prepares on the way.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let before = tokio::spawn(evaluate_and_report(store.clone(), input.clone()))
                .await
                .unwrap();
            // A new revision: the worker's next request runs on the shared originals; once
            // idle again, the worker moves to a copy of the new revision.
            store.publish(revision(
                "package tollgate\ndecision := {\"allow\": true, \"reason\": \"r2\"}\n",
            ));
            let first = tokio::spawn(evaluate_and_report(store.clone(), input.clone()))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let after = tokio::spawn(evaluate_and_report(store, input))
                .await
                .unwrap();
            (before, (first, after))
        });
        assert_eq!(
            before.1,
            Some(true),
            "after parking, the worker has its own copy"
        );
        let (first, after) = after;
        assert_eq!(first, (Some("r2".to_string()), Some(false)), "shared first");
        assert_eq!(after.0.as_deref(), Some("r2"));
        assert_eq!(
            after.1,
            Some(true),
            "and moves to a copy of the new revision while idle"
        );
    }

    #[test]
    fn a_mistyped_decision_fails_the_type_check() {
        let mistyped = revision("package tollgate\ndecision := {\"allow\": \"yes\"}\n");
        let error = mistyped.check_decision_type().unwrap_err();
        assert!(matches!(error, PolicyLoadError::DecisionType(_)), "{error}");
        // A type error only in connection-level decisions: the connection probe catches it.
        let conn_only = revision(
            "package tollgate\ndecision := {\"allow\": true} if is_object(input.request)\n\
             decision := {\"allow\": true, \"mode\": \"sideways\"} if input.request == null\n",
        );
        assert!(conn_only.check_decision_type().is_err());
    }

    #[test]
    fn valid_undefined_and_erroring_decisions_pass_the_type_check() {
        for source in [
            "package tollgate\ndecision := {\"allow\": true}\n",
            "package tollgate\ndecision := {\"allow\": true} if input.never\n",
            "package tollgate\ndecision := {\"allow\": 1 / 0 == 1}\n",
        ] {
            revision(source).check_decision_type().unwrap();
        }
        let bundled = PolicyRevision::compile(
            &BUNDLED_MODULES
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect::<Vec<_>>(),
            BUNDLED_DATA,
            "tollgate/decision",
        )
        .unwrap();
        bundled.check_decision_type().unwrap();
    }
}
