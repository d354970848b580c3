//! The pieces the injector adds to a pod, built from the settings: the init step, the native
//! sidecar, the volumes, and the agent containers' CA trust. Each is a plain JSON value in the
//! shape of the Kubernetes API (core/v1), so the patch needs no generated API types.

use serde_json::{Value, json};

use super::names::*;
use super::settings::{Resources, Settings};
use crate::redirect::RedirectSpec;

/// `0444` in the decimal form the API takes.
const READ_ONLY_MODE: u32 = 0o444;

/// The init step: `tollgate redirect install` as root with NET_ADMIN as its only capability
/// (a capability added to a non-root container is not effective), NET_RAW too for legacy
/// iptables, read-only root filesystem, no privilege escalation.
pub fn init_container(settings: &Settings, spec: &RedirectSpec) -> Value {
    let mut args = vec![
        "redirect".to_string(),
        "install".into(),
        "--proxy-uid".into(),
        spec.proxy_uid.to_string(),
        "--proxy-port".into(),
        spec.proxy_port.to_string(),
    ];
    if let Some(ports) = spec.ports_arg() {
        args.extend(["--exclude-ports".to_string(), ports]);
    }
    if let Some(cidrs) = spec.cidrs_arg() {
        args.extend(["--exclude-cidrs".to_string(), cidrs]);
    }
    args.extend(["--ipv6".to_string(), settings.ipv6.clone()]);
    let mut add = vec!["NET_ADMIN"];
    let mut mounts = Vec::new();
    if settings.legacy_iptables {
        add.push("NET_RAW");
        // Legacy iptables takes a lock file under /run; the root filesystem is read-only.
        mounts.push(json!({"name": VOLUME_RUN, "mountPath": "/run"}));
    }
    json!({
        "name": INIT_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        "resources": resources(&settings.init_resources),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": add},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

/// The sidecar: an init container with `restartPolicy: Always` (a native sidecar, Kubernetes
/// ≥ 1.29), so it starts before the agent (its startup probe gates the next containers) and
/// stops after it. Non-root, no capabilities, read-only root filesystem.
pub fn sidecar_container(settings: &Settings) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": settings.health_port},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1
        })
    };
    json!({
        "name": SIDECAR_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "args": ["run", "-c", format!("{CONFIG_DIR}/config.yaml")],
        "env": [
            {"name": "SPIFFE_ENDPOINT_SOCKET",
             "value": format!("unix://{SPIFFE_DIR}/{}", settings.spiffe_socket_name)},
            {"name": "XDG_STATE_HOME", "value": RUN_DIR}
        ],
        "ports": [{"name": "tollgate-health", "containerPort": settings.health_port, "protocol": "TCP"}],
        "startupProbe": probe("/readyz", 1, 60),
        "readinessProbe": probe("/readyz", 5, 3),
        "livenessProbe": probe("/healthz", 10, 3),
        "resources": resources(&settings.sidecar_resources),
        "volumeMounts": sidecar_mounts(settings),
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_uid,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

/// The sidecar's mounts: the only container that sees the CA key, the credentials and the
/// admin socket's folder.
fn sidecar_mounts(settings: &Settings) -> Vec<Value> {
    let mut mounts = vec![
        json!({"name": VOLUME_CONFIG, "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": VOLUME_CA, "mountPath": INTERCEPT_CA_DIR, "readOnly": true}),
        json!({"name": VOLUME_SPIFFE, "mountPath": SPIFFE_DIR, "readOnly": true}),
        json!({"name": VOLUME_RUN, "mountPath": RUN_DIR}),
    ];
    if !settings.credentials_secret.is_empty() {
        mounts.push(
            json!({"name": VOLUME_CREDENTIALS, "mountPath": CREDENTIALS_DIR, "readOnly": true}),
        );
    }
    mounts
}

/// The pod volumes the injected containers use.
pub fn volumes(settings: &Settings, config_map: &str) -> Vec<Value> {
    let mut volumes = vec![
        json!({"name": VOLUME_CONFIG, "configMap": {"name": config_map}}),
        json!({"name": VOLUME_CA, "secret": {"secretName": settings.ca_secret, "defaultMode": READ_ONLY_MODE}}),
        // Only the certificate: the key is never in a volume the agent's containers mount.
        json!({"name": VOLUME_CA_BUNDLE, "configMap": {
            "name": settings.ca_bundle_config_map,
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
            "defaultMode": READ_ONLY_MODE
        }}),
        json!({"name": VOLUME_SPIFFE, "csi": {"driver": settings.spiffe_csi_driver, "readOnly": true}}),
        json!({"name": VOLUME_RUN, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
    ];
    if !settings.credentials_secret.is_empty() {
        volumes.push(json!({"name": VOLUME_CREDENTIALS, "secret": {
            "secretName": settings.credentials_secret,
            "defaultMode": READ_ONLY_MODE
        }}));
    }
    volumes
}

/// The trust variables of the agent's containers, all pointing at the CA certificate.
pub fn agent_env(settings: &Settings) -> Vec<Value> {
    let mut names = Vec::new();
    if settings.set_ca_env {
        names.extend(["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"]);
    }
    names.push("NODE_EXTRA_CA_CERTS");
    names
        .into_iter()
        .map(|name| json!({"name": name, "value": AGENT_CA_FILE}))
        .collect()
}

/// The agent containers' read-only mount of the CA certificate.
pub fn agent_ca_mount() -> Value {
    json!({"name": VOLUME_CA_BUNDLE, "mountPath": AGENT_CA_DIR, "readOnly": true})
}

fn resources(resources: &Resources) -> Value {
    serde_json::to_value(resources).unwrap_or_else(|_| json!({}))
}
