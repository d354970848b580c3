//! `tollgate policy test`: runs the `test_*` rules of a policy folder, like `opa test`.
//!
//! regorus has no test runner of its own. Each `test_*` rule of every package is evaluated
//! with the interpreter, on an engine built exactly as the proxy's (`rego::build_engine`); a test passes when its value is `true`, fails when it is `false` or
//! undefined, and errors when evaluation fails. A `data.json` at the root of the folder is
//! loaded as `data`.

use std::path::Path;
use std::time::{Duration, Instant};

use regorus::Value;

use super::rego::build_engine;
use super::{PolicyLoadError, read_modules};

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestResult {
    Pass,
    Fail,
    Error(String),
}

/// One test's outcome.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// Full rule path, e.g. `data.tollgate_test.test_denies_unknown_agent`.
    pub name: String,
    pub result: TestResult,
    pub duration: Duration,
}

/// Finds and runs every `test_*` rule under `path`.
pub fn run_tests(path: &Path) -> Result<Vec<TestOutcome>, PolicyLoadError> {
    let modules = read_modules(path, true)?;
    let mut tests = Vec::new();
    for (_, source) in &modules {
        let Some(package) = package_of(source) else {
            continue;
        };
        for rule in test_rules(source) {
            let full = format!("data.{package}.{rule}");
            if !tests.contains(&full) {
                tests.push(full);
            }
        }
    }
    let data_file = if path.is_dir() {
        Some(path.join("data.json"))
    } else {
        None
    };
    let data = match data_file.filter(|f| f.is_file()) {
        Some(data_file) => {
            let text = std::fs::read_to_string(&data_file).map_err(|e| PolicyLoadError::Read {
                path: data_file.clone(),
                message: e.to_string(),
            })?;
            Some(Value::from_json_str(&text).map_err(|e| PolicyLoadError::Data(e.to_string()))?)
        }
        None => None,
    };
    // The engine the proxy uses: the same builtins, call checks and non-strict errors.
    let mut engine = build_engine(&modules, data)?;
    let mut outcomes = Vec::new();
    for name in tests {
        let start = Instant::now();
        let result = match engine.eval_rule(name.clone()) {
            Ok(Value::Bool(true)) => TestResult::Pass,
            Ok(_) => TestResult::Fail,
            Err(e) => TestResult::Error(e.to_string()),
        };
        outcomes.push(TestOutcome {
            name,
            result,
            duration: start.elapsed(),
        });
    }
    Ok(outcomes)
}

fn package_of(source: &str) -> Option<String> {
    source.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("package ")?;
        Some(rest.trim().to_string())
    })
}

/// Names of rules at the start of a line that begin with `test_` (the `opa test` convention).
fn test_rules(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("test_")?;
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            Some(format!("test_{ident}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_pass_fail_and_error_per_test() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p_test.rego"),
            "package p\n\
             test_passes if { 1 == 1 }\n\
             test_fails if { 1 == 2 }\n\
             test_uses_data if { data.limit == 3 }\n\
             test_errors if { 1 / 0 == 1 }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("data.json"), r#"{"limit": 3}"#).unwrap();
        let outcomes = run_tests(dir.path()).unwrap();
        let result = |name: &str| {
            outcomes
                .iter()
                .find(|o| o.name == format!("data.p.{name}"))
                .map(|o| o.result.clone())
        };
        assert_eq!(result("test_passes"), Some(TestResult::Pass));
        assert_eq!(result("test_fails"), Some(TestResult::Fail));
        assert_eq!(result("test_uses_data"), Some(TestResult::Pass));
        assert!(matches!(
            result("test_errors"),
            Some(TestResult::Fail | TestResult::Error(_))
        ));
    }
}
