//! The decision log: one JSON line per decision, written off the request path.
//!
//! A request serializes its record and hands the bytes to a channel; one writer thread appends
//! them to the sink. After the first line of a burst the writer waits a few milliseconds and
//! takes everything queued meanwhile, so under load it wakes and writes a few hundred times a
//! second instead of once per request (a wakeup per line cost ~8% of the proxy's CPU), and a
//! lone decision is still visible within [`BATCH_WINDOW`]. No request waits on the sink.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::DecisionLogTarget;

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
    pub address: String,
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

/// What the writer thread receives.
enum Message {
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

    /// Keeps one line (the writer thread; tests).
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

/// Handle to the decision-log writer; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    sender: Option<mpsc::UnboundedSender<Message>>,
    /// The recent decisions, for the admin API.
    pub recent: Arc<Recent>,
}

impl DecisionLog {
    /// Starts the writer for `target`. With `Off` nothing is written, but the recent
    /// decisions are still kept for the admin API.
    pub fn start(target: &DecisionLogTarget) -> std::io::Result<DecisionLog> {
        let sink: Box<dyn Write + Send> = match target {
            DecisionLogTarget::Off => Box::new(std::io::sink()),
            DecisionLogTarget::Stdout => Box::new(std::io::stdout()),
            DecisionLogTarget::File(path) => Box::new(open_append(path)?),
        };
        let recent = Arc::new(Recent::default());
        let (sender, receiver) = mpsc::unbounded_channel();
        let kept = recent.clone();
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_loop(sink, receiver, &kept))?;
        Ok(DecisionLog {
            sender: Some(sender),
            recent,
        })
    }

    /// Writes out everything queued so far (at shutdown: no decision is lost). Waits at most
    /// `timeout`; returns whether the writer confirmed.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(sender) = &self.sender else {
            return true;
        };
        let (ack, done) = std::sync::mpsc::channel();
        if sender.send(Message::Flush(ack)).is_err() {
            return false;
        }
        tokio::task::spawn_blocking(move || done.recv_timeout(timeout).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Queues one record; never blocks.
    pub fn record(&self, record: &DecisionRecord<'_>) {
        let Some(sender) = &self.sender else { return };
        match serde_json::to_vec(record) {
            Ok(mut line) => {
                line.push(b'\n');
                let _ = sender.send(Message::Line(line));
            }
            Err(e) => tracing::error!(error = %e, "cannot serialize a decision record"),
        }
    }
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

fn write_loop(
    sink: Box<dyn Write + Send>,
    mut receiver: mpsc::UnboundedReceiver<Message>,
    recent: &Recent,
) {
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
                    recent.push(&line);
                    if result.is_ok() {
                        result = out.write_all(&line);
                    }
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
