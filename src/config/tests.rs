//! Loading and validation, key by key: every rule with the key it reports.

use std::time::Duration;

use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(text, Path::new("/nonexistent-base"), "test.yaml")
}

fn keys(errors: &ConfigErrors) -> Vec<&str> {
    errors.errors.iter().map(|e| e.key.as_str()).collect()
}

#[test]
fn accepts_minimal_config() {
    let config = load("listeners: [{name: agents, address: '127.0.0.1:0'}]").unwrap();
    assert_eq!(config.listeners.len(), 1);
    assert!(config.listeners[0].intercept);
    assert_eq!(config.policy.source, PolicySource::Bundled);
    assert_eq!(config.policy.data, DataSource::Bundled);
    assert_eq!(config.limits.max_header_bytes, 65536);
    assert_eq!(config.upstream.request_timeout, Duration::from_secs(300));
}

#[test]
fn accepts_builtin_config() {
    let config = builtin().unwrap();
    assert_eq!(
        config.listeners[0].address,
        "127.0.0.1:15001".parse().unwrap()
    );
    assert_eq!(
        config.admin.address,
        AdminAddress::Tcp("127.0.0.1:15000".parse().unwrap())
    );
    assert_eq!(
        config
            .identity
            .workload_spiffe_id
            .as_ref()
            .map(|id| id.as_str()),
        Some("spiffe://tollgate.local/dev/agent")
    );
}

#[test]
fn rejects_every_unknown_key_at_once() {
    let errors = load(
        "listeners: [{name: a, address: '127.0.0.1:0', colour: red}]\n\
         upstream: {conect_timeout: 5s}\nbogus: 1\nlimits: {max_header_bytes: 2048, nope: 1}",
    )
    .unwrap_err();
    let keys = keys(&errors);
    assert!(keys.contains(&"listeners[0].colour"), "{keys:?}");
    assert!(keys.contains(&"upstream.conect_timeout"), "{keys:?}");
    assert!(keys.contains(&"bogus"), "{keys:?}");
    assert!(keys.contains(&"limits.nope"), "{keys:?}");
    assert!(errors.errors.iter().all(|e| e.message == "unknown key"));
}

#[test]
fn rejects_bad_values_naming_each_key() {
    let errors = load(
        "listeners: [{name: a, address: 'nowhere'}, {name: a, address: '127.0.0.1:0'}]\n\
         upstream: {connect_timeout: 5 seconds, allow_private: [not-a-cidr]}\n\
         limits: {max_header_bytes: 10}\npolicy: {engine: magic}",
    )
    .unwrap_err();
    let keys = keys(&errors);
    for expected in [
        "listeners[0].address",
        "listeners[1].name",
        "upstream.connect_timeout",
        "limits.max_header_bytes",
        "policy.engine",
    ] {
        assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
    }
}

#[test]
fn bounds_streams_per_connection_and_requests_per_caller() {
    let config = load("listeners: [{name: agents, address: '127.0.0.1:0'}]").unwrap();
    assert_eq!(config.limits.max_concurrent_streams, 100);
    assert_eq!(config.limits.max_requests_per_caller, 256);
    let config = load(
        "listeners: [{name: agents, address: '127.0.0.1:0'}]\n\
         limits: {max_concurrent_streams: 8, max_requests_per_caller: 3}",
    )
    .unwrap();
    assert_eq!(config.limits.max_concurrent_streams, 8);
    assert_eq!(config.limits.max_requests_per_caller, 3);
    for (value, limit) in [("0", "1000000"), ("10001", "1000001")] {
        let errors = load(&format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             limits: {{max_concurrent_streams: {value}, max_requests_per_caller: {limit}}}"
        ))
        .unwrap_err();
        let keys = keys(&errors);
        assert!(keys.contains(&"limits.max_concurrent_streams"), "{keys:?}");
        assert_eq!(
            keys.contains(&"limits.max_requests_per_caller"),
            limit != "1000000",
            "{keys:?}"
        );
    }
}

/// Two transparent listeners with the admin API they require (mTLS, an allow list); the
/// files exist in `dir`.
fn transparent_config(dir: &Path, admin: &str) -> Result<Config, ConfigErrors> {
    for file in ["admin.pem", "admin-key.pem", "bundle.pem"] {
        std::fs::write(dir.join(file), "x").unwrap();
    }
    let text = format!(
        "listeners:\n\
         - {{name: pod, address: '127.0.0.1:15001', mode: transparent}}\n\
         - {{name: pod-v6, address: '[::1]:15001', mode: transparent, sniff_timeout: 150ms}}\n\
         admin: {admin}\n\
         identity: {{trust_domains: {{example.org: {{bundle: bundle.pem}}}}}}\n"
    );
    load_str(&text, dir, "test.yaml")
}

#[test]
fn accepts_transparent_listeners_with_a_default_sniff_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = transparent_config(
        dir.path(),
        "{tls: {cert: admin.pem, key: admin-key.pem}, allowed_spiffe_ids: ['spiffe://example.org/ops']}",
    )
    .unwrap();
    assert_eq!(config.listeners[0].mode, ListenerMode::Transparent);
    assert_eq!(config.listeners[0].sniff_timeout, DEFAULT_SNIFF_TIMEOUT);
    assert!(DEFAULT_SNIFF_TIMEOUT <= Duration::from_millis(500));
    assert_eq!(
        config.listeners[1].sniff_timeout,
        Duration::from_millis(150)
    );
}

#[test]
fn a_transparent_listener_requires_an_admin_api_with_mtls_and_an_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let errors = transparent_config(dir.path(), "{address: '127.0.0.1:15000'}").unwrap_err();
    // One line, naming what is missing.
    assert_eq!(keys(&errors), vec!["admin.address"], "{errors}");
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("the agent shares loopback"), "{text}");
    assert!(
        text.contains("missing: admin.tls, admin.allowed_spiffe_ids"),
        "{text}"
    );
    // mTLS without an allow list is still refused; so is a non-loopback plain address.
    let errors = transparent_config(
        dir.path(),
        "{address: '127.0.0.1:15000', tls: {cert: admin.pem, key: admin-key.pem}}",
    )
    .unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("(missing: admin.allowed_spiffe_ids)"),
        "{errors}"
    );
}

#[test]
fn a_transparent_listener_accepts_a_unix_admin_socket_with_a_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = transparent_config(
        dir.path(),
        "{address: 'unix:///run/tollgate/admin.sock', metrics_address: '0.0.0.0:15020', \
          allowed_uids: [1337, 0]}",
    )
    .unwrap();
    assert_eq!(
        config.admin.address,
        AdminAddress::Unix("/run/tollgate/admin.sock".into())
    );
    assert_eq!(
        config.admin.address.to_string(),
        "unix:///run/tollgate/admin.sock"
    );
    assert_eq!(
        config.admin.metrics_address,
        Some("0.0.0.0:15020".parse().unwrap())
    );
    assert_eq!(config.admin.allowed_uids, Some(vec![1337, 0]));
    // Without allowed_uids: tollgate's own UID only, decided at start-up.
    let config = transparent_config(dir.path(), "{address: 'unix:///run/a.sock'}").unwrap();
    assert_eq!(config.admin.allowed_uids, None);
}

#[test]
fn admin_transport_keys_that_do_not_fit_the_address_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (admin, key, says) in [
        (
            "{address: 'unix://run/a.sock'}",
            "admin.address",
            "unix:///absolute/path",
        ),
        (
            "{address: 'unix:///'}",
            "admin.address",
            "unix:///absolute/path",
        ),
        (
            "{address: 'unix:///run/a.sock', tls: {cert: admin.pem, key: admin-key.pem}}",
            "admin.tls",
            "does not apply",
        ),
        (
            "{address: 'unix:///run/a.sock', metrics_address: 'localhost'}",
            "admin.metrics_address",
            "not an IP:port",
        ),
        (
            "{address: 'unix:///run/a.sock', allowed_uids: []}",
            "admin.allowed_uids",
            "an empty list lets no one use the admin API",
        ),
        (
            "{address: 'unix:///run/a.sock', allowed_uids: [-1]}",
            "admin.allowed_uids[0]",
            "expected u32",
        ),
    ] {
        let errors = transparent_config(dir.path(), admin).unwrap_err();
        assert!(keys(&errors).contains(&key), "{admin}: {errors}");
        assert!(errors.to_string().contains(says), "{admin}: {errors}");
    }
    let text = "admin: {address: '127.0.0.1:15000', allowed_uids: [1]}\n";
    let errors = load_str(text, dir.path(), "test.yaml").unwrap_err();
    assert!(keys(&errors).contains(&"admin.allowed_uids"), "{errors}");
}

#[test]
fn refuses_bad_sniff_timeouts_and_tls_on_a_transparent_listener() {
    for (listener, key, message) in [
        (
            "{name: a, address: '127.0.0.1:0', mode: transparent, sniff_timeout: 0ms}",
            "listeners[0].sniff_timeout",
            "must be greater than zero and at most 10s",
        ),
        (
            "{name: a, address: '127.0.0.1:0', mode: transparent, sniff_timeout: 11s}",
            "listeners[0].sniff_timeout",
            "must be greater than zero and at most 10s",
        ),
        (
            "{name: a, address: '127.0.0.1:0', mode: transparent, sniff_timeout: soon}",
            "listeners[0].sniff_timeout",
            "",
        ),
        (
            "{name: a, address: '127.0.0.1:0', sniff_timeout: 100ms}",
            "listeners[0].sniff_timeout",
            "applies only to mode: transparent",
        ),
        (
            "{name: a, address: '127.0.0.1:0', mode: transparent, tls: {cert: c.pem, key: k.pem}}",
            "listeners[0].tls",
            "TLS on the listener itself does not apply",
        ),
    ] {
        let errors = load(&format!("listeners: [{listener}]")).unwrap_err();
        let found = errors.errors.iter().find(|e| e.key == key);
        let found = found.unwrap_or_else(|| panic!("{listener}: no error at {key}: {errors}"));
        assert!(found.message.contains(message), "{listener}: {found:?}");
    }
}

#[test]
fn resolves_relative_paths_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), "x").unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(
        &file,
        "listeners: [{name: a, address: '127.0.0.1:0'}]\nintercept_ca: {cert: ca.pem, key: ca-key.pem}\n",
    )
    .unwrap();
    let config = load_file(&file).unwrap();
    let ca = config.intercept_ca.unwrap();
    assert!(ca.cert.is_absolute());
    assert_eq!(ca.cert, dir.path().join("ca.pem"));
}

#[test]
fn rejects_missing_files_with_their_key() {
    let errors = load(
        "listeners: [{name: a, address: '127.0.0.1:0', tls: {cert: nope.pem, key: nope-key.pem}}]",
    )
    .unwrap_err();
    assert_eq!(
        keys(&errors),
        vec!["listeners[0].tls.cert", "listeners[0].tls.key"]
    );
}

#[test]
fn rejects_non_yaml() {
    let errors = load("listeners: [").unwrap_err();
    assert!(errors.to_string().contains("not valid YAML"));
}

#[test]
fn engine_auto_picks_by_what_the_path_holds() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
    std::fs::write(dir.path().join("b.tar.gz"), b"").unwrap();
    std::fs::write(dir.path().join("p.rego"), "package p").unwrap();
    let at = |policy: &str| {
        load_str(
            &format!("listeners: [{{name: a, address: '127.0.0.1:0'}}]\npolicy: {policy}"),
            dir.path(),
            "t.yaml",
        )
    };
    let module = at("{path: p.wasm}").unwrap().policy;
    assert_eq!(module.engine, EngineKind::Wasm);
    assert_eq!(
        module.source,
        PolicySource::WasmModule(dir.path().join("p.wasm"))
    );
    assert_eq!(module.data, DataSource::Empty);
    let bundle = at("{path: b.tar.gz, engine: auto}").unwrap().policy;
    assert_eq!(bundle.engine, EngineKind::Wasm);
    assert_eq!(
        bundle.source,
        PolicySource::WasmBundle(dir.path().join("b.tar.gz"))
    );
    let folder = at("{path: .}").unwrap().policy;
    assert_eq!(folder.engine, EngineKind::Rego);
    let file = at("{path: p.rego, engine: rego}").unwrap().policy;
    assert_eq!(file.engine, EngineKind::Rego);
    assert_eq!(
        at("{path: p.wasm, engine: wasm}").unwrap().policy.engine,
        EngineKind::Wasm
    );
}

#[test]
fn refuses_an_engine_that_cannot_read_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
    std::fs::write(dir.path().join("b.tar.gz"), b"").unwrap();
    std::fs::write(dir.path().join("d.json"), "{}").unwrap();
    let at = |policy: &str| {
        load_str(
            &format!("listeners: [{{name: a, address: '127.0.0.1:0'}}]\npolicy: {policy}"),
            dir.path(),
            "t.yaml",
        )
        .unwrap_err()
    };
    for policy in [
        "{path: p.wasm, engine: rego}",
        "{path: ., engine: wasm}",
        "{engine: wasm}",
    ] {
        let errors = at(policy);
        assert_eq!(keys(&errors), vec!["policy.engine"], "{policy}");
    }
    let errors = at("{path: b.tar.gz, data: d.json}");
    assert_eq!(keys(&errors), vec!["policy.data"]);
    assert!(
        errors
            .to_string()
            .contains("bundle carries its own data.json")
    );
}
