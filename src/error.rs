//! `ProxyError`: every way a request can fail, and what each means for the response.
//!
//! [`ProxyError::reason`] is a single exhaustive match onto the closed [`Reason`]; the status,
//! the fault and the body's `error` follow from the reason, so adding a failure is one new
//! variant and one line. Messages speak to the agent's developer and never carry secrets or
//! header values.

use http::StatusCode;

use crate::intent::IntentError;
use crate::policy::PolicyFailure;
pub use crate::reason::Fault;
use crate::reason::Reason;
use crate::upstream::{ResolveError, UpstreamError};

/// A request that will not be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    BadIntent(#[from] IntentError),
    #[error(
        "the request carries both Content-Length and Transfer-Encoding (request smuggling defence)"
    )]
    AmbiguousFraming,
    #[error("the request's headers are larger than limits.max_header_bytes ({0} bytes)")]
    HeadersTooLarge(usize),
    #[error("the request's Host ({found}) does not match the tunnel's destination ({expected})")]
    HostMismatch { expected: String, found: String },
    /// The policy denied: `said` is its own reason, verbatim; `label` the closed one.
    #[error("{said}")]
    Denied { said: String, label: Reason },
    /// The caller or the declared task is killed: by this kill, whose id and operator's reason
    /// the 403 carries.
    #[error("killed")]
    Killed(std::sync::Arc<crate::kill::Kill>),
    #[error("the intent token was refused: {0}")]
    IntentToken(crate::intent_token::TokenError),
    #[error("the policy could not decide: {}", .0.detail())]
    Policy(PolicyFailure),
    /// Transparent listener: `host` (the SNI or Host the policy saw) does not resolve to
    /// `dialled`, the address the agent's connection was really going to.
    #[error("{host} does not resolve to {dialled}, the address this connection was made to")]
    DestinationMismatch {
        host: String,
        dialled: std::net::IpAddr,
    },
    #[error("{0}")]
    PrivateDestination(ResolveError),
    #[error("{0}")]
    Upstream(UpstreamError),
    #[error("credential `{0}` is unavailable; the request was not forwarded without it")]
    CredentialUnavailable(String),
    #[error(
        "the request carries secret headers ({0}); agents hold no secrets, tollgate injects them"
    )]
    AgentSecretPresent(String),
    /// The caller is at `limits.max_requests_per_caller` (this many in flight).
    #[error("the caller already has {0} requests in flight (limits.max_requests_per_caller)")]
    TooManyRequests(usize),
    #[error("tollgate is at its connection limit")]
    Overloaded,
    /// The decision log could not take the request's line in time (backpressure).
    #[error("{0}")]
    DecisionLogUnavailable(#[from] crate::telemetry::decision_log::Unavailable),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The closed reason: decision log, metric label, and `reason` of the JSON body (for
    /// policy denies the body carries the policy's own words instead, see
    /// [`public_reason`](Self::public_reason)).
    pub fn reason(&self) -> Reason {
        match self {
            ProxyError::BadRequest(_) => Reason::BadRequest,
            ProxyError::BadIntent(_) => Reason::BadIntent,
            ProxyError::AmbiguousFraming => Reason::AmbiguousFraming,
            ProxyError::HeadersTooLarge(_) => Reason::HeadersTooLarge,
            ProxyError::HostMismatch { .. } => Reason::HostMismatch,
            ProxyError::Denied { label, .. } => *label,
            ProxyError::Killed(_) => Reason::Killed,
            ProxyError::IntentToken(e) => e.reason(),
            ProxyError::Policy(failure) => failure.reason(),
            ProxyError::DestinationMismatch { .. } => Reason::DestinationMismatch,
            ProxyError::PrivateDestination(_) => Reason::PrivateDestination,
            ProxyError::CredentialUnavailable(_) => Reason::CredentialUnavailable,
            ProxyError::AgentSecretPresent(_) => Reason::AgentSecretPresent,
            ProxyError::Upstream(UpstreamError::Resolve(ResolveError::Private { .. })) => {
                Reason::PrivateDestination
            }
            ProxyError::Upstream(UpstreamError::Resolve(ResolveError::Dns { .. })) => {
                Reason::DnsError
            }
            ProxyError::Upstream(UpstreamError::Connect(_)) => Reason::UpstreamConnect,
            ProxyError::Upstream(UpstreamError::Tls(_)) => Reason::UpstreamTls,
            ProxyError::Upstream(UpstreamError::Timeout(_)) => Reason::UpstreamTimeout,
            ProxyError::Upstream(UpstreamError::Protocol(_)) => Reason::UpstreamProtocol,
            ProxyError::TooManyRequests(_) => Reason::TooManyRequests,
            ProxyError::Overloaded => Reason::Overloaded,
            ProxyError::DecisionLogUnavailable(_) => Reason::DecisionLogUnavailable,
            ProxyError::Internal(_) => Reason::Internal,
        }
    }

    /// The HTTP status of the response tollgate makes (the reason's).
    pub fn status(&self) -> StatusCode {
        self.reason().status()
    }

    /// Who caused it (the reason's).
    pub fn fault(&self) -> Fault {
        self.reason().fault()
    }

    /// Whether the agent's connection must be closed after the response (framing is in doubt).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::AmbiguousFraming
                | ProxyError::HeadersTooLarge(_)
                | ProxyError::BadRequest(_)
                | ProxyError::Internal(_)
        )
    }

    /// Whether the policy's own answer ends here (a policy deny, a failed evaluation or a
    /// kill): the decision is already recorded, and the body carries no `message`.
    pub fn is_decision(&self) -> bool {
        matches!(
            self,
            ProxyError::Denied { .. } | ProxyError::Killed(_) | ProxyError::Policy(_)
        )
    }

    /// Whether this refusal is a deny even when the policy allowed: tollgate's own conditions
    /// for forwarding (the credential the decision named, no agent secrets when so
    /// configured), recorded as a deny with this reason rather than as an allowed call's error.
    pub fn denies_after_allow(&self) -> bool {
        matches!(
            self,
            ProxyError::CredentialUnavailable(_) | ProxyError::AgentSecretPresent(_)
        )
    }

    /// The reason shown to the agent: the policy's own words for a policy deny, the closed
    /// reason otherwise.
    pub fn public_reason(&self) -> &str {
        match self {
            ProxyError::Denied { said, .. } => said,
            other => other.reason().as_str(),
        }
    }

    /// The JSON body of tollgate's own response (SPEC §6).
    pub fn body(&self, decision_id: &str) -> serde_json::Value {
        let mut body = serde_json::json!({
            "error": self.reason().error_name(),
            "reason": self.public_reason(),
            "decision_id": decision_id,
        });
        match self {
            ProxyError::Denied { .. } => {}
            // Which kill, and the operator's words: the agent's developer can tell an incident
            // from a bug, and quote the id to whoever lifts it.
            ProxyError::Killed(kill) => {
                body["kill_id"] = kill.id.as_str().into();
                body["kill_reason"] = kill.reason.as_deref().into();
            }
            _ => body["message"] = self.to_string().into(),
        }
        body
    }
}

impl From<UpstreamError> for ProxyError {
    fn from(error: UpstreamError) -> ProxyError {
        match error {
            UpstreamError::Resolve(private @ ResolveError::Private { .. }) => {
                ProxyError::PrivateDestination(private)
            }
            other => ProxyError::Upstream(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_family_to_its_status() {
        assert_eq!(
            ProxyError::AmbiguousFraming.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ProxyError::HeadersTooLarge(10).status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(
            ProxyError::Denied {
                said: "x".into(),
                label: Reason::PolicyDenied
            }
            .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ProxyError::Policy(PolicyFailure::Timeout).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ProxyError::from(UpstreamError::Timeout(std::time::Duration::from_secs(1))).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::from(UpstreamError::Connect("refused".into())).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::Overloaded.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn denies_carry_the_policy_reason_and_no_message() {
        let body = ProxyError::Denied {
            said: "method_not_allowed".into(),
            label: Reason::MethodNotAllowed,
        }
        .body("d-1");
        assert_eq!(body["error"], "forbidden");
        assert_eq!(body["reason"], "method_not_allowed");
        assert_eq!(body["decision_id"], "d-1");
        assert!(body.get("message").is_none());
    }
}
