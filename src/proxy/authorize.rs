//! The authorize stage: the kill switch, then the policy on the full input; the answer is a
//! [`Permit`] or a refusal. Only this module can make a `Permit`, so later stages that take one
//! (credential, inject) cannot run for a request the policy did not allow.
//!
//! The outcome is recorded here, once: the policy's answer ([`Recorder::decided`]: its own
//! words verbatim, its closed label for the metric) or the kill ([`Recorder::killed`]).

use std::time::SystemTime;

use http::Request;

use crate::error::ProxyError;
use crate::intent::Intent;
use crate::policy::Decision;
use crate::policy::input::{DestinationFacts, PolicyInput, RequestFacts, policy_headers};
use crate::reason::Reason;

use super::ctx::ConnCtx;
use super::record::Recorder;
use super::target::{Destination, Resolution, Target, TunnelAuthority};
use super::{Live, Proxy};

/// What a deny without a `reason` is reported as.
const DENIED_WITHOUT_REASON: &str = "denied by policy";

/// Proof that the policy allowed this request (or that dry-run let it through), with the intent
/// it was allowed for.
pub struct Permit {
    decision: Decision,
    intent: Intent,
}

impl Permit {
    /// The decision that allowed the request.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The intent the request was allowed for.
    pub fn intent(&self) -> &Intent {
        &self.intent
    }
}

/// Decides an HTTP request.
pub fn request<B>(
    proxy: &Proxy,
    conn: &ConnCtx,
    live: &Live,
    request: &Request<B>,
    destination: &Destination,
    intent: Intent,
    record: &mut Recorder,
) -> Result<Permit, ProxyError> {
    let input = request_input(
        conn,
        request,
        destination,
        intent,
        live.credentials.agent_secrets().names(),
    );
    decide(proxy, live, input, record)
}

/// The policy input of an HTTP request on `conn`, its secret headers (`secret_headers`, the
/// agent-secret names in force) redacted. Public so that `benches/request_path.rs` measures
/// the input the proxy builds, not a copy of this code.
pub fn request_input<B>(
    conn: &ConnCtx,
    request: &Request<B>,
    destination: &Destination,
    intent: Intent,
    secret_headers: &[http::HeaderName],
) -> PolicyInput {
    let target = &destination.target;
    PolicyInput {
        time: SystemTime::now(),
        source: conn.source(),
        intent,
        request: Some(request_facts(request, target, secret_headers)),
        destination: DestinationFacts {
            host: target.host.clone(),
            port: target.port,
            ip: destination.resolution.first(),
        },
        connection: conn.connection(conn.tunnel.is_some()),
    }
}

/// Decides a CONNECT at connection level (`input.request` is null).
pub fn connection(
    proxy: &Proxy,
    conn: &ConnCtx,
    live: &Live,
    authority: &TunnelAuthority,
    resolution: &Resolution,
    intent: Intent,
    record: &mut Recorder,
) -> Result<Permit, ProxyError> {
    let input = PolicyInput {
        time: SystemTime::now(),
        source: conn.source(),
        intent,
        request: None,
        destination: DestinationFacts {
            host: authority.host.clone(),
            port: authority.port,
            ip: resolution.first(),
        },
        connection: conn.connection(conn.intercept),
    };
    decide(proxy, live, input, record)
}

/// The kill switch, then the revision in force, for one input.
fn decide(
    proxy: &Proxy,
    live: &Live,
    input: PolicyInput,
    record: &mut Recorder,
) -> Result<Permit, ProxyError> {
    // The kill switch comes first and does not depend on the policy: a kill survives reloads
    // and cannot be undone by a policy that allows everything.
    let spiffe_id = input.source.caller.spiffe_id().map(|id| id.as_str());
    if let Some(kill) = proxy.kills.check(spiffe_id, input.intent.task.as_deref()) {
        record.killed(&kill);
        tracing::info!(decision_id = %record.decision_id(), kill = %kill.id, "refused: caller or task is killed");
        return Err(ProxyError::Killed(kill));
    }
    let revision = &live.policy;
    let evaluation = revision.evaluate(&input);
    proxy
        .metrics
        .observe_policy_eval(revision.engine, evaluation.eval_us);
    record.evaluated(
        revision.revision.clone(),
        revision.engine,
        evaluation.eval_us,
    );
    let intent = input.intent;
    let refusal = match evaluation.outcome {
        Ok(decision) if decision.allow => {
            record.decided(
                true,
                decision.reason.clone(),
                Reason::Allowed,
                decision.credential.as_ref().map(|c| c.name.clone()),
                true,
            );
            return Ok(Permit { decision, intent });
        }
        Ok(decision) => {
            let said = decision
                .reason
                .unwrap_or_else(|| DENIED_WITHOUT_REASON.to_string());
            let label = Reason::of_policy_deny(&said);
            let credential = decision.credential.map(|c| c.name);
            record.decided(false, Some(said.clone()), label, credential, !proxy.dry_run);
            ProxyError::Denied { said, label }
        }
        Err(failure) => {
            tracing::warn!(
                decision_id = %record.decision_id(),
                revision = %revision.revision,
                reason = failure.reason().as_str(),
                detail = failure.detail(),
                "policy evaluation failed; denying"
            );
            record.decided(false, None, failure.reason(), None, !proxy.dry_run);
            ProxyError::Policy(failure)
        }
    };
    if proxy.dry_run {
        // Dry run: the deny is logged (not enforced); the request goes on as if allowed, with
        // no credential and no header changes.
        return Ok(Permit {
            decision: Decision {
                allow: true,
                ..Decision::default()
            },
            intent,
        });
    }
    Err(refusal)
}

/// `input.request`: the normalized target, the method, the headers (secrets redacted).
fn request_facts<B>(
    request: &Request<B>,
    target: &Target,
    secret_headers: &[http::HeaderName],
) -> RequestFacts {
    RequestFacts {
        method: request.method().as_str().to_string(),
        scheme: target.scheme,
        host: target.host.clone(),
        port: target.port,
        path: target.path.clone(),
        query: target.query.clone(),
        headers: policy_headers(request.headers(), secret_headers),
        protocol: match request.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
    }
}
