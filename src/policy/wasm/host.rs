//! The process-wide wasmtime `Engine` and the epoch ticker that bounds every evaluation in time.
//!
//! One `Engine` serves every revision (compiled code is tied to it, and creating one costs
//! milliseconds). Epoch interruption is on: a ticker thread advances the epoch every
//! [`TICK`], and each evaluation sets its deadline [`deadline_ticks`] ahead, so a policy that
//! runs past `DECISION_TIME_LIMIT` traps (`Trap::Interrupt`) instead of holding a worker. Both are
//! created on first use, so a deployment on the Rego engine pays for neither.

use std::sync::LazyLock;
use std::time::Duration;

use wasmtime::{Config, Engine, StoreLimits, StoreLimitsBuilder};

use super::dispatch::HostInstance;
use crate::policy::rego::DECISION_TIME_LIMIT;

/// How often the epoch advances: the granularity of the time limit.
pub const TICK: Duration = Duration::from_millis(1);
/// Largest linear memory one instance may have; a policy that needs more fails (`policy_error`).
pub const MEMORY_LIMIT_BYTES: usize = 64 * 1024 * 1024;
/// Virtual address space reserved per linear memory: above the limit, so a memory never moves
/// while it grows, but far below wasmtime's 4 GiB default (instances are kept per worker).
const MEMORY_RESERVATION_BYTES: u64 = 128 * 1024 * 1024;

static ENGINE: LazyLock<Result<Engine, String>> = LazyLock::new(|| {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.memory_reservation(MEMORY_RESERVATION_BYTES);
    // Errors carry the trap and, for opa_abort, OPA's message; no Wasm backtrace in them.
    config.wasm_backtrace_max_frames(None);
    let engine = Engine::new(&config).map_err(|e| format!("wasmtime: {e}"))?;
    let ticking = engine.clone();
    std::thread::Builder::new()
        .name("tollgate-wasm-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                ticking.increment_epoch();
            }
        })
        .map_err(|e| format!("cannot start the Wasm epoch ticker: {e}"))?;
    Ok(engine)
});

/// The shared engine (created, with its ticker, on first use).
pub fn engine() -> Result<&'static Engine, String> {
    ENGINE.as_ref().map_err(Clone::clone)
}

/// Epoch ticks in one evaluation's time limit (the Rego engine's `DECISION_TIME_LIMIT`).
pub fn deadline_ticks() -> u64 {
    let ticks = DECISION_TIME_LIMIT.as_micros() / TICK.as_micros().max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

/// Ticks allowed for instantiating a module and loading its data (off the request path, but a
/// module whose start-up never ends must not hang a reload either).
pub fn load_deadline_ticks() -> u64 {
    10_000
}

/// Why a host function stopped the module, recorded before it traps so the evaluation can say
/// so in OPA's words rather than as a trap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The module called `opa_abort` with this message (e.g. `x.rego:6:1: var assignment
    /// conflict`, or its allocator's out-of-memory).
    Abort(String),
    /// The host could not go on (a builtin's argument or result could not cross the ABI, a
    /// resource limit in a builtin).
    Host(String),
}

/// What each `Store` carries: its resource limits, its host builtins, and what stopped it.
pub struct StoreState {
    /// Memory, table and instance bounds, enforced by wasmtime through `Store::limiter`.
    pub limits: StoreLimits,
    /// This instance's host builtins (its own regorus engine).
    pub builtins: HostInstance,
    /// The module's exports a builtin call needs, once instantiated.
    pub exports: Option<super::abi::CallExports>,
    /// Set by a host function just before it traps.
    pub stop: Option<Stop>,
}

impl StoreState {
    /// The limits of one policy instance: one memory of at most [`MEMORY_LIMIT_BYTES`], a few
    /// tables and instances (an OPA module has one of each).
    pub fn new(builtins: HostInstance) -> StoreState {
        StoreState {
            limits: StoreLimitsBuilder::new()
                .memory_size(MEMORY_LIMIT_BYTES)
                .memories(2)
                .tables(4)
                .instances(2)
                .table_elements(1_000_000)
                .build(),
            builtins,
            exports: None,
            stop: None,
        }
    }
}
