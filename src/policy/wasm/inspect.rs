//! Load-time checks of an OPA Wasm module, so that what would fail at request time fails at load
//! with a name: the imports it needs, the entrypoint it must export, the host builtins it calls
//! (checked by [`super::dispatch::HostBuiltins::prepare`]).

use std::collections::BTreeMap;

use wasmtime::Module;

/// Imports an OPA module may have; tollgate's host provides all of them.
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
    /// Host builtin names the module calls, to their ids.
    pub builtins: BTreeMap<String, i64>,
}

/// Why a module is not usable, worded for `tollgate check` and reload errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("not an OPA Wasm module: {0}")]
    NotOpa(String),
    #[error("the module has no entrypoint `{wanted}` (it has: {available})")]
    NoEntrypoint { wanted: String, available: String },
}

/// Refuses a module that imports anything an OPA host does not provide.
pub fn check_imports(module: &Module) -> Result<(), InspectError> {
    for import in module.imports() {
        if import.module() != "env" || !KNOWN_IMPORTS.contains(&import.name()) {
            return Err(InspectError::NotOpa(format!(
                "it imports `{}.{}`, which no OPA host provides",
                import.module(),
                import.name()
            )));
        }
    }
    Ok(())
}

/// The id of `entrypoint` in the module's map, or an error listing what there is.
pub fn entrypoint_id(facts: &ModuleFacts, entrypoint: &str) -> Result<i32, InspectError> {
    match facts.entrypoints.get(entrypoint) {
        Some(id) => i32::try_from(*id)
            .map_err(|_| InspectError::NotOpa(format!("entrypoint id {id} is out of range"))),
        None => {
            let available: Vec<&str> = facts.entrypoints.keys().map(String::as_str).collect();
            Err(InspectError::NoEntrypoint {
                wanted: entrypoint.to_string(),
                available: if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                },
            })
        }
    }
}
