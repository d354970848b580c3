//! What a kill is: its target, the kill itself, how a lift names one, and the immutable,
//! indexed set of kills in force that the request path reads.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::Error as _;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::identity::SpiffeId;
use crate::intent::TaskName;

use super::KillError;
use super::store::rfc3339;

/// Who a kill applies to; the JSON form is `{"spiffe_id": …}`, `{"task": …}` or `{"all": true}`.
///
/// Valid by construction: a SPIFFE ID or a task name can only be held once it obeys its rule,
/// so an invalid target can never be in force.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KillTarget {
    /// One caller, by exact SPIFFE ID (the identity the proxy established, SPEC §3.1).
    SpiffeId(SpiffeId),
    /// Every call that declares this task (`X-Agent-Task`), whoever makes it.
    Task(TaskName),
    /// Every caller, unauthenticated ones included: the big red button.
    All,
}

impl KillTarget {
    /// Whether this target covers a caller; shared by [`KillSwitch::check`](super::KillSwitch::check)
    /// and the credential cache, so "killed" and "credentials dropped" can never disagree.
    pub fn matches(&self, spiffe_id: Option<&str>, task: Option<&str>) -> bool {
        match self {
            KillTarget::SpiffeId(id) => spiffe_id == Some(id.as_str()),
            KillTarget::Task(t) => task == Some(t.as_str()),
            KillTarget::All => true,
        }
    }

    /// Builds a target from the three optional JSON fields, insisting on exactly one and
    /// checking it against its rule (the admin API and the kill file share this).
    pub fn from_fields(
        spiffe_id: Option<String>,
        task: Option<String>,
        all: Option<bool>,
    ) -> Result<KillTarget, KillError> {
        match (spiffe_id, task, all) {
            (None, None, None) => Err(KillError::NoTarget),
            (Some(id), None, None) => SpiffeId::parse(&id)
                .map(KillTarget::SpiffeId)
                .map_err(KillError::InvalidSpiffeId),
            (None, Some(task), None) => TaskName::parse(&task)
                .map(KillTarget::Task)
                .map_err(|_| KillError::InvalidTask),
            (None, None, Some(true)) => Ok(KillTarget::All),
            (None, None, Some(false)) => Err(KillError::AllNotTrue),
            _ => Err(KillError::TwoTargets),
        }
    }
}

impl fmt::Display for KillTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KillTarget::SpiffeId(id) => write!(f, "spiffe_id {id}"),
            KillTarget::Task(task) => write!(f, "task {task}"),
            KillTarget::All => f.write_str("all"),
        }
    }
}

impl Serialize for KillTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            KillTarget::SpiffeId(id) => map.serialize_entry("spiffe_id", id.as_str())?,
            KillTarget::Task(task) => map.serialize_entry("task", task.as_str())?,
            KillTarget::All => map.serialize_entry("all", &true)?,
        }
        map.end()
    }
}

/// The JSON of a target as written: three optional fields, exactly one of which must be set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFields {
    #[serde(default)]
    spiffe_id: Option<String>,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    all: Option<bool>,
}

impl<'de> Deserialize<'de> for KillTarget {
    /// Validates while parsing, so a kill file cannot smuggle in a target the API would refuse.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a map first: derived structs also accept a JSON array, and `["spiffe://…"]`
        // silently meaning a SPIFFE ID kill is not a format anyone should rely on.
        let map = serde_json::Map::<String, Value>::deserialize(deserializer)?;
        let fields: TargetFields =
            serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
        KillTarget::from_fields(fields.spiffe_id, fields.task, fields.all).map_err(D::Error::custom)
    }
}

/// One kill in force: what the admin API lists and what a denied request is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// A UUIDv7 (sortable by time): the handle `DELETE /v1/kill/{id}` lifts it by.
    pub id: String,
    /// Who is killed.
    pub target: KillTarget,
    /// When it was engaged (millisecond precision, so it survives the file unchanged).
    pub created: SystemTime,
    /// The operator's note for the audit trail, if any.
    pub reason: Option<String>,
}

impl fmt::Display for Kill {
    /// `kill <id> (<target>)`: short enough for a deny reason or a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kill {} ({})", self.id, self.target)
    }
}

impl Serialize for Kill {
    /// `{"id", "target": {…}, "created": "RFC 3339", "reason": … | null}`: the admin API's and
    /// the kill file's form of one kill.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Kill", 4)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("target", &self.target)?;
        s.serialize_field("created", &rfc3339(self.created))?;
        s.serialize_field("reason", &self.reason)?;
        s.end()
    }
}

/// What [`KillSwitch::lift`](super::KillSwitch::lift) removes: one kill by its id, or the kill
/// on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiftBy {
    /// The kill with this id (any UUID spelling: case and braces do not matter).
    Id(String),
    /// The kill on exactly this target; `Target(All)` lifts the `{"all": true}` kill, not
    /// every kill, so lifting stays as deliberate as killing.
    Target(KillTarget),
}

impl fmt::Display for LiftBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiftBy::Id(id) => write!(f, "id {id}"),
            LiftBy::Target(target) => write!(f, "{target}"),
        }
    }
}

/// The kills in force: an immutable snapshot, indexed for the per-request check.
///
/// Invariant (kept by the writers and by the loader): at most one kill per target, ids unique.
#[derive(Debug, Default)]
pub(super) struct KillSet {
    pub(super) newest_first: Vec<Arc<Kill>>,
    all: Option<Arc<Kill>>,
    by_spiffe_id: HashMap<String, Arc<Kill>>,
    by_task: HashMap<String, Arc<Kill>>,
}

impl KillSet {
    pub(super) fn new(mut kills: Vec<Arc<Kill>>) -> KillSet {
        // Newest first for the API; the id breaks ties because UUIDv7s are time-ordered.
        kills.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
        let mut set = KillSet::default();
        for kill in &kills {
            match &kill.target {
                KillTarget::SpiffeId(id) => {
                    set.by_spiffe_id
                        .insert(id.as_str().to_owned(), kill.clone());
                }
                KillTarget::Task(task) => {
                    set.by_task.insert(task.as_str().to_owned(), kill.clone());
                }
                KillTarget::All => set.all = Some(kill.clone()),
            }
        }
        set.newest_first = kills;
        set
    }

    /// The kill on exactly this target.
    pub(super) fn find(&self, target: &KillTarget) -> Option<&Arc<Kill>> {
        match target {
            KillTarget::SpiffeId(id) => self.by_spiffe_id.get(id.as_str()),
            KillTarget::Task(task) => self.by_task.get(task.as_str()),
            KillTarget::All => self.all.as_ref(),
        }
    }

    /// The kill that stops this caller, the broadest first (all, then SPIFFE ID, then task).
    pub(super) fn covering(
        &self,
        spiffe_id: Option<&str>,
        task: Option<&str>,
    ) -> Option<&Arc<Kill>> {
        if let Some(kill) = &self.all {
            return Some(kill);
        }
        if let Some(kill) = spiffe_id.and_then(|id| self.by_spiffe_id.get(id)) {
            return Some(kill);
        }
        task.and_then(|task| self.by_task.get(task))
    }
}
