//! The injector's settings (`tollgate inject --config FILE`): what it adds to a pod. YAML in
//! Kubernetes' camelCase (the chart renders it from its values); unknown keys are errors, and
//! every value is checked at start-up, so a bad setting stops the injector rather than every
//! injected pod.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::redirect::{Ipv6Mode, RedirectSpec};

/// Everything the injector needs to build the init step and the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// The tollgate image (one image serves the init step and the sidecar).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// The sidecar's UID (and GID): exempt from the redirect, so it must be no agent's.
    pub proxy_uid: u32,
    /// The transparent listener's port (the redirect's target).
    pub proxy_port: u16,
    /// Where the sidecar serves `/healthz`, `/readyz` and `/metrics` on the pod's address
    /// (its configuration's `admin.metrics_address`).
    pub health_port: u16,
    /// Destination ports never redirected, for every pod (`22,8000-8100`); a pod adds its own
    /// with the `tollgate.io/exclude-outbound-ports` annotation.
    pub exclude_outbound_ports: String,
    /// Destination CIDRs never redirected, for every pod; a pod adds its own with
    /// `tollgate.io/exclude-outbound-cidrs`.
    pub exclude_outbound_cidrs: String,
    /// `auto`, `on` or `off` (see `tollgate redirect install --ipv6`).
    pub ipv6: String,
    /// The nodes' images carry legacy iptables: the init step then also needs NET_RAW.
    pub legacy_iptables: bool,
    /// The ConfigMap holding the sidecar's `config.yaml` and policy, when the pod names none
    /// with `tollgate.io/config`.
    pub config_map: String,
    /// The Secret (type kubernetes.io/tls) with the interception CA; mounted only into the
    /// tollgate container.
    pub ca_secret: String,
    /// The ConfigMap with the interception CA's certificate (key `ca.crt`), what the agent's
    /// containers trust; never the key.
    pub ca_bundle_config_map: String,
    /// A Secret with the credentials' source files (tokens, client secrets, signing keys),
    /// mounted read-only at `/etc/tollgate/credentials` in the tollgate container alone; empty:
    /// none.
    pub credentials_secret: String,
    /// Whether to point `SSL_CERT_FILE` and `REQUESTS_CA_BUNDLE` at that bundle (they replace
    /// the system roots; `NODE_EXTRA_CA_CERTS` adds to them and is always set).
    pub set_ca_env: bool,
    /// The SPIFFE CSI driver's name.
    pub spiffe_csi_driver: String,
    /// The Workload API socket's file name inside the CSI volume.
    pub spiffe_socket_name: String,
    /// Resources of the sidecar container.
    pub sidecar_resources: Resources,
    /// Resources of the init step.
    pub init_resources: Resources,
}

/// A container's resource requests and limits (`cpu: 100m`, `memory: 64Mi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Requests by resource name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// Limits by resource name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Settings {
        let resources = |cpu: &str, memory: &str, limit: &str| Resources {
            requests: BTreeMap::from([
                ("cpu".to_string(), cpu.to_string()),
                ("memory".to_string(), memory.to_string()),
            ]),
            limits: BTreeMap::from([("memory".to_string(), limit.to_string())]),
        };
        Settings {
            image: format!("tollgate:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            proxy_uid: 1337,
            proxy_port: 15001,
            health_port: 15020,
            exclude_outbound_ports: String::new(),
            exclude_outbound_cidrs: String::new(),
            ipv6: "auto".into(),
            legacy_iptables: false,
            config_map: "tollgate-sidecar".into(),
            ca_secret: "tollgate-intercept-ca".into(),
            ca_bundle_config_map: "tollgate-ca-bundle".into(),
            credentials_secret: String::new(),
            set_ca_env: true,
            spiffe_csi_driver: "csi.spiffe.io".into(),
            spiffe_socket_name: "spire-agent.sock".into(),
            sidecar_resources: resources("50m", "64Mi", "256Mi"),
            init_resources: resources("10m", "16Mi", "64Mi"),
        }
    }
}

/// A settings file that cannot be used; names the file and the problems.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {message}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The YAML does not fit, or values are invalid (one line per problem).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Settings {
    /// Reads and checks a settings file.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Settings::parse(&text).map_err(|message| SettingsError::Invalid {
            path: shown,
            message,
        })
    }

    /// Parses and checks settings YAML (an empty document is all defaults).
    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings = if text.trim().is_empty() {
            Settings::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| e.to_string())?
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Every problem at once, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.image.trim().is_empty() {
            problems.push("image: must not be empty".to_string());
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            problems.push(format!(
                "imagePullPolicy: `{}` is not one of Always, IfNotPresent, Never",
                self.image_pull_policy
            ));
        }
        if self.proxy_uid == 0 {
            problems.push(
                "proxyUid: must not be 0 (root's connections would all bypass the redirect)"
                    .to_string(),
            );
        }
        if self.health_port == 0 || self.health_port == self.proxy_port {
            problems.push("healthPort: must be 1..65535 and differ from proxyPort".to_string());
        }
        if let Err(e) = self.redirect_spec("", "") {
            problems.push(e);
        }
        for (key, value) in [
            ("configMap", &self.config_map),
            ("caSecret", &self.ca_secret),
            ("caBundleConfigMap", &self.ca_bundle_config_map),
        ] {
            if !super::mutate::is_dns_subdomain(value) {
                problems.push(format!("{key}: `{value}` is not a Kubernetes object name"));
            }
        }
        if !self.credentials_secret.is_empty()
            && !super::mutate::is_dns_subdomain(&self.credentials_secret)
        {
            problems.push(format!(
                "credentialsSecret: `{}` is not a Kubernetes object name",
                self.credentials_secret
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The redirect for one pod: these settings' exclusions plus the pod's own.
    pub fn redirect_spec(
        &self,
        extra_ports: &str,
        extra_cidrs: &str,
    ) -> Result<RedirectSpec, String> {
        let join = |a: &str, b: &str| [a, b].join(",");
        let ipv6 = Ipv6Mode::parse(&self.ipv6).map_err(|e| format!("ipv6: {e}"))?;
        RedirectSpec::new(
            self.proxy_uid,
            self.proxy_port,
            Some(&join(&self.exclude_outbound_ports, extra_ports)),
            Some(&join(&self.exclude_outbound_cidrs, extra_cidrs)),
            ipv6,
        )
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Settings::parse("").unwrap(), Settings::default());
    }

    #[test]
    fn rejects_unknown_keys_and_reports_every_bad_value() {
        let err =
            Settings::parse("imagePullPolicy: Sometimes\nproxyUid: 7\nimage: x\nproxyPortt: 1\n")
                .unwrap_err();
        assert!(err.contains("unknown field `proxyPortt`"), "{err}");
        let err = Settings::parse(
            "imagePullPolicy: Sometimes\nproxyUid: 0\nexcludeOutboundPorts: http\nconfigMap: Bad_Name\n",
        )
        .unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(lines[0].starts_with("imagePullPolicy: `Sometimes`"));
        assert!(lines[1].starts_with("proxyUid: must not be 0"));
        assert!(lines[2].starts_with("--exclude-ports: `http`"));
        assert!(lines[3].starts_with("configMap: `Bad_Name`"));
    }
}
