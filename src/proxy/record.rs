//! The record stage: a drop guard that writes exactly one decision-log line per request, and
//! counts it once in `tollgate_requests_total`, whichever way the request ends (own response,
//! upstream error, body finished or abandoned).
//!
//! What was decided is a typed [`Verdict`], not loose fields: each outcome has one setter, called
//! from one place — the policy's answer and a kill from the authorize stage
//! ([`Recorder::decided`], [`Recorder::killed`]), tollgate's own refusals and failures from
//! `proxy::error_response` ([`Recorder::ended_with`]), a response that broke off while
//! streaming from the body ([`Recorder::stream_failed`]). The decision-log fields and the metric
//! label are both derived from the verdict, so they cannot disagree.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::EngineKind;
use crate::error::ProxyError;
use crate::identity::SpiffeId;
use crate::intent::{Intent, TaskName};
use crate::kill::Kill;
use crate::kill::flows::Flow;
use crate::reason::Reason;
use crate::telemetry::decision_log::{
    DecisionLog, DecisionRecord, FlowRecord, IntentRecord, RequestRecord, Slot, SourceRecord,
    VerdictRecord,
};
use crate::telemetry::metrics::Metrics;

use super::in_flight::InFlightGuard;
use super::target::Target;

/// A new decision id: a UUIDv7 (sortable by time to the millisecond) whose other bits are
/// random. `Uuid::now_v7()` would serialize every request on uuid's process-wide counter mutex;
/// `NoContext` takes no lock.
pub fn new_decision_id() -> String {
    uuid::Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext)).to_string()
}

/// What was decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet: the request ended (the agent went away) before any decision. Logged as a
    /// deny with an empty reason and counted as `policy_denied`, as nothing allowed it.
    Undecided,
    /// The policy answered (in a dry run a deny is logged but not enforced).
    Policy {
        allow: bool,
        /// The policy's own reason, verbatim (for an evaluation failure, its closed reason).
        said: Option<String>,
        /// The closed label: `allowed`, a documented deny reason, `policy_denied`,
        /// `policy_error` or `policy_timeout`.
        label: Reason,
        /// The credential the decision named.
        credential: Option<String>,
        /// False in a dry run: a deny was logged, not applied.
        enforced: bool,
        /// tollgate could not complete what the policy let through (upstream, internal).
        failure: Option<Reason>,
    },
    /// The caller or the declared task is killed; the policy was not asked.
    Killed,
    /// tollgate refused on its own: before the policy was asked (framing, target, intent,
    /// agent secrets…), or overriding its allow (the credential it named is unavailable).
    Refused {
        reason: Reason,
        /// The credential the overridden decision named.
        credential: Option<String>,
    },
}

impl Verdict {
    /// The closed reason the request is counted under (its outcome is the `decision` label).
    pub fn label(&self) -> Reason {
        match self {
            Verdict::Undecided => Reason::PolicyDenied,
            Verdict::Policy {
                allow: true,
                failure: Some(failure),
                ..
            } => *failure,
            Verdict::Policy { label, .. } => *label,
            Verdict::Killed => Reason::Killed,
            Verdict::Refused { reason, .. } => *reason,
        }
    }

    /// The decision log's `decision` object and `error` field.
    fn record(&self) -> (VerdictRecord<'_>, Option<&'static str>) {
        fn verdict<'a>(
            allow: bool,
            reason: &'a str,
            credential: &'a Option<String>,
            enforced: bool,
        ) -> VerdictRecord<'a> {
            VerdictRecord {
                allow,
                reason,
                credential: credential.as_deref(),
                enforced,
            }
        }
        match self {
            Verdict::Undecided => (verdict(false, "", &NONE, true), None),
            Verdict::Policy {
                allow,
                said,
                label,
                credential,
                enforced,
                failure,
            } => {
                let reason = match (said, failure) {
                    (Some(said), _) => said.as_str(),
                    (None, Some(failure)) => failure.as_str(),
                    (None, None) if *allow => "",
                    (None, None) => label.as_str(),
                };
                (
                    verdict(*allow, reason, credential, *enforced),
                    failure.map(Reason::as_str),
                )
            }
            Verdict::Killed => (verdict(false, Reason::Killed.as_str(), &NONE, true), None),
            Verdict::Refused { reason, credential } => (
                verdict(false, reason.as_str(), credential, true),
                Some(reason.as_str()),
            ),
        }
    }
}

/// No credential.
const NONE: Option<String> = None;

/// The policy revision that decided, and how long it took.
struct Evaluated {
    revision: Arc<str>,
    engine: EngineKind,
    eval_us: u64,
}

/// Where the request goes, as far as it is known (a CONNECT has no scheme or path).
struct Destination {
    scheme: Option<&'static str>,
    host: String,
    port: u16,
    path: Option<String>,
}

/// The declared intent, as logged.
struct Declared {
    name: Option<String>,
    task: Option<TaskName>,
    verified: bool,
}

/// Facts gathered while a request moves through the stages; logged and counted on drop.
pub struct Recorder {
    log: DecisionLog,
    metrics: Arc<Metrics>,
    started: Instant,
    time: SystemTime,
    decision_id: String,
    listener: Arc<str>,
    peer: Arc<str>,
    spiffe_id: Option<SpiffeId>,
    method: http::Method,
    intent: Option<Declared>,
    destination: Option<Destination>,
    evaluated: Option<Evaluated>,
    verdict: Verdict,
    upstream_status: Option<u16>,
    /// Secret headers the agent sent that were removed before forwarding (names only).
    stripped_headers: Vec<String>,
    /// This request's place in the decision-log queue ([`Recorder::reserve`]).
    slot: Option<Slot>,
    /// The kill that refused the request (its id goes in the line).
    kill_id: Option<String>,
    /// The open flow this request (or tunnel) is, while it streams: a kill may cut it.
    flow: Option<Flow>,
    /// This request's place among its caller's requests in flight, given back when the
    /// record drops (the response body ended).
    in_flight: Option<InFlightGuard>,
    /// Whether the line counts in `tollgate_requests_total` (not for the line of a cut
    /// connection, whose CONNECT was counted when it was decided).
    counted: bool,
}

impl Recorder {
    /// Starts timing a request.
    pub fn start(
        log: DecisionLog,
        metrics: Arc<Metrics>,
        listener: Arc<str>,
        peer: Arc<str>,
        spiffe_id: Option<SpiffeId>,
        method: http::Method,
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
            method,
            intent: None,
            destination: None,
            evaluated: None,
            verdict: Verdict::Undecided,
            upstream_status: None,
            stripped_headers: Vec::new(),
            slot: None,
            kill_id: None,
            flow: None,
            in_flight: None,
            counted: true,
        }
    }

    /// Reserves this request's line in the decision-log queue; called before any stage, so a
    /// request that could not be logged is refused (`decision_log_unavailable`) instead of
    /// served. See `telemetry::decision_log` for the two modes.
    pub async fn reserve(&mut self) -> Result<(), ProxyError> {
        self.slot = self.log.reserve().await?;
        Ok(())
    }

    /// The key of this request's decision-log line (`x-tollgate-decision-id`).
    pub fn decision_id(&self) -> &str {
        &self.decision_id
    }

    /// What has been decided so far.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Notes where the request goes.
    pub fn target(&mut self, target: &Target) {
        self.destination = Some(Destination {
            scheme: Some(target.scheme),
            host: target.host.clone(),
            port: target.port,
            path: Some(target.path.clone()),
        });
    }

    /// Notes where a CONNECT tunnel goes.
    pub fn authority(&mut self, host: &str, port: u16) {
        self.destination = Some(Destination {
            scheme: None,
            host: host.to_owned(),
            port,
            path: None,
        });
    }

    /// Notes the declared intent.
    pub fn intent(&mut self, intent: &Intent) {
        self.intent = Some(Declared {
            name: intent.name.clone(),
            task: intent.task.clone(),
            verified: intent.verified,
        });
    }

    /// Notes which policy revision decided, and how long it took.
    pub fn evaluated(&mut self, revision: Arc<str>, engine: EngineKind, eval_us: u64) {
        self.evaluated = Some(Evaluated {
            revision,
            engine,
            eval_us,
        });
    }

    /// The policy's answer (the authorize stage; one call per request).
    pub fn decided(
        &mut self,
        allow: bool,
        said: Option<String>,
        label: Reason,
        credential: Option<String>,
        enforced: bool,
    ) {
        self.verdict = Verdict::Policy {
            allow,
            said,
            label,
            credential,
            enforced,
            failure: None,
        };
    }

    /// The kill switch refused the request (the authorize stage).
    pub fn killed(&mut self, kill: &Kill) {
        self.verdict = Verdict::Killed;
        self.kill_id = Some(kill.id.clone());
    }

    /// The request (or connection) is now an open flow a kill can cut; if one does, its line
    /// says so (`reason: killed`, the kill's id, the bytes each way).
    pub fn attach_flow(&mut self, flow: Flow) {
        self.flow = Some(flow);
    }

    /// Holds the request's place among its caller's requests in flight until the record drops.
    pub fn hold(&mut self, place: InFlightGuard) {
        self.in_flight = Some(place);
    }

    /// The open flow attached to this record.
    pub fn flow(&self) -> Option<&Flow> {
        self.flow.as_ref()
    }

    /// This line is not a decision of its own (the cut of a connection decided earlier): it
    /// is written but not counted in `tollgate_requests_total`.
    pub fn uncounted(&mut self) {
        self.counted = false;
    }

    /// The request ends with `error` before a response: a refusal of tollgate's own, or the
    /// failure of a call the policy let through (`proxy::error_response`, the one caller).
    /// The policy's own answers (deny, evaluation failure, kill) are already recorded.
    pub fn ended_with(&mut self, error: &ProxyError) {
        if error.is_decision() {
            return;
        }
        let reason = error.reason();
        let refused = match &mut self.verdict {
            Verdict::Policy { credential, .. } if error.denies_after_allow() => Verdict::Refused {
                reason,
                credential: credential.take(),
            },
            Verdict::Policy { failure, .. } => {
                *failure = Some(reason);
                return;
            }
            Verdict::Refused { credential, .. } => Verdict::Refused {
                reason,
                credential: credential.take(),
            },
            Verdict::Undecided | Verdict::Killed => Verdict::Refused {
                reason,
                credential: None,
            },
        };
        self.verdict = refused;
    }

    /// A forwarded response broke off while streaming (the body; `reason` is an upstream
    /// reason).
    pub fn stream_failed(&mut self, reason: Reason) {
        if let Verdict::Policy { failure, .. } = &mut self.verdict {
            *failure = Some(reason);
        }
    }

    /// The agent's own secret headers that the inject stage removes (names only), for the
    /// request's decision-log line.
    pub fn stripped_headers(&mut self, names: Vec<String>) {
        self.stripped_headers = names;
    }

    /// The origin's status, as forwarded.
    pub fn responded(&mut self, status: http::StatusCode) {
        self.upstream_status = Some(status.as_u16());
    }

    /// Time since the request started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        // A flow a kill cut: the line says killed, by which kill, after how many bytes.
        let cut = self.flow.take().and_then(|flow| {
            let kill = flow.killed()?.clone();
            let (bytes_from_agent, bytes_to_agent) = flow.bytes();
            self.metrics.flow_killed(flow.kind());
            Some((kill, flow.kind(), bytes_from_agent, bytes_to_agent))
        });
        if let Some((kill, ..)) = &cut {
            self.verdict = Verdict::Killed;
            self.kill_id = Some(kill.id.clone());
        }
        if self.counted {
            self.metrics.record_request(
                &self.listener,
                self.verdict.label(),
                self.destination.as_ref().map(|d| d.host.as_str()),
                seconds,
            );
        }
        let (decision, error) = self.verdict.record();
        let intent = match &self.intent {
            Some(declared) => IntentRecord {
                name: declared.name.as_deref(),
                task: declared.task.as_ref().map(TaskName::as_str),
                verified: declared.verified,
            },
            None => IntentRecord {
                name: None,
                task: None,
                verified: false,
            },
        };
        let destination = self.destination.as_ref();
        let record = DecisionRecord {
            decision_id: &self.decision_id,
            time: crate::policy::input::format_time(self.time),
            listener: &self.listener,
            source: SourceRecord {
                spiffe_id: self.spiffe_id.as_ref().map(|id| id.as_str()),
                address: &self.peer,
            },
            intent,
            request: RequestRecord {
                method: self.method.as_str(),
                scheme: destination.and_then(|d| d.scheme),
                host: destination.map(|d| d.host.as_str()),
                port: destination.map(|d| d.port),
                path: destination.and_then(|d| d.path.as_deref()),
                stripped_headers: &self.stripped_headers,
            },
            decision,
            error,
            policy_revision: self.evaluated.as_ref().map(|e| &*e.revision),
            engine: self.evaluated.as_ref().map(|e| e.engine.as_str()),
            eval_us: self.evaluated.as_ref().map(|e| e.eval_us),
            upstream_status: self.upstream_status,
            duration_ms: seconds * 1000.0,
            kill_id: self.kill_id.as_deref(),
            flow: cut
                .as_ref()
                .map(|(_, kind, from_agent, to_agent)| FlowRecord {
                    kind: kind.as_str(),
                    bytes_from_agent: *from_agent,
                    bytes_to_agent: *to_agent,
                }),
        };
        self.log.record(&record, self.slot.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: bool, said: Option<&str>, label: Reason) -> Verdict {
        Verdict::Policy {
            allow,
            said: said.map(str::to_owned),
            label,
            credential: None,
            enforced: true,
            failure: None,
        }
    }

    #[test]
    fn counts_each_verdict_under_its_closed_reason() {
        assert_eq!(Verdict::Undecided.label(), Reason::PolicyDenied);
        assert_eq!(
            policy(true, Some("allowed by rule x"), Reason::Allowed).label(),
            Reason::Allowed
        );
        assert_eq!(
            policy(false, Some("a custom reason"), Reason::PolicyDenied).label(),
            Reason::PolicyDenied
        );
        assert_eq!(Verdict::Killed.label(), Reason::Killed);
        let mut allowed = policy(true, None, Reason::Allowed);
        if let Verdict::Policy { failure, .. } = &mut allowed {
            *failure = Some(Reason::UpstreamTimeout);
        }
        assert_eq!(allowed.label(), Reason::UpstreamTimeout);
        // A dry-run deny that then failed upstream still counts as what the policy decided.
        let mut dry = policy(false, Some("method_not_allowed"), Reason::MethodNotAllowed);
        if let Verdict::Policy {
            failure, enforced, ..
        } = &mut dry
        {
            *failure = Some(Reason::UpstreamConnect);
            *enforced = false;
        }
        assert_eq!(dry.label(), Reason::MethodNotAllowed);
    }

    #[test]
    fn logs_the_policy_words_and_tollgate_reasons_apart() {
        let denied = policy(false, Some("a custom reason"), Reason::PolicyDenied);
        let (decision, error) = denied.record();
        assert_eq!((decision.reason, error), ("a custom reason", None));
        let (decision, error) = Verdict::Killed.record();
        assert_eq!(
            (decision.allow, decision.reason, error),
            (false, "killed", None)
        );
        let refused = Verdict::Refused {
            reason: Reason::CredentialUnavailable,
            credential: Some("github".into()),
        };
        let (decision, error) = refused.record();
        assert_eq!(
            (decision.reason, decision.credential, error),
            (
                "credential_unavailable",
                Some("github"),
                Some("credential_unavailable")
            )
        );
    }
}
