//! Fuzz target `kill_file`: the kill file's strict reader (`tollgate::kill::store::parse`).
//! Properties: no panic; kills it accepts, written back as tollgate writes them
//! (`store::render`), read back as the same kills.

use std::path::Path;

use tollgate::kill::store;

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let path = Path::new("kills.json");
    if let Ok(kills) = store::parse(path, data) {
        let text = store::render(&kills).expect("accepted kills can be written");
        let again = store::parse(path, text.as_bytes()).expect("a written file reads back");
        assert_eq!(again, kills);
    }
}
