//! An entrypoint that names a document built by rules with ref heads, such as
//! `limits[input.host].rate := 5` under the entrypoint `…/limits`.
//!
//! OPA evaluates such an entrypoint like any other document (`{"github": {"rate": 10}, …}`, or
//! a conflict error when two rules give one key two values). regorus' interpreter evaluates
//! the same document when a rule refers to it, but cannot make it the rule it starts from
//! ("not a valid rule path"). So tollgate adds one rule that refers to it — package
//! [`PACKAGE`], `document := data.<the entrypoint>` — and evaluates that rule instead: the
//! same value, the same undefined, the same conflict as OPA. The added package is visible in
//! `data` to a policy that walks all of it; nothing else changes.

use regorus::Engine;
use regorus::Value;
use regorus::unstable::{Expr, Rule, RuleHead};

use super::ast_walk;

/// The package of the added rule; no policy of tollgate's users is expected to use it.
pub const PACKAGE: &str = "tollgate_internal_entrypoint";

/// The rule evaluated in place of the entrypoint.
pub const RULE: &str = "data.tollgate_internal_entrypoint.document";

/// Whether some rule with a ref head builds the document at `rule` (`data.a.b`): `rule` lies
/// inside the rule's package, and the head's constant part, under its package, is `rule` or
/// lies below it.
pub fn built_by_ref_heads(engine: &mut Engine, rule: &str) -> bool {
    let below = format!("{rule}.");
    engine.get_modules().iter().any(|module| {
        let Some(package) = ast_walk::path(&module.package.refr) else {
            return false;
        };
        // Inside the package: an entrypoint naming a package is a mistake, not a document.
        if !rule.starts_with(&format!("data.{package}.")) {
            return false;
        }
        module.policy.iter().any(|r| {
            let refr = match r.as_ref() {
                Rule::Spec {
                    head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. },
                    ..
                } => refr,
                _ => return false,
            };
            constant_prefix(refr).is_some_and(|(prefix, _)| {
                let path = format!("data.{package}.{prefix}");
                path == rule || path.starts_with(&below)
            })
        })
    })
}

/// The added module: (name, source).
pub fn module(rule: &str) -> (String, String) {
    (
        "tollgate-internal-entrypoint.rego".into(),
        format!("package {PACKAGE}\n\ndocument := {rule}\n"),
    )
}

/// The leading constant part of a rule head's reference (`limits` of `limits[input.host].rate`,
/// `a.b` of `a.b[k]` and of `a["b"]`), and whether the whole reference is constant.
fn constant_prefix(expr: &Expr) -> Option<(String, bool)> {
    match expr {
        Expr::Var { span, .. } => Some((span.text().to_string(), true)),
        Expr::RefDot { refr, field, .. } => {
            let (prefix, whole) = constant_prefix(refr)?;
            Some(if whole {
                (format!("{prefix}.{}", field.0.text()), true)
            } else {
                (prefix, false)
            })
        }
        Expr::RefBrack { refr, index, .. } => {
            let (prefix, whole) = constant_prefix(refr)?;
            Some(match index.as_ref() {
                Expr::String {
                    value: Value::String(key),
                    ..
                } if whole => (format!("{prefix}.{key}"), true),
                _ => (prefix, false),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rego::RegoPolicy;

    const LIMITS: &str = "package traps.refhead\nimport rego.v1\nlimits.github.rate := 10\nlimits[input.host].rate := 5\n";

    fn compile(source: &str, entrypoint: &str) -> Result<RegoPolicy, String> {
        RegoPolicy::compile(
            &[("p.rego".into(), source.into())],
            Value::new_object(),
            entrypoint,
        )
        .map_err(|e| e.to_string())
    }

    fn input(host: &str) -> Value {
        Value::from_json_str(&format!(r#"{{"host": "{host}"}}"#)).unwrap()
    }

    #[test]
    fn a_document_of_ref_head_rules_is_evaluated_as_opa_does() {
        let policy = compile(LIMITS, "traps/refhead/limits").unwrap();
        assert_eq!(
            policy.evaluate_once(input("slack")).unwrap(),
            Value::from_json_str(r#"{"github": {"rate": 10}, "slack": {"rate": 5}}"#).unwrap()
        );
        // Two values for github.rate: OPA's conflict error, never a value.
        let conflict = policy.evaluate_once(input("github"));
        assert!(conflict.is_err(), "{conflict:?}");
        // A constant part below the entrypoint is enough.
        let policy = compile(LIMITS, "traps/refhead/limits/github").unwrap();
        assert_eq!(
            policy.evaluate_once(input("slack")).unwrap(),
            Value::from_json_str(r#"{"rate": 10}"#).unwrap()
        );
    }

    #[test]
    fn an_entrypoint_no_rule_builds_is_still_refused() {
        let error = compile(LIMITS, "traps/refhead/quotas").err().unwrap();
        assert!(error.contains("no rule at the entrypoint"), "{error}");
        // A package is not a rule: a misspelt entrypoint is refused, not evaluated as `data.traps`.
        let error = compile(LIMITS, "traps/refhead").err().unwrap();
        assert!(error.contains("no rule at the entrypoint"), "{error}");
    }
}
