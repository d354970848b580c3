//! Configuration: YAML in, a validated [`Config`] out, every problem reported at once.
//!
//! Loading happens in three passes so an operator fixes a broken file in one round trip:
//! 1. the YAML is parsed into a tree;
//! 2. each section is deserialized on its own into the [`raw`] structs, collecting unknown keys
//!    (via `serde_ignored`) and type errors (via `serde_path_to_error`), each with its key path;
//! 3. the raw values are validated into [`Config`] (addresses, CIDRs, SPIFFE IDs, file
//!    existence, keys that a later release implements and that are refused as "not supported
//!    yet" rather than silently ignored).
//!
//! Relative paths resolve against the folder of the configuration file.

pub mod credentials;
pub mod duration;
mod load;
pub mod raw;
pub mod restart;
mod types;
mod validate;

use std::path::{Path, PathBuf};

pub use load::Problems;
pub use types::*;

/// The built-in local-development configuration used by `tollgate run` without `-c`.
pub const BUILTIN_CONFIG_YAML: &str = include_str!("../../config/local-dev.yaml");

/// Loads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        origin: origin.clone(),
        errors: vec![ConfigError {
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        }],
    })?;
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    load_str(&text, &base, &origin)
}

/// The built-in local-development configuration (SPEC §1, `tollgate run` without `-c`).
pub fn builtin() -> Result<Config, ConfigErrors> {
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    load_str(BUILTIN_CONFIG_YAML, &base, "built-in configuration")
}

/// Parses and validates YAML text; relative paths resolve against `base`.
pub fn load_str(text: &str, base: &Path, origin: &str) -> Result<Config, ConfigErrors> {
    let mut problems = Problems::default();
    let tree: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(serde_yaml::Value::Null) => serde_yaml::Value::Mapping(Default::default()),
        Ok(tree) => tree,
        Err(e) => {
            return Err(ConfigErrors {
                origin: origin.to_string(),
                errors: vec![ConfigError {
                    key: String::new(),
                    message: format!("not valid YAML: {e}"),
                }],
            });
        }
    };
    let serde_yaml::Value::Mapping(mapping) = tree else {
        return Err(ConfigErrors {
            origin: origin.to_string(),
            errors: vec![ConfigError {
                key: String::new(),
                message: "the configuration must be a YAML mapping of sections".into(),
            }],
        });
    };

    let mut sections = load::Sections::default();
    for (key, value) in mapping {
        let Some(name) = key.as_str().map(str::to_owned) else {
            problems.add(format!("{key:?}"), "section names must be strings");
            continue;
        };
        sections.take(&name, value, &mut problems);
    }

    let config = validate::validate(sections, base, origin, &mut problems);
    if problems.0.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors {
            origin: origin.to_string(),
            errors: problems.0,
        })
    }
}

#[cfg(test)]
mod tests;
