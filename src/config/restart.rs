//! Which configuration keys a reload cannot put in force.
//!
//! A reload (`POST /v1/reload`, SIGHUP, `policy.watch`) applies what it can live — the policy
//! (`policy.path`, `data`, `engine`, `entrypoint`), `credentials`, `agent_secrets` and
//! `upstream` — and leaves everything the process built its sockets, threads and sinks from as
//! it was at start-up. [`pending_restart`] names each of those keys whose value differs from
//! the one running, so a reload is never reported as plain success for a change not in force
//! (the reply, the log and `tollgate_config_pending_restart` carry the list).

use std::fmt::Debug;

use super::types::{Config, ListenerConfig};

/// The keys of `next` that differ from `running` and that only a restart applies, in
/// configuration order. Empty when everything that changed is in force after the reload.
pub fn pending_restart(running: &Config, next: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let count = running.listeners.len().max(next.listeners.len());
    for i in 0..count {
        match (running.listeners.get(i), next.listeners.get(i)) {
            (Some(a), Some(b)) => listener(i, a, b, &mut keys),
            _ => keys.push(format!("listeners[{i}]")),
        }
    }
    let (a, b) = (&running.admin, &next.admin);
    note(&mut keys, "admin.address", &a.address, &b.address);
    note(&mut keys, "admin.tls", &a.tls, &b.tls);
    note(
        &mut keys,
        "admin.allowed_spiffe_ids",
        &a.allowed_spiffe_ids,
        &b.allowed_spiffe_ids,
    );
    note(&mut keys, "admin.kill_file", &a.kill_file, &b.kill_file);
    let (a, b) = (&running.identity, &next.identity);
    note(
        &mut keys,
        "identity.workload_spiffe_id",
        &a.workload_spiffe_id,
        &b.workload_spiffe_id,
    );
    note(
        &mut keys,
        "identity.trust_domains",
        &a.trust_domains,
        &b.trust_domains,
    );
    note(
        &mut keys,
        "identity.workload_api",
        &a.workload_api,
        &b.workload_api,
    );
    note(
        &mut keys,
        "intercept_ca",
        &running.intercept_ca,
        &next.intercept_ca,
    );
    note(
        &mut keys,
        "policy.dry_run",
        &running.policy.dry_run,
        &next.policy.dry_run,
    );
    note(
        &mut keys,
        "policy.watch",
        &running.policy.watch,
        &next.policy.watch,
    );
    let (a, b) = (&running.limits, &next.limits);
    note(
        &mut keys,
        "limits.max_header_bytes",
        &a.max_header_bytes,
        &b.max_header_bytes,
    );
    note(
        &mut keys,
        "limits.header_read_timeout",
        &a.header_read_timeout,
        &b.header_read_timeout,
    );
    note(
        &mut keys,
        "limits.max_connections",
        &a.max_connections,
        &b.max_connections,
    );
    note(
        &mut keys,
        "limits.drain_timeout",
        &a.drain_timeout,
        &b.drain_timeout,
    );
    note(
        &mut keys,
        "limits.max_concurrent_streams",
        &a.max_concurrent_streams,
        &b.max_concurrent_streams,
    );
    note(
        &mut keys,
        "limits.max_requests_per_caller",
        &a.max_requests_per_caller,
        &b.max_requests_per_caller,
    );
    let (a, b) = (&running.telemetry, &next.telemetry);
    note(
        &mut keys,
        "telemetry.decision_log",
        &a.decision_log,
        &b.decision_log,
    );
    note(
        &mut keys,
        "telemetry.log_format",
        &a.log_format,
        &b.log_format,
    );
    note(
        &mut keys,
        "telemetry.metrics_label_destination",
        &a.metrics_label_destination,
        &b.metrics_label_destination,
    );
    note(
        &mut keys,
        "intent_tokens.issuers",
        &running.intent_issuers,
        &next.intent_issuers,
    );
    keys
}

/// One `listeners[i]` entry: every key of a listener is bound into its socket or its TLS.
fn listener(i: usize, a: &ListenerConfig, b: &ListenerConfig, keys: &mut Vec<String>) {
    note(keys, &format!("listeners[{i}].name"), &a.name, &b.name);
    note(
        keys,
        &format!("listeners[{i}].address"),
        &a.address,
        &b.address,
    );
    note(keys, &format!("listeners[{i}].mode"), &a.mode, &b.mode);
    note(
        keys,
        &format!("listeners[{i}].tls"),
        &(&a.tls, a.tls_from_workload_api, a.client_auth),
        &(&b.tls, b.tls_from_workload_api, b.client_auth),
    );
    note(
        keys,
        &format!("listeners[{i}].intercept"),
        &a.intercept,
        &b.intercept,
    );
    note(
        keys,
        &format!("listeners[{i}].sniff_timeout"),
        &a.sniff_timeout,
        &b.sniff_timeout,
    );
}

/// Adds `key` when the two values differ. Compared through `Debug`: the validated types hold
/// plain values (addresses, paths, durations, enums), whose `Debug` text is equal exactly
/// when they are.
fn note<T: Debug + ?Sized>(keys: &mut Vec<String>, key: &str, a: &T, b: &T) {
    if format!("{a:?}") != format!("{b:?}") {
        keys.push(key.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigErrors;

    fn load_str(text: &str) -> Result<Config, ConfigErrors> {
        crate::config::load_str(text, std::path::Path::new("/nonexistent-base"), "test.yaml")
    }

    const BASE: &str = "listeners: [{name: agents, address: '127.0.0.1:8080'}]\n\
                        admin: {address: '127.0.0.1:9090'}\n";

    fn pending(next_extra: &str) -> Vec<String> {
        let running = load_str(BASE).unwrap();
        let next = load_str(&format!("{BASE}{next_extra}")).unwrap();
        pending_restart(&running, &next)
    }

    #[test]
    fn nothing_pending_for_the_same_configuration() {
        assert!(pending("").is_empty());
    }

    #[test]
    fn sections_applied_live_are_not_pending() {
        // upstream, policy (but dry_run/watch), credentials, agent_secrets: live.
        let keys = pending(
            "upstream: {allow_private: [10.0.0.0/8], connect_timeout: 3s, request_timeout: 9s}\n\
             policy: {entrypoint: tollgate/decision}\n\
             agent_secrets: {headers: [x-private-token], on_present: deny}\n",
        );
        assert!(keys.is_empty(), "{keys:?}");
    }

    #[test]
    fn listeners_section() {
        let running = load_str(BASE).unwrap();
        let moved = load_str(&BASE.replace("8080", "8081")).unwrap();
        assert_eq!(pending_restart(&running, &moved), ["listeners[0].address"]);
        let added = load_str(&BASE.replace(
            "'127.0.0.1:8080'}]",
            "'127.0.0.1:8080'}, {name: two, address: '127.0.0.1:8082'}]",
        ))
        .unwrap();
        assert_eq!(pending_restart(&running, &added), ["listeners[1]"]);
    }

    #[test]
    fn admin_section() {
        let running = load_str(BASE).unwrap();
        let next = load_str(&BASE.replace("9090", "9091")).unwrap();
        assert_eq!(pending_restart(&running, &next), ["admin.address"]);
    }

    #[test]
    fn identity_section() {
        assert_eq!(
            pending("identity: {workload_spiffe_id: 'spiffe://example.org/a'}\n"),
            ["identity.workload_spiffe_id"]
        );
    }

    #[test]
    fn policy_section_keys_needing_a_restart() {
        assert_eq!(
            pending("policy: {dry_run: true, watch: true}\n"),
            ["policy.dry_run", "policy.watch"]
        );
    }

    #[test]
    fn limits_section() {
        assert_eq!(
            pending("limits: {max_connections: 7, max_header_bytes: 4096}\n"),
            ["limits.max_header_bytes", "limits.max_connections"]
        );
    }

    /// `extra` loaded with files written into a folder, relative paths resolving there.
    fn with_files(extra: &str, files: &[(&str, &str)]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        let load = |text: &str| crate::config::load_str(text, dir.path(), "test.yaml").unwrap();
        pending_restart(&load(BASE), &load(&format!("{BASE}{extra}")))
    }

    #[test]
    fn intercept_ca_section() {
        assert_eq!(
            with_files(
                "intercept_ca: {cert: ca.pem, key: ca-key.pem}\n",
                &[("ca.pem", "x"), ("ca-key.pem", "x")]
            ),
            ["intercept_ca"]
        );
    }

    #[test]
    fn intent_tokens_section() {
        assert_eq!(
            with_files(
                "intent_tokens: {issuers: [{issuer: planner, jwks: jwks.json}]}\n",
                // RFC 8037's example Ed25519 public key.
                &[(
                    "jwks.json",
                    r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "use": "sig",
                                  "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#
                )]
            ),
            ["intent_tokens.issuers"]
        );
    }

    #[test]
    fn credentials_section_is_applied_live() {
        assert!(
            with_files(
                "credentials:\n  gh: {kind: static, source: {file: gh}}\n",
                &[("gh", "token")]
            )
            .is_empty()
        );
    }

    #[test]
    fn telemetry_section() {
        assert_eq!(
            pending("telemetry: {decision_log: 'off', metrics_label_destination: false}\n"),
            [
                "telemetry.decision_log",
                "telemetry.metrics_label_destination"
            ]
        );
    }
}
