//! tollgate's closed set of reasons: why a request was allowed, refused, or failed.
//!
//! One [`Reason`] names every outcome tollgate itself can report. It is the `reason` label of
//! `tollgate_requests_total` (every series exists from start-up, one per listener and reason),
//! the `reason` of tollgate's own JSON refusals, the decision log's `error`, and — through
//! [`Reason::status`] and [`Reason::outcome`] — the status of the response and the `decision`
//! label. Adding a reason is one new variant: the compiler then asks for its name, status and
//! outcome, and a test asks for its row in `docs/METRICS.md`.
//!
//! A policy's own deny reason is the policy's text, not tollgate's: it reaches the agent and
//! the decision log verbatim. Only its metric label is a [`Reason`]: the matching documented
//! reason of the bundled policy ([`Reason::of_policy_deny`]), else [`Reason::PolicyDenied`], so
//! a custom policy's free text can never become a label value.
//!
//! This module depends on nothing else in tollgate: every other module may name a reason.

use http::StatusCode;

/// How a request ended, as `tollgate_requests_total{decision}` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The policy allowed and the call was forwarded.
    Allow,
    /// Refused, by the policy or by tollgate's own checks.
    Deny,
    /// Allowed, but tollgate could not complete the call.
    Error,
}

impl Outcome {
    /// The `decision` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }
}

/// Who is at fault, as in Pingora: decides how loudly a refusal is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The agent sent something we refuse (4xx), or the policy refused it.
    Caller,
    /// The origin, or a credential provider, failed (502/504, or a 403 without the credential).
    Upstream,
    /// tollgate itself (5xx, or a policy that could not decide).
    Internal,
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $outcome:ident, $status:ident, $fault:ident;)*) => {
        /// A closed reason: see the module documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order (`ALL[r.index()] == r`): metric series are
            /// created for each at start-up.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable snake_case name: metric label, JSON `reason`, decision-log `error`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// The `decision` label a request ending with this reason is counted under.
            pub const fn outcome(self) -> Outcome {
                match self {
                    $(Reason::$variant => Outcome::$outcome,)*
                }
            }

            /// The status tollgate answers with for this reason (`Allowed`: the origin's own;
            /// 200 for an established CONNECT).
            pub const fn status(self) -> StatusCode {
                match self {
                    $(Reason::$variant => StatusCode::$status,)*
                }
            }

            /// Who is at fault when a request ends with this reason.
            pub const fn fault(self) -> Fault {
                match self {
                    $(Reason::$variant => Fault::$fault,)*
                }
            }
        }
    };
}

reasons! {
    /// The policy allowed and the call was forwarded.
    Allowed = "allowed", Allow, OK, Caller;

    // The bundled policy's deny reasons (docs/POLICY.md): labels of policy denies.
    /// No SPIFFE ID, or the agent requires an authenticated caller.
    Unauthenticated = "unauthenticated", Deny, FORBIDDEN, Caller;
    /// The caller is not in the policy's data.
    UnknownAgent = "unknown_agent", Deny, FORBIDDEN, Caller;
    /// No rule lists the host.
    DestinationNotAllowed = "destination_not_allowed", Deny, FORBIDDEN, Caller;
    /// No rule allows the port.
    PortNotAllowed = "port_not_allowed", Deny, FORBIDDEN, Caller;
    /// No rule allows the method.
    MethodNotAllowed = "method_not_allowed", Deny, FORBIDDEN, Caller;
    /// No rule allows the path.
    PathNotAllowed = "path_not_allowed", Deny, FORBIDDEN, Caller;
    /// The rules need an intent and none was declared.
    IntentRequired = "intent_required", Deny, FORBIDDEN, Caller;
    /// The declared intent is not allowed.
    IntentNotAllowed = "intent_not_allowed", Deny, FORBIDDEN, Caller;
    /// The rules need a signed intent token.
    VerifiedIntentRequired = "verified_intent_required", Deny, FORBIDDEN, Caller;
    /// Outside every time window of the rules.
    OutsideTimeWindow = "outside_time_window", Deny, FORBIDDEN, Caller;
    /// The policy found the input malformed.
    InvalidInput = "invalid_input", Deny, FORBIDDEN, Caller;

    // tollgate's own.
    /// A policy deny whose reason is not one of the documented ones (its text stays verbatim
    /// in the response and the decision log).
    PolicyDenied = "policy_denied", Deny, FORBIDDEN, Caller;
    /// The policy gave no valid decision (error, undefined, wrong type).
    PolicyError = "policy_error", Deny, FORBIDDEN, Internal;
    /// The policy ran out of time or instructions.
    PolicyTimeout = "policy_timeout", Deny, FORBIDDEN, Internal;
    /// The caller or the declared task is killed (admin kill switch).
    Killed = "killed", Deny, FORBIDDEN, Caller;
    /// The request cannot be proxied as sent (not absolute-form, bad path, no host…).
    BadRequest = "bad_request", Deny, BAD_REQUEST, Caller;
    /// An `X-Agent-*` header breaks its limits.
    BadIntent = "bad_intent", Deny, BAD_REQUEST, Caller;
    /// Content-Length and Transfer-Encoding together, or conflicting lengths.
    AmbiguousFraming = "ambiguous_framing", Deny, BAD_REQUEST, Caller;
    /// The request head is larger than `limits.max_header_bytes`.
    HeadersTooLarge = "headers_too_large", Deny, REQUEST_HEADER_FIELDS_TOO_LARGE, Caller;
    /// Inside a tunnel, the request names another host than the tunnel's.
    HostMismatch = "host_mismatch", Deny, BAD_REQUEST, Caller;
    /// Transparent listener: the name authorized (SNI or Host) does not resolve to the
    /// address the agent dialled (no reaching an evil IP by naming an allowed host).
    DestinationMismatch = "destination_mismatch", Deny, FORBIDDEN, Caller;
    /// The destination resolves only to non-public addresses.
    PrivateDestination = "private_destination", Deny, FORBIDDEN, Caller;
    /// The caller already has `limits.max_requests_per_caller` requests in flight.
    TooManyRequests = "too_many_requests", Deny, TOO_MANY_REQUESTS, Caller;
    /// tollgate is at its connection limit.
    Overloaded = "overloaded", Deny, SERVICE_UNAVAILABLE, Internal;
    /// The decision-log queue had no room within `telemetry.decision_log_max_wait`
    /// (backpressure): the request is not forwarded without its line.
    DecisionLogUnavailable = "decision_log_unavailable", Deny, SERVICE_UNAVAILABLE, Internal;

    // Signed intent tokens (`intent_token`).
    /// The token is longer than 8 KiB.
    TokenTooLarge = "token_too_large", Deny, FORBIDDEN, Caller;
    /// Not a compact JWS.
    TokenMalformed = "token_malformed", Deny, FORBIDDEN, Caller;
    /// An algorithm other than ES256, EdDSA, RS256.
    TokenAlgNotAllowed = "token_alg_not_allowed", Deny, FORBIDDEN, Caller;
    /// A required claim is missing.
    TokenMissingClaim = "token_missing_claim", Deny, FORBIDDEN, Caller;
    /// A claim has the wrong type or value.
    TokenInvalidClaim = "token_invalid_claim", Deny, FORBIDDEN, Caller;
    /// `iss` is not a configured issuer.
    TokenUnknownIssuer = "token_unknown_issuer", Deny, FORBIDDEN, Caller;
    /// The issuer has no key for this kid and alg.
    TokenUnknownKey = "token_unknown_key", Deny, FORBIDDEN, Caller;
    /// The signature does not verify.
    TokenBadSignature = "token_bad_signature", Deny, FORBIDDEN, Caller;
    /// `exp` has passed.
    TokenExpired = "token_expired", Deny, FORBIDDEN, Caller;
    /// `nbf` or `iat` is in the future.
    TokenNotYetValid = "token_not_yet_valid", Deny, FORBIDDEN, Caller;
    /// `aud` lacks tollgate's audience.
    TokenWrongAudience = "token_wrong_audience", Deny, FORBIDDEN, Caller;
    /// `sub` is not the caller's SPIFFE ID.
    TokenSubjectMismatch = "token_subject_mismatch", Deny, FORBIDDEN, Caller;

    // Credentials: tollgate's conditions for forwarding, even when the policy allowed.
    /// The credential the decision names could not be obtained.
    CredentialUnavailable = "credential_unavailable", Deny, FORBIDDEN, Upstream;
    /// The agent sent a secret header (`agent_secrets.on_present: deny`).
    AgentSecretPresent = "agent_secret_present", Deny, FORBIDDEN, Caller;

    // Allowed, but not completed.
    /// The destination name does not resolve.
    DnsError = "dns_error", Error, BAD_GATEWAY, Upstream;
    /// The origin refused or did not answer the connection.
    UpstreamConnect = "upstream_connect", Error, BAD_GATEWAY, Upstream;
    /// The origin's TLS failed verification or the handshake.
    UpstreamTls = "upstream_tls", Error, BAD_GATEWAY, Upstream;
    /// `upstream.request_timeout` elapsed (before the head, or while the body streamed).
    UpstreamTimeout = "upstream_timeout", Error, GATEWAY_TIMEOUT, Upstream;
    /// The origin broke HTTP (before the head, or while the body streamed).
    UpstreamProtocol = "upstream_protocol", Error, BAD_GATEWAY, Upstream;
    /// tollgate itself failed.
    Internal = "internal", Error, INTERNAL_SERVER_ERROR, Internal;
}

impl Reason {
    /// How many reasons there are (the length of a per-reason table).
    pub const COUNT: usize = Reason::ALL.len();

    /// This reason's position in [`Reason::ALL`]: an index into per-reason tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The metric label of a policy's deny reason: the bundled policy's documented reason it
    /// names, else [`Reason::PolicyDenied`]. The text itself stays the policy's.
    pub fn of_policy_deny(text: &str) -> Reason {
        match text {
            "unauthenticated" => Reason::Unauthenticated,
            "unknown_agent" => Reason::UnknownAgent,
            "destination_not_allowed" => Reason::DestinationNotAllowed,
            "port_not_allowed" => Reason::PortNotAllowed,
            "method_not_allowed" => Reason::MethodNotAllowed,
            "path_not_allowed" => Reason::PathNotAllowed,
            "intent_required" => Reason::IntentRequired,
            "intent_not_allowed" => Reason::IntentNotAllowed,
            "verified_intent_required" => Reason::VerifiedIntentRequired,
            "outside_time_window" => Reason::OutsideTimeWindow,
            "invalid_input" => Reason::InvalidInput,
            _ => Reason::PolicyDenied,
        }
    }

    /// The `error` field of tollgate's JSON body: the status in words.
    pub fn error_name(self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request_header_fields_too_large",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            StatusCode::BAD_GATEWAY => "bad_gateway",
            StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            _ => "internal_error",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_reason_once_at_its_index() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason}");
        }
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::COUNT, "names are distinct");
        for name in names {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is snake_case"
            );
        }
    }

    #[test]
    fn gives_each_outcome_its_status_family() {
        for reason in Reason::ALL {
            let status = reason.status();
            match reason.outcome() {
                Outcome::Allow => assert_eq!(*reason, Reason::Allowed),
                Outcome::Deny => assert!(
                    status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
                    "{reason}: {status}"
                ),
                Outcome::Error => assert!(status.is_server_error(), "{reason}: {status}"),
            }
        }
    }

    #[test]
    fn labels_documented_policy_denies_and_nothing_else() {
        assert_eq!(
            Reason::of_policy_deny("method_not_allowed"),
            Reason::MethodNotAllowed
        );
        assert_eq!(Reason::of_policy_deny("default_deny"), Reason::PolicyDenied);
        assert_eq!(
            Reason::of_policy_deny("a custom policy's free text"),
            Reason::PolicyDenied
        );
        // tollgate's own reasons are not the policy's to claim.
        assert_eq!(Reason::of_policy_deny("killed"), Reason::PolicyDenied);
        assert_eq!(Reason::of_policy_deny("allowed"), Reason::PolicyDenied);
    }
}
