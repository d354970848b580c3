//! The kill switch (SPEC §7): `POST /v1/kill` denies everything a SPIFFE ID, a task or every
//! caller sends, from the very next request on, until `DELETE /v1/kill/…` lifts it.
//!
//! This module owns the set of kills ([`set`]), its persistence in `admin.kill_file`
//! ([`store`]) and the registry of open flows a kill ends ([`flows`]: streamed requests,
//! HTTP/2 streams, tunnels, intercepted and transparent connections — "kill means now"). It
//! does not own the admin API's HTTP (`admin::kill`) or enforcement: the authorize stage calls
//! [`KillSwitch::check`] for every request (keep-alive and HTTP/2 connections included,
//! because the check is per request, not per connection); what is already flowing registers
//! with [`KillSwitch::open_flow`], and [`KillSwitch::kill`] stops it before returning; the
//! credential cache drops what [`KillTarget::matches`]; the metrics module publishes
//! [`KillSwitch::active`] as `tollgate_kills_active`.
//!
//! Why the shape:
//! - Reads are lock-free and allocate nothing: the set is an immutable snapshot behind an
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
//! use tollgate::intent::TaskName;
//! use tollgate::kill::{KillSwitch, KillTarget};
//!
//! let switch = KillSwitch::open(None)?;
//! let mut changes = switch.subscribe();
//! switch.kill(KillTarget::Task(TaskName::parse("t-42")?), Some("runaway loop".into()))?;
//! assert!(changes.has_changed()?); // a watcher of the kills wakes up here
//! assert!(switch.check(Some("spiffe://example.org/agent"), Some("t-42")).is_some());
//! assert!(switch.check(Some("spiffe://example.org/agent"), Some("t-43")).is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod flows;
pub mod set;
pub mod store;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::identity::{SpiffeId, SpiffeIdError};
use crate::intent::TaskName;
use flows::{Flow, FlowKind, FlowRegistry, Stop};
use set::KillSet;
pub use set::{Kill, KillTarget, LiftBy};

/// A reason is for the audit trail, not a document; bounded so the file and logs stay small.
const MAX_REASON_LEN: usize = 1024;

/// Why a kill, a lift or the kill file was refused; each variant is one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillError {
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
    #[error("task must be {}", crate::intent::TaskName::RULE)]
    InvalidTask,
    /// The reason is too long or holds control characters.
    #[error("reason must be at most 1024 bytes without control characters")]
    InvalidReason,
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
    /// Another running process owns the kill file (holds its lock): two instances writing one
    /// file would overwrite each other's kills, so the second refuses to start.
    #[error(
        "the kill file {} is in use by another running tollgate (it holds the lock on {}); give each instance its own admin.kill_file",
        path.display(),
        lock.display()
    )]
    InUse { path: PathBuf, lock: PathBuf },
}

impl KillError {
    /// Whether the operator's request was at fault (rather than tollgate's own file).
    pub fn is_request_error(&self) -> bool {
        !matches!(
            self,
            KillError::Read { .. }
                | KillError::Corrupt { .. }
                | KillError::Persist { .. }
                | KillError::InUse { .. }
        )
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
    /// The lock that makes this process the kill file's only writer ([`store::own`]); held,
    /// never read, until the switch is dropped.
    _owner: Option<std::fs::File>,
    changes: watch::Sender<u64>,
    /// The flows open now, which a kill ends (issue 15).
    flows: FlowRegistry,
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
    /// or to discover during an incident that a kill cannot be saved. A file another running
    /// process owns is [`KillError::InUse`]: one writer per file, or kills would be lost.
    pub fn open(file: Option<PathBuf>) -> Result<KillSwitch, KillError> {
        let (kills, owner) = match &file {
            None => (Vec::new(), None),
            Some(path) => {
                store::probe_writable(path)?;
                let owner = store::own(path)?;
                (store::load(path)?, Some(owner))
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
            _owner: owner,
            changes,
            flows: FlowRegistry::new(),
        })
    }

    /// The hot path: the kill that stops this caller, if any.
    ///
    /// Lock-free and allocation-free (one atomic load, at most two hash lookups). `spiffe_id`
    /// is the identity the proxy established (SPEC §3.1, `None` when unauthenticated); `task`
    /// is the `X-Agent-Task` value. When several kills match, the broadest wins (all, then
    /// SPIFFE ID, then task), so the answer does not depend on the order kills were made in.
    pub fn check(&self, spiffe_id: Option<&str>, task: Option<&str>) -> Option<Arc<Kill>> {
        self.set.load().covering(spiffe_id, task).cloned()
    }

    /// Engages a kill; returns it and whether it is new (`false`: the kill already in force on
    /// the same target, so a retried `POST` does not pile up kills, and keeps the first reason).
    ///
    /// The file is written (temp file, fsync, rename) before the kill is published; if the
    /// write fails nothing changes and the error says so. Blocks on that write: call it from
    /// `spawn_blocking` if a few milliseconds on an async worker matter.
    pub fn kill(
        &self,
        target: KillTarget,
        reason: Option<String>,
    ) -> Result<(Arc<Kill>, bool), KillError> {
        validate_reason(reason.as_deref())?;
        let _writer = self.lock_writer();
        let current = self.set.load_full();
        if let Some(existing) = current.find(&target) {
            return Ok((existing.clone(), false));
        }
        let kill = Arc::new(Kill {
            id: uuid::Uuid::now_v7().hyphenated().to_string(),
            target,
            created: store::now_millis(),
            reason,
        });
        let mut kills = current.newest_first.clone();
        kills.push(kill.clone());
        self.publish(kills)?;
        // Published first, then the open flows are ended: a flow registering meanwhile sees
        // the kill in its own check (see `open_flow`).
        let ended = self.flows.cut(&kill);
        tracing::warn!(
            kill_id = %kill.id,
            kill_target = %kill.target,
            reason = kill.reason.as_deref().unwrap_or(""),
            flows_ended = ended,
            "kill switch engaged"
        );
        Ok((kill, true))
    }

    /// Lifts the kill with this id or on this target, noting the operator's `reason` in the
    /// log; returns what was lifted (empty when nothing matched, which changes nothing and
    /// writes nothing).
    ///
    /// Persists before publishing, as [`kill`](KillSwitch::kill) does: a lift whose write
    /// failed leaves the kill in force.
    pub fn lift(&self, by: LiftBy, reason: Option<String>) -> Result<Vec<Arc<Kill>>, KillError> {
        let by = match by {
            LiftBy::Id(id) => LiftBy::Id(normalize_id(&id)),
            target => target,
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
            self.flows.forget(&kill.id);
            tracing::warn!(
                kill_id = %kill.id,
                kill_target = %kill.target,
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

    /// Registers an open flow of this caller and task, and ends it at once if a kill in force
    /// covers it (a kill published while the flow was being opened). Cheap: one lock of a
    /// shard this thread almost always has alone, then the lock-free [`check`](Self::check).
    pub fn open_flow(
        &self,
        kind: FlowKind,
        spiffe_id: Option<&SpiffeId>,
        task: Option<&TaskName>,
        stop: Stop,
    ) -> Flow {
        let flow = self.flows.open(kind, spiffe_id, task, stop);
        if let Some(kill) = self.check(spiffe_id.map(SpiffeId::as_str), task.map(TaskName::as_str))
        {
            flow.cut_now(&kill, &self.flows);
        }
        flow
    }

    /// Registers an open flow without [`open_flow`](Self::open_flow)'s re-check: for a
    /// connection registered before anything about it was decided (a transparent listener's),
    /// whose requests and connection-level decision each meet the kills in force. A caller
    /// already killed is then refused as on a forward listener — a 403 naming the kill, or a
    /// logged close — instead of a reset that explains nothing; a kill engaged from now on
    /// ends the flow.
    pub fn open_undecided_flow(
        &self,
        kind: FlowKind,
        spiffe_id: Option<&SpiffeId>,
        stop: Stop,
    ) -> Flow {
        self.flows.open(kind, spiffe_id, None, stop)
    }

    /// Ends the open flows of `task` (`DELETE /v1/tasks/{task}`): returns the ending — a kill
    /// on the task that is not kept in force (later requests of the task are not refused) but
    /// names the cut in the decision log — and how many flows it ended.
    pub fn end_task_flows(&self, task: &TaskName) -> (Arc<Kill>, u64) {
        let ending = Arc::new(Kill {
            id: uuid::Uuid::now_v7().hyphenated().to_string(),
            target: KillTarget::Task(task.clone()),
            created: store::now_millis(),
            reason: Some("task ended".into()),
        });
        let ended = self.flows.cut(&ending);
        (ending, ended)
    }

    /// The open flows (how many each kill ended: [`FlowRegistry::ended`]).
    pub fn flows(&self) -> &FlowRegistry {
        &self.flows
    }

    /// A receiver whose value is bumped after every kill or lift that changed the set, for
    /// whoever keeps a view of the kills and must refresh it. Open flows do not need it: they
    /// register ([`open_flow`](Self::open_flow)) and a kill stops them directly.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
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
            store::save(path, &set.newest_first)?;
        }
        self.set.store(Arc::new(set));
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// An operator's reason: at most [`MAX_REASON_LEN`] bytes, no control characters.
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

#[cfg(test)]
mod tests;
