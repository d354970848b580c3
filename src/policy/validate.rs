//! Data checks once per revision: the `data_errors` convention.
//!
//! A policy's data (who may call what) changes far more often than its rules, and a typo in it
//! (`"ports": 443`, a misspelt field) would otherwise only show as denies, request by request.
//! So a policy package may define a rule `data_errors`, a set of messages each naming a bad key
//! of the data; tollgate evaluates it once, whenever a revision is loaded (start-up,
//! `tollgate check`, `policy eval`, reload), and any message refuses the revision: start-up and
//! `check` exit 2 with the messages, a reload answers 422 and keeps the last good revision.
//! The per-request decision never evaluates it.
//!
//! The rule lives next to the entrypoint: for `tollgate/decision` it is
//! `data.tollgate.data_errors` (a Wasm module's entrypoint `tollgate/data_errors`). A Rego policy
//! whose package does not declare it loads as before. A Wasm module cannot say whether its source
//! had the rule, so a module built without that entrypoint loads with a log line saying its data
//! was not checked (`opa build -e tollgate/decision -e tollgate/data_errors` builds both).

use std::num::NonZeroU32;
use std::time::Duration;

use regorus::Value;
use regorus::utils::limits::ExecutionTimerConfig;

use super::ast_walk;
use super::rego::build_engine;
use serde_json::Value as Json;

use super::wasm::WasmPolicy;

/// The rule a policy package defines to have its data checked at load.
pub const DATA_ERRORS_RULE: &str = "data_errors";

/// How long one data check may run: off the request path and once per revision, so far longer
/// than a decision, but a check that never ends must not hang a reload either.
pub const CHECK_TIME_LIMIT: Duration = Duration::from_secs(60);

/// At most this many messages are kept in the error (the count says how many there were).
const MAX_MESSAGES: usize = 100;

/// Why a revision's data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataCheckError {
    /// The policy's own check found problems, one message per bad key.
    #[error("{rule} refuses the data ({count} problem{s}):\n  {list}",
        s = if *count == 1 { "" } else { "s" },
        list = messages.join("\n  "))]
    Refused {
        rule: String,
        /// How many problems the check reported.
        count: usize,
        /// The first [`MAX_MESSAGES`] of them, sorted, and a last line saying how many more.
        messages: Vec<String>,
    },
    /// The check itself did not give a set of messages: an evaluation error, its time limit, or
    /// a value of another type. Fails closed: the data counts as unchecked and is refused.
    #[error("{rule} could not check the data: {detail}")]
    Broken { rule: String, detail: String },
}

/// What a data check found when it did not refuse the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The rule ran and reported nothing.
    Clean,
    /// The policy has no such rule (or the entrypoint has no package): nothing to check.
    NoRule,
}

/// The rule path of the data check for `entrypoint` (`tollgate/decision` →
/// `["tollgate", "data_errors"]`); `None` when the entrypoint names no package.
fn rule_components(entrypoint: &str) -> Option<Vec<&str>> {
    let mut parts: Vec<&str> = entrypoint.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() < 2 {
        return None;
    }
    parts.pop();
    parts.push(DATA_ERRORS_RULE);
    Some(parts)
}

/// Checks the data of a Rego revision: when the package of `entrypoint` declares
/// `data_errors`, evaluates it with regorus' interpreter over `modules` and `data`.
pub fn check_rego(
    modules: &[(String, String)],
    data: &Value,
    entrypoint: &str,
) -> Result<Checked, DataCheckError> {
    let Some(components) = rule_components(entrypoint) else {
        return Ok(Checked::NoRule);
    };
    let package = format!("data.{}", components[..components.len() - 1].join("."));
    let rule = format!("{package}.{DATA_ERRORS_RULE}");
    let broken = |detail: String| DataCheckError::Broken {
        rule: rule.clone(),
        detail,
    };
    // The same engine the decisions run on: tollgate's builtins, OPA's rewrites, checked calls.
    let mut engine =
        build_engine(modules, Some(data.clone())).map_err(|e| broken(e.to_string()))?;
    let in_package: Vec<String> = engine
        .get_modules()
        .iter()
        .filter(|m| ast_walk::path(&m.package.refr).is_some_and(|p| format!("data.{p}") == package))
        .map(|m| m.package.refr.span().source.get_path().to_string())
        .collect();
    let declared = in_package.iter().any(|name| {
        engine
            .has_declared_rule_rooted_at(name, DATA_ERRORS_RULE)
            .unwrap_or(false)
    });
    if !declared {
        return Ok(Checked::NoRule);
    }
    // Unlike a decision, a check whose builtin fails must not read as "no problems": strict
    // builtin errors make it an error, which refuses the data (fail closed).
    engine.set_strict_builtin_errors(true);
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: CHECK_TIME_LIMIT,
        check_interval: NonZeroU32::new(1024).unwrap_or(NonZeroU32::MIN),
    });
    let value = engine
        .eval_rule(rule.clone())
        .map_err(|e| broken(e.to_string()))?;
    let json = match value {
        Value::Undefined => Json::Array(Vec::new()),
        value => value
            .to_json_str()
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .ok_or_else(|| broken("its value is not JSON".into()))?,
    };
    conclude(rule, &json)
}

/// Checks the data of a Wasm revision: when the module has the entrypoint
/// `<package>/data_errors`, evaluates it on an instance of its own with the revision's data
/// loaded. A module without it loads unchecked, and the log says so.
pub fn check_wasm(policy: &WasmPolicy, entrypoint: &str) -> Result<Checked, DataCheckError> {
    let Some(components) = rule_components(entrypoint) else {
        return Ok(Checked::NoRule);
    };
    let wanted = components.join("/");
    let broken = |detail: String| DataCheckError::Broken {
        rule: wanted.clone(),
        detail,
    };
    let value = match policy.evaluate_once(&wanted, CHECK_TIME_LIMIT) {
        Ok(Some(value)) => value,
        Ok(None) => {
            tracing::info!(
                entrypoint = %wanted,
                "the Wasm module has no data-check entrypoint: its data is not checked at load (build it with -e {wanted} as well)"
            );
            return Ok(Checked::NoRule);
        }
        Err(e) => return Err(broken(e.to_string())),
    };
    let json = match value {
        Value::Undefined => Json::Array(Vec::new()),
        value => serde_json::to_value(&value).map_err(|e| broken(e.to_string()))?,
    };
    conclude(wanted, &json)
}

/// The check's value as a verdict: a set (or list) of strings, empty when the data is good.
fn conclude(rule: String, value: &Json) -> Result<Checked, DataCheckError> {
    let Some(items) = value.as_array() else {
        return Err(DataCheckError::Broken {
            rule,
            detail: format!("it must be a set of strings, not {}", kind(value)),
        });
    };
    let mut messages = Vec::with_capacity(items.len().min(MAX_MESSAGES + 1));
    for item in items {
        match item.as_str() {
            Some(message) => messages.push(message.to_string()),
            None => {
                return Err(DataCheckError::Broken {
                    rule,
                    detail: format!("it must be a set of strings; it holds {}", kind(item)),
                });
            }
        }
    }
    if messages.is_empty() {
        return Ok(Checked::Clean);
    }
    messages.sort();
    messages.dedup();
    let count = messages.len();
    if count > MAX_MESSAGES {
        messages.truncate(MAX_MESSAGES);
        messages.push(format!("... and {} more", count - MAX_MESSAGES));
    }
    Err(DataCheckError::Refused {
        rule,
        count,
        messages,
    })
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rego(source: &str, data: &str) -> Result<Checked, DataCheckError> {
        check_rego(
            &[("p.rego".to_string(), source.to_string())],
            &Value::from_json_str(data).unwrap(),
            "tollgate/decision",
        )
    }

    const CHECKED: &str = "package tollgate\n\
        decision := {\"allow\": true}\n\
        data_errors contains sprintf(\"limits[%q]: must be a number\", [k]) if {\n\
            some k, v in data.limits\n\
            not is_number(v)\n\
        }\n";

    #[test]
    fn a_policy_without_the_rule_is_not_checked() {
        let plain = "package tollgate\ndecision := {\"allow\": true}\n";
        assert_eq!(rego(plain, r#"{"x": 1}"#), Ok(Checked::NoRule));
        // The rule in another package does not count: it belongs to the entrypoint's package.
        let elsewhere = "package other\ndata_errors contains \"x\"\n";
        let modules = [
            ("a.rego".to_string(), plain.to_string()),
            ("b.rego".to_string(), elsewhere.to_string()),
        ];
        let data = Value::new_object();
        assert_eq!(
            check_rego(&modules, &data, "tollgate/decision"),
            Ok(Checked::NoRule)
        );
        assert_eq!(check_rego(&modules, &data, "decision"), Ok(Checked::NoRule));
    }

    #[test]
    fn good_data_passes_and_bad_data_is_refused_naming_each_key() {
        assert_eq!(rego(CHECKED, r#"{"limits": {"a": 1}}"#), Ok(Checked::Clean));
        let refused = rego(CHECKED, r#"{"limits": {"b": "x", "a": 1, "c": null}}"#).unwrap_err();
        assert_eq!(
            refused,
            DataCheckError::Refused {
                rule: "data.tollgate.data_errors".into(),
                count: 2,
                messages: vec![
                    "limits[\"b\"]: must be a number".into(),
                    "limits[\"c\"]: must be a number".into(),
                ],
            }
        );
        assert_eq!(
            refused.to_string(),
            "data.tollgate.data_errors refuses the data (2 problems):\n  \
             limits[\"b\"]: must be a number\n  limits[\"c\"]: must be a number"
        );
    }

    #[test]
    fn a_nested_package_is_found_from_the_entrypoint() {
        let source = "package acme.egress\ndecision := {\"allow\": true}\n\
                      data_errors contains \"always\"\n";
        let result = check_rego(
            &[("p.rego".to_string(), source.to_string())],
            &Value::new_object(),
            "acme/egress/decision",
        );
        assert!(
            matches!(&result, Err(DataCheckError::Refused { rule, count: 1, .. }) if rule == "data.acme.egress.data_errors"),
            "{result:?}"
        );
    }

    #[test]
    fn a_check_that_fails_or_has_the_wrong_type_refuses_the_data() {
        let erroring = "package tollgate\ndata_errors := {x | x := 1 / 0}\n";
        assert!(matches!(
            rego(erroring, "{}"),
            Err(DataCheckError::Broken { .. })
        ));
        let not_a_set = "package tollgate\ndata_errors := 3\n";
        let error = rego(not_a_set, "{}").unwrap_err();
        assert!(error.to_string().contains("not a number"), "{error}");
        let not_strings = "package tollgate\ndata_errors contains 7\n";
        let error = rego(not_strings, "{}").unwrap_err();
        assert!(error.to_string().contains("holds a number"), "{error}");
    }

    #[test]
    fn an_undefined_check_reports_nothing() {
        let undefined = "package tollgate\ndata_errors := {\"x\"} if input.never\n";
        assert_eq!(rego(undefined, "{}"), Ok(Checked::Clean));
    }

    #[test]
    fn many_problems_are_cut_to_a_readable_list() {
        let many = "package tollgate\ndata_errors contains sprintf(\"n[%03d]\", [i]) if some i in numbers.range(1, 250)\n";
        let Err(DataCheckError::Refused {
            count, messages, ..
        }) = rego(many, "{}")
        else {
            panic!("expected a refusal");
        };
        assert_eq!(count, 250);
        assert_eq!(messages.len(), MAX_MESSAGES + 1);
        assert_eq!(messages[0], "n[001]");
        assert_eq!(messages[MAX_MESSAGES], "... and 150 more");
    }

    #[test]
    fn the_bundled_policy_checks_its_data() {
        let modules: Vec<(String, String)> = super::super::BUNDLED_MODULES
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let data = Value::from_json_str(super::super::BUNDLED_DATA).unwrap();
        assert_eq!(
            check_rego(&modules, &data, "tollgate/decision"),
            Ok(Checked::Clean)
        );
        let bad = Value::from_json_str(
            r#"{"tollgate_config": {"agents": {"spiffe://example.org/a": {"rules": [{"hosts": ["x"], "ports": ["443"]}]}}}}"#,
        )
        .unwrap();
        let error = check_rego(&modules, &bad, "tollgate/decision").unwrap_err();
        assert_eq!(
            error,
            DataCheckError::Refused {
                rule: "data.tollgate.data_errors".into(),
                count: 1,
                messages: vec![
                    "tollgate_config.agents[\"spiffe://example.org/a\"].rules[0].ports: must be a list of ports (1-65535) or \"*\"".into()
                ],
            }
        );
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/wasm/{name}.wat",
            env!("CARGO_MANIFEST_DIR")
        );
        wat::parse_file(path).unwrap()
    }

    fn wasm_check(module: &[u8], data: &serde_json::Value) -> Result<Checked, DataCheckError> {
        let policy = WasmPolicy::load(module, data.clone(), "tollgate/decision").unwrap();
        check_wasm(&policy, "tollgate/decision")
    }

    #[test]
    fn a_wasm_module_with_the_entrypoint_checks_its_data() {
        let module = fixture("data_errors");
        let good = serde_json::json!({"tollgate_config": {"note": "fine"}});
        assert_eq!(wasm_check(&module, &good), Ok(Checked::Clean));
        let bad = serde_json::json!({"tollgate_config": {"note": "bad!"}});
        assert_eq!(
            wasm_check(&module, &bad),
            Err(DataCheckError::Refused {
                rule: "tollgate/data_errors".into(),
                count: 1,
                messages: vec!["tollgate_config.fixture: the data holds a \"!\"".into()],
            })
        );
        // Through the revision loader: the module loads, and the data is refused.
        let error =
            super::super::PolicyRevision::from_wasm(&module, bad, "tollgate/decision", "r".into())
                .err()
                .unwrap();
        assert!(
            matches!(error, super::super::PolicyLoadError::DataRefused(_)),
            "{error}"
        );
    }

    #[test]
    fn a_wasm_module_without_the_entrypoint_loads_unchecked() {
        let module = fixture("decision");
        let data = serde_json::json!({"anything": "bad!"});
        assert_eq!(wasm_check(&module, &data), Ok(Checked::NoRule));
    }
}
