//! The documentation names only what exists, and everything that exists is documented: admin
//! routes (docs/ADMIN.md, probed on the running binary, and the routes in `src/admin/mod.rs`),
//! configuration keys (docs/CONFIGURATION.md, each fed to the configuration loader, and the
//! fields of the raw configuration structs), reasons (docs/METRICS.md and `Reason::ALL`, with
//! their outcome and status) and metric families (docs/METRICS.md and the registry). And no
//! document sends the reader to a file outside the repository.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::*;

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_root().join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Every Markdown document a reader of the repository gets.
fn documents() -> Vec<(String, String)> {
    let root = repo_root();
    let mut names = vec!["README.md".to_string(), "policy-wasm/README.md".to_string()];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            names.push(format!(
                "docs/{}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|n| (read(&n), n))
        .map(|(t, n)| (n, t))
        .collect()
}

/// The backticked spans of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn no_document_refers_to_a_file_outside_the_repository() {
    let mut found = Vec::new();
    for (name, text) in documents() {
        for (i, line) in text.lines().enumerate() {
            for outside in ["SPEC §", "SPEC.md", "../shared", "/work/"] {
                if line.contains(outside) {
                    found.push(format!("{name}:{}: {outside}: {line}", i + 1));
                }
            }
            // Relative links must resolve inside the repository.
            for link in line.split("](").skip(1) {
                let target = link.split(')').next().unwrap_or("");
                let target = target.split('#').next().unwrap_or("");
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let base = repo_root().join(&name);
                let resolved = base.parent().unwrap().join(target);
                if !resolved.exists() {
                    found.push(format!("{name}:{}: broken link {target}", i + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

// --- admin routes ---------------------------------------------------------------------------

/// `(METHOD, path)` of every `### \`METHOD /path\`` heading in docs/ADMIN.md.
fn documented_routes() -> Vec<(String, String)> {
    read("docs/ADMIN.md")
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split('`').next())
        .filter_map(|route| {
            let (method, path) = route.split_once(' ')?;
            Some((method.to_string(), path.to_string()))
        })
        .collect()
}

/// `(METHOD, path or path prefix)` of every arm of the admin router (`route`) and of the
/// scrape routes it shares with `admin.metrics_address` (`scrape_route`).
fn code_routes() -> Vec<(String, String)> {
    let source = read("src/admin/mod.rs");
    let body_of = |start: &str| -> String {
        source
            .split(start)
            .nth(1)
            .unwrap_or_else(|| panic!("{start} in src/admin/mod.rs"))
            .split("\n}\n")
            .next()
            .unwrap()
            .to_string()
    };
    let body = body_of("async fn route(") + &body_of("fn scrape_route(");
    let mut routes = Vec::new();
    for arm in body.split("(&Method::").skip(1) {
        let method = arm.split(',').next().unwrap().to_string();
        // `"/healthz")` or `p) if p == "/v1/kill" || p.starts_with("/v1/kill/")`.
        let head = arm.split("=>").next().unwrap();
        for path in code_spans(&head.replace('"', "`")) {
            if path.starts_with('/') {
                routes.push((method.clone(), path.to_string()));
            }
        }
    }
    routes
}

#[test]
fn every_admin_route_in_the_code_is_documented() {
    let documented = documented_routes();
    let code = code_routes();
    assert!(code.len() >= 10, "{code:?}");
    for (method, path) in &code {
        let covered = documented
            .iter()
            .any(|(m, p)| m == method && (p == path || p.starts_with(path.as_str())));
        assert!(
            covered,
            "{method} {path} is served but has no heading in docs/ADMIN.md"
        );
    }
}

#[test]
fn every_documented_admin_route_is_served() {
    let documented = documented_routes();
    assert!(documented.len() >= 10, "{documented:?}");
    let tg = Tollgate::start("listeners: [{name: agents, address: '127.0.0.1:0'}]\n");
    for (method, path) in documented {
        let concrete = path
            .replace("{id}", "01a23b53-9d56-72c0-9c18-f1dd9c6b8edc")
            .replace("{task}", "t-doc")
            .replace("?limit=N", "?limit=1");
        let body = (method == "POST" && concrete == "/v1/kill").then_some(r#"{"task": "t-doc"}"#);
        let (status, text) = tg.admin(&method, &concrete, body);
        assert!(
            !text.contains("no such admin route") && status != 405,
            "{method} {path} is documented but not served: {status} {text}"
        );
    }
}

// --- configuration keys ---------------------------------------------------------------------

/// The keys of the first table of docs/CONFIGURATION.md, expanded: `admin.tls.cert`, `.key` →
/// both; `….x (jwt)` → `credentials.<name>.x` of that kind. With the kind, if any.
fn documented_keys() -> Vec<(String, Option<String>)> {
    let text = read("docs/CONFIGURATION.md");
    let mut keys = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("| key |") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cell = line.split('|').nth(1).unwrap_or("");
        let kind = ["static", "jwt", "oauth2"]
            .into_iter()
            .find(|k| cell.contains(&format!("({k})")))
            .map(str::to_string);
        let mut first: Option<String> = None;
        for span in code_spans(cell) {
            let key = if let Some(rest) = span.strip_prefix("….") {
                format!("credentials.<name>.{rest}")
            } else if let Some(rest) = span.strip_prefix('.') {
                let base = first.as_deref().unwrap_or("");
                let parent = base.rsplit_once('.').map_or("", |(p, _)| p);
                format!("{parent}.{rest}")
            } else {
                span.to_string()
            };
            if first.is_none() {
                first = Some(key.clone());
            }
            keys.push((key, kind.clone()));
        }
    }
    keys
}

/// A YAML (JSON) document that sets `key` (and `kind` for a credential key).
fn document_setting(key: &str, kind: Option<&str>) -> serde_json::Value {
    let segments: Vec<&str> = key.split('.').collect();
    let mut value = serde_json::json!("x");
    for (i, segment) in segments.iter().enumerate().rev() {
        let (name, list) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (*segment, false),
        };
        let name = if name.starts_with('<') { "x" } else { name };
        let mut object = serde_json::Map::new();
        object.insert(name.to_string(), value);
        if i == 1
            && segments[0] == "credentials"
            && let Some(serde_json::Value::Object(inner)) = object.get_mut(name)
        {
            inner
                .entry("kind")
                .or_insert(serde_json::json!(kind.unwrap_or("static")));
        }
        value = serde_json::Value::Object(object);
        if list {
            // The list belongs to the parent's key: `listeners[]` → `listeners: [{…}]`.
            let serde_json::Value::Object(map) = value else {
                unreachable!()
            };
            let (k, v) = map.into_iter().next().unwrap();
            let mut parent = serde_json::Map::new();
            parent.insert(k, serde_json::Value::Array(vec![v]));
            value = serde_json::Value::Object(parent);
        }
    }
    value
}

#[test]
fn every_documented_configuration_key_is_known_to_the_loader() {
    let keys = documented_keys();
    assert!(keys.len() >= 50, "{keys:?}");
    for (key, kind) in &keys {
        let doc = document_setting(key, kind.as_deref());
        let text = serde_json::to_string(&doc).unwrap();
        let errors = match tollgate::config::load_str(&text, Path::new("/nonexistent"), "doc.yaml")
        {
            Ok(_) => continue,
            Err(errors) => errors,
        };
        let unknown: Vec<_> = errors
            .errors
            .iter()
            .filter(|e| e.message.contains("unknown key") || e.message.contains("not a key"))
            .collect();
        assert!(
            unknown.is_empty(),
            "documented key {key} is unknown to the loader ({text}): {unknown:?}"
        );
    }
}

#[test]
fn the_loader_refuses_an_undocumented_key_the_way_the_test_looks_for() {
    // The check above would pass vacuously if the loader's words changed.
    let doc = document_setting("upstream.conect_timeout", None);
    let errors = tollgate::config::load_str(
        &serde_json::to_string(&doc).unwrap(),
        Path::new("/nonexistent"),
        "doc.yaml",
    )
    .unwrap_err();
    assert!(
        errors
            .errors
            .iter()
            .any(|e| e.key == "upstream.conect_timeout" && e.message.contains("unknown key")),
        "{errors}"
    );
}

/// The field names of the `Raw…` structs (what a configuration file may hold).
fn raw_fields() -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    for file in ["src/config/raw.rs", "src/config/credentials/mod.rs"] {
        let source = read(file);
        for block in source.split("pub struct Raw").skip(1) {
            let body = block.split("\n}").next().unwrap();
            for line in body.lines() {
                if let Some(rest) = line.trim().strip_prefix("pub ")
                    && let Some((name, _)) = rest.split_once(':')
                {
                    fields.insert(name.to_string());
                }
            }
        }
    }
    fields
}

#[test]
fn every_configuration_field_is_documented() {
    let text = read("docs/CONFIGURATION.md");
    let table = text.split("\n\n## ").next().unwrap();
    let spans: Vec<&str> = code_spans(table);
    let words: BTreeSet<&str> = spans
        .iter()
        .flat_map(|s| s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
        .collect();
    let fields = raw_fields();
    assert!(fields.len() >= 40, "{fields:?}");
    let missing: Vec<_> = fields
        .iter()
        .filter(|f| !words.contains(f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "configuration fields not in docs/CONFIGURATION.md: {missing:?}"
    );
}

// --- reasons and metrics --------------------------------------------------------------------

/// Rows `| \`reason\` | outcome | status | … |` of docs/METRICS.md.
fn documented_reasons() -> Vec<(String, String, u16)> {
    read("docs/METRICS.md")
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let outcome = *cells.get(2)?;
            let status = cells.get(3)?.parse::<u16>().ok()?;
            ["allow", "deny", "error"]
                .contains(&outcome)
                .then(|| (name.to_string(), outcome.to_string(), status))
        })
        .collect()
}

#[test]
fn documented_reasons_are_exactly_the_closed_set() {
    use tollgate::reason::Reason;
    let documented = documented_reasons();
    let code: Vec<(String, String, u16)> = Reason::ALL
        .iter()
        .map(|r| {
            (
                r.as_str().to_string(),
                r.outcome().as_str().to_string(),
                r.status().as_u16(),
            )
        })
        .collect();
    let documented: BTreeSet<_> = documented.into_iter().collect();
    let code: BTreeSet<_> = code.into_iter().collect();
    assert_eq!(
        documented.difference(&code).collect::<Vec<_>>(),
        Vec::<&(String, String, u16)>::new(),
        "documented in docs/METRICS.md but not in src/reason.rs"
    );
    assert_eq!(
        code.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String, u16)>::new(),
        "in src/reason.rs but not documented in docs/METRICS.md"
    );
}

#[test]
fn documented_metrics_are_exactly_the_registry() {
    use tollgate::telemetry::metrics::Metrics;
    let metrics = Metrics::new(&["agents".to_string()], false).unwrap();
    // Families without a series are not exposed: give each labelled family one.
    metrics.set_policy_info("r", "rego");
    metrics.set_pending_restart(&["listeners[0].address".to_string()]);
    metrics
        .credential_issued
        .with_label_values(&["c", "static"])
        .inc();
    metrics
        .credential_cache_hits
        .with_label_values(&["c"])
        .inc();
    metrics.credential_errors.with_label_values(&["c"]).inc();
    let text = String::from_utf8(metrics.encode()).unwrap();
    let exposed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let documented: BTreeSet<String> = read("docs/METRICS.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `tollgate_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("tollgate_{name}"))
        .collect();
    // The injector webhook (`tollgate inject`) serves its own metrics, not the proxy's registry.
    let injector = read("src/inject/server.rs");
    let injector_metric = |name: &String| injector.contains(&format!("# TYPE {name} "));
    assert_eq!(
        documented
            .difference(&exposed)
            .filter(|name| !injector_metric(name))
            .collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented in docs/METRICS.md but not registered (by the proxy or the injector)"
    );
    assert_eq!(
        exposed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "registered but not documented in docs/METRICS.md"
    );
}
