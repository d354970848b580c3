//! Fuzz target `config_yaml`: the configuration file (`tollgate::config::load_str`), YAML
//! parsing and every check of every key. Property: no panic, and every error names a key.

use std::path::Path;

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = tollgate::config::load_str(text, Path::new("/nonexistent-fuzz"), "fuzz") {
        assert!(!errors.errors.is_empty(), "a failed load says why");
    }
}
