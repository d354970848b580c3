//! The request path: what tollgate decides about a request, and the response it makes. The
//! connection it arrived on — TLS, framing, limits, tunnels, the drain — is the server's
//! ([`crate::server`]), which hands each request to [`handle`] (each CONNECT to
//! [`connect::connect`]) and acts on the answer.
//!
//! [`handle`] runs the stages in a fixed order, one file each, and always returns a response:
//! 1. **target** ([`target`]) — one trusted place for the destination; host and path
//!    normalized; the name resolved and non-public addresses refused, so the policy sees the
//!    address that will be dialled.
//! 2. **intent** ([`intent`]) — the `X-Agent-*` headers, overridden by a valid signed intent
//!    token (a malformed header is a 400, an invalid token a 403).
//! 3. **secrets** ([`secrets`]) — an agent holds none: the secret headers it sent are refused
//!    (`on_present: deny`) or removed in stage 7.
//! 4. **authorize** ([`authorize`]) — the kill switch, then the policy on the full input; only
//!    a `Permit` goes further.
//! 5. **resolution** — an allowed call to a name that did not resolve ends here (502); a
//!    denied one got its 403 in stage 4 whether its name resolved or not.
//! 6. **credential** ([`credential`]) — when the decision names a credential, obtain it, or
//!    deny (`credential_unavailable`): never forwarded without it.
//! 7. **inject** ([`inject`]) — the origin's request: hop-by-hop, intent and the agent's secret
//!    headers removed, the policy's header changes applied, the credential injected.
//! 8. **forward** ([`forward`]) — send it; the origin's response streams back to the agent.
//!
//! and **record** ([`record`]): the `Recorder` drop guard writes one decision-log line, and
//! counts it once, on every exit path. Every failure is a [`ProxyError`] turned into a
//! response by [`error_response`], the one place that does so.

pub mod authorize;
pub mod body;
pub mod connect;
pub mod credential;
pub mod ctx;
pub mod forward;
pub mod in_flight;
pub mod inject;
pub mod intent;
pub mod record;
pub mod secrets;
pub mod target;

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::credentials::CredentialStore;
use crate::error::ProxyError;
use crate::kill::flows::{FlowKind, Stop};
use crate::policy::PolicyRevision;
use crate::reason::Fault;
use crate::telemetry::decision_log::DecisionLog;
use crate::telemetry::metrics::Metrics;
use crate::upstream::Upstream;
use crate::watch::Watched;

use body::ResponseBody;
use ctx::ConnCtx;
use record::Recorder;

/// What a configuration reload replaces, together: the policy revision, the credentials and
/// the upstream client built from the same reading of the configuration. A request reads it
/// once.
pub struct Live {
    pub policy: Arc<PolicyRevision>,
    pub credentials: Arc<CredentialStore>,
    /// `upstream`: resolver (with `allow_private`), timeouts and origin TLS.
    pub upstream: Arc<Upstream>,
    /// Keys of the configuration read that differ from the running one and need a restart
    /// ([`crate::config::restart::pending_restart`]); empty at start-up.
    pub pending_restart: Vec<String>,
}

impl crate::policy::RevisionInForce for Watched<Live> {
    fn prepare_thread(&self) {
        self.load().policy.prepare_thread();
    }
}

/// What deciding needs: built once at start-up, read without locks.
pub struct Proxy {
    /// The policy and credentials in force; replaced whole on reload.
    pub live: Arc<Watched<Live>>,
    pub decision_log: DecisionLog,
    pub metrics: Arc<Metrics>,
    /// Issuers of signed intent tokens; their key sets reload when the JWKS files change.
    pub intent_issuers: Arc<crate::intent_token::IntentIssuers>,
    /// Kills in force: checked before the policy on every request.
    pub kills: Arc<crate::kill::KillSwitch>,
    /// Requests in flight per caller (`limits.max_requests_per_caller`).
    pub in_flight: Arc<in_flight::InFlight>,
    pub dry_run: bool,
}

impl Proxy {
    /// The upstream client in force (replaced on reload with the rest of [`Live`]).
    pub fn upstream(&self) -> Arc<Upstream> {
        self.live.current().upstream.clone()
    }
}

/// Runs one HTTP request through the stages; every failure becomes a response here.
pub async fn handle(
    proxy: &Proxy,
    conn: &ConnCtx,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let mut record = conn.recorder(proxy, request.method().clone());
    // A span per request at debug level: at the default `info` it is disabled and costs
    // nothing per request; the request's own lines at `info` and above carry `decision_id`
    // themselves.
    let span = tracing::debug_span!("request", decision_id = %record.decision_id());
    match stages(proxy, conn, request, &mut record)
        .instrument(span)
        .await
    {
        Ok(response) => forward::respond(proxy, response, record),
        Err(error) => error_response(&error, &mut record),
    }
}

async fn stages(
    proxy: &Proxy,
    conn: &ConnCtx,
    request: Request<Incoming>,
    record: &mut Recorder,
) -> Result<Response<Incoming>, ProxyError> {
    // 0. record: the request's decision-log line has its place, or the request ends here.
    record.reserve().await?;
    // 0b. the caller's share: a place among its requests in flight, held until the response
    // body ends, or a 429.
    let place = proxy
        .in_flight
        .admit(conn.caller.spiffe_id())
        .map_err(|refused| ProxyError::TooManyRequests(refused.limit))?;
    record.hold(place);
    // The policy revision and credentials this request is decided and served with, read once.
    let live = proxy.live.current();
    let http2 = request.version() == http::Version::HTTP_2;
    // 1. target: where the request goes, from one trusted place, normalized and resolved.
    let destination = target::request_destination(proxy, conn, &request, record).await?;
    // 2. intent: the declared intent (headers, or a signed token that wins over them).
    let intent = intent::declared(proxy, conn, request.headers(), record)?;
    // 3. secrets: an agent holds none; refuse (or note, to remove in 7) those it sent.
    secrets::check(&live.credentials, request.headers(), record)?;
    // 4. authorize: the kill switch, then the policy; only a Permit goes further.
    let permit = authorize::request(proxy, conn, &live, &request, &destination, intent, record)?;
    // 5. resolution: the policy allowed a name that does not resolve: now that is the answer.
    destination.resolution.addresses()?;
    // 6. credential: the one the decision names, obtained, or a deny.
    let token = credential::obtain(
        &live.credentials,
        conn,
        &destination.target,
        &permit,
        record,
    )
    .await?;
    // 7. inject: the origin's request, rewritten, with the credential.
    let upstream_request = inject::upstream_request(
        request,
        &destination.target,
        &permit,
        live.credentials.agent_secrets(),
        token.as_ref().map(|t| &t.injection),
    )?;
    drop(token);
    // 8. forward: send it; the response streams back from `handle`. A transparent
    // connection's request goes only to the address the agent dialled. From here on the
    // request is an open flow a kill ends (issue 15): an HTTP/2 stream alone, otherwise the
    // agent's whole HTTP/1 connection, reset.
    let (kind, stop) = if http2 {
        (FlowKind::Http2Stream, Stop::stream())
    } else {
        (FlowKind::Request, Stop::Connection(conn.abort.clone()))
    };
    let flow = proxy.kills.open_flow(
        kind,
        conn.caller.spiffe_id(),
        permit.intent().task.as_ref(),
        stop,
    );
    let upstream_request = upstream_request.map(|body| flow.meter_body(body));
    record.attach_flow(flow);
    let pin = conn.original.map(|original| original.ip());
    let sent = forward::send(proxy, upstream_request, pin);
    // An HTTP/2 stream cut before the origin answered gets the kill's 403 (nothing was
    // forwarded to the agent yet, so nothing is truncated). An HTTP/1 flow is not raced here:
    // its connection is reset by the server, and a 403 written first would look like a clean
    // answer to a client still uploading.
    let Some(cut) = record.flow().and_then(|flow| flow.stream_stopped()) else {
        return sent.await;
    };
    tokio::select! {
        sent = sent => sent,
        () = cut => Err(match record.flow().and_then(|flow| flow.killed()) {
            Some(kill) => ProxyError::Killed(kill.clone()),
            None => ProxyError::Internal("flow stopped without a kill".into()),
        }),
    }
}

/// Refuses a request before its stages run (the server's framing and size checks), with the
/// same decision-log line and JSON body as any refusal.
pub fn refuse(
    proxy: &Proxy,
    conn: &ConnCtx,
    method: http::Method,
    error: &ProxyError,
) -> Response<ResponseBody> {
    let mut record = conn.recorder(proxy, method);
    error_response(error, &mut record)
}

/// The one place a [`ProxyError`] becomes a response (SPEC §6).
pub fn error_response(error: &ProxyError, record: &mut Recorder) -> Response<ResponseBody> {
    record.ended_with(error);
    let reason = error.reason().as_str();
    let decision_id = record.decision_id();
    match error.fault() {
        Fault::Caller => {
            tracing::debug!(decision_id, reason, %error, "request refused")
        }
        Fault::Upstream => {
            tracing::info!(decision_id, reason, %error, "upstream failed")
        }
        Fault::Internal => {
            tracing::warn!(decision_id, reason, %error, "request failed")
        }
    }
    let body = error.body(decision_id).to_string();
    let mut response = Response::new(ResponseBody::own(body));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(decision_id) {
        headers.insert(forward::DECISION_ID, id);
    }
    if error.closes_connection() {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
