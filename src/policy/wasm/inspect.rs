//! Load-time checks of an OPA Wasm module, so that what would fail at request time fails at load
//! with a name: the entrypoints it exports and the host builtins it needs.
//!
//! opa-wasm resolves a module's builtins when it instantiates it, but only reports "unknown
//! builtin" without the name, and about 40 of the builtins it does resolve are stubs that fail
//! when called (`http.send`, `io.jwt.*`, `regex.*`…). So the module is instantiated once here
//! with inert imports, its `builtins()` and `entrypoints()` maps are read through
//! `opa_json_dump`, and every builtin name is checked against [`SUPPORTED_BUILTINS`]: the host
//! builtins that opa-wasm 0.3.4 implements with the features tollgate enables.

use std::collections::BTreeMap;

use opa_wasm::wasmtime::{Caller, Engine, Linker, Memory, Module, Store};

use super::host::{StoreState, load_deadline_ticks};

/// Host builtins opa-wasm 0.3.4 implements for real with the features in Cargo.toml.
/// (Builtins such as `glob.match` or `startswith` are compiled into the module by OPA and never
/// reach the host.) `time.*` and `rand.*` are left out: their features pull in large
/// dependencies; a module that needs them fails at load naming the builtin.
pub const SUPPORTED_BUILTINS: &[&str] = &[
    "base64url.encode_no_pad",
    "crypto.hmac.sha256",
    "crypto.hmac.sha512",
    "crypto.sha256",
    "hex.decode",
    "hex.encode",
    "json.patch",
    "opa.runtime",
    "semver.compare",
    "semver.is_valid",
    "sprintf",
    "units.parse",
    "units.parse_bytes",
    "urlquery.decode",
    "urlquery.decode_object",
    "urlquery.encode",
    "urlquery.encode_object",
    "yaml.is_valid",
    "yaml.marshal",
    "yaml.unmarshal",
];

/// Imports an OPA module may have; all are provided by opa-wasm.
const KNOWN_IMPORTS: &[&str] = &[
    "memory",
    "opa_abort",
    "opa_println",
    "opa_builtin0",
    "opa_builtin1",
    "opa_builtin2",
    "opa_builtin3",
    "opa_builtin4",
];

/// What a module declares about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFacts {
    /// Entrypoint names (`tollgate/decision`) to their ids.
    pub entrypoints: BTreeMap<String, i64>,
    /// Host builtin names the module calls.
    pub builtins: BTreeMap<String, i64>,
}

/// Why a module is not usable, worded for `tollgate check` and reload errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("not an OPA Wasm module: {0}")]
    NotOpa(String),
    #[error(
        "the policy needs builtin `{0}`, which tollgate's Wasm host (opa-wasm 0.3.4) does not provide"
    )]
    MissingBuiltin(String),
    #[error("the module has no entrypoint `{wanted}` (it has: {available})")]
    NoEntrypoint { wanted: String, available: String },
}

/// Reads the module's maps and checks them against `entrypoint` and the host's builtins.
pub fn check(
    engine: &Engine,
    module: &Module,
    entrypoint: &str,
) -> Result<ModuleFacts, InspectError> {
    for import in module.imports() {
        if import.module() != "env" || !KNOWN_IMPORTS.contains(&import.name()) {
            return Err(InspectError::NotOpa(format!(
                "it imports `{}.{}`, which no OPA host provides",
                import.module(),
                import.name()
            )));
        }
    }
    let facts = read_facts(engine, module).map_err(InspectError::NotOpa)?;
    if let Some(name) = facts
        .builtins
        .keys()
        .find(|name| !SUPPORTED_BUILTINS.contains(&name.as_str()))
    {
        return Err(InspectError::MissingBuiltin(name.clone()));
    }
    if !facts.entrypoints.contains_key(entrypoint) {
        let available: Vec<&str> = facts.entrypoints.keys().map(String::as_str).collect();
        return Err(InspectError::NoEntrypoint {
            wanted: entrypoint.to_string(),
            available: if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            },
        });
    }
    Ok(facts)
}

fn read_facts(engine: &Engine, module: &Module) -> Result<ModuleFacts, String> {
    let mut store = Store::new(engine, StoreState::new());
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(load_deadline_ticks());
    let memory_type = module
        .imports()
        .find(|i| i.module() == "env" && i.name() == "memory")
        .and_then(|i| i.ty().memory().cloned())
        .ok_or("it does not import env.memory")?;
    let memory = Memory::new(&mut store, memory_type).map_err(|e| e.to_string())?;
    let mut linker: Linker<StoreState> = Linker::new(engine);
    let inert = "not callable while tollgate inspects the module";
    let define = |linker: &mut Linker<StoreState>| -> opa_wasm::wasmtime::Result<()> {
        linker.define(&store, "env", "memory", memory)?;
        linker.func_wrap(
            "env",
            "opa_abort",
            move |_: Caller<'_, StoreState>, _: i32| {
                Err::<(), _>(opa_wasm::wasmtime::Error::msg(inert))
            },
        )?;
        linker.func_wrap("env", "opa_println", |_: Caller<'_, StoreState>, _: i32| {})?;
        linker.func_wrap(
            "env",
            "opa_builtin0",
            move |_: Caller<'_, StoreState>, _: i32, _: i32| {
                Err::<i32, _>(opa_wasm::wasmtime::Error::msg(inert))
            },
        )?;
        linker.func_wrap(
            "env",
            "opa_builtin1",
            move |_: Caller<'_, StoreState>, _: i32, _: i32, _: i32| {
                Err::<i32, _>(opa_wasm::wasmtime::Error::msg(inert))
            },
        )?;
        linker.func_wrap(
            "env",
            "opa_builtin2",
            move |_: Caller<'_, StoreState>, _: i32, _: i32, _: i32, _: i32| {
                Err::<i32, _>(opa_wasm::wasmtime::Error::msg(inert))
            },
        )?;
        linker.func_wrap(
            "env",
            "opa_builtin3",
            move |_: Caller<'_, StoreState>, _: i32, _: i32, _: i32, _: i32, _: i32| {
                Err::<i32, _>(opa_wasm::wasmtime::Error::msg(inert))
            },
        )?;
        linker.func_wrap(
            "env",
            "opa_builtin4",
            move |_: Caller<'_, StoreState>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
                Err::<i32, _>(opa_wasm::wasmtime::Error::msg(inert))
            },
        )?;
        Ok(())
    };
    define(&mut linker).map_err(|e| e.to_string())?;
    let instance = linker
        .instantiate(&mut store, module)
        .map_err(|e| format!("cannot instantiate: {e}"))?;
    let mut read_map = |export: &str| -> Result<BTreeMap<String, i64>, String> {
        let list = instance
            .get_typed_func::<(), i32>(&mut store, export)
            .map_err(|e| format!("export `{export}`: {e}"))?;
        let dump = instance
            .get_typed_func::<i32, i32>(&mut store, "opa_json_dump")
            .map_err(|e| format!("export `opa_json_dump`: {e}"))?;
        let value = list
            .call(&mut store, ())
            .map_err(|e| format!("{export}(): {e}"))?;
        let text = dump
            .call(&mut store, value)
            .map_err(|e| format!("opa_json_dump: {e}"))?;
        let bytes = read_c_string(memory.data(&store), text)
            .ok_or_else(|| format!("{export}(): the dumped JSON is out of bounds"))?;
        serde_json::from_slice(bytes).map_err(|e| format!("{export}(): {e}"))
    };
    let builtins = read_map("builtins")?;
    let entrypoints = read_map("entrypoints")?;
    Ok(ModuleFacts {
        entrypoints,
        builtins,
    })
}

/// The NUL-terminated string at `addr` in `memory`.
fn read_c_string(memory: &[u8], addr: i32) -> Option<&[u8]> {
    let start = usize::try_from(addr).ok()?;
    let rest = memory.get(start..)?;
    let len = rest.iter().position(|b| *b == 0)?;
    rest.get(..len)
}
