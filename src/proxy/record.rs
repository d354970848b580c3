//! The record stage: a drop guard that writes exactly one decision-log line per request,
//! whichever way the request ends (own response, upstream error, body finished or abandoned).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::identity::SpiffeId;
use crate::telemetry::decision_log::{
    DecisionLog, DecisionRecord, IntentRecord, RequestRecord, SourceRecord, VerdictRecord,
};
use crate::telemetry::metrics::{Metrics, Outcome};

use super::target::Target;

/// A new decision id: a UUIDv7 (sortable by time to the millisecond) whose other bits are
/// random. `Uuid::now_v7()` would serialize every request on uuid's process-wide counter mutex;
/// `NoContext` takes no lock.
pub fn new_decision_id() -> String {
    uuid::Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext)).to_string()
}

/// Facts gathered while a request moves through the stages; logged on drop.
pub struct Recorder {
    log: DecisionLog,
    metrics: Arc<Metrics>,
    started: Instant,
    time: SystemTime,
    pub decision_id: String,
    listener: Arc<str>,
    peer: std::net::SocketAddr,
    pub spiffe_id: Option<SpiffeId>,
    pub method: String,
    pub intent: Option<(Option<String>, Option<String>, bool)>,
    pub scheme: Option<&'static str>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub allow: bool,
    pub reason: Option<String>,
    pub credential: Option<String>,
    pub enforced: bool,
    pub revision: Option<Arc<str>>,
    pub engine: Option<&'static str>,
    pub eval_us: Option<u64>,
    pub upstream_status: Option<u16>,
    /// tollgate's own failure after the decision (closed reason), e.g. `upstream_timeout`.
    pub error: Option<&'static str>,
}

impl Recorder {
    /// Starts timing a request.
    pub fn start(
        log: DecisionLog,
        metrics: Arc<Metrics>,
        listener: Arc<str>,
        peer: std::net::SocketAddr,
        spiffe_id: Option<SpiffeId>,
        method: &str,
    ) -> Recorder {
        Recorder {
            log,
            metrics,
            started: Instant::now(),
            time: SystemTime::now(),
            decision_id: new_decision_id(),
            listener,
            peer,
            spiffe_id,
            method: method.to_string(),
            intent: None,
            scheme: None,
            host: None,
            port: None,
            path: None,
            allow: false,
            reason: None,
            credential: None,
            enforced: true,
            revision: None,
            engine: None,
            eval_us: None,
            upstream_status: None,
            error: None,
        }
    }

    /// Notes where the request goes.
    pub fn target(&mut self, target: &Target) {
        self.scheme = Some(target.scheme);
        self.host = Some(target.host.clone());
        self.port = Some(target.port);
        self.path = Some(target.path.clone());
    }

    /// Time since the request started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let reason = self.reason.as_deref().or(self.error).unwrap_or("");
        let seconds = self.started.elapsed().as_secs_f64();
        let outcome = match (self.allow, self.error) {
            // Allowed by the policy but not completed: an upstream or internal failure.
            (true, Some(error)) => (Outcome::Error, error),
            (true, None) => (Outcome::Allow, reason),
            // Denied (in a dry run, counted as what the policy decided).
            (false, _) => (Outcome::Deny, reason),
        };
        self.metrics.record_request(
            &self.listener,
            outcome.0,
            outcome.1,
            self.host.as_deref(),
            seconds,
        );
        let (intent_name, intent_task, verified) = match &self.intent {
            Some((name, task, verified)) => (name.as_deref(), task.as_deref(), *verified),
            None => (None, None, false),
        };
        let record = DecisionRecord {
            decision_id: &self.decision_id,
            time: crate::policy::input::format_time(self.time),
            listener: &self.listener,
            source: SourceRecord {
                spiffe_id: self.spiffe_id.as_ref().map(|id| id.as_str()),
                address: self.peer.to_string(),
            },
            intent: IntentRecord {
                name: intent_name,
                task: intent_task,
                verified,
            },
            request: RequestRecord {
                method: &self.method,
                scheme: self.scheme,
                host: self.host.as_deref(),
                port: self.port,
                path: self.path.as_deref(),
            },
            decision: VerdictRecord {
                allow: self.allow,
                reason,
                credential: self.credential.as_deref(),
                enforced: self.enforced,
            },
            error: self.error,
            policy_revision: self.revision.as_deref(),
            engine: self.engine,
            eval_us: self.eval_us,
            upstream_status: self.upstream_status,
            duration_ms: seconds * 1000.0,
        };
        self.log.record(&record);
    }
}
