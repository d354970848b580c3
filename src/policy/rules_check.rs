//! Rule definitions OPA's compiler refuses and regorus accepts, refused at load here too.
//!
//! OPA refuses at compile time a `default` for a rule that is built key by key (a partial set,
//! `names contains n if …`, or a partial object, `limits[k] := v if …`) and two `default`s for
//! the same rule ("multiple default rules … found"). regorus evaluates such modules, and what
//! it answers is not OPA's (the trap corpus, `tests/traps/rules.yaml`). A policy that OPA
//! would not load must not decide anything in tollgate either.

use std::collections::BTreeMap;

use regorus::Engine;
use regorus::unstable::{Expr, Rule, RuleHead};

use super::ast_walk;

/// Why a module's rules were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("{location}: multiple default rules {rule} found (OPA refuses this at compile time)")]
    TwoDefaults { rule: String, location: String },
    #[error(
        "{location}: default rule {rule} is not allowed: {rule} is a {kind} built key by key (OPA refuses this at compile time)"
    )]
    DefaultOnPartial {
        rule: String,
        kind: &'static str,
        location: String,
    },
}

/// What was found for one rule path.
#[derive(Default)]
struct Seen {
    defaults: Vec<String>,
    partial: Option<&'static str>,
}

/// Checks every module of `engine`.
pub fn check(engine: &mut Engine) -> Result<(), RulesError> {
    let mut rules: BTreeMap<String, Seen> = BTreeMap::new();
    for module in engine.get_modules().iter() {
        let package = ast_walk::path(&module.package.refr).unwrap_or_default();
        for rule in &module.policy {
            match rule.as_ref() {
                Rule::Default {
                    span, refr, args, ..
                } if args.is_empty() => {
                    if let Some(name) = ast_walk::path(refr) {
                        let location =
                            format!("{}:{}:{}", span.source.get_path(), span.line, span.col);
                        rules
                            .entry(format!("data.{package}.{name}"))
                            .or_default()
                            .defaults
                            .push(location);
                    }
                }
                Rule::Spec { head, .. } => {
                    let (refr, kind) = match head {
                        RuleHead::Set { refr, .. } => (refr, "partial set"),
                        RuleHead::Compr { refr, .. } => match refr.as_ref() {
                            Expr::RefBrack { refr, index, .. }
                                if matches!(index.as_ref(), Expr::Var { .. }) =>
                            {
                                (refr, "partial object")
                            }
                            _ => continue,
                        },
                        RuleHead::Func { .. } => continue,
                    };
                    if let Some(name) = ast_walk::path(refr) {
                        rules
                            .entry(format!("data.{package}.{name}"))
                            .or_default()
                            .partial = Some(kind);
                    }
                }
                Rule::Default { .. } => {}
            }
        }
    }
    for (rule, seen) in rules {
        if seen.defaults.len() > 1 {
            return Err(RulesError::TwoDefaults {
                location: seen.defaults[1].clone(),
                rule,
            });
        }
        if let (Some(location), Some(kind)) = (seen.defaults.first(), seen.partial) {
            return Err(RulesError::DefaultOnPartial {
                location: location.clone(),
                rule,
                kind,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(source: &str) -> Result<(), RulesError> {
        let mut engine = Engine::new();
        engine.add_policy("t.rego".into(), source.into()).unwrap();
        check(&mut engine)
    }

    #[test]
    fn refuses_what_opa_refuses() {
        let set = "package t\nimport rego.v1\ndefault names := set()\nnames contains n if some n in input.names\n";
        assert!(matches!(
            load(set),
            Err(RulesError::DefaultOnPartial {
                kind: "partial set",
                ..
            })
        ));
        let object = "package t\nimport rego.v1\ndefault limits := {}\nlimits[k] := v if some k, v in input.limits\n";
        assert!(matches!(
            load(object),
            Err(RulesError::DefaultOnPartial {
                kind: "partial object",
                ..
            })
        ));
        let two = "package t\nimport rego.v1\ndefault allow := false\ndefault allow := true\nallow if input.ok\n";
        let error = load(two).unwrap_err();
        assert!(error.to_string().contains("t.rego:4:"), "{error}");
    }

    #[test]
    fn accepts_what_opa_accepts() {
        for ok in [
            "package t\nimport rego.v1\ndefault names := set()\nnames := {n | some n in input.names}\n",
            "package t\nimport rego.v1\ndefault allow := false\nallow if input.ok\n",
            "package t\nimport rego.v1\ndefault f(_) := 1\nf(x) := 2 if x\n",
            "package t\nimport rego.v1\nnames contains n if some n in input.names\n",
        ] {
            assert_eq!(load(ok), Ok(()), "{ok}");
        }
    }
}
