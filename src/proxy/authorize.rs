//! The authorize stage: build the policy input, ask the current revision, and turn the answer
//! into a [`Permit`] or a refusal. Only this module can make a `Permit`, so later stages that
//! take one (inject, forward) cannot run for a request the policy did not allow.

use std::time::SystemTime;

use crate::error::ProxyError;
use crate::policy::input::{
    ConnectionFacts, DestinationFacts, PolicyInput, RequestFacts, SourceFacts,
};
use crate::policy::{Decision, PolicyRevision};

use super::Proxy;
use super::record::Recorder;

/// Proof that the policy allowed this request (or that dry-run let it through).
pub struct Permit {
    decision: Decision,
}

impl Permit {
    /// The decision that allowed the request.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

/// Everything the policy input needs besides the identity, intent and time.
pub struct Subject {
    pub request: Option<RequestFacts>,
    pub destination: DestinationFacts,
    pub connection: ConnectionFacts,
}

/// Evaluates the current policy revision for one input and records the outcome.
pub fn authorize(
    proxy: &Proxy,
    source: SourceFacts,
    intent: crate::intent::Intent,
    subject: Subject,
    record: &mut Recorder,
) -> Result<Permit, ProxyError> {
    // The kill switch comes first and does not depend on the policy: a kill survives reloads
    // and cannot be undone by a policy that allows everything.
    let spiffe_id = source.caller.spiffe_id().map(|id| id.as_str());
    if let Some(kill) = proxy.kills.check(spiffe_id, intent.task.as_deref()) {
        record.allow = false;
        record.reason = Some("killed".to_string());
        tracing::info!(decision_id = %record.decision_id, kill = %kill.id, "refused: caller or task is killed");
        return Err(ProxyError::Denied {
            reason: "killed".to_string(),
        });
    }
    let revision: std::sync::Arc<PolicyRevision> = proxy.policy.current();
    let input = PolicyInput {
        time: SystemTime::now(),
        source,
        intent,
        request: subject.request,
        destination: subject.destination,
        connection: subject.connection,
    };
    let evaluation = revision.evaluate(&input);
    proxy
        .metrics
        .observe_policy_eval(revision.engine, evaluation.eval_us);
    record.revision = Some(revision.revision.clone());
    record.engine = Some(revision.engine.as_str());
    record.eval_us = Some(evaluation.eval_us);
    let refusal = match evaluation.outcome {
        Ok(decision) => {
            record.allow = decision.allow;
            record.reason = decision.reason.clone();
            record.credential = decision.credential.as_ref().map(|c| c.name.clone());
            if decision.allow {
                return Ok(Permit { decision });
            }
            ProxyError::Denied {
                reason: decision
                    .reason
                    .unwrap_or_else(|| "denied by policy".to_string()),
            }
        }
        Err(failure) => {
            tracing::warn!(
                decision_id = %record.decision_id,
                revision = %revision.revision,
                reason = failure.reason(),
                detail = failure.detail(),
                "policy evaluation failed; denying"
            );
            record.allow = false;
            record.reason = Some(failure.reason().to_string());
            ProxyError::Policy(failure)
        }
    };
    if proxy.dry_run {
        // Dry run: log what would have happened, enforce nothing.
        record.enforced = false;
        return Ok(Permit {
            decision: Decision {
                allow: true,
                ..Decision::default()
            },
        });
    }
    Err(refusal)
}
