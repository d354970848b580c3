//! Which functions a policy calls, checked at load.
//!
//! OPA refuses a module that calls a function it does not know ("undefined function") when it
//! compiles it; regorus' interpreter only finds out when the call is evaluated, which for a
//! rarely taken branch could be the middle of an incident. So each module's syntax tree is
//! walked once per revision and every call is checked: a call of a network builtin is refused
//! naming it, and a call that is neither a builtin, one of tollgate's builtins, nor a function
//! the policy defines is refused as unknown — before the revision can decide anything.
//!
//! The walk uses `regorus::unstable` (the parser's syntax tree); regorus is pinned to an exact
//! version in `Cargo.toml`, so the shape cannot change under us.

use std::collections::{BTreeMap, BTreeSet};

use regorus::Engine;
use regorus::unstable::{BUILTINS, Expr, Module, Rule, RuleHead};

use crate::policy::ast_walk;

/// Why a policy's calls were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error(
        "{location}: the policy calls {name}, a builtin that reaches the network; tollgate refuses it"
    )]
    Network { name: String, location: String },
    #[error(
        "{location}: the policy calls {name}, which is neither a builtin tollgate supports nor a function the policy defines"
    )]
    Unknown { name: String, location: String },
}

/// A function call found in a module: the called name as written, where, and the module's
/// package (to resolve calls of the package's own functions).
struct Call {
    name: String,
    location: String,
}

/// Checks every call in the engine's modules. `extensions` are the names tollgate adds.
pub fn check(engine: &mut Engine, extensions: &[&str]) -> Result<(), CallError> {
    let modules = engine.get_modules().clone();
    let mut calls = Vec::new();
    let mut defined = BTreeSet::new();
    let mut aliases = BTreeSet::new();
    for module in &modules {
        let package = ast_walk::path(&module.package.refr).unwrap_or_default();
        for import in &module.imports {
            if let Some(alias) = &import.r#as {
                aliases.insert(alias.text().to_string());
            } else if let Some(path) = ast_walk::path(&import.refr)
                && let Some(last) = path.rsplit('.').next()
            {
                aliases.insert(last.to_string());
            }
        }
        collect_module(module, &package, &mut calls, &mut defined);
    }
    for call in calls {
        let name = call.name.as_str();
        if super::REFUSED_NETWORK_BUILTINS.contains(&name) {
            return Err(CallError::Network {
                name: call.name,
                location: call.location,
            });
        }
        let known = BUILTINS.contains_key(name)
            || extensions.contains(&name)
            || name == "print"
            || defined.contains(name)
            || name.starts_with("data.")
            || name
                .split('.')
                .next()
                .is_some_and(|first| aliases.contains(first));
        if !known {
            return Err(CallError::Unknown {
                name: call.name,
                location: call.location,
            });
        }
    }
    Ok(())
}

fn collect_module(
    module: &Module,
    package: &str,
    calls: &mut Vec<Call>,
    defined: &mut BTreeSet<String>,
) {
    for rule in &module.policy {
        match rule.as_ref() {
            Rule::Spec {
                head: RuleHead::Func { refr, .. },
                ..
            } => {
                if let Some(name) = ast_walk::path(refr) {
                    // Callable as `f`, `pkg.f` (from another package, through an import) and
                    // `data.pkg.f`.
                    defined.insert(format!("{package}.{name}"));
                    if let Some(last) = name.rsplit('.').next() {
                        defined.insert(last.to_string());
                    }
                    defined.insert(name);
                }
            }
            // `default f(_) := v` defines f as well.
            Rule::Default { refr, args, .. } if !args.is_empty() => {
                if let Some(name) = ast_walk::path(refr) {
                    defined.insert(format!("{package}.{name}"));
                    defined.insert(name);
                }
            }
            _ => {}
        }
    }
    ast_walk::module(module, &mut CallCollector { calls });
}

/// Records every call of a walk (`with f as g` replaces f: only g is walked, as a value).
struct CallCollector<'c> {
    calls: &'c mut Vec<Call>,
}

impl<'a> ast_walk::Visit<'a> for CallCollector<'_> {
    fn expr(&mut self, expr: &'a Expr) {
        if let Expr::Call { span, fcn, .. } = expr
            && let Some(name) = ast_walk::path(fcn)
        {
            self.calls.push(Call {
                name,
                location: format!("{}:{}:{}", span.source.get_path(), span.line, span.col),
            });
        }
    }
}

/// The names of every builtin function the native engine evaluates: regorus' own and
/// tollgate's (for `docs/POLICY.md` and the Wasm engine's load-time check).
pub fn supported(extensions: &[&str]) -> BTreeMap<String, &'static str> {
    let mut names = BTreeMap::new();
    for name in BUILTINS.keys() {
        names.insert((*name).to_string(), "regorus");
    }
    for name in extensions {
        names.insert((*name).to_string(), "tollgate");
    }
    for name in super::REFUSED_NETWORK_BUILTINS {
        names.remove(*name);
    }
    names
}
