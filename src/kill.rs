//! The kill switch (SPEC §7): `POST /v1/kill` denies everything a SPIFFE ID, a task or every
//! caller sends, from the very next request on, until `DELETE /v1/kill/…` lifts it.
//!
//! This module owns the set of kills, its persistence in `admin.kill_file`, and the JSON the
//! admin API answers for `/v1/kill`. It does not own enforcement: the authorize stage calls
//! [`KillSwitch::check`] for every request (keep-alive and HTTP/2 connections included, because
//! the check is per request, not per connection); tunnels, which carry no requests tollgate can
//! see, [`subscribe`](KillSwitch::subscribe) and re-check on every change; the credential cache
//! drops what [`KillTarget::matches`]; the metrics module publishes [`KillSwitch::active`] as
//! `tollgate_kills_active`.
//!
//! Why the shape:
//! - Reads are lock-free and allocate nothing: the set is an immutable `KillSet` behind an
//!   [`ArcSwap`], indexed by SPIFFE ID and by task, and replaced whole by writers.
//! - Writers serialize on one mutex that also guards the file, and persist *before* they
//!   publish: a kill that answered 201 survives a restart, and a kill whose write failed was
//!   never in force (the caller gets a 500 and knows to retry), so memory and disk never
//!   disagree.
//! - Kills live outside the policy, so a policy reload cannot lift one.
//! - At start-up an unreadable or corrupt kill file is an error, not an empty set: silently
//!   lifting kills because a file was damaged is the one failure a kill switch must not have.
//!
//! ```
//! use tollgate::kill::{KillSwitch, KillTarget};
//!
//! let switch = KillSwitch::open(None)?;
//! let mut changes = switch.subscribe();
//! switch.kill(KillTarget::Task("t-42".into()), Some("runaway loop".into()))?;
//! assert!(changes.has_changed()?); // a tunnel wakes up here and re-checks
//! assert!(switch.check(Some("spiffe://example.org/agent"), Some("t-42")).is_some());
//! assert!(switch.check(Some("spiffe://example.org/agent"), Some("t-43")).is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::StatusCode;
use serde::de::Error as _;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::identity::{SpiffeId, SpiffeIdError};

/// The only kill-file format this version reads and writes.
const FILE_VERSION: u64 = 1;
/// Same limit as `X-Agent-Task` (SPEC §3.2): a kill names a task exactly as agents send it.
const MAX_TASK_LEN: usize = 128;
/// A reason is for the audit trail, not a document; bounded so the file and logs stay small.
const MAX_REASON_LEN: usize = 1024;

/// Who a kill applies to; the JSON form is `{"spiffe_id": …}`, `{"task": …}` or `{"all": true}`.
///
/// Constructing one does not validate it; [`KillSwitch::kill`] and [`KillSwitch::lift`] do, so
/// an invalid target can never be in force.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KillTarget {
    /// One caller, by exact SPIFFE ID (the identity the proxy established, SPEC §3.1).
    SpiffeId(String),
    /// Every call that declares this task (`X-Agent-Task`), whoever makes it.
    Task(String),
    /// Every caller, unauthenticated ones included: the big red button.
    All,
}

impl KillTarget {
    /// Whether this target covers a caller; shared by [`KillSwitch::check`] and the credential
    /// cache, so "killed" and "credentials dropped" can never disagree.
    pub fn matches(&self, spiffe_id: Option<&str>, task: Option<&str>) -> bool {
        match self {
            KillTarget::SpiffeId(id) => spiffe_id == Some(id.as_str()),
            KillTarget::Task(t) => task == Some(t.as_str()),
            KillTarget::All => true,
        }
    }

    /// Checks the target against the rules the admin API promises (400 otherwise).
    fn validate(&self) -> Result<(), KillError> {
        match self {
            KillTarget::SpiffeId(id) => SpiffeId::parse(id)
                .map(drop)
                .map_err(KillError::InvalidSpiffeId),
            KillTarget::Task(task) => {
                if is_valid_task(task) {
                    Ok(())
                } else {
                    Err(KillError::InvalidTask)
                }
            }
            KillTarget::All => Ok(()),
        }
    }

    /// Builds a target from the three optional JSON fields, insisting on exactly one.
    fn from_fields(
        spiffe_id: Option<String>,
        task: Option<String>,
        all: Option<bool>,
    ) -> Result<KillTarget, KillError> {
        let target = match (spiffe_id, task, all) {
            (None, None, None) => return Err(KillError::NoTarget),
            (Some(id), None, None) => KillTarget::SpiffeId(id),
            (None, Some(task), None) => KillTarget::Task(task),
            (None, None, Some(true)) => KillTarget::All,
            (None, None, Some(false)) => return Err(KillError::AllNotTrue),
            _ => return Err(KillError::TwoTargets),
        };
        target.validate()?;
        Ok(target)
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
            KillTarget::SpiffeId(id) => map.serialize_entry("spiffe_id", id)?,
            KillTarget::Task(task) => map.serialize_entry("task", task)?,
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

impl Kill {
    /// The admin API's JSON for one kill:
    /// `{"id", "target": {…}, "created": "RFC 3339", "reason": … | null}`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "target": self.target,
            "created": rfc3339(self.created),
            "reason": self.reason,
        })
    }
}

impl fmt::Display for Kill {
    /// `kill <id> (<target>)`: short enough for a deny reason or a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kill {} ({})", self.id, self.target)
    }
}

impl Serialize for Kill {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Kill", 4)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("target", &self.target)?;
        s.serialize_field("created", &rfc3339(self.created))?;
        s.serialize_field("reason", &self.reason)?;
        s.end()
    }
}

/// What [`KillSwitch::lift`] removes: one kill by its id, or the kill on a target.
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

/// Why a kill, a lift or the kill file was refused; each variant is one rule, and
/// [`status`](KillError::status) says whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillError {
    /// The request body is empty.
    #[error(
        "the body is empty: send {{\"spiffe_id\": \"spiffe://…\"}}, {{\"task\": \"…\"}} or {{\"all\": true}}"
    )]
    EmptyBody,
    /// The request body is not JSON of the right shape (serde's message, with line and column).
    #[error("the body is not a valid kill: {0}")]
    Json(String),
    /// None of `spiffe_id`, `task`, `all` was given.
    #[error("name exactly one target: \"spiffe_id\", \"task\" or \"all\"")]
    NoTarget,
    /// More than one of `spiffe_id`, `task`, `all` was given: ambiguous, so refused.
    #[error("name exactly one target: \"spiffe_id\", \"task\" and \"all\" are exclusive")]
    TwoTargets,
    /// `{"all": false}` means nothing; refusing it beats guessing.
    #[error("\"all\" must be true (to lift the kill on everyone, DELETE /v1/kill/all)")]
    AllNotTrue,
    /// The `spiffe_id` target is not a SPIFFE ID.
    #[error("spiffe_id is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(SpiffeIdError),
    /// The `task` target breaks the `X-Agent-Task` rules (SPEC §3.2).
    #[error("task must be 1 to 128 characters from A-Z a-z 0-9 . _ : / -")]
    InvalidTask,
    /// The reason is too long or holds control characters.
    #[error("reason must be at most 1024 bytes without control characters")]
    InvalidReason,
    /// A `DELETE /v1/kill/…` path that names no kill.
    #[error(
        "DELETE /v1/kill{0}: expected /{{kill-id}}, /all, /task/{{task}} or /spiffe_id/{{percent-encoded id}}"
    )]
    BadPath(String),
    /// A `DELETE` that names its kill both in the path and in the body.
    #[error("name the kill to lift either in the path or in the body, not both")]
    PathAndBody,
    /// The kill file exists but cannot be read (or its folder cannot be written).
    #[error("cannot use the kill file {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    /// The kill file is not a valid kill file; tollgate will not start rather than lift kills.
    #[error(
        "the kill file {} is not a valid kill file: {message} (fix it, or delete it to lift every kill)",
        path.display()
    )]
    Corrupt { path: PathBuf, message: String },
    /// Writing the kill file failed; the change was not made.
    #[error("cannot persist the kill file {}: {message}", path.display())]
    Persist { path: PathBuf, message: String },
}

impl KillError {
    /// The admin API's status: 400 for what the operator sent, 500 for our own files.
    pub fn status(&self) -> StatusCode {
        match self {
            KillError::EmptyBody
            | KillError::Json(_)
            | KillError::NoTarget
            | KillError::TwoTargets
            | KillError::AllNotTrue
            | KillError::InvalidSpiffeId(_)
            | KillError::InvalidTask
            | KillError::InvalidReason
            | KillError::BadPath(_)
            | KillError::PathAndBody => StatusCode::BAD_REQUEST,
            KillError::Read { .. } | KillError::Corrupt { .. } | KillError::Persist { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The admin API's `error` field, in step with [`status`](KillError::status).
    pub fn code(&self) -> &'static str {
        if self.status() == StatusCode::BAD_REQUEST {
            "bad_request"
        } else {
            "internal_error"
        }
    }

    /// The admin API's answer for this error: `{"error": code, "message": …}`.
    pub fn to_response(&self) -> (StatusCode, Value) {
        (
            self.status(),
            json!({"error": self.code(), "message": self.to_string()}),
        )
    }
}

/// The kills in force: an immutable snapshot, indexed for the per-request check.
///
/// Invariant (kept by the writers and by the loader): at most one kill per target, ids unique.
#[derive(Debug, Default)]
struct KillSet {
    newest_first: Vec<Arc<Kill>>,
    all: Option<Arc<Kill>>,
    by_spiffe_id: HashMap<String, Arc<Kill>>,
    by_task: HashMap<String, Arc<Kill>>,
}

impl KillSet {
    fn new(mut kills: Vec<Arc<Kill>>) -> KillSet {
        // Newest first for the API; the id breaks ties because UUIDv7s are time-ordered.
        kills.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
        let mut set = KillSet::default();
        for kill in &kills {
            match &kill.target {
                KillTarget::SpiffeId(id) => {
                    set.by_spiffe_id.insert(id.clone(), kill.clone());
                }
                KillTarget::Task(task) => {
                    set.by_task.insert(task.clone(), kill.clone());
                }
                KillTarget::All => set.all = Some(kill.clone()),
            }
        }
        set.newest_first = kills;
        set
    }

    fn find(&self, target: &KillTarget) -> Option<&Arc<Kill>> {
        match target {
            KillTarget::SpiffeId(id) => self.by_spiffe_id.get(id.as_str()),
            KillTarget::Task(task) => self.by_task.get(task.as_str()),
            KillTarget::All => self.all.as_ref(),
        }
    }
}

/// The kill switch: the kills in force, their file, and a change signal for tunnels.
///
/// Shared as `Arc<KillSwitch>` between the request path (readers) and the admin API
/// (writers); it lives outside the policy revision, so a policy reload does not lift kills.
pub struct KillSwitch {
    set: ArcSwap<KillSet>,
    /// Serializes writers and their file writes; readers never take it.
    writer: Mutex<()>,
    file: Option<PathBuf>,
    changes: watch::Sender<u64>,
}

impl fmt::Debug for KillSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillSwitch")
            .field("file", &self.file)
            .field("active", &self.active())
            .finish()
    }
}

impl KillSwitch {
    /// Starts the kill switch, loading the kills persisted in `file` (`admin.kill_file`).
    ///
    /// No file configured: kills live in memory only. A configured file that does not exist
    /// yet: no kills. A file that cannot be read or parsed, or a folder tollgate cannot write
    /// in, is an error naming the file: better to refuse to start than to lift kills silently
    /// or to discover during an incident that a kill cannot be saved.
    pub fn open(file: Option<PathBuf>) -> Result<KillSwitch, KillError> {
        let kills = match &file {
            None => Vec::new(),
            Some(path) => {
                let kills = load(path)?;
                probe_writable(path)?;
                kills
            }
        };
        if !kills.is_empty() {
            tracing::warn!(
                kills = kills.len(),
                "kill switch: kills loaded from the kill file are in force"
            );
        }
        let (changes, _) = watch::channel(0);
        Ok(KillSwitch {
            set: ArcSwap::from_pointee(KillSet::new(kills)),
            writer: Mutex::new(()),
            file,
            changes,
        })
    }

    /// The hot path: the kill that stops this caller, if any.
    ///
    /// Lock-free and allocation-free (one atomic load, at most two hash lookups). `spiffe_id`
    /// is the identity the proxy established (SPEC §3.1, `None` when unauthenticated); `task`
    /// is the `X-Agent-Task` value. When several kills match, the broadest wins (all, then
    /// SPIFFE ID, then task), so the answer does not depend on the order kills were made in.
    pub fn check(&self, spiffe_id: Option<&str>, task: Option<&str>) -> Option<Arc<Kill>> {
        let set = self.set.load();
        if let Some(kill) = &set.all {
            return Some(kill.clone());
        }
        if let Some(kill) = spiffe_id.and_then(|id| set.by_spiffe_id.get(id)) {
            return Some(kill.clone());
        }
        task.and_then(|task| set.by_task.get(task)).cloned()
    }

    /// Engages a kill; returns it, or the kill already in force on the same target
    /// (idempotent: a retried `POST` does not pile up kills, and keeps the first reason).
    ///
    /// The file is written (temp file, fsync, rename) before the kill is published; if the
    /// write fails nothing changes and the error says so. Blocks on that write: call it from
    /// `spawn_blocking` if a few milliseconds on an async worker matter.
    pub fn kill(&self, target: KillTarget, reason: Option<String>) -> Result<Arc<Kill>, KillError> {
        self.kill_or_existing(target, reason).map(|(kill, _)| kill)
    }

    /// [`kill`](KillSwitch::kill), also telling whether the kill is new (201) or existed (200).
    fn kill_or_existing(
        &self,
        target: KillTarget,
        reason: Option<String>,
    ) -> Result<(Arc<Kill>, bool), KillError> {
        target.validate()?;
        validate_reason(reason.as_deref())?;
        let _writer = self.lock_writer();
        let current = self.set.load_full();
        if let Some(existing) = current.find(&target) {
            return Ok((existing.clone(), false));
        }
        let kill = Arc::new(Kill {
            id: uuid::Uuid::now_v7().hyphenated().to_string(),
            target,
            created: now_millis(),
            reason,
        });
        let mut kills = current.newest_first.clone();
        kills.push(kill.clone());
        self.publish(kills)?;
        tracing::warn!(
            kill_id = %kill.id,
            target = %kill.target,
            reason = kill.reason.as_deref().unwrap_or(""),
            "kill switch engaged"
        );
        Ok((kill, true))
    }

    /// Lifts the kill with this id or on this target; returns what was lifted (empty when
    /// nothing matched, which changes nothing and writes nothing).
    ///
    /// Persists before publishing, as [`kill`](KillSwitch::kill) does: a lift whose write
    /// failed leaves the kill in force.
    pub fn lift(&self, by: LiftBy) -> Result<Vec<Arc<Kill>>, KillError> {
        self.lift_with_reason(by, None)
    }

    /// [`lift`](KillSwitch::lift), with the operator's reason for the log line.
    fn lift_with_reason(
        &self,
        by: LiftBy,
        reason: Option<String>,
    ) -> Result<Vec<Arc<Kill>>, KillError> {
        // Validate a target first: an invalid one gets a precise 400 rather than a puzzling 404.
        let by = match by {
            LiftBy::Target(target) => {
                target.validate()?;
                LiftBy::Target(target)
            }
            LiftBy::Id(id) => LiftBy::Id(normalize_id(&id)),
        };
        validate_reason(reason.as_deref())?;
        let _writer = self.lock_writer();
        let current = self.set.load_full();
        let (lifted, kept): (Vec<_>, Vec<_>) =
            current
                .newest_first
                .iter()
                .cloned()
                .partition(|kill| match &by {
                    LiftBy::Id(id) => kill.id == *id,
                    LiftBy::Target(target) => kill.target == *target,
                });
        if lifted.is_empty() {
            return Ok(lifted);
        }
        self.publish(kept)?;
        for kill in &lifted {
            tracing::warn!(
                kill_id = %kill.id,
                target = %kill.target,
                reason = reason.as_deref().unwrap_or(""),
                "kill lifted"
            );
        }
        Ok(lifted)
    }

    /// Every kill in force, newest first (what `GET /v1/kill` lists).
    pub fn list(&self) -> Vec<Arc<Kill>> {
        self.set.load().newest_first.clone()
    }

    /// How many kills are in force: the value of the `tollgate_kills_active` gauge.
    pub fn active(&self) -> usize {
        self.set.load().newest_first.len()
    }

    /// A receiver whose value is bumped after every kill or lift that changed the set, so a
    /// long-lived tunnel (which tollgate cannot check per request) can wait on `changed()`,
    /// re-run [`check`](KillSwitch::check) and close itself when its caller was killed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// `POST /v1/kill`: 201 `{"kill": …}` for a new kill, 200 when the target was already
    /// killed, 400 for a bad body, 500 when the kill file cannot be written.
    pub fn handle_post(&self, body: &[u8]) -> (StatusCode, Value) {
        let result =
            parse_body(body).and_then(|(target, reason)| self.kill_or_existing(target, reason));
        match result {
            Ok((kill, created)) => {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                (status, json!({"kill": kill.to_json()}))
            }
            Err(e) => e.to_response(),
        }
    }

    /// `GET /v1/kill`: 200 `{"kills": […]}`, newest first.
    pub fn handle_list(&self) -> (StatusCode, Value) {
        let kills: Vec<Value> = self.list().iter().map(|kill| kill.to_json()).collect();
        (StatusCode::OK, json!({"kills": kills}))
    }

    /// `DELETE /v1/kill…`, where `rest` is the request path after `/v1/kill` (no query):
    /// `/{kill-id}`, `/all`, `/task/{task}`, `/spiffe_id/{percent-encoded id}`, or `""` with
    /// the same JSON body as `POST`. 200 `{"lifted": […]}`; 404 when no kill matched; 400 for
    /// a bad path or body; 500 when the kill file cannot be written.
    pub fn handle_delete(&self, rest: &str, body: &[u8]) -> (StatusCode, Value) {
        if !rest.is_empty() && !rest.starts_with('/') {
            // `/v1/killfoo` is not this route at all.
            return (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": format!("no admin route /v1/kill{rest}")}),
            );
        }
        let (by, reason) = match parse_lift(rest, body) {
            Ok(parsed) => parsed,
            Err(e) => return e.to_response(),
        };
        match self.lift_with_reason(by.clone(), reason) {
            Ok(lifted) if lifted.is_empty() => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": format!("no kill in force matches {by}")}),
            ),
            Ok(lifted) => {
                let lifted: Vec<Value> = lifted.iter().map(|kill| kill.to_json()).collect();
                (StatusCode::OK, json!({"lifted": lifted}))
            }
            Err(e) => e.to_response(),
        }
    }

    /// Takes the writer lock. A writer that panicked left the published set intact (it is
    /// only ever replaced whole), so a poisoned lock is safe to reuse.
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `kills` to the file (if any), then makes them the set in force and wakes the
    /// subscribers — in that order, so nothing is published that is not on disk. Called with
    /// the writer lock held.
    fn publish(&self, kills: Vec<Arc<Kill>>) -> Result<(), KillError> {
        let set = KillSet::new(kills);
        if let Some(path) = &self.file {
            save(path, &set.newest_first)?;
        }
        self.set.store(Arc::new(set));
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// The body of `POST /v1/kill` (and of `DELETE /v1/kill`): one target, an optional reason.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    #[serde(default)]
    spiffe_id: Option<String>,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    all: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
}

/// The target (validated) and reason (checked later by `kill`/`lift`) of a `POST` or of a
/// `DELETE /v1/kill` with a body.
fn parse_body(body: &[u8]) -> Result<(KillTarget, Option<String>), KillError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(KillError::EmptyBody);
    }
    // Parsed as a value first: a derived struct would also take a JSON array (`[]` is then
    // "no target" rather than "not an object"), and syntax errors keep their line and column.
    let value: Value = serde_json::from_slice(body).map_err(|e| KillError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(KillError::Json("expected a JSON object".into()));
    }
    let body: KillBody =
        serde_json::from_value(value).map_err(|e| KillError::Json(e.to_string()))?;
    let target = KillTarget::from_fields(body.spiffe_id, body.task, body.all)?;
    Ok((target, body.reason))
}

/// What a `DELETE` names, from its path or (for bare `/v1/kill`) its body, and the reason the
/// body may carry.
fn parse_lift(rest: &str, body: &[u8]) -> Result<(LiftBy, Option<String>), KillError> {
    if rest.is_empty() || rest == "/" {
        return parse_body(body).map(|(target, reason)| (LiftBy::Target(target), reason));
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        return Err(KillError::PathAndBody);
    }
    let path = rest.strip_prefix('/').unwrap_or(rest);
    let decode = |encoded: &str| {
        percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| KillError::BadPath(rest.to_owned()))
    };
    let by = if path == "all" {
        LiftBy::Target(KillTarget::All)
    } else if let Some(task) = path.strip_prefix("task/") {
        LiftBy::Target(KillTarget::Task(decode(task)?))
    } else if let Some(id) = path.strip_prefix("spiffe_id/") {
        LiftBy::Target(KillTarget::SpiffeId(decode(id)?))
    } else if path == "task" || path == "spiffe_id" {
        return Err(KillError::BadPath(rest.to_owned()));
    } else {
        LiftBy::Id(decode(path)?)
    };
    Ok((by, None))
}

fn is_valid_task(task: &str) -> bool {
    (1..=MAX_TASK_LEN).contains(&task.len())
        && task
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

fn validate_reason(reason: Option<&str>) -> Result<(), KillError> {
    match reason {
        Some(r) if r.len() > MAX_REASON_LEN || r.chars().any(char::is_control) => {
            Err(KillError::InvalidReason)
        }
        _ => Ok(()),
    }
}

/// Kill ids compare in their canonical spelling, so `DELETE` accepts any UUID form.
fn normalize_id(id: &str) -> String {
    uuid::Uuid::try_parse(id)
        .map(|u| u.hyphenated().to_string())
        .unwrap_or_else(|_| id.to_owned())
}

/// Now, cut to whole milliseconds: the file stores milliseconds, and a kill read back must
/// equal the kill written.
fn now_millis() -> SystemTime {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH + Duration::new(since.as_secs(), since.subsec_millis() * 1_000_000)
}

/// RFC 3339 with milliseconds, as the policy input writes times. humantime's `Display` fails
/// for times it cannot write (before 1970, after 9999); those cannot come from `now()` or the
/// file's parser, but a fallback beats a panic.
fn rfc3339(time: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if time < UNIX_EPOCH || write!(out, "{}", humantime::format_rfc3339_millis(time)).is_err() {
        return "1970-01-01T00:00:00.000Z".to_owned();
    }
    out
}

/// The kill file as written: `{"version": 1, "kills": [kill, …]}`.
#[derive(Serialize)]
struct FileOut<'a> {
    version: u64,
    kills: Vec<&'a Kill>,
}

/// Read first on its own, so a future format gets "unsupported version" rather than a
/// confusing complaint about its fields.
#[derive(Deserialize)]
struct FileVersion {
    version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[allow(dead_code)] // checked through FileVersion first
    version: u64,
    kills: Vec<KillIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillIn {
    id: String,
    target: KillTarget,
    created: String,
    #[serde(default)]
    reason: Option<String>,
}

fn load(path: &Path) -> Result<Vec<Arc<Kill>>, KillError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(KillError::Read {
                path: path.to_path_buf(),
                message: e.to_string(),
            });
        }
    };
    let corrupt = |message: String| KillError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // tollgate never writes an empty file (it renames a complete one into place), so an
        // empty one is damage or a hand edit; refuse it like any other corrupt file.
        return Err(corrupt("the file is empty".into()));
    }
    let version: FileVersion =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    match version.version {
        Some(FILE_VERSION) => {}
        Some(other) => {
            return Err(corrupt(format!(
                "version {other} is not supported (this tollgate reads version {FILE_VERSION})"
            )));
        }
        None => return Err(corrupt("missing field `version`".into())),
    }
    let file: FileIn = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut kills: Vec<Arc<Kill>> = Vec::with_capacity(file.kills.len());
    for (index, raw) in file.kills.into_iter().enumerate() {
        let id = uuid::Uuid::try_parse(&raw.id)
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| corrupt(format!("kills[{index}].id is not a UUID")))?;
        let created = humantime::parse_rfc3339(&raw.created).map_err(|e| {
            corrupt(format!(
                "kills[{index}].created is not an RFC 3339 UTC time: {e}"
            ))
        })?;
        validate_reason(raw.reason.as_deref())
            .map_err(|e| corrupt(format!("kills[{index}].reason: {e}")))?;
        if let Some(other) = kills.iter().find(|k| k.id == id || k.target == raw.target) {
            return Err(corrupt(format!(
                "kills[{index}] repeats the id or target of {other}"
            )));
        }
        kills.push(Arc::new(Kill {
            id,
            target: raw.target,
            created,
            reason: raw.reason,
        }));
    }
    Ok(kills)
}

/// The folder the kill file lives in (`.` for a bare file name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A temporary name next to the kill file, so the final rename stays on one file system.
fn temp_name(path: &Path, purpose: &str) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("kills");
    folder(path).join(format!(
        ".{name}.{purpose}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Creates a private (0600) file that did not exist, for the temp file and the probe.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Proves at start-up that the folder takes new files (a read-only mount is the usual trap),
/// so a kill is not the first write to find out.
fn probe_writable(path: &Path) -> Result<(), KillError> {
    let probe = temp_name(path, "probe");
    create_private(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| KillError::Read {
            path: path.to_path_buf(),
            message: format!("cannot create files in {}: {e}", folder(path).display()),
        })
}

/// Writes the kill file atomically: a complete 0600 temp file, fsynced, renamed over the old
/// one, then the folder fsynced; a crash leaves the old file or the new one, never half.
fn save(path: &Path, kills: &[Arc<Kill>]) -> Result<(), KillError> {
    let persist = |message: String| KillError::Persist {
        path: path.to_path_buf(),
        message,
    };
    let file = FileOut {
        version: FILE_VERSION,
        kills: kills.iter().map(|kill| kill.as_ref()).collect(),
    };
    let mut text = serde_json::to_string_pretty(&file).map_err(|e| persist(e.to_string()))?;
    text.push('\n');
    let tmp = temp_name(path, "new");
    let written = create_private(&tmp).and_then(|mut out| {
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(persist(e.to_string()));
    }
    // The rename is done: the new file is what a restart reads, unless the machine loses power
    // before the folder's entry reaches the disk. Failing now would make memory disagree with
    // the file, so a failed folder fsync is only logged.
    #[cfg(unix)]
    if let Err(e) = std::fs::File::open(folder(path)).and_then(|dir| dir.sync_all()) {
        tracing::warn!(file = %path.display(), error = %e, "kill file: cannot fsync its folder");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "spiffe://example.org/ns/agents/sa/triage";
    const OTHER: &str = "spiffe://example.org/ns/agents/sa/other";

    fn memory() -> KillSwitch {
        KillSwitch::open(None).unwrap()
    }

    fn task(t: &str) -> KillTarget {
        KillTarget::Task(t.to_owned())
    }

    fn spiffe(id: &str) -> KillTarget {
        KillTarget::SpiffeId(id.to_owned())
    }

    fn message(body: &Value) -> &str {
        body["message"].as_str().unwrap_or_default()
    }

    // --- check() ---

    #[test]
    fn accepts_callers_when_nothing_is_killed() {
        let switch = memory();
        assert!(switch.check(Some(AGENT), Some("t-1")).is_none());
        assert!(switch.check(None, None).is_none());
        assert_eq!(switch.active(), 0);
    }

    #[test]
    fn rejects_killed_spiffe_id_and_only_it() {
        let switch = memory();
        let kill = switch.kill(spiffe(AGENT), None).unwrap();
        assert_eq!(switch.check(Some(AGENT), None), Some(kill.clone()));
        assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(kill));
        assert!(switch.check(Some(OTHER), None).is_none());
        assert!(switch.check(None, None).is_none());
        // A task that happens to equal the ID is not the ID.
        assert!(switch.check(None, Some(AGENT)).is_none());
        // Exact match: a prefix or a longer path is a different workload.
        assert!(
            switch
                .check(Some("spiffe://example.org/ns/agents/sa"), None)
                .is_none()
        );
        assert!(switch.check(Some(&format!("{AGENT}/x")), None).is_none());
    }

    #[test]
    fn rejects_killed_task_from_any_caller() {
        let switch = memory();
        let kill = switch.kill(task("t-42"), None).unwrap();
        assert_eq!(switch.check(Some(AGENT), Some("t-42")), Some(kill.clone()));
        assert_eq!(switch.check(None, Some("t-42")), Some(kill));
        assert!(switch.check(Some(AGENT), Some("t-43")).is_none());
        assert!(switch.check(Some(AGENT), Some("t-4")).is_none());
        assert!(switch.check(Some(AGENT), None).is_none());
    }

    #[test]
    fn rejects_everyone_including_unauthenticated_when_all_is_killed() {
        let switch = memory();
        let kill = switch
            .kill(KillTarget::All, Some("incident".into()))
            .unwrap();
        assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(kill.clone()));
        assert_eq!(switch.check(None, None), Some(kill));
    }

    #[test]
    fn rejects_with_broadest_kill_when_several_match() {
        let switch = memory();
        let by_task = switch.kill(task("t-1"), None).unwrap();
        let by_id = switch.kill(spiffe(AGENT), None).unwrap();
        assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(by_id));
        assert_eq!(switch.check(Some(OTHER), Some("t-1")), Some(by_task));
        let all = switch.kill(KillTarget::All, None).unwrap();
        assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(all));
    }

    #[test]
    fn accepts_target_matches_in_step_with_check() {
        assert!(spiffe(AGENT).matches(Some(AGENT), None));
        assert!(!spiffe(AGENT).matches(None, Some(AGENT)));
        assert!(task("t").matches(None, Some("t")));
        assert!(!task("t").matches(Some("t"), None));
        assert!(KillTarget::All.matches(None, None));
    }

    // --- kill() ---

    #[test]
    fn accepts_same_target_twice_as_one_kill() {
        let switch = memory();
        let first = switch.kill(task("t-1"), Some("first".into())).unwrap();
        let second = switch.kill(task("t-1"), Some("second".into())).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(second.reason.as_deref(), Some("first"));
        assert_eq!(switch.active(), 1);
    }

    #[test]
    fn accepts_kill_with_uuid_v7_id_and_millisecond_time() {
        let switch = memory();
        let kill = switch.kill(task("t-1"), None).unwrap();
        let id = uuid::Uuid::parse_str(&kill.id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let since = kill.created.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(since.subsec_nanos() % 1_000_000, 0);
    }

    #[test]
    fn rejects_invalid_targets_and_reasons() {
        let switch = memory();
        assert_eq!(
            switch.kill(spiffe("https://example.org/agent"), None),
            Err(KillError::InvalidSpiffeId(SpiffeIdError::WrongScheme))
        );
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(
            switch.kill(spiffe(&long), None),
            Err(KillError::InvalidSpiffeId(SpiffeIdError::TooLong))
        );
        assert_eq!(switch.kill(task(""), None), Err(KillError::InvalidTask));
        assert_eq!(switch.kill(task("t 1"), None), Err(KillError::InvalidTask));
        assert_eq!(switch.kill(task("t%2F"), None), Err(KillError::InvalidTask));
        assert_eq!(
            switch.kill(task(&"a".repeat(129)), None),
            Err(KillError::InvalidTask)
        );
        assert_eq!(
            switch.kill(task("t-1"), Some("line\nbreak".into())),
            Err(KillError::InvalidReason)
        );
        assert_eq!(
            switch.kill(task("t-1"), Some("x".repeat(1025))),
            Err(KillError::InvalidReason)
        );
        assert_eq!(switch.active(), 0);
    }

    #[test]
    fn accepts_task_with_full_charset_and_max_length() {
        let switch = memory();
        assert!(switch.kill(task("Az09._:/-"), None).is_ok());
        assert!(switch.kill(task(&"a".repeat(128)), None).is_ok());
    }

    // --- lift() ---

    #[test]
    fn accepts_lift_by_id() {
        let switch = memory();
        let kill = switch.kill(task("t-1"), None).unwrap();
        let keep = switch.kill(task("t-2"), None).unwrap();
        let lifted = switch.lift(LiftBy::Id(kill.id.clone())).unwrap();
        assert_eq!(lifted, vec![kill]);
        assert!(switch.check(None, Some("t-1")).is_none());
        assert_eq!(switch.check(None, Some("t-2")), Some(keep));
    }

    #[test]
    fn accepts_lift_by_id_in_any_uuid_spelling() {
        let switch = memory();
        let kill = switch.kill(task("t-1"), None).unwrap();
        let upper = kill.id.to_uppercase();
        assert_eq!(switch.lift(LiftBy::Id(upper)).unwrap(), vec![kill]);
    }

    #[test]
    fn accepts_lift_by_target() {
        let switch = memory();
        let kill = switch.kill(spiffe(AGENT), None).unwrap();
        assert_eq!(
            switch.lift(LiftBy::Target(spiffe(AGENT))).unwrap(),
            vec![kill]
        );
        assert!(switch.check(Some(AGENT), None).is_none());
    }

    #[test]
    fn accepts_lift_of_all_leaving_narrower_kills() {
        let switch = memory();
        let all = switch.kill(KillTarget::All, None).unwrap();
        let by_task = switch.kill(task("t-1"), None).unwrap();
        assert_eq!(
            switch.lift(LiftBy::Target(KillTarget::All)).unwrap(),
            vec![all]
        );
        assert!(switch.check(Some(AGENT), None).is_none());
        assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(by_task));
    }

    #[test]
    fn accepts_lift_that_matches_nothing_as_empty() {
        let switch = memory();
        switch.kill(task("t-1"), None).unwrap();
        let changes = switch.subscribe();
        assert!(switch.lift(LiftBy::Id("nope".into())).unwrap().is_empty());
        assert!(switch.lift(LiftBy::Target(task("t-2"))).unwrap().is_empty());
        assert!(!changes.has_changed().unwrap());
        assert_eq!(*changes.borrow(), 1);
        assert_eq!(switch.active(), 1);
    }

    #[test]
    fn rejects_lift_of_invalid_target() {
        let switch = memory();
        assert_eq!(
            switch.lift(LiftBy::Target(task("bad task"))),
            Err(KillError::InvalidTask)
        );
    }

    #[test]
    fn accepts_list_newest_first() {
        let switch = memory();
        let a = switch.kill(task("a"), None).unwrap();
        let b = switch.kill(task("b"), None).unwrap();
        let c = switch.kill(task("c"), None).unwrap();
        assert_eq!(switch.list(), vec![c, b, a]);
    }

    // --- subscribe() ---

    #[test]
    fn accepts_subscriber_seeing_each_kill_and_lift() {
        let switch = memory();
        let mut changes = switch.subscribe();
        assert!(!changes.has_changed().unwrap());
        let kill = switch.kill(task("t-1"), None).unwrap();
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 1);
        // The tunnel re-checks after the bump and sees the kill.
        assert!(switch.check(None, Some("t-1")).is_some());
        // Idempotent kill: nothing changed, no bump.
        switch.kill(task("t-1"), None).unwrap();
        assert!(!changes.has_changed().unwrap());
        switch.lift(LiftBy::Id(kill.id.clone())).unwrap();
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 2);
    }

    #[tokio::test]
    async fn accepts_tunnel_waking_on_kill() {
        let switch = Arc::new(memory());
        let mut changes = switch.subscribe();
        let waiter = {
            let switch = switch.clone();
            tokio::spawn(async move {
                loop {
                    changes.changed().await.unwrap();
                    if let Some(kill) = switch.check(Some(AGENT), None) {
                        return kill;
                    }
                }
            })
        };
        switch.kill(task("unrelated"), None).unwrap();
        let kill = switch.kill(spiffe(AGENT), None).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, kill);
    }

    // --- persistence ---

    #[test]
    fn accepts_kills_surviving_a_restart_and_lifts_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kills.json");
        let (by_id, by_task, all) = {
            let switch = KillSwitch::open(Some(path.clone())).unwrap();
            (
                switch
                    .kill(spiffe(AGENT), Some("leaked token".into()))
                    .unwrap(),
                switch.kill(task("t-9"), None).unwrap(),
                switch.kill(KillTarget::All, None).unwrap(),
            )
        };
        let reopened = KillSwitch::open(Some(path.clone())).unwrap();
        assert_eq!(
            reopened.list(),
            vec![all.clone(), by_task.clone(), by_id.clone()]
        );
        assert_eq!(reopened.check(None, None), Some(all.clone()));
        reopened.lift(LiftBy::Target(KillTarget::All)).unwrap();
        reopened.lift(LiftBy::Id(by_task.id.clone())).unwrap();
        drop(reopened);

        let again = KillSwitch::open(Some(path.clone())).unwrap();
        assert_eq!(again.list(), vec![by_id.clone()]);
        assert_eq!(again.check(Some(AGENT), None), Some(by_id));
        assert!(again.check(None, Some("t-9")).is_none());
        assert!(again.check(None, None).is_none());
    }

    #[test]
    fn accepts_missing_file_as_no_kills_and_writes_it_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kills.json");
        let switch = KillSwitch::open(Some(path.clone())).unwrap();
        assert_eq!(switch.active(), 0);
        assert!(!path.exists(), "open() must not create the file");
        let kill = switch.kill(task("t-1"), None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let file: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            file,
            json!({"version": 1, "kills": [{
                "id": kill.id, "target": {"task": "t-1"},
                "created": rfc3339(kill.created), "reason": null,
            }]})
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temp or probe files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kills.json")]);
    }

    #[test]
    fn accepts_hand_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kills.json");
        std::fs::write(
            &path,
            r#"{"version": 1, "kills": [
                {"id": "{0190C2A4-7B9E-7000-8000-000000000001}", "target": {"task": "t-1"},
                 "created": "2026-11-22T10:00:00Z"}
            ]}"#,
        )
        .unwrap();
        let switch = KillSwitch::open(Some(path)).unwrap();
        let kill = switch.check(None, Some("t-1")).unwrap();
        assert_eq!(kill.id, "0190c2a4-7b9e-7000-8000-000000000001");
        assert_eq!(kill.reason, None);
        assert_eq!(rfc3339(kill.created), "2026-11-22T10:00:00.000Z");
    }

    fn open_error(contents: &str) -> (PathBuf, KillError) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kills.json");
        std::fs::write(&path, contents).unwrap();
        let err = KillSwitch::open(Some(path.clone())).unwrap_err();
        (path, err)
    }

    fn corrupt_message(contents: &str) -> String {
        let (path, err) = open_error(contents);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "error must name the file: {err}"
        );
        match err {
            KillError::Corrupt { message, .. } => message,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn rejects_corrupt_file_naming_it() {
        assert!(corrupt_message(r#"{"version": 1, "kills": ["#).contains("EOF"));
        assert_eq!(corrupt_message(""), "the file is empty");
        assert_eq!(corrupt_message("{}"), "missing field `version`");
        assert!(corrupt_message(r#"{"version": 2, "kills": []}"#).contains("version 2"));
        assert!(
            corrupt_message(r#"{"version": 1, "kills": [], "extra": 1}"#)
                .contains("unknown field `extra`")
        );
    }

    #[test]
    fn rejects_file_with_invalid_kill() {
        let kill = |id: &str, target: &str, created: &str| {
            format!(r#"{{"id": "{id}", "target": {target}, "created": "{created}"}}"#)
        };
        let file =
            |kills: &[String]| format!(r#"{{"version": 1, "kills": [{}]}}"#, kills.join(","));
        let id1 = "0190c2a4-7b9e-7000-8000-000000000001";
        let id2 = "0190c2a4-7b9e-7000-8000-000000000002";
        let when = "2026-11-22T10:00:00Z";
        assert!(
            corrupt_message(&file(&[kill(id1, r#"{"task": "bad task"}"#, when)]))
                .contains("task must be")
        );
        assert!(
            corrupt_message(&file(&[kill(id1, r#"{"spiffe_id": "https://x"}"#, when)]))
                .contains("spiffe://")
        );
        assert!(
            corrupt_message(&file(&[kill(id1, r#"{"task": "a", "all": true}"#, when)]))
                .contains("exclusive")
        );
        assert!(
            corrupt_message(&file(&[kill(id1, r#"["spiffe://example.org/a"]"#, when)]))
                .contains("invalid type: sequence, expected a map")
        );
        assert!(
            corrupt_message(&file(&[kill("k-1", r#"{"all": true}"#, when)])).contains("not a UUID")
        );
        assert!(
            corrupt_message(&file(&[kill(id1, r#"{"all": true}"#, "yesterday")]))
                .contains("RFC 3339")
        );
        assert!(
            corrupt_message(&file(&[
                kill(id1, r#"{"task": "a"}"#, when),
                kill(id2, r#"{"task": "a"}"#, when)
            ]))
            .contains("repeats")
        );
        assert!(
            corrupt_message(&file(&[
                kill(id1, r#"{"task": "a"}"#, when),
                kill(id1, r#"{"task": "b"}"#, when)
            ]))
            .contains("repeats")
        );
    }

    #[test]
    fn rejects_unreadable_file_naming_it() {
        // A folder where the file should be: unreadable even for root.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kills.json");
        std::fs::create_dir(&path).unwrap();
        let err = KillSwitch::open(Some(path.clone())).unwrap_err();
        assert!(matches!(err, KillError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn rejects_file_in_missing_folder_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-folder").join("kills.json");
        let err = KillSwitch::open(Some(path.clone())).unwrap_err();
        assert!(matches!(err, KillError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("cannot create files in"), "{err}");
    }

    #[test]
    fn rejects_kill_and_lift_when_file_cannot_be_written_leaving_state_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kills.json");
        let switch = KillSwitch::open(Some(path.clone())).unwrap();
        let kept = switch.kill(task("t-1"), None).unwrap();
        let changes = switch.subscribe();

        // A non-empty folder in the file's place makes the rename fail, even for root.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("occupied"), "").unwrap();

        let err = switch.kill(task("t-2"), None).unwrap_err();
        assert!(matches!(err, KillError::Persist { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot persist the kill file"));
        assert!(switch.check(None, Some("t-2")).is_none());
        assert_eq!(switch.list(), vec![kept.clone()]);

        let err = switch.lift(LiftBy::Id(kept.id.clone())).unwrap_err();
        assert!(matches!(err, KillError::Persist { .. }), "{err:?}");
        assert_eq!(switch.check(None, Some("t-1")), Some(kept));
        assert!(!changes.has_changed().unwrap());

        // The failed writes cleaned up their temp files.
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);

        // The handler turns it into a 500 that says the kill was not saved.
        let (status, body) = switch.handle_post(br#"{"task": "t-3"}"#);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], "internal_error");
        assert!(message(&body).starts_with("cannot persist the kill file"));
    }

    #[test]
    fn rejects_kill_when_folder_disappeared() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        std::fs::create_dir(&sub).unwrap();
        let switch = KillSwitch::open(Some(sub.join("kills.json"))).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        assert!(matches!(
            switch.kill(KillTarget::All, None),
            Err(KillError::Persist { .. })
        ));
        assert_eq!(switch.active(), 0);
    }

    // --- handlers ---

    #[test]
    fn accepts_post_with_201_then_200() {
        let switch = memory();
        let (status, body) =
            switch.handle_post(br#"{"spiffe_id": "spiffe://example.org/a", "reason": "r"}"#);
        assert_eq!(status, StatusCode::CREATED);
        let kill = &body["kill"];
        assert_eq!(
            kill["target"],
            json!({"spiffe_id": "spiffe://example.org/a"})
        );
        assert_eq!(kill["reason"], "r");
        assert!(kill["id"].is_string());
        assert!(humantime::parse_rfc3339(kill["created"].as_str().unwrap()).is_ok());
        assert_eq!(kill.as_object().unwrap().len(), 4);

        let (status, again) = switch.handle_post(br#"{"spiffe_id": "spiffe://example.org/a"}"#);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again, body);
    }

    #[test]
    fn accepts_post_of_task_and_all() {
        let switch = memory();
        let (status, body) = switch.handle_post(br#"{"task": "t-1"}"#);
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["kill"]["target"], json!({"task": "t-1"}));
        assert_eq!(body["kill"]["reason"], Value::Null);
        let (status, body) = switch.handle_post(br#" {"all": true} "#);
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["kill"]["target"], json!({"all": true}));
    }

    fn post_error(body: &[u8]) -> String {
        let switch = memory();
        let (status, response) = switch.handle_post(body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
        assert_eq!(response["error"], "bad_request");
        assert_eq!(response.as_object().unwrap().len(), 2);
        assert_eq!(switch.active(), 0);
        message(&response).to_owned()
    }

    #[test]
    fn rejects_post_with_bad_json() {
        assert!(post_error(b"{not json").starts_with("the body is not a valid kill: "));
        assert_eq!(
            post_error(b"[]"),
            "the body is not a valid kill: expected a JSON object"
        );
        assert_eq!(
            post_error(br#"["spiffe://example.org/a"]"#),
            "the body is not a valid kill: expected a JSON object"
        );
        assert!(post_error(br#"{"all": true, "reason": 1}"#).contains("invalid type"));
        assert!(post_error(br#"{"task": 42}"#).contains("invalid type"));
        assert!(
            post_error(br#"{"spiffeid": "spiffe://a/b"}"#).contains("unknown field `spiffeid`")
        );
        assert!(post_error(b"").starts_with("the body is empty"));
    }

    #[test]
    fn rejects_post_without_exactly_one_target() {
        assert_eq!(
            post_error(br#"{"task": "t", "spiffe_id": "spiffe://a/b"}"#),
            KillError::TwoTargets.to_string()
        );
        assert_eq!(
            post_error(br#"{"task": "t", "all": true}"#),
            KillError::TwoTargets.to_string()
        );
        assert_eq!(
            post_error(br#"{"reason": "r"}"#),
            KillError::NoTarget.to_string()
        );
        assert_eq!(
            post_error(br#"{"all": false}"#),
            KillError::AllNotTrue.to_string()
        );
    }

    #[test]
    fn rejects_post_with_invalid_target() {
        assert_eq!(
            post_error(br#"{"task": "t 1"}"#),
            "task must be 1 to 128 characters from A-Z a-z 0-9 . _ : / -"
        );
        assert_eq!(
            post_error(br#"{"spiffe_id": "https://example.org/a"}"#),
            "spiffe_id is not a valid SPIFFE ID: a SPIFFE ID must start with spiffe://"
        );
        assert_eq!(
            post_error(br#"{"spiffe_id": "spiffe://Example.org/a"}"#),
            format!(
                "spiffe_id is not a valid SPIFFE ID: {}",
                SpiffeIdError::BadTrustDomainChar
            )
        );
        assert_eq!(
            post_error(br#"{"task": "t", "reason": "a\u0007b"}"#),
            KillError::InvalidReason.to_string()
        );
    }

    #[test]
    fn accepts_list_handler_newest_first() {
        let switch = memory();
        let (status, body) = switch.handle_list();
        assert_eq!((status, body), (StatusCode::OK, json!({"kills": []})));
        let a = switch.kill(task("a"), None).unwrap();
        let b = switch.kill(KillTarget::All, Some("why".into())).unwrap();
        let (status, body) = switch.handle_list();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"kills": [b.to_json(), a.to_json()]}));
    }

    #[test]
    fn accepts_delete_by_id_path() {
        let switch = memory();
        let kill = switch.kill(task("t-1"), None).unwrap();
        let (status, body) = switch.handle_delete(&format!("/{}", kill.id), b"");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"lifted": [kill.to_json()]}));
        assert_eq!(switch.active(), 0);
    }

    #[test]
    fn accepts_delete_by_target_paths() {
        let switch = memory();
        let all = switch.kill(KillTarget::All, None).unwrap();
        let t = switch.kill(task("ns/t:1"), None).unwrap();
        let s = switch.kill(spiffe(AGENT), None).unwrap();

        let (status, body) = switch.handle_delete("/all", b"");
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"lifted": [all.to_json()]}))
        );
        // Tasks may hold '/', encoded or not.
        let (status, body) = switch.handle_delete("/task/ns%2Ft%3A1", b"");
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"lifted": [t.to_json()]}))
        );
        let encoded =
            percent_encoding::utf8_percent_encode(AGENT, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let (status, body) = switch.handle_delete(&format!("/spiffe_id/{encoded}"), b"\n");
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"lifted": [s.to_json()]}))
        );
        assert_eq!(switch.active(), 0);
    }

    #[test]
    fn accepts_delete_of_unencoded_spiffe_id_and_task_with_slash() {
        let switch = memory();
        switch.kill(spiffe(AGENT), None).unwrap();
        switch.kill(task("a/b"), None).unwrap();
        assert_eq!(
            switch.handle_delete(&format!("/spiffe_id/{AGENT}"), b"").0,
            StatusCode::OK
        );
        assert_eq!(switch.handle_delete("/task/a/b", b"").0, StatusCode::OK);
        assert_eq!(switch.active(), 0);
    }

    #[test]
    fn accepts_delete_with_json_body() {
        let switch = memory();
        let kill = switch.kill(task("t-1"), None).unwrap();
        let (status, body) = switch.handle_delete("", br#"{"task": "t-1", "reason": "fixed"}"#);
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"lifted": [kill.to_json()]}))
        );
        let kill = switch.kill(KillTarget::All, None).unwrap();
        let (status, body) = switch.handle_delete("/", br#"{"all": true}"#);
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"lifted": [kill.to_json()]}))
        );
    }

    #[test]
    fn rejects_delete_of_unknown_kill_with_404() {
        let switch = memory();
        switch.kill(task("t-1"), None).unwrap();
        for rest in [
            "/0190c2a4-7b9e-7000-8000-000000000001",
            "/no-such-id",
            "/all",
            "/task/t-2",
            "/spiffe_id/spiffe%3A%2F%2Fexample.org%2Fa",
        ] {
            let (status, body) = switch.handle_delete(rest, b"");
            assert_eq!(status, StatusCode::NOT_FOUND, "{rest}");
            assert_eq!(body["error"], "not_found");
            assert!(
                message(&body).starts_with("no kill in force matches"),
                "{body}"
            );
        }
        let (status, _) = switch.handle_delete("", br#"{"spiffe_id": "spiffe://example.org/a"}"#);
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = switch.handle_delete("xyz", b"");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(switch.active(), 1);
    }

    #[test]
    fn rejects_bad_delete_with_400() {
        let switch = memory();
        switch.kill(task("t-1"), None).unwrap();
        let cases: [(&str, &[u8], KillError); 8] = [
            ("", b"", KillError::EmptyBody),
            (
                "",
                br#"{"task": "t-1", "all": true}"#,
                KillError::TwoTargets,
            ),
            ("/task/t-1", br#"{"task": "t-1"}"#, KillError::PathAndBody),
            ("/task/bad%20task", b"", KillError::InvalidTask),
            (
                "",
                b"{\"task\": \"t-1\", \"reason\": \"a\\u0000\"}",
                KillError::InvalidReason,
            ),
            ("/task", b"", KillError::BadPath("/task".into())),
            (
                "/spiffe_id/%FF",
                b"",
                KillError::BadPath("/spiffe_id/%FF".into()),
            ),
            (
                "/spiffe_id/https%3A%2F%2Fexample.org",
                b"",
                KillError::InvalidSpiffeId(SpiffeIdError::WrongScheme),
            ),
        ];
        for (rest, body, expected) in cases {
            let (status, response) = switch.handle_delete(rest, body);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{rest}");
            assert_eq!(
                response,
                json!({"error": "bad_request", "message": expected.to_string()}),
                "{rest}"
            );
        }
        assert_eq!(switch.active(), 1);
    }

    // --- concurrency ---

    #[test]
    fn accepts_concurrent_checks_during_kills_and_lifts() {
        let switch = memory();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let expected = std::thread::scope(|scope| {
            for reader in 0..8 {
                let (switch, stop) = (&switch, &stop);
                scope.spawn(move || {
                    let caller = format!("spiffe://example.org/agent/{}", reader % 4);
                    let task = format!("t-{}", reader % 4);
                    let mut seen = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Some(kill) = switch.check(Some(&caller), Some(&task)) {
                            // Whatever snapshot we saw, the kill must really cover us.
                            assert!(kill.target.matches(Some(&caller), Some(&task)));
                            seen += 1;
                        }
                        for kill in switch.list() {
                            assert!(!kill.id.is_empty());
                        }
                    }
                    seen
                });
            }
            let mut expected = std::collections::HashSet::new();
            let (me, my_task) = ("spiffe://example.org/agent/0", "t-0");
            for round in 0..200 {
                let target = match round % 3 {
                    0 => spiffe(&format!("spiffe://example.org/agent/{}", round % 4)),
                    1 => task(&format!("t-{}", round % 4)),
                    _ => KillTarget::All,
                };
                let kill = switch.kill(target.clone(), None).unwrap();
                expected.insert(target.clone());
                // Effective from the very next check, and only for what it covers.
                let covered = expected.iter().any(|t| t.matches(Some(me), Some(my_task)));
                assert_eq!(switch.check(Some(me), Some(my_task)).is_some(), covered);
                if round % 2 == 0 {
                    assert_eq!(
                        switch.lift(LiftBy::Target(target.clone())).unwrap(),
                        vec![kill]
                    );
                    expected.remove(&target);
                }
                let covered = expected.iter().any(|t| t.matches(Some(me), Some(my_task)));
                assert_eq!(switch.check(Some(me), Some(my_task)).is_some(), covered);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            expected
        });
        // The final state is exactly what the writer left.
        let actual: std::collections::HashSet<KillTarget> =
            switch.list().iter().map(|k| k.target.clone()).collect();
        assert_eq!(actual, expected);
        assert_eq!(switch.active(), expected.len());
    }
}
