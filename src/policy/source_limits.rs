//! How long a policy module may be, for regorus' parser.
//!
//! regorus refuses by default a line over 1,024 columns, a module over 1 MiB or 20,000 lines;
//! OPA has no such limits, and OPA's own conformance cases carry PEM certificates and JWKs on
//! one line of several thousand columns. A policy is the operator's, not the agent's, so the
//! limits here only guard against a runaway generated file.

use std::num::{NonZeroU32, NonZeroUsize};

use regorus::Engine;
use regorus::utils::limits::PolicyLengthConfig;

/// The largest module tollgate loads: 64 MiB.
const MAX_MODULE_BYTES: usize = 64 << 20;
/// The most lines a module may have.
const MAX_MODULE_LINES: usize = 1_000_000;

/// Applies tollgate's module limits to an engine, before any module is added.
pub fn apply(engine: &mut Engine) {
    let bytes = NonZeroUsize::new(MAX_MODULE_BYTES).unwrap_or(NonZeroUsize::MIN);
    let lines = NonZeroUsize::new(MAX_MODULE_LINES).unwrap_or(NonZeroUsize::MIN);
    let columns = u32::try_from(MAX_MODULE_BYTES)
        .ok()
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MIN);
    engine.set_policy_length_config(PolicyLengthConfig {
        max_col: columns,
        max_file_bytes: bytes,
        max_lines: lines,
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_line_of_several_thousand_columns_loads() {
        let long = "x".repeat(5_000);
        let source = format!("package t\nimport rego.v1\nv := \"{long}\"\n");
        let mut engine = regorus::Engine::new();
        assert!(engine.add_policy("a.rego".into(), source.clone()).is_err());
        let mut engine = regorus::Engine::new();
        super::apply(&mut engine);
        assert!(engine.add_policy("a.rego".into(), source).is_ok());
    }
}
