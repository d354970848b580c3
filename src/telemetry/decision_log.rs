//! The decision log: one JSON line per decision, written off the request path.
//!
//! A request serializes its record and hands the bytes to a channel; one writer thread appends
//! them to the sink. After the first line of a burst the writer waits a few milliseconds and
//! takes everything queued meanwhile, so under load it wakes and writes a few hundred times a
//! second instead of once per request (a wakeup per line cost ~8% of the proxy's CPU), and a
//! lone decision is still visible within [`BATCH_WINDOW`].
//!
//! The queue is bounded (`telemetry.decision_log_capacity` lines), so a sink that stalls (a
//! full disk, a pipe nobody reads) cannot grow tollgate's memory. Each request reserves its
//! slot ([`DecisionLog::reserve`]) before any stage runs and holds it until its line is
//! written into it, so a line can never find the queue full once the request was served. When
//! no slot is free, `telemetry.decision_log_on_full` decides: `backpressure` (the default)
//! waits up to `telemetry.decision_log_max_wait` and then refuses the request (503
//! `decision_log_unavailable`), so nothing is forwarded without its line; `drop` serves the
//! request without a slot and, if the queue is still full when the line is made, drops it,
//! counted in `tollgate_decision_log_dropped_total` and logged (at most once a second).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{DecisionLogQueue, DecisionLogTarget, OnFull};

/// How long the writer gathers lines after the first of a burst before writing them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// What one decision-log line holds (SPEC §9). Never a query value, header value or secret.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord<'a> {
    pub decision_id: &'a str,
    pub time: String,
    pub listener: &'a str,
    pub source: SourceRecord<'a>,
    pub intent: IntentRecord<'a>,
    pub request: RequestRecord<'a>,
    pub decision: VerdictRecord<'a>,
    /// tollgate's own failure after (or instead of) a policy decision, e.g. `upstream_timeout`.
    pub error: Option<&'a str>,
    pub policy_revision: Option<&'a str>,
    pub engine: Option<&'a str>,
    pub eval_us: Option<u64>,
    pub upstream_status: Option<u16>,
    pub duration_ms: f64,
    /// The kill that refused this request or ended its flow; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_id: Option<&'a str>,
    /// An open flow a kill (or a task's end) cut: what it was and what it carried until then;
    /// absent for every flow that ended on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowRecord<'a>>,
}

/// `flow` of a decision-log line: the cut flow's kind and the bytes it carried each way.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRecord<'a> {
    /// `request`, `http2_stream`, `intercepted_connection`, `tunnel` or
    /// `transparent_connection` (the `kind` label of `tollgate_flows_killed_total`).
    pub kind: &'a str,
    /// Bytes tollgate received from the agent on this flow before the cut.
    pub bytes_from_agent: u64,
    /// Bytes tollgate sent to the agent on this flow before the cut.
    pub bytes_to_agent: u64,
}

/// `source` of a decision-log line.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRecord<'a> {
    pub spiffe_id: Option<&'a str>,
    pub address: &'a str,
}

/// `intent` of a decision-log line.
#[derive(Debug, Clone, Serialize)]
pub struct IntentRecord<'a> {
    pub name: Option<&'a str>,
    pub task: Option<&'a str>,
    pub verified: bool,
}

/// `request` of a decision-log line: where, never what (no query, no header values).
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord<'a> {
    pub method: &'a str,
    pub scheme: Option<&'a str>,
    pub host: Option<&'a str>,
    pub port: Option<u16>,
    pub path: Option<&'a str>,
    /// The secret headers the agent sent that tollgate removed (`agent_secrets.on_present:
    /// remove`): names only, never values, so an operator sees which agent still holds a
    /// secret. Omitted when none were.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stripped_headers: &'a [String],
}

/// `decision` of a decision-log line.
#[derive(Debug, Clone, Serialize)]
pub struct VerdictRecord<'a> {
    pub allow: bool,
    pub reason: &'a str,
    pub credential: Option<&'a str>,
    /// False in dry-run mode: the decision was logged but not applied.
    pub enforced: bool,
}

/// What the writer thread receives (public only as the payload of a [`Slot`]).
pub enum Message {
    Line(Vec<u8>),
    /// Write and flush everything queued before this, then acknowledge.
    Flush(std::sync::mpsc::Sender<()>),
}

/// How many recent decisions `GET /v1/decisions` can return.
pub const RECENT_CAPACITY: usize = 1000;

/// The most recent decision-log lines, kept by the writer thread (not the request path) for
/// `GET /v1/decisions`.
#[derive(Default)]
pub struct Recent {
    lines: Mutex<VecDeque<Vec<u8>>>,
}

impl Recent {
    /// Up to `limit` lines, newest first.
    pub fn newest(&self, limit: usize) -> Vec<Vec<u8>> {
        match self.lines.lock() {
            Ok(lines) => lines.iter().rev().take(limit).cloned().collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .rev()
                .take(limit)
                .cloned()
                .collect(),
        }
    }

    /// Keeps one line (the writer thread; tests). A copy of exactly the line's length: the
    /// line as serialized has up to twice that in spare capacity (the `Vec` grew by doubling,
    /// and the allocator keeps a block shrunk by less than half), which a thousand kept lines
    /// would hold resident for nothing.
    pub(crate) fn push(&self, line: &[u8]) {
        let mut lines = match self.lines.lock() {
            Ok(lines) => lines,
            Err(poisoned) => poisoned.into_inner(),
        };
        if lines.len() == RECENT_CAPACITY {
            lines.pop_front();
        }
        lines.push_back(line.strip_suffix(b"\n").unwrap_or(line).to_vec());
    }
}

/// A place in the decision-log queue, reserved by a request before it is served: its line
/// cannot be refused for lack of room.
pub struct Slot(mpsc::OwnedPermit<Message>);

/// The queue had no room within `telemetry.decision_log_max_wait` (backpressure mode): the
/// request must be refused, as it could not be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the decision log cannot take this request's line within {0:?} (its sink is stalled); the request was not forwarded"
)]
pub struct Unavailable(pub Duration);

/// How often, at most, a dropped line is reported in the operational log.
const DROP_LOG_EVERY: Duration = Duration::from_secs(1);

/// Lines dropped for lack of room, and when that was last logged.
struct Drops {
    /// `tollgate_decision_log_dropped_total`.
    counter: IntCounter,
    /// Drops not yet reported in the operational log.
    unreported: AtomicU64,
    /// Milliseconds since `epoch` of the last report (0: never).
    last_report_ms: AtomicU64,
    epoch: Instant,
}

impl Drops {
    fn dropped(&self, why: &'static str) {
        self.counter.inc();
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.last_report_ms.load(Ordering::Relaxed);
        let every = u64::try_from(DROP_LOG_EVERY.as_millis()).unwrap_or(1000);
        if (last == 0 || now_ms.saturating_sub(last) >= every)
            && self
                .last_report_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let lines = self.unreported.swap(0, Ordering::Relaxed);
            tracing::error!(
                lines,
                total = self.counter.get(),
                why,
                "decision log: lines dropped (telemetry.decision_log_on_full: drop, or the writer is gone)"
            );
        }
    }
}

/// Handle to the decision-log writer; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    sender: Option<mpsc::Sender<Message>>,
    queue: DecisionLogQueue,
    drops: Arc<Drops>,
    /// The recent decisions, for the admin API.
    pub recent: Arc<Recent>,
}

impl DecisionLog {
    /// Starts the writer for `target`, with a queue bounded as `queue` says; `dropped` is
    /// `tollgate_decision_log_dropped_total`. With `Off` nothing is written, but the recent
    /// decisions are still kept for the admin API.
    pub fn start(
        target: &DecisionLogTarget,
        queue: DecisionLogQueue,
        dropped: IntCounter,
    ) -> std::io::Result<DecisionLog> {
        let sink: Box<dyn Write + Send> = match target {
            DecisionLogTarget::Off => Box::new(std::io::sink()),
            DecisionLogTarget::Stdout => Box::new(std::io::stdout()),
            DecisionLogTarget::File(path) => Box::new(open_append(path)?),
        };
        let recent = Arc::new(Recent::default());
        let (sender, receiver) = mpsc::channel(queue.capacity.max(1));
        let kept = recent.clone();
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_loop(sink, receiver, &kept))?;
        Ok(DecisionLog {
            sender: Some(sender),
            queue,
            drops: Arc::new(Drops {
                counter: dropped,
                unreported: AtomicU64::new(0),
                last_report_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
            recent,
        })
    }

    /// Reserves the queue slot of one request's line, before the request is served.
    ///
    /// `Ok(Some)`: the line will be queued whatever happens. `Ok(None)`: no slot, and the
    /// operator chose `drop` (the line is queued if room appeared by then, else dropped and
    /// counted). `Err`: backpressure mode and no room within `max_wait`: refuse the request.
    pub async fn reserve(&self) -> Result<Option<Slot>, Unavailable> {
        let Some(sender) = &self.sender else {
            return Ok(None);
        };
        match sender.clone().try_reserve_owned() {
            Ok(permit) => return Ok(Some(Slot(permit))),
            // The writer is gone (it never exits while a sender lives): nothing can be logged.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return match self.queue.on_full {
                    OnFull::Drop => Ok(None),
                    OnFull::Backpressure => Err(Unavailable(self.queue.max_wait)),
                };
            }
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
        match self.queue.on_full {
            OnFull::Drop => Ok(None),
            OnFull::Backpressure => {
                match tokio::time::timeout(self.queue.max_wait, sender.clone().reserve_owned())
                    .await
                {
                    Ok(Ok(permit)) => Ok(Some(Slot(permit))),
                    Ok(Err(_)) | Err(_) => Err(Unavailable(self.queue.max_wait)),
                }
            }
        }
    }

    /// Writes out everything queued so far (at shutdown: no decision is lost). Waits at most
    /// `timeout`; returns whether the writer confirmed.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(sender) = &self.sender else {
            return true;
        };
        let started = Instant::now();
        let (ack, done) = std::sync::mpsc::channel();
        match tokio::time::timeout(timeout, sender.send(Message::Flush(ack))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
        let left = timeout.saturating_sub(started.elapsed());
        tokio::task::spawn_blocking(move || done.recv_timeout(left).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Queues one record into its reserved `slot`, or, without one, into the queue if it has
    /// room; a line that finds no room is dropped and counted. Never blocks.
    pub fn record(&self, record: &DecisionRecord<'_>, slot: Option<Slot>) {
        let Some(sender) = &self.sender else { return };
        match serde_json::to_vec(record) {
            Ok(mut line) => {
                line.push(b'\n');
                match slot {
                    Some(Slot(permit)) => {
                        permit.send(Message::Line(line));
                    }
                    None => match sender.try_send(Message::Line(line)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => self.drops.dropped("queue full"),
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            self.drops.dropped("writer gone")
                        }
                    },
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot serialize a decision record"),
        }
    }
}

/// Why the decision log's file cannot be written (found by `tollgate check`, before `run`).
#[derive(Debug, thiserror::Error)]
pub enum UnwritableLog {
    #[error("{0} is a directory, not a file")]
    Directory(PathBuf),
    #[error("{path} cannot be opened for appending: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: its folder {dir} is not a folder tollgate can create files in: {source}")]
    Folder {
        path: PathBuf,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Checks that `run` can open `target` as it would ([`open_append`]: missing folders are
/// created): an existing file must open for appending; otherwise the nearest existing folder
/// must take a new file, which is tried with a probe file removed at once. Nothing else is
/// created or changed.
pub fn check_writable(target: &DecisionLogTarget) -> Result<(), UnwritableLog> {
    let DecisionLogTarget::File(path) = target else {
        return Ok(());
    };
    if path.is_dir() {
        return Err(UnwritableLog::Directory(path.clone()));
    }
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|source| UnwritableLog::Open {
                path: path.clone(),
                source,
            });
    }
    let dir = path
        .ancestors()
        .skip(1)
        .find(|dir| dir.exists())
        .unwrap_or(Path::new("/"));
    let probe = dir.join(format!(".tollgate-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map(|_| {
            let _ = std::fs::remove_file(&probe);
        })
        .map_err(|source| UnwritableLog::Folder {
            path: path.clone(),
            dir: dir.to_path_buf(),
            source,
        })
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn write_loop(sink: Box<dyn Write + Send>, mut receiver: mpsc::Receiver<Message>, recent: &Recent) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Some(first) = receiver.blocking_recv() {
        if matches!(first, Message::Line(_)) {
            // While this thread sleeps no waker is registered, so senders do not pay for a wakeup.
            std::thread::sleep(BATCH_WINDOW);
        }
        let mut acks = Vec::new();
        let mut result = Ok(());
        let mut next = Some(first);
        // Take what is already queued, then flush once.
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    if result.is_ok() {
                        result = out.write_all(&line);
                    }
                    recent.push(&line);
                }
                Message::Flush(ack) => acks.push(ack),
            }
            next = receiver.try_recv().ok();
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            tracing::error!(error = %e, "cannot write the decision log");
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    let _ = out.flush();
}
