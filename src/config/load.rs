//! Loading: YAML → one tree → each top-level section deserialized on its own into the
//! [`raw`](super::raw) structs, every unknown key (`serde_ignored`) and every mistyped key
//! (`serde_path_to_error`) reported with its path.

use serde::de::DeserializeOwned;

use super::types::ConfigError;
use super::{credentials, raw};

/// Collects problems while validating.
#[derive(Default)]
pub struct Problems(pub(super) Vec<ConfigError>);

impl Problems {
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// The top-level sections, each deserialized on its own.
#[derive(Default)]
pub(super) struct Sections {
    pub(super) listeners: Option<Vec<raw::RawListener>>,
    /// How many `listeners` entries the file holds, readable or not: an entry that could not
    /// be read is reported on its own key, not again as "at least one listener is required".
    pub(super) listeners_written: usize,
    pub(super) admin: Option<raw::RawAdmin>,
    pub(super) identity: Option<raw::RawIdentity>,
    pub(super) intercept_ca: Option<raw::RawKeyPair>,
    pub(super) policy: Option<raw::RawPolicy>,
    pub(super) intent_tokens: Option<raw::RawIntentTokens>,
    pub(super) credentials: Option<std::collections::BTreeMap<String, credentials::RawCredential>>,
    pub(super) agent_secrets: Option<credentials::RawAgentSecrets>,
    pub(super) upstream: Option<raw::RawUpstream>,
    pub(super) limits: Option<raw::RawLimits>,
    pub(super) telemetry: Option<raw::RawTelemetry>,
}

impl Sections {
    pub(super) fn take(&mut self, name: &str, value: serde_yaml::Value, problems: &mut Problems) {
        if value.is_null() {
            return;
        }
        match name {
            "listeners" => {
                let serde_yaml::Value::Sequence(items) = value else {
                    problems.add("listeners", "must be a list of listeners");
                    return;
                };
                self.listeners_written = items.len();
                let listeners: Vec<_> = items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, item)| section(item, &format!("listeners[{i}]"), problems))
                    .collect();
                self.listeners = Some(listeners);
            }
            "admin" => self.admin = section(value, name, problems),
            "identity" => self.identity = section(value, name, problems),
            "intercept_ca" => self.intercept_ca = section(value, name, problems),
            "policy" => self.policy = section(value, name, problems),
            "intent_tokens" => self.intent_tokens = section(value, name, problems),
            "credentials" => self.credentials = section(value, name, problems),
            "agent_secrets" => self.agent_secrets = section(value, name, problems),
            "upstream" => self.upstream = section(value, name, problems),
            "limits" => self.limits = section(value, name, problems),
            "telemetry" => self.telemetry = section(value, name, problems),
            other => problems.add(other, "unknown key"),
        }
    }
}

/// Deserializes one section, reporting every unknown key and every mistyped key by path.
///
/// serde stops at the first type error; to report the others too, the offending top-level key
/// of the section is dropped and the section deserialized again (bounded), until it parses.
fn section<T: DeserializeOwned>(
    mut value: serde_yaml::Value,
    key: &str,
    problems: &mut Problems,
) -> Option<T> {
    let mut unknown: Vec<String> = Vec::new();
    for _ in 0..64 {
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(value.clone(), &mut track);
        let result = serde_ignored::deserialize(tracked, |path| {
            let path = path.to_string();
            if !unknown.contains(&path) {
                unknown.push(path);
            }
        });
        match result {
            Ok(parsed) => {
                for path in &unknown {
                    problems.add(join_key(key, path), "unknown key");
                }
                // After a type error the section parsed without the offending key; keep it so
                // the semantic checks still run on the rest (the recorded problem already fails
                // the configuration).
                return Some(parsed);
            }
            Err(e) => {
                let path = track.path().to_string();
                let path = if path == "." { String::new() } else { path };
                problems.add(join_key(key, &path), e.to_string());
                let first = path.split(['.', '[']).next().unwrap_or("");
                let removed = match &mut value {
                    serde_yaml::Value::Mapping(map) if !first.is_empty() => {
                        map.remove(first).is_some()
                    }
                    _ => false,
                };
                if !removed {
                    break;
                }
            }
        }
    }
    for path in &unknown {
        problems.add(join_key(key, path), "unknown key");
    }
    None
}

fn join_key(prefix: &str, path: &str) -> String {
    if path.is_empty() || path == "?" {
        prefix.to_string()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{}", path.replace(".?", ""))
    }
}
