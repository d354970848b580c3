//! OPA's Wasm ABI (version 1.x) from the host side, on wasmtime: the imports an OPA module
//! needs (`env.memory`, `env.opa_abort`, `env.opa_println`, `env.opa_builtin0..4`), its maps
//! (`builtins()`, `entrypoints()`), loading the data once, and one evaluation — through the ABI
//! 1.2 one-call `opa_eval` when the module exports it, else the 1.0 context calls.
//!
//! Everything is synchronous: host functions never wait, the epoch deadline traps. A host
//! function that must stop the module (`opa_abort`, a builtin value that cannot cross) records
//! why in the store ([`Stop`]) and traps; the evaluation then reports OPA's message, not the
//! trap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use regorus::Value;
use wasmtime::{Caller, Engine, Linker, Memory, Module, Store, Trap, TypedFunc};

use super::dispatch::{BuiltinFailure, CallOutcome, HostBuiltins};
use super::host::{Stop, StoreState, load_deadline_ticks};
use super::value_text;

/// Why an evaluation (or loading the data) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbiFailure {
    /// The epoch deadline passed.
    Timeout,
    /// The module called `opa_abort` with this message.
    Abort(String),
    /// Anything else: a trap, a host failure, a malformed result.
    Failed(String),
}

/// The module exports a host builtin call uses (cheap to clone: handles).
#[derive(Clone)]
pub struct CallExports {
    memory: Memory,
    malloc: TypedFunc<i32, i32>,
    value_dump: TypedFunc<i32, i32>,
    value_parse: TypedFunc<(i32, i32), i32>,
}

/// ABI 1.2+ `opa_eval(reserved, entrypoint, data, input, input_len, heap_ptr, format)`.
type OpaEval = TypedFunc<(i32, i32, i32, i32, i32, i32, i32), i32>;

/// The ABI 1.0 evaluation-context calls.
struct ContextFuncs {
    new: TypedFunc<(), i32>,
    set_input: TypedFunc<(i32, i32), ()>,
    set_data: TypedFunc<(i32, i32), ()>,
    set_entrypoint: TypedFunc<(i32, i32), ()>,
    eval: TypedFunc<i32, i32>,
    get_result: TypedFunc<i32, i32>,
}

/// One instantiated module: its store, memory and the exports the host calls.
pub struct Instance {
    store: Store<StoreState>,
    memory: Memory,
    malloc: TypedFunc<i32, i32>,
    json_parse: TypedFunc<(i32, i32), i32>,
    json_dump: TypedFunc<i32, i32>,
    heap_ptr_get: TypedFunc<(), i32>,
    heap_ptr_set: TypedFunc<i32, ()>,
    builtins_map: TypedFunc<(), i32>,
    entrypoints_map: TypedFunc<(), i32>,
    /// The one-call evaluation, when the module has it (ABI 1.2+).
    fast: Option<OpaEval>,
    context: Option<ContextFuncs>,
    has_value_exports: bool,
    /// The data document's value, once loaded.
    data: i32,
    /// The heap pointer after the data: each evaluation starts its heap here.
    heap_base: i32,
}

/// The NUL-terminated string at `addr` in `memory`.
pub fn read_c_string(memory: &[u8], addr: i32) -> Option<&[u8]> {
    let start = usize::try_from(addr).ok()?;
    let rest = memory.get(start..)?;
    let len = rest.iter().position(|b| *b == 0)?;
    rest.get(..len)
}

fn stop<T>(caller: &mut Caller<'_, StoreState>, why: Stop) -> wasmtime::Result<T> {
    let message = match &why {
        Stop::Abort(m) | Stop::Host(m) => m.clone(),
    };
    caller.data_mut().stop = Some(why);
    Err(wasmtime::Error::msg(message))
}

/// The message at `addr`, for `opa_abort` and `opa_println`.
fn message_at(caller: &mut Caller<'_, StoreState>, memory: Memory, addr: i32) -> String {
    read_c_string(memory.data(&*caller), addr)
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_else(|| format!("<unreadable message at {addr}>"))
}

/// One `opa_builtin<n>` call: arguments out through `opa_value_dump`, the result back through
/// `opa_value_parse` (as OPA's Go SDK does), NULL for undefined.
fn call_builtin(
    mut caller: Caller<'_, StoreState>,
    id: i32,
    args: &[i32],
) -> wasmtime::Result<i32> {
    let name = caller
        .data()
        .builtins
        .name(id)
        .unwrap_or("<unknown>")
        .to_string();
    let Some(exports) = caller.data().exports.clone() else {
        return stop(
            &mut caller,
            Stop::Host(format!(
                "builtin `{name}` called before the module was ready"
            )),
        );
    };
    let mut values = Vec::with_capacity(args.len());
    for &arg in args {
        let text = exports.value_dump.call(&mut caller, arg)?;
        let parsed = read_c_string(exports.memory.data(&caller), text)
            .ok_or_else(|| "its argument is out of bounds".to_string())
            .and_then(|bytes| value_text::parse(bytes).map_err(|e| e.to_string()));
        match parsed {
            Ok(value) => values.push(value),
            Err(e) => {
                return stop(&mut caller, Stop::Host(format!("builtin `{name}`: {e}")));
            }
        }
    }
    match caller.data_mut().builtins.call(id, values) {
        CallOutcome::Undefined => Ok(0),
        CallOutcome::Stop(why) => stop(&mut caller, Stop::Host(why)),
        CallOutcome::Value(value) => {
            let Some(text) = value_text::write(&value) else {
                return stop(
                    &mut caller,
                    Stop::Host(format!(
                        "builtin `{name}`: its result cannot be passed back"
                    )),
                );
            };
            let Ok(len) = i32::try_from(text.len()) else {
                return stop(
                    &mut caller,
                    Stop::Host(format!("builtin `{name}`: result too large")),
                );
            };
            let addr = exports.malloc.call(&mut caller, len)?;
            let Ok(at) = usize::try_from(addr) else {
                return stop(
                    &mut caller,
                    Stop::Host("opa_malloc returned a bad address".into()),
                );
            };
            if exports
                .memory
                .write(&mut caller, at, text.as_bytes())
                .is_err()
            {
                return stop(
                    &mut caller,
                    Stop::Host("opa_malloc returned a bad address".into()),
                );
            }
            let parsed = exports.value_parse.call(&mut caller, (addr, len))?;
            if parsed == 0 {
                return stop(
                    &mut caller,
                    Stop::Host(format!(
                        "builtin `{name}`: the module could not read its result"
                    )),
                );
            }
            Ok(parsed)
        }
    }
}

/// The imports every OPA module may have, bound to this store's `memory`.
fn linker(
    engine: &Engine,
    store: &Store<StoreState>,
    memory: Memory,
) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker: Linker<StoreState> = Linker::new(engine);
    linker.define(store, "env", "memory", memory)?;
    linker.func_wrap(
        "env",
        "opa_abort",
        move |mut caller: Caller<'_, StoreState>, addr: i32| -> wasmtime::Result<()> {
            let message = message_at(&mut caller, memory, addr);
            stop(&mut caller, Stop::Abort(message))
        },
    )?;
    linker.func_wrap(
        "env",
        "opa_println",
        move |mut caller: Caller<'_, StoreState>, addr: i32| {
            let message = message_at(&mut caller, memory, addr);
            // A policy's print(): for its author, at debug level (it may print input values).
            tracing::debug!(target: "tollgate::policy::print", "{message}");
        },
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin0",
        |c: Caller<'_, StoreState>, id: i32, _: i32| call_builtin(c, id, &[]),
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin1",
        |c: Caller<'_, StoreState>, id: i32, _: i32, a: i32| call_builtin(c, id, &[a]),
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin2",
        |c: Caller<'_, StoreState>, id: i32, _: i32, a: i32, b: i32| call_builtin(c, id, &[a, b]),
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin3",
        |c: Caller<'_, StoreState>, id: i32, _: i32, a: i32, b: i32, d: i32| {
            call_builtin(c, id, &[a, b, d])
        },
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin4",
        |c: Caller<'_, StoreState>, id: i32, _: i32, a: i32, b: i32, d: i32, e: i32| {
            call_builtin(c, id, &[a, b, d, e])
        },
    )?;
    Ok(linker)
}

impl Instance {
    /// Instantiates `module` with `builtins` (load-time work, bounded by the load deadline).
    pub fn new(
        engine: &Engine,
        module: &Module,
        builtins: &Arc<HostBuiltins>,
    ) -> Result<Instance, String> {
        let mut store = Store::new(engine, StoreState::new(builtins.instance()));
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(load_deadline_ticks());
        let memory_type = module
            .imports()
            .find(|i| i.module() == "env" && i.name() == "memory")
            .and_then(|i| i.ty().memory().cloned())
            .ok_or("it does not import env.memory")?;
        let memory =
            Memory::new(&mut store, memory_type).map_err(|e| format!("its memory: {e}"))?;
        let linker = linker(engine, &store, memory).map_err(|e| e.to_string())?;
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| format!("cannot instantiate it: {e}"))?;
        let global = |store: &mut Store<StoreState>, name: &str| {
            instance
                .get_global(&mut *store, name)
                .and_then(|g| g.get(&mut *store).i32())
        };
        let major = global(&mut store, "opa_wasm_abi_version")
            .ok_or("it exports no opa_wasm_abi_version")?;
        let minor = global(&mut store, "opa_wasm_abi_minor_version").unwrap_or(0);
        if major != 1 {
            return Err(format!(
                "OPA Wasm ABI {major}.{minor} is not supported (1.x is)"
            ));
        }
        macro_rules! func {
            ($name:literal) => {
                instance
                    .get_typed_func(&mut store, $name)
                    .map_err(|e| format!("export `{}`: {e}", $name))?
            };
        }
        macro_rules! optional {
            ($name:literal) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        let fast = if minor >= 2 {
            optional!("opa_eval")
        } else {
            None
        };
        let context = if fast.is_some() {
            None
        } else {
            Some(ContextFuncs {
                new: func!("opa_eval_ctx_new"),
                set_input: func!("opa_eval_ctx_set_input"),
                set_data: func!("opa_eval_ctx_set_data"),
                set_entrypoint: func!("opa_eval_ctx_set_entrypoint"),
                eval: func!("eval"),
                get_result: func!("opa_eval_ctx_get_result"),
            })
        };
        let malloc: TypedFunc<i32, i32> = func!("opa_malloc");
        let value_dump: Option<TypedFunc<i32, i32>> = optional!("opa_value_dump");
        let value_parse: Option<TypedFunc<(i32, i32), i32>> = optional!("opa_value_parse");
        let has_value_exports = value_dump.is_some() && value_parse.is_some();
        if let (Some(value_dump), Some(value_parse)) = (value_dump, value_parse) {
            store.data_mut().exports = Some(CallExports {
                memory,
                malloc: malloc.clone(),
                value_dump,
                value_parse,
            });
        }
        Ok(Instance {
            memory,
            malloc,
            json_parse: func!("opa_json_parse"),
            json_dump: func!("opa_json_dump"),
            heap_ptr_get: func!("opa_heap_ptr_get"),
            heap_ptr_set: func!("opa_heap_ptr_set"),
            builtins_map: func!("builtins"),
            entrypoints_map: func!("entrypoints"),
            fast,
            context,
            has_value_exports,
            data: 0,
            heap_base: 0,
            store,
        })
    }

    /// Whether the module exports `opa_value_dump` and `opa_value_parse` (needed for builtins).
    pub fn has_value_exports(&self) -> bool {
        self.has_value_exports
    }

    /// Whether evaluations take the ABI 1.2 `opa_eval` path.
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Replaces the host builtins (the first instance is made before they are prepared).
    pub fn set_builtins(&mut self, builtins: &Arc<HostBuiltins>) {
        self.store.data_mut().builtins = builtins.instance();
    }

    fn read_json(&mut self, value: i32) -> Result<Vec<u8>, String> {
        let text = self
            .json_dump
            .call(&mut self.store, value)
            .map_err(|e| format!("opa_json_dump: {e}"))?;
        read_c_string(self.memory.data(&self.store), text)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "opa_json_dump's text is out of bounds".to_string())
    }

    /// The `builtins()` or `entrypoints()` map (name → id).
    pub fn read_map(&mut self, builtins: bool) -> Result<BTreeMap<String, i64>, String> {
        let (func, name) = if builtins {
            (&self.builtins_map, "builtins")
        } else {
            (&self.entrypoints_map, "entrypoints")
        };
        let value = func
            .call(&mut self.store, ())
            .map_err(|e| format!("{name}(): {e}"))?;
        let bytes = self.read_json(value)?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{name}(): {e}"))
    }

    /// Writes `bytes` into fresh module memory (`opa_malloc`) and returns the address.
    fn put(&mut self, bytes: &[u8]) -> Result<(i32, i32), String> {
        let len = i32::try_from(bytes.len()).map_err(|_| "larger than 2 GiB".to_string())?;
        let addr = self
            .malloc
            .call(&mut self.store, len)
            .map_err(|e| self.describe(e))?;
        let at =
            usize::try_from(addr).map_err(|_| "opa_malloc returned a bad address".to_string())?;
        self.memory
            .write(&mut self.store, at, bytes)
            .map_err(|e| format!("opa_malloc returned a bad address: {e}"))?;
        Ok((addr, len))
    }

    /// Parses the data document into the module, once; later evaluations start their heap
    /// after it.
    pub fn load_data(&mut self, json: &[u8]) -> Result<(), String> {
        self.store.set_epoch_deadline(load_deadline_ticks());
        let (addr, len) = self.put(json)?;
        let data = self
            .json_parse
            .call(&mut self.store, (addr, len))
            .map_err(|e| self.describe(e))?;
        if data == 0 {
            return Err("the module could not parse the data document".to_string());
        }
        self.data = data;
        self.heap_base = self
            .heap_ptr_get
            .call(&mut self.store, ())
            .map_err(|e| self.describe(e))?;
        Ok(())
    }

    /// A load-time error in words (OPA's abort message when there is one).
    fn describe(&mut self, error: wasmtime::Error) -> String {
        match self.classify(error) {
            AbiFailure::Timeout => "it did not finish in time".to_string(),
            AbiFailure::Abort(m) => format!("opa_abort: {m}"),
            AbiFailure::Failed(m) => m,
        }
    }

    fn classify(&mut self, error: wasmtime::Error) -> AbiFailure {
        match self.store.data_mut().stop.take() {
            Some(Stop::Abort(message)) => AbiFailure::Abort(message),
            Some(Stop::Host(message)) => AbiFailure::Failed(message),
            None if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                AbiFailure::Timeout
            }
            None => AbiFailure::Failed(error.to_string()),
        }
    }

    /// The builtin that failed in the last evaluation (its call was undefined), if any.
    pub fn builtin_failure(&self) -> Option<&BuiltinFailure> {
        self.store.data().builtins.failure()
    }

    /// Evaluates entrypoint `entrypoint` for the JSON `input`; the result set's JSON text
    /// (`[{"result": …}]`). `ticks` epoch ticks bound the module, `deadline` the builtins.
    pub fn evaluate(
        &mut self,
        entrypoint: i32,
        input: &[u8],
        ticks: u64,
        deadline: Instant,
    ) -> Result<Vec<u8>, AbiFailure> {
        self.store.data_mut().stop = None;
        self.store.data_mut().builtins.begin(deadline);
        self.store.set_epoch_deadline(ticks);
        match self.evaluate_inner(entrypoint, input) {
            Ok(bytes) => Ok(bytes),
            Err(Ok(failure)) => Err(failure),
            Err(Err(error)) => Err(self.classify(error)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn evaluate_inner(
        &mut self,
        entrypoint: i32,
        input: &[u8],
    ) -> Result<Vec<u8>, Result<AbiFailure, wasmtime::Error>> {
        let failed = |m: String| Err(Ok(AbiFailure::Failed(m)));
        let Ok(len) = i32::try_from(input.len()) else {
            return failed("the input is larger than 2 GiB".to_string());
        };
        let result_text = if let Some(fast) = &self.fast {
            // The input goes right after the data; opa_eval's heap starts after the input.
            let end = u64::try_from(self.heap_base).unwrap_or(0) + input.len() as u64;
            let pages = end.div_ceil(65_536);
            let have = self.memory.size(&self.store);
            if have < pages && self.memory.grow(&mut self.store, pages - have).is_err() {
                return failed(format!(
                    "the input ({} bytes) does not fit in the memory limit",
                    input.len()
                ));
            }
            let at = usize::try_from(self.heap_base).unwrap_or(0);
            if self.memory.write(&mut self.store, at, input).is_err() {
                return failed("the input does not fit in memory".to_string());
            }
            let Some(heap) = self.heap_base.checked_add(len) else {
                return failed("the input does not fit in memory".to_string());
            };
            fast.call(
                &mut self.store,
                (0, entrypoint, self.data, self.heap_base, len, heap, 0),
            )
            .map_err(Err)?
        } else {
            let Some(ctx_funcs) = &self.context else {
                return failed("the module has no evaluation entry".to_string());
            };
            let (new, set_input, set_data, set_entrypoint, eval, get_result) = (
                ctx_funcs.new.clone(),
                ctx_funcs.set_input.clone(),
                ctx_funcs.set_data.clone(),
                ctx_funcs.set_entrypoint.clone(),
                ctx_funcs.eval.clone(),
                ctx_funcs.get_result.clone(),
            );
            self.heap_ptr_set
                .call(&mut self.store, self.heap_base)
                .map_err(Err)?;
            let (addr, len) = self.put(input).map_err(|m| Ok(AbiFailure::Failed(m)))?;
            let input_value = self
                .json_parse
                .call(&mut self.store, (addr, len))
                .map_err(Err)?;
            if input_value == 0 {
                return failed("the module could not parse the input".to_string());
            }
            let ctx = new.call(&mut self.store, ()).map_err(Err)?;
            set_data
                .call(&mut self.store, (ctx, self.data))
                .map_err(Err)?;
            set_input
                .call(&mut self.store, (ctx, input_value))
                .map_err(Err)?;
            set_entrypoint
                .call(&mut self.store, (ctx, entrypoint))
                .map_err(Err)?;
            eval.call(&mut self.store, ctx).map_err(Err)?;
            let result = get_result.call(&mut self.store, ctx).map_err(Err)?;
            self.json_dump.call(&mut self.store, result).map_err(Err)?
        };
        read_c_string(self.memory.data(&self.store), result_text)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                Ok(AbiFailure::Failed(
                    "the result is out of bounds".to_string(),
                ))
            })
    }
}

/// The value of an OPA result set: `Undefined` for `[]`, the value for `[{"result": v}]`.
pub fn result_value(bytes: &[u8]) -> Result<Value, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        result: Value,
    }
    let mut set: Vec<Entry> =
        serde_json::from_slice(bytes).map_err(|e| format!("the result set is not usable: {e}"))?;
    match set.len() {
        0 => Ok(Value::Undefined),
        1 => Ok(set.pop().map(|e| e.result).unwrap_or(Value::Undefined)),
        n => Err(format!(
            "the entrypoint returned {n} results; a decision must be one value"
        )),
    }
}
