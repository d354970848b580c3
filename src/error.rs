//! `ProxyError`: every way a request can fail, and the one place each becomes a response.
//!
//! `status()`, `reason()` and `fault()` are single exhaustive matches, so adding a failure
//! forces a decision about all three. `reason()` is a closed set: it is the decision log's
//! reason for tollgate's own refusals and (later) the metric label. Messages speak to the
//! agent's developer and never carry secrets or header values.

use http::StatusCode;

use crate::intent::IntentError;
use crate::policy::PolicyFailure;
use crate::upstream::{ResolveError, UpstreamError};

/// Who is at fault, as in Pingora: decides the status family and how loudly we log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The agent sent something we refuse (4xx).
    Caller,
    /// The origin failed (502/504).
    Upstream,
    /// tollgate itself (5xx).
    Internal,
}

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
    #[error("{reason}")]
    Denied { reason: String },
    #[error("the intent token was refused: {0}")]
    IntentToken(crate::intent_token::TokenError),
    #[error("the policy could not decide: {}", .0.detail())]
    Policy(PolicyFailure),
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
    #[error("tollgate is at its connection limit")]
    Overloaded,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The HTTP status of the response tollgate makes.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BadIntent(_)
            | ProxyError::AmbiguousFraming
            | ProxyError::HostMismatch { .. } => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Denied { .. }
            | ProxyError::IntentToken(_)
            | ProxyError::Policy(_)
            | ProxyError::CredentialUnavailable(_)
            | ProxyError::AgentSecretPresent(_)
            | ProxyError::PrivateDestination(_) => StatusCode::FORBIDDEN,
            ProxyError::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamError::Resolve(ResolveError::Private { .. })) => {
                StatusCode::FORBIDDEN
            }
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The closed reason: decision log, metric label, and `reason` of the JSON body (for
    /// policy denies the body carries the policy's own reason instead).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadIntent(_) => "bad_intent",
            ProxyError::AmbiguousFraming => "ambiguous_framing",
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
            ProxyError::HostMismatch { .. } => "host_mismatch",
            ProxyError::Denied { .. } => "policy_denied",
            ProxyError::IntentToken(e) => e.reason(),
            ProxyError::Policy(failure) => failure.reason(),
            ProxyError::PrivateDestination(_) => "private_destination",
            ProxyError::CredentialUnavailable(_) => "credential_unavailable",
            ProxyError::AgentSecretPresent(_) => "agent_secret_present",
            ProxyError::Upstream(UpstreamError::Resolve(ResolveError::Private { .. })) => {
                "private_destination"
            }
            ProxyError::Upstream(UpstreamError::Resolve(ResolveError::Dns { .. })) => "dns_error",
            ProxyError::Upstream(UpstreamError::Connect(_)) => "upstream_connect",
            ProxyError::Upstream(UpstreamError::Tls(_)) => "upstream_tls",
            ProxyError::Upstream(UpstreamError::Timeout(_)) => "upstream_timeout",
            ProxyError::Upstream(UpstreamError::Protocol(_)) => "upstream_protocol",
            ProxyError::Overloaded => "overloaded",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// Who caused it.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BadIntent(_)
            | ProxyError::AmbiguousFraming
            | ProxyError::HeadersTooLarge(_)
            | ProxyError::HostMismatch { .. }
            | ProxyError::Denied { .. }
            | ProxyError::IntentToken(_)
            | ProxyError::AgentSecretPresent(_)
            | ProxyError::PrivateDestination(_) => Fault::Caller,
            ProxyError::Upstream(UpstreamError::Resolve(ResolveError::Private { .. })) => {
                Fault::Caller
            }
            ProxyError::Upstream(_) | ProxyError::CredentialUnavailable(_) => Fault::Upstream,
            ProxyError::Policy(_) | ProxyError::Overloaded | ProxyError::Internal(_) => {
                Fault::Internal
            }
        }
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

    /// The `error` field of the JSON body: the status in words.
    pub fn error_name(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request_header_fields_too_large",
            StatusCode::BAD_GATEWAY => "bad_gateway",
            StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            _ => "internal_error",
        }
    }

    /// The reason shown to the agent and written to the decision log: the policy's own words
    /// for a policy deny, the closed reason otherwise.
    /// Whether this refusal is a deny even when the policy allowed: tollgate's own conditions
    /// for forwarding (the credential the decision named, no agent secrets when so
    /// configured), recorded as a deny with this reason rather than as an allowed call's error.
    pub fn denies_after_allow(&self) -> bool {
        matches!(
            self,
            ProxyError::CredentialUnavailable(_) | ProxyError::AgentSecretPresent(_)
        )
    }

    pub fn public_reason(&self) -> &str {
        match self {
            ProxyError::Denied { reason } => reason,
            other => other.reason(),
        }
    }

    /// The JSON body of tollgate's own response (SPEC §6).
    pub fn body(&self, decision_id: &str) -> serde_json::Value {
        let mut body = serde_json::json!({
            "error": self.error_name(),
            "reason": self.public_reason(),
            "decision_id": decision_id,
        });
        if !matches!(self, ProxyError::Denied { .. }) {
            body["message"] = self.to_string().into();
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
            ProxyError::Denied { reason: "x".into() }.status(),
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
            reason: "method_not_allowed".into(),
        }
        .body("d-1");
        assert_eq!(body["error"], "forbidden");
        assert_eq!(body["reason"], "method_not_allowed");
        assert_eq!(body["decision_id"], "d-1");
        assert!(body.get("message").is_none());
    }
}
