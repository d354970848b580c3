//! `tollgate inject`: the Kubernetes mutating admission webhook that turns a selected pod into
//! an agent pod guarded by tollgate (SPEC §1; docs/KUBERNETES.md).
//!
//! It adds, to each pod the webhook configuration's selectors send it:
//! - the init step `tollgate-init` (`tollgate redirect install`, root with NET_ADMIN only);
//! - the native sidecar `tollgate` (an init container with `restartPolicy: Always`), its
//!   configuration and policy from a ConfigMap, the interception CA (certificate and key), the
//!   SPIFFE CSI volume and `SPIFFE_ENDPOINT_SOCKET`, probes on `/healthz` and `/readyz`;
//! - to the pod's own containers, the interception CA's certificate (never its key) and
//!   `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`.
//!
//! It refuses pods whose own containers could step around tollgate ([`boundary`]: the proxy's
//! UID, root, privileged, NET_ADMIN/NET_RAW, tollgate's volumes), unless the pod's
//! `tollgate.io/agent-exceptions` annotation waives a rule, which is logged and counted.
//!
//! Layout: [`mutate`] is the decision, a pure function (pod in, JSON Patch out); [`review`]
//! wraps it in the AdmissionReview protocol (also pure); [`server`] serves it over HTTPS;
//! [`pod_parts`] builds the added containers and volumes; [`settings`] is `--config`;
//! [`names`] lists every label, annotation and name the injector uses.

pub mod boundary;
pub mod mutate;
pub mod names;
pub mod pod_parts;
pub mod review;
pub mod server;
pub mod settings;

pub use settings::Settings;
