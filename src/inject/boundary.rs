//! The trust boundary inside an injected pod (issue 17): the agent's containers must not be
//! able to step around tollgate. Pure: the pod's parts in, the violations out.
//!
//! A container of the pod's own (its containers and its init containers, which run after the
//! sidecar with the redirect in place) is refused when it
//! - runs as the proxy's UID ([`Exception::ProxyUid`]): the redirect exempts that UID, so
//!   its connections would leave the pod unseen;
//! - may run as UID 0 ([`Exception::Root`]): `runAsUser: 0`, or no `runAsUser` and no
//!   `runAsNonRoot: true` (the image's own user would decide). Root can set its UID to the
//!   proxy's and, with any capability, change the rules;
//! - is privileged ([`Exception::Privileged`]);
//! - adds `NET_ADMIN`, `NET_RAW` or `ALL` ([`Exception::NetCapabilities`]): it could rewrite
//!   or bypass the nat rules;
//! - mounts a volume the injector adds for tollgate alone (the interception CA's key, the
//!   admin socket's folder, the configuration, the Workload API socket). This one has no
//!   exception.
//!
//! The pod annotation `tollgate.io/agent-exceptions` lists the exceptions a pod's author takes
//! (`root,net-capabilities`): those violations are admitted, and the webhook logs and counts
//! each (`tollgate_injector_exceptions_total{exception}`). An unknown name refuses the pod.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::names::{AGENT_EXCEPTIONS, VOLUME_CA_BUNDLE, VOLUMES};

/// A rule of the trust boundary that a pod's annotation may waive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exception {
    /// A container runs as the proxy's UID.
    ProxyUid,
    /// A container may run as root.
    Root,
    /// A container is privileged.
    Privileged,
    /// A container adds NET_ADMIN, NET_RAW or ALL.
    NetCapabilities,
}

impl Exception {
    /// Every exception, in metric order.
    pub const ALL: [Exception; 4] = [
        Exception::ProxyUid,
        Exception::Root,
        Exception::Privileged,
        Exception::NetCapabilities,
    ];

    /// The name used in the annotation and the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Exception::ProxyUid => "proxy-uid",
            Exception::Root => "root",
            Exception::Privileged => "privileged",
            Exception::NetCapabilities => "net-capabilities",
        }
    }

    fn parse(name: &str) -> Option<Exception> {
        Exception::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// A pod's or a container's `securityContext`, the fields the boundary reads.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityView {
    run_as_user: Option<i64>,
    run_as_non_root: Option<bool>,
    privileged: Option<bool>,
    capabilities: Option<CapabilitiesView>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct CapabilitiesView {
    add: Option<Vec<String>>,
}

/// One of the pod's own containers, as the boundary sees it.
pub struct AgentContainer<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its `securityContext`, if any.
    pub security: Option<&'a SecurityView>,
    /// The volume names it mounts.
    pub mounts: Vec<&'a str>,
}

/// The outcome for a pod: refused with every reason, or admitted with the exceptions taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boundary {
    /// Admitted; the exceptions the annotation waived (empty for a pod that needs none).
    Admitted(BTreeSet<Exception>),
    /// Refused: every violation, in words the pod's author can act on.
    Refused(String),
    /// The annotation names something that is no exception.
    BadAnnotation(String),
}

/// The exceptions `tollgate.io/agent-exceptions` lists (comma-separated, spaces ignored).
fn parse_annotation(value: Option<&str>) -> Result<BTreeSet<Exception>, String> {
    let mut taken = BTreeSet::new();
    for name in value.unwrap_or_default().split(',').map(str::trim) {
        if name.is_empty() {
            continue;
        }
        match Exception::parse(name) {
            Some(exception) => {
                taken.insert(exception);
            }
            None => {
                let known: Vec<&str> = Exception::ALL.iter().map(|e| e.as_str()).collect();
                return Err(format!(
                    "annotation {AGENT_EXCEPTIONS}: `{name}` is not one of {}",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(taken)
}

/// The rules one container breaks, each with its explanation.
fn violations(
    container: &AgentContainer<'_>,
    pod: Option<&SecurityView>,
    proxy_uid: u32,
) -> Vec<(Option<Exception>, String)> {
    let own = container.security;
    let run_as_user = own
        .and_then(|s| s.run_as_user)
        .or(pod.and_then(|s| s.run_as_user));
    let non_root = own
        .and_then(|s| s.run_as_non_root)
        .or(pod.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let name = container.name;
    let mut found = Vec::new();
    if run_as_user == Some(i64::from(proxy_uid)) {
        found.push((
            Some(Exception::ProxyUid),
            format!(
                "container `{name}` runs as UID {proxy_uid}, the proxy's UID, whose connections \
                 bypass the redirect"
            ),
        ));
    }
    match run_as_user {
        Some(0) => found.push((
            Some(Exception::Root),
            format!("container `{name}` runs as UID 0 (root)"),
        )),
        None if !non_root => found.push((
            Some(Exception::Root),
            format!(
                "container `{name}` may run as root: set runAsUser (not 0, not {proxy_uid}) or \
                 runAsNonRoot: true"
            ),
        )),
        _ => {}
    }
    if own.and_then(|s| s.privileged) == Some(true) {
        found.push((
            Some(Exception::Privileged),
            format!("container `{name}` is privileged"),
        ));
    }
    let added: Vec<&str> = own
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.trim_start_matches("CAP_"))
        .filter(|c| matches!(*c, "NET_ADMIN" | "NET_RAW" | "ALL"))
        .collect();
    if !added.is_empty() {
        found.push((
            Some(Exception::NetCapabilities),
            format!(
                "container `{name}` adds {}, which can change or bypass the redirect",
                added.join(", ")
            ),
        ));
    }
    for mount in &container.mounts {
        if VOLUMES.contains(mount) && *mount != VOLUME_CA_BUNDLE {
            found.push((
                None,
                format!("container `{name}` mounts `{mount}`, a volume for tollgate alone"),
            ));
        }
    }
    found
}

/// Decides whether the pod's own containers stay inside the boundary.
pub fn check(
    containers: &[AgentContainer<'_>],
    pod: Option<&SecurityView>,
    annotation: Option<&str>,
    proxy_uid: u32,
) -> Boundary {
    let allowed = match parse_annotation(annotation) {
        Ok(allowed) => allowed,
        Err(e) => return Boundary::BadAnnotation(e),
    };
    let mut taken = BTreeSet::new();
    let mut refused = Vec::new();
    for container in containers {
        for (exception, why) in violations(container, pod, proxy_uid) {
            match exception {
                Some(e) if allowed.contains(&e) => {
                    taken.insert(e);
                }
                Some(e) => refused.push(format!("{why} (exception `{}`)", e.as_str())),
                None => refused.push(why),
            }
        }
    }
    if refused.is_empty() {
        Boundary::Admitted(taken)
    } else {
        Boundary::Refused(refused.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(json: serde_json::Value) -> SecurityView {
        serde_json::from_value(json).unwrap()
    }

    fn one<'a>(
        security: Option<&'a SecurityView>,
        mounts: Vec<&'a str>,
    ) -> Vec<AgentContainer<'a>> {
        vec![AgentContainer {
            name: "agent",
            security,
            mounts,
        }]
    }

    const NON_ROOT: fn() -> SecurityView =
        || security(serde_json::json!({"runAsUser": 1000, "runAsNonRoot": true}));

    #[test]
    fn a_non_root_agent_with_no_capabilities_is_admitted_without_exceptions() {
        let s = NON_ROOT();
        assert_eq!(
            check(
                &one(Some(&s), vec!["data", VOLUME_CA_BUNDLE]),
                None,
                None,
                1337
            ),
            Boundary::Admitted(BTreeSet::new())
        );
        // The pod's securityContext counts for a container that sets nothing.
        let pod = security(serde_json::json!({"runAsNonRoot": true}));
        assert_eq!(
            check(&one(None, vec![]), Some(&pod), None, 1337),
            Boundary::Admitted(BTreeSet::new())
        );
    }

    #[test]
    fn each_rule_refuses_and_names_its_exception() {
        for (json, exception, says) in [
            (
                serde_json::json!({"runAsUser": 1337}),
                "proxy-uid",
                "the proxy's UID",
            ),
            (serde_json::json!({"runAsUser": 0}), "root", "runs as UID 0"),
            (serde_json::json!({}), "root", "may run as root"),
            (
                serde_json::json!({"runAsNonRoot": true, "privileged": true}),
                "privileged",
                "is privileged",
            ),
            (
                serde_json::json!({"runAsNonRoot": true, "capabilities": {"add": ["CAP_NET_ADMIN"]}}),
                "net-capabilities",
                "adds NET_ADMIN",
            ),
            (
                serde_json::json!({"runAsNonRoot": true, "capabilities": {"add": ["NET_RAW"]}}),
                "net-capabilities",
                "adds NET_RAW",
            ),
            (
                serde_json::json!({"runAsNonRoot": true, "capabilities": {"add": ["CHOWN", "ALL"]}}),
                "net-capabilities",
                "adds ALL",
            ),
        ] {
            let s = security(json.clone());
            let Boundary::Refused(message) = check(&one(Some(&s), vec![]), None, None, 1337) else {
                panic!("{json} must be refused");
            };
            assert!(message.contains(says), "{json}: {message}");
            assert!(
                message.contains(&format!("(exception `{exception}`)")),
                "{json}: {message}"
            );
            // The annotation waives exactly that rule.
            assert_eq!(
                check(&one(Some(&s), vec![]), None, Some(exception), 1337),
                Boundary::Admitted(BTreeSet::from([Exception::parse(exception).unwrap()])),
                "{json}"
            );
        }
    }

    #[test]
    fn tollgates_own_volumes_cannot_be_mounted_even_with_every_exception() {
        let s = NON_ROOT();
        for volume in VOLUMES.into_iter().filter(|v| *v != VOLUME_CA_BUNDLE) {
            let verdict = check(
                &one(Some(&s), vec![volume]),
                None,
                Some("proxy-uid, root, privileged, net-capabilities"),
                1337,
            );
            let Boundary::Refused(message) = verdict else {
                panic!("{volume}: {verdict:?}");
            };
            assert!(message.contains("a volume for tollgate alone"), "{message}");
        }
    }

    #[test]
    fn an_unknown_exception_name_refuses_the_pod() {
        let s = NON_ROOT();
        assert!(matches!(
            check(&one(Some(&s), vec![]), None, Some("root,everything"), 1337),
            Boundary::BadAnnotation(m) if m.contains("`everything` is not one of")
        ));
    }
}
