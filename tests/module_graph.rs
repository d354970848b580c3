//! The module graph of `src/` has no cycle: no top-level module reaches itself through the
//! modules it refers to. A module with a cycle cannot be understood, tested or changed on its
//! own; the shape of `docs/ARCHITECTURE.md`'s module table depends on this.
//!
//! The rule is the project's (the lead's pre-stop hook): a module's production code — each
//! file up to its first `#[cfg(test)]`, comment lines left out — referring to `crate::other`.
//! This check is stricter in one way: it also reads grouped paths (`crate::{a, b::c}`).
//! `main.rs` and `lib.rs` tie the modules together and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules its production code names.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::…` paths in `code`, grouped ones included.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not `crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        found.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
                found.insert(name);
            }
        }
    }
    found
}

/// The module graph of the crate under `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a path");
        let top = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("UTF-8 source");
        let production = text.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = production
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let names = referenced(&code);
        let edges = graph.entry(top.clone()).or_default();
        edges.extend(names.into_iter().filter(|name| *name != top));
    }
    graph
}

/// Every cycle, as the path that closes it (`a -> b -> a`), each found once.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, found);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn has_no_import_cycle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(
        graph.len() >= 10,
        "the scan found too few modules to be reading src/: {graph:?}"
    );
    let found = cycles(&graph);
    let shown: Vec<String> = found.iter().map(|cycle| cycle.join(" -> ")).collect();
    assert!(
        found.is_empty(),
        "import cycles between modules of src/:\n{}",
        shown.join("\n")
    );
}

#[test]
fn finds_a_cycle_in_a_made_up_graph() {
    let edges = |list: &[(&str, &[&str])]| -> Graph {
        list.iter()
            .map(|(from, to)| (from.to_string(), to.iter().map(|t| t.to_string()).collect()))
            .collect()
    };
    let acyclic = edges(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])]);
    assert!(cycles(&acyclic).is_empty());
    let cyclic = edges(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
    assert_eq!(cycles(&cyclic), vec![vec!["a", "b", "c", "a"]]);
}

#[test]
fn reads_plain_and_grouped_crate_paths() {
    let code = "use crate::proxy::Proxy;\nuse crate::{server, tls::accept, identity::{Caller, svid}};\n\
                let x = mycrate::other; crate::watch::POLL_INTERVAL; crate::Config";
    let names: Vec<String> = referenced(code).into_iter().collect();
    assert_eq!(names, ["identity", "proxy", "server", "tls", "watch"]);
}
