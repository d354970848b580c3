//! Kubernetes tooling for the chart and webhook tests: `helm` (lint, template) on
//! `helm/tollgate`, rendered documents as JSON values, and `kubernetes-validate --strict`
//! against the API schemas of the oldest and newest Kubernetes the chart supports.
//!
//! Include it next to the shared harness:
//! ```ignore
//! mod support;
//! #[path = "support/k8s.rs"]
//! mod k8s;
//! ```
//! No cluster is involved: what a real API server, kubelet or CNI would add is listed in
//! docs/KUBERNETES.md ("verified here versus on a cluster").
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::{command, repo_root, require_tool, run_with_timeout};

/// The Kubernetes versions every manifest is validated for (native sidecars need ≥ 1.29).
pub const KUBE_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// `helm/tollgate`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("helm/tollgate")
}

/// `helm template tollgate helm/tollgate -n tollgate ARGS…`: the manifests, or helm's stderr.
pub fn helm_template(args: &[&str]) -> Result<String, String> {
    let out = run_with_timeout(
        command(require_tool("helm"))
            .args(["template", "tollgate"])
            .arg(chart_dir())
            .args(["--namespace", "tollgate"])
            .args(args),
        TOOL_TIMEOUT,
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `helm lint --strict helm/tollgate ARGS…`.
pub fn helm_lint(args: &[&str]) -> Output {
    run_with_timeout(
        command(require_tool("helm"))
            .args(["lint", "--strict"])
            .arg(chart_dir())
            .args(args),
        TOOL_TIMEOUT,
    )
}

/// The YAML documents of a multi-document stream, as JSON values (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc| !doc.is_null())
        .map(|doc| serde_json::to_value(doc).expect("YAML maps to JSON"))
        .collect()
}

/// The documents of `kind` (in render order).
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Runs `kubernetes-validate --strict` on `file` for every version in [`KUBE_VERSIONS`];
/// panics with its output unless each passes. Custom resources (monitoring.coreos.com) have no
/// schema there and are reported as skipped, which it does not count as a failure.
pub fn assert_validates(file: &Path) {
    for version in KUBE_VERSIONS {
        let out = run_with_timeout(
            command(require_tool("kubernetes-validate"))
                .args(["--strict", "--quiet", "-k", version])
                .arg(file),
            TOOL_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "kubernetes-validate --strict -k {version} {} failed:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("ERROR"), "{version}: {text}");
    }
}

/// Writes `text` to `name` in `dir` and validates it ([`assert_validates`]).
pub fn assert_text_validates(dir: &Path, name: &str, text: &str) {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write manifest");
    assert_validates(&file);
}

/// Every container (and init container) of a pod spec.
pub fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|key| pod_spec[key].as_array())
        .flatten()
        .collect()
}

/// Panics unless `container` runs as non-root with a read-only root filesystem, no privilege
/// escalation and every capability dropped, none added.
pub fn assert_locked_down(container: &Value) {
    let name = &container["name"];
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{name}: runAsNonRoot");
    assert!(
        sc["runAsUser"].as_u64().is_some_and(|u| u > 0),
        "{name}: runAsUser"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{name}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "{name}: allowPrivilegeEscalation"
    );
    assert_ne!(sc["privileged"], true, "{name}: privileged");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{name}: drop"
    );
    assert!(
        sc["capabilities"].get("add").is_none(),
        "{name}: adds capabilities"
    );
}
