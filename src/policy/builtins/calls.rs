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
use regorus::unstable::{BUILTINS, Expr, Literal, Module, Query, Rule, RuleHead};

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
        let package = path_of(&module.package.refr).unwrap_or_default();
        for import in &module.imports {
            if let Some(alias) = &import.r#as {
                aliases.insert(alias.text().to_string());
            } else if let Some(path) = path_of(&import.refr)
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

/// The dotted path of a reference made only of a variable and `.field` steps (`io.jwt.decode`);
/// `None` for anything else (a call through `data["x"]` is left to the interpreter).
fn path_of(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Var { span, .. } => Some(span.text().to_string()),
        Expr::RefDot { refr, field, .. } => {
            let base = path_of(refr)?;
            Some(format!("{base}.{}", field.0.text()))
        }
        _ => None,
    }
}

fn collect_module(
    module: &Module,
    package: &str,
    calls: &mut Vec<Call>,
    defined: &mut BTreeSet<String>,
) {
    for rule in &module.policy {
        match rule.as_ref() {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => {
                        if let Some(name) = path_of(refr) {
                            // Callable as `f`, `pkg.f` (from another package, through an
                            // import) and `data.pkg.f`.
                            defined.insert(format!("{package}.{name}"));
                            if let Some(last) = name.rsplit('.').next() {
                                defined.insert(last.to_string());
                            }
                            defined.insert(name);
                        }
                        for arg in args {
                            collect_expr(arg, calls);
                        }
                        if let Some(assign) = assign {
                            collect_expr(&assign.value, calls);
                        }
                    }
                    RuleHead::Compr { refr, assign, .. } => {
                        collect_expr(refr, calls);
                        if let Some(assign) = assign {
                            collect_expr(&assign.value, calls);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        collect_expr(refr, calls);
                        if let Some(key) = key {
                            collect_expr(key, calls);
                        }
                    }
                }
                for body in bodies {
                    if let Some(assign) = &body.assign {
                        collect_expr(&assign.value, calls);
                    }
                    collect_query(&body.query, calls);
                }
            }
            Rule::Default {
                refr, args, value, ..
            } => {
                // `default f(_) := v` defines f as well.
                if !args.is_empty()
                    && let Some(name) = path_of(refr)
                {
                    defined.insert(format!("{package}.{name}"));
                    defined.insert(name);
                }
                collect_expr(value, calls);
            }
        }
    }
}

fn collect_query(query: &Query, calls: &mut Vec<Call>) {
    for stmt in &query.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(key) = key {
                    collect_expr(key, calls);
                }
                collect_expr(value, calls);
                collect_expr(collection, calls);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => collect_expr(expr, calls),
            Literal::Every { domain, query, .. } => {
                collect_expr(domain, calls);
                collect_query(query, calls);
            }
        }
        for modifier in &stmt.with_mods {
            // `with f as g`: g may be a function; f is replaced, not called.
            collect_expr(&modifier.r#as, calls);
        }
    }
}

fn collect_expr(expr: &Expr, calls: &mut Vec<Call>) {
    match expr {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => {}
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for item in items {
                collect_expr(item, calls);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, key, value) in fields {
                collect_expr(key, calls);
                collect_expr(value, calls);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            collect_expr(term, calls);
            collect_query(query, calls);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            collect_expr(key, calls);
            collect_expr(value, calls);
            collect_query(query, calls);
        }
        Expr::Call {
            span, fcn, params, ..
        } => {
            if let Some(name) = path_of(fcn) {
                calls.push(Call {
                    name,
                    location: format!("{}:{}:{}", span.source.get_path(), span.line, span.col),
                });
            }
            for param in params {
                collect_expr(param, calls);
            }
        }
        Expr::UnaryExpr { expr, .. } => collect_expr(expr, calls),
        Expr::RefDot { refr, .. } => collect_expr(refr, calls),
        Expr::RefBrack { refr, index, .. } => {
            collect_expr(refr, calls);
            collect_expr(index, calls);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            collect_expr(lhs, calls);
            collect_expr(rhs, calls);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(key) = key {
                collect_expr(key, calls);
            }
            collect_expr(value, calls);
            collect_expr(collection, calls);
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
