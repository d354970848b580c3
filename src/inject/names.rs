//! The names the injector reads and writes: labels, annotations, container and volume names,
//! mount paths. Documented for users in docs/KUBERNETES.md; changing one is a product change.

/// Namespace label `tollgate.io/inject: enabled` or pod label `tollgate.io/inject: "true"`
/// selects pods (matched by the webhook configuration's selectors); annotation or label
/// `"false"` opts a pod out.
pub const INJECT: &str = "tollgate.io/inject";
/// Set on every injected pod (value: the injector's version); a pod carrying it is left alone.
pub const INJECTED: &str = "tollgate.io/injected";
/// Annotation naming the ConfigMap with the sidecar's `config.yaml` and policy.
pub const CONFIG: &str = "tollgate.io/config";
/// Annotation adding destination ports the pod's redirect excludes (`22,5432`).
pub const EXCLUDE_PORTS: &str = "tollgate.io/exclude-outbound-ports";
/// Annotation adding destination CIDRs the pod's redirect excludes (`10.0.0.0/8`).
pub const EXCLUDE_CIDRS: &str = "tollgate.io/exclude-outbound-cidrs";
/// Annotation listing the trust-boundary rules a pod's author waives
/// (`proxy-uid,root,privileged,net-capabilities`); each waiver taken is logged and counted.
pub const AGENT_EXCEPTIONS: &str = "tollgate.io/agent-exceptions";

/// The init step (`tollgate redirect install`).
pub const INIT_CONTAINER: &str = "tollgate-init";
/// The native sidecar (`tollgate run`).
pub const SIDECAR_CONTAINER: &str = "tollgate";

/// Volume: the ConfigMap with `config.yaml` and the policy (tollgate only).
pub const VOLUME_CONFIG: &str = "tollgate-config";
/// Volume: the interception CA's certificate and key (tollgate only).
pub const VOLUME_CA: &str = "tollgate-ca";
/// Volume: the interception CA's certificate alone (the agent's containers).
pub const VOLUME_CA_BUNDLE: &str = "tollgate-ca-bundle";
/// Volume: the SPIFFE CSI driver's Workload API socket (tollgate only).
pub const VOLUME_SPIFFE: &str = "tollgate-spiffe";
/// Volume: tollgate's writable runtime folder (admin socket, kill file).
pub const VOLUME_RUN: &str = "tollgate-run";
/// Volume: the credentials' source files, the Secret `credentialsSecret` (tollgate only).
pub const VOLUME_CREDENTIALS: &str = "tollgate-credentials";
/// Every volume the injector adds (or may add).
pub const VOLUMES: [&str; 6] = [
    VOLUME_CONFIG,
    VOLUME_CA,
    VOLUME_CA_BUNDLE,
    VOLUME_SPIFFE,
    VOLUME_RUN,
    VOLUME_CREDENTIALS,
];

/// Where the sidecar reads its configuration (`config.yaml` and what it references).
pub const CONFIG_DIR: &str = "/etc/tollgate/config";
/// Where the sidecar reads the interception CA (`tls.crt`, `tls.key`).
pub const INTERCEPT_CA_DIR: &str = "/etc/tollgate/intercept-ca";
/// Where the agent's containers find the CA certificate (`ca.crt`).
pub const AGENT_CA_DIR: &str = "/etc/tollgate/ca";
/// The CA certificate file the agent's trust variables point at.
pub const AGENT_CA_FILE: &str = "/etc/tollgate/ca/ca.crt";
/// Where the SPIFFE CSI volume is mounted in the sidecar.
pub const SPIFFE_DIR: &str = "/spiffe-workload-api";
/// Where the sidecar reads the credentials' source files.
pub const CREDENTIALS_DIR: &str = "/etc/tollgate/credentials";
/// tollgate's writable runtime folder.
pub const RUN_DIR: &str = "/run/tollgate";
