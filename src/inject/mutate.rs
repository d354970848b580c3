//! The mutation itself, a pure function: a pod (JSON) and the settings in, a verdict out —
//! an RFC 6902 JSON Patch that adds the init step and the tollgate sidecar, "leave it", or a
//! refusal with its reason. No I/O, so every rule is a unit test, and later admission checks
//! (issue 17's refusals) slot in as more `Verdict::Deny` cases.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Value, json};

use super::boundary::{self, AgentContainer, Boundary, Exception, SecurityView};
use super::names::*;
use super::pod_parts;
use super::settings::Settings;

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admit it with these RFC 6902 operations applied, and the trust-boundary exceptions its
    /// annotation took (logged and counted by the webhook).
    Patch(Vec<Value>, BTreeSet<Exception>),
    /// Admit it unchanged; the reason is logged.
    Skip(&'static str),
    /// Refuse it: the HTTP-style code and the message the user sees (`kubectl` prints it).
    Deny {
        /// 400 for a pod that cannot be read or annotated wrongly, 403 for a refusal by rule.
        code: u16,
        /// Why, in terms the pod's author can act on.
        message: String,
    },
}

/// The parts of a pod the injector reads (serde ignores the rest).
#[derive(Debug, Deserialize)]
struct PodView {
    #[serde(default)]
    metadata: MetaView,
    spec: SpecView,
}

#[derive(Debug, Default, Deserialize)]
struct MetaView {
    annotations: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecView {
    containers: Vec<ContainerView>,
    init_containers: Option<Vec<ContainerView>>,
    volumes: Option<Vec<NamedView>>,
    #[serde(default)]
    host_network: bool,
    security_context: Option<SecurityView>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerView {
    name: String,
    env: Option<Vec<NamedView>>,
    volume_mounts: Option<Vec<MountView>>,
    security_context: Option<SecurityView>,
}

#[derive(Debug, Deserialize)]
struct NamedView {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MountView {
    name: String,
    mount_path: String,
}

fn deny(code: u16, message: impl Into<String>) -> Verdict {
    Verdict::Deny {
        code,
        message: message.into(),
    }
}

/// Decides what to do with `pod` (the AdmissionReview's `request.object`).
pub fn mutate(pod: &Value, settings: &Settings) -> Verdict {
    let view: PodView = match serde_json::from_value(pod.clone()) {
        Ok(view) => view,
        Err(e) => {
            return deny(
                400,
                format!("tollgate injector: the pod cannot be read: {e}"),
            );
        }
    };
    let annotations = view.metadata.annotations.clone().unwrap_or_default();
    let labels = view.metadata.labels.clone().unwrap_or_default();
    if annotations.get(INJECT).map(String::as_str) == Some("false")
        || labels.get(INJECT).map(String::as_str) == Some("false")
    {
        return Verdict::Skip("opted out (tollgate.io/inject: \"false\")");
    }
    if annotations.contains_key(INJECTED) || already_has_ours(&view.spec) {
        return Verdict::Skip("already injected");
    }
    if view.spec.host_network {
        return deny(
            403,
            "tollgate injector: a hostNetwork pod shares the node's network namespace, so its \
             redirect rules would be the node's; annotate it tollgate.io/inject: \"false\" or \
             run it outside the injected namespaces",
        );
    }
    let config_map = annotations
        .get(CONFIG)
        .cloned()
        .unwrap_or_else(|| settings.config_map.clone());
    if !is_dns_subdomain(&config_map) {
        return deny(
            400,
            format!(
                "tollgate injector: annotation {CONFIG}: `{config_map}` is not a ConfigMap name"
            ),
        );
    }
    let empty = String::new();
    let spec = match settings.redirect_spec(
        annotations.get(EXCLUDE_PORTS).unwrap_or(&empty),
        annotations.get(EXCLUDE_CIDRS).unwrap_or(&empty),
    ) {
        Ok(spec) => spec,
        Err(e) => {
            let key = if e.starts_with("--exclude-cidrs") {
                EXCLUDE_CIDRS
            } else {
                EXCLUDE_PORTS
            };
            return deny(400, format!("tollgate injector: annotation {key}: {e}"));
        }
    };
    if let Some(conflict) = name_conflict(&view.spec) {
        return deny(400, format!("tollgate injector: {conflict}"));
    }
    let exceptions = match agent_boundary(&view.spec, &annotations, settings) {
        Ok(taken) => taken,
        Err(refusal) => return refusal,
    };

    let mut ops = Vec::new();
    // The agent's own containers first, by their original indices (the init containers are
    // inserted at the front afterwards, which shifts them).
    for (i, container) in view.spec.containers.iter().enumerate() {
        agent_container_ops(
            &mut ops,
            &format!("/spec/containers/{i}"),
            container,
            settings,
        );
    }
    for (i, container) in view.spec.init_containers.iter().flatten().enumerate() {
        agent_container_ops(
            &mut ops,
            &format!("/spec/initContainers/{i}"),
            container,
            settings,
        );
    }
    let init = pod_parts::init_container(settings, &spec);
    let sidecar = pod_parts::sidecar_container(settings);
    if view.spec.init_containers.is_some() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
        ops.push(json!({"op": "add", "path": "/spec/initContainers/1", "value": sidecar}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, sidecar]}));
    }
    let volumes = pod_parts::volumes(settings, &config_map);
    if view.spec.volumes.is_some() {
        for volume in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }
    let stamp = Value::String(env!("CARGO_PKG_VERSION").to_string());
    if view.metadata.annotations.is_some() {
        ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_escape(INJECTED)), "value": stamp}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED: stamp}}));
    }
    Verdict::Patch(ops, exceptions)
}

/// The trust boundary over the pod's own containers ([`boundary`]): the exceptions taken, or
/// the refusal.
fn agent_boundary(
    spec: &SpecView,
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<BTreeSet<Exception>, Verdict> {
    let containers: Vec<AgentContainer<'_>> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| AgentContainer {
            name: &c.name,
            security: c.security_context.as_ref(),
            mounts: c
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.name.as_str())
                .collect(),
        })
        .collect();
    match boundary::check(
        &containers,
        spec.security_context.as_ref(),
        annotations.get(AGENT_EXCEPTIONS).map(String::as_str),
        settings.proxy_uid,
    ) {
        Boundary::Admitted(taken) => Ok(taken),
        Boundary::Refused(why) => Err(deny(
            403,
            format!(
                "tollgate injector: {why}. The agent must not be able to step around tollgate; \
                 fix the pod, or waive a rule with the annotation {AGENT_EXCEPTIONS} (the pod is \
                 then not protected by it)"
            ),
        )),
        Boundary::BadAnnotation(why) => Err(deny(400, format!("tollgate injector: {why}"))),
    }
}

/// The CA bundle mount and trust variables for one of the agent's containers; a variable the
/// container already sets is left as its author wrote it.
fn agent_container_ops(
    ops: &mut Vec<Value>,
    at: &str,
    container: &ContainerView,
    settings: &Settings,
) {
    let wanted: Vec<Value> = pod_parts::agent_env(settings)
        .into_iter()
        .filter(|var| {
            let name = var["name"].as_str().unwrap_or_default();
            !container.env.iter().flatten().any(|e| e.name == name)
        })
        .collect();
    match &container.env {
        None if !wanted.is_empty() => {
            ops.push(json!({"op": "add", "path": format!("{at}/env"), "value": wanted}));
        }
        None => {}
        Some(_) => {
            for var in wanted {
                ops.push(json!({"op": "add", "path": format!("{at}/env/-"), "value": var}));
            }
        }
    }
    let mount = pod_parts::agent_ca_mount();
    match &container.volume_mounts {
        None => {
            ops.push(json!({"op": "add", "path": format!("{at}/volumeMounts"), "value": [mount]}))
        }
        Some(_) => {
            ops.push(json!({"op": "add", "path": format!("{at}/volumeMounts/-"), "value": mount}))
        }
    }
}

fn already_has_ours(spec: &SpecView) -> bool {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.name == INIT_CONTAINER || c.name == SIDECAR_CONTAINER)
}

/// A volume or mount path of the pod that would collide with the injected ones.
fn name_conflict(spec: &SpecView) -> Option<String> {
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| VOLUMES.contains(&v.name.as_str()))
    {
        return Some(format!(
            "the pod already has a volume named `{}`",
            volume.name
        ));
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in containers {
        if let Some(mount) = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path.trim_end_matches('/') == AGENT_CA_DIR)
        {
            return Some(format!(
                "container `{}` already mounts `{}` at {AGENT_CA_DIR}, where the interception \
                 CA's certificate goes",
                container.name, mount.name
            ));
        }
    }
    None
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A Kubernetes object name (RFC 1123 subdomain): 1..253 of `a-z 0-9 - .`, alphanumeric at
/// both ends.
pub fn is_dns_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod; one that says nothing of its UID runs as a non-root agent UID, as a pod inside
    /// the trust boundary does.
    fn pod(extra_meta: Value, mut spec: Value) -> Value {
        let mut metadata = json!({"name": "agent", "namespace": "agents"});
        if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_meta.as_object()) {
            m.extend(extra.clone());
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.entry("securityContext")
                .or_insert(json!({"runAsUser": 1000, "runAsNonRoot": true}));
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    }

    fn simple() -> Value {
        pod(
            json!({}),
            json!({"containers": [{"name": "agent", "image": "python:3.12"}]}),
        )
    }

    fn ops(verdict: Verdict) -> Vec<Value> {
        match verdict {
            Verdict::Patch(ops, _) => ops,
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    #[test]
    fn injects_init_step_sidecar_volumes_and_agent_trust() {
        let ops = ops(mutate(&simple(), &Settings::default()));
        let paths: Vec<&str> = ops.iter().map(|op| op["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            vec![
                "/spec/containers/0/env",
                "/spec/containers/0/volumeMounts",
                "/spec/initContainers",
                "/spec/volumes",
                "/metadata/annotations",
            ]
        );
        let init = &ops[2]["value"];
        assert_eq!(init[0]["name"], "tollgate-init");
        assert_eq!(init[1]["name"], "tollgate");
        assert_eq!(init[1]["restartPolicy"], "Always");
    }

    #[test]
    fn appends_to_existing_lists_and_keeps_the_agents_own_variables() {
        let p = pod(
            json!({"annotations": {"team": "x"}}),
            json!({
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [{"name": "agent", "image": "node:22",
                                "env": [{"name": "NODE_EXTRA_CA_CERTS", "value": "/mine.pem"}],
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }),
        );
        let ops = ops(mutate(&p, &Settings::default()));
        let paths: Vec<&str> = ops.iter().map(|op| op["path"].as_str().unwrap()).collect();
        assert_eq!(
            &paths[..4],
            &[
                "/spec/containers/0/env/-",
                "/spec/containers/0/env/-",
                "/spec/containers/0/volumeMounts/-",
                "/spec/initContainers/0/env",
            ]
        );
        let added: Vec<&str> = ops[..2]
            .iter()
            .map(|op| op["value"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(added, vec!["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"]);
        assert!(
            paths.contains(&"/spec/initContainers/0") && paths.contains(&"/spec/initContainers/1")
        );
        assert!(paths.contains(&"/spec/volumes/-"));
        assert_eq!(
            *paths.last().unwrap(),
            "/metadata/annotations/tollgate.io~1injected"
        );
    }

    #[test]
    fn leaves_injected_and_opted_out_pods_alone() {
        let injected = pod(
            json!({"annotations": {"tollgate.io/injected": "0.1.0"}}),
            json!({"containers": []}),
        );
        assert_eq!(
            mutate(&injected, &Settings::default()),
            Verdict::Skip("already injected")
        );
        let by_name = pod(
            json!({}),
            json!({"containers": [], "initContainers": [{"name": "tollgate"}]}),
        );
        assert_eq!(
            mutate(&by_name, &Settings::default()),
            Verdict::Skip("already injected")
        );
        let opted_out = pod(
            json!({"annotations": {"tollgate.io/inject": "false"}}),
            json!({"containers": []}),
        );
        assert!(matches!(
            mutate(&opted_out, &Settings::default()),
            Verdict::Skip(_)
        ));
    }

    #[test]
    fn refuses_malformed_pods_bad_annotations_and_host_network() {
        let cases = [
            (json!({"spec": "nope"}), 400, "the pod cannot be read"),
            (json!([1, 2]), 400, "the pod cannot be read"),
            (
                pod(
                    json!({"annotations": {"tollgate.io/exclude-outbound-ports": "ssh"}}),
                    json!({"containers": []}),
                ),
                400,
                "annotation tollgate.io/exclude-outbound-ports: --exclude-ports: `ssh`",
            ),
            (
                pod(
                    json!({"annotations": {"tollgate.io/exclude-outbound-cidrs": "10.0.0.0/40"}}),
                    json!({"containers": []}),
                ),
                400,
                "annotation tollgate.io/exclude-outbound-cidrs:",
            ),
            (
                pod(
                    json!({"annotations": {"tollgate.io/config": "../etc"}}),
                    json!({"containers": []}),
                ),
                400,
                "is not a ConfigMap name",
            ),
            (
                pod(json!({}), json!({"containers": [], "hostNetwork": true})),
                403,
                "hostNetwork",
            ),
            (
                pod(
                    json!({}),
                    json!({"containers": [], "volumes": [{"name": "tollgate-ca"}]}),
                ),
                400,
                "already has a volume named `tollgate-ca`",
            ),
        ];
        for (pod, want_code, want) in cases {
            match mutate(&pod, &Settings::default()) {
                Verdict::Deny { code, message } => {
                    assert_eq!(code, want_code, "{message}");
                    assert!(message.contains(want), "{message}");
                }
                other => panic!("{pod}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_agents_that_could_step_around_tollgate_unless_the_pod_waives_the_rule() {
        let agent = |security: Value| {
            json!({"containers": [{"name": "agent", "securityContext": security}],
                   "securityContext": {}})
        };
        let verdict = mutate(
            &pod(json!({}), agent(json!({"runAsUser": 1337}))),
            &Settings::default(),
        );
        let Verdict::Deny { code, message } = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(code, 403);
        assert!(
            message.contains("runs as UID 1337, the proxy's UID"),
            "{message}"
        );
        assert!(message.contains(AGENT_EXCEPTIONS), "{message}");
        let waived = pod(
            json!({"annotations": {AGENT_EXCEPTIONS: "root"}}),
            agent(json!({"runAsUser": 0})),
        );
        match mutate(&waived, &Settings::default()) {
            Verdict::Patch(_, taken) => assert_eq!(taken, BTreeSet::from([Exception::Root])),
            other => panic!("{other:?}"),
        }
        let typo = pod(
            json!({"annotations": {AGENT_EXCEPTIONS: "rooot"}}),
            agent(json!({})),
        );
        assert!(matches!(
            mutate(&typo, &Settings::default()),
            Verdict::Deny { code: 400, .. }
        ));
        // A container of the pod's cannot mount the CA key's volume the injector adds.
        let steal = pod(
            json!({}),
            json!({"containers": [{"name": "agent",
                                   "volumeMounts": [{"name": VOLUME_CA, "mountPath": "/k"}]}]}),
        );
        assert!(
            matches!(mutate(&steal, &Settings::default()), Verdict::Deny { code: 403, message } if message.contains("a volume for tollgate alone"))
        );
    }

    #[test]
    fn pod_exclusions_add_to_the_settings() {
        let settings = Settings {
            exclude_outbound_ports: "22".into(),
            ..Settings::default()
        };
        let p = pod(
            json!({"annotations": {"tollgate.io/exclude-outbound-ports": "5432, 23",
                                    "tollgate.io/exclude-outbound-cidrs": "10.0.0.0/8"}}),
            json!({"containers": [{"name": "a"}]}),
        );
        let ops = ops(mutate(&p, &settings));
        let init = ops
            .iter()
            .find(|op| op["path"] == "/spec/initContainers")
            .unwrap();
        let args: Vec<&str> = init["value"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            vec![
                "redirect",
                "install",
                "--proxy-uid",
                "1337",
                "--proxy-port",
                "15001",
                "--exclude-ports",
                "22-23,5432",
                "--exclude-cidrs",
                "10.0.0.0/8",
                "--ipv6",
                "auto"
            ]
        );
    }

    #[test]
    fn checks_object_names() {
        assert!(is_dns_subdomain("tollgate-sidecar.v2"));
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
