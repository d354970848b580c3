//! The request path. [`handle`] runs the stages of one HTTP request in a fixed order and always
//! returns a response; [`connect::handle_connect`] does the same for CONNECT.
//!
//! Stage order, and why:
//! 1. **identify** — the caller was established when the connection was accepted (TLS peer or
//!    configured workload identity); no header can change it.
//! 2. **framing** — refuse requests whose framing is ambiguous (CL+TE) or whose head is too
//!    large before reading anything else from them.
//! 3. **target** — one trusted place for the destination; normalize host and path; resolve and
//!    refuse private addresses, so the policy sees the IP that will be dialled.
//! 4. **intent** — parse and validate the `X-Agent-*` headers (a violation is a 400).
//! 5. **authorize** — evaluate the policy on the full input; only a `Permit` goes further.
//! 6. **credential** — when the decision names a credential, obtain it (cache, or the
//!    provider under the credential's timeout); failing that the request is denied
//!    (`credential_unavailable`), never forwarded without it.
//! 7. **inject / forward** — rewrite headers (policy changes, hop-by-hop, intent headers and
//!    the agent's own secret headers removed), inject the credential, send upstream, stream
//!    the response back.
//! 8. **record** — the `Recorder` drop guard writes one decision-log line on every exit path.

pub mod authorize;
pub mod body;
pub mod connect;
pub mod ctx;
pub mod forward;
pub mod record;
pub mod target;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::error::{Fault, ProxyError};
use crate::intent::parse_intent;
use crate::policy::PolicyStore;
use crate::policy::input::{
    ConnectionFacts, DestinationFacts, RequestFacts, SourceFacts, policy_headers,
};
use crate::server::framing::FramingViolation;
use crate::telemetry::decision_log::DecisionLog;
use crate::telemetry::metrics::Metrics;
use crate::tls::intercept::InterceptAuthority;
use crate::upstream::{ResolveError, Upstream, UpstreamError};

use authorize::{Subject, authorize};
use body::ResponseBody;
use ctx::ConnCtx;
use record::Recorder;
use target::Target;

/// State shared by every request: built once at start-up, read without locks.
pub struct Proxy {
    pub policy: Arc<PolicyStore>,
    pub upstream: Upstream,
    pub intercept: InterceptAuthority,
    pub decision_log: DecisionLog,
    pub metrics: Arc<Metrics>,
    /// Issuers of signed intent tokens; their key sets reload when the JWKS files change.
    pub intent_issuers: Arc<crate::intent_token::IntentIssuers>,
    /// Kills in force: checked before the policy on every request.
    pub kills: Arc<crate::kill::KillSwitch>,
    /// Credentials, the token cache and the agent-secret rules; swapped on reload.
    pub credentials: Arc<arc_swap::ArcSwap<crate::credentials::CredentialStore>>,
    /// Tracks every task serving agent traffic, for the graceful drain.
    pub lifecycle: crate::server::lifecycle::Lifecycle,
    pub dry_run: bool,
    pub max_header_bytes: usize,
    pub header_read_timeout: std::time::Duration,
}

/// The hyper service of one agent connection.
#[derive(Clone)]
pub struct ProxyService {
    pub proxy: Arc<Proxy>,
    pub conn: Arc<ConnCtx>,
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let conn = self.conn.clone();
        Box::pin(async move {
            if request.method() == Method::CONNECT && conn.tunnel.is_none() {
                Ok(connect::handle_connect(proxy, conn, request).await)
            } else {
                Ok(handle(proxy, conn, request).await)
            }
        })
    }
}

/// Runs one HTTP request through the stages; every failure becomes a response here.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let mut record = Recorder::start(
        proxy.decision_log.clone(),
        proxy.metrics.clone(),
        conn.listener.clone(),
        conn.peer,
        conn.caller.spiffe_id().cloned(),
        request.method().as_str(),
    );
    // A span per request: every log line of this request names its decision.
    let span = tracing::info_span!("request", decision_id = %record.decision_id);
    let result = stages(&proxy, &conn, request, &mut record)
        .instrument(span)
        .await;
    match result {
        Ok(mut response) => {
            let deadline = tokio::time::Instant::now()
                + proxy
                    .upstream
                    .request_timeout()
                    .saturating_sub(record.elapsed());
            record.upstream_status = Some(response.status().as_u16());
            forward::agent_response_head(&mut response, &record.decision_id);
            response.map(|body| ResponseBody::streamed(body, deadline, record))
        }
        Err(error) => error_response(&error, &mut record),
    }
}

async fn stages(
    proxy: &Proxy,
    conn: &ConnCtx,
    request: Request<Incoming>,
    record: &mut Recorder,
) -> Result<Response<Incoming>, ProxyError> {
    // 2. framing
    let index = conn.next_request_index();
    if let Some(violation) = conn.framing.as_ref().and_then(|v| v.verdict(index)) {
        return Err(match violation {
            FramingViolation::HeadersTooLarge => {
                ProxyError::HeadersTooLarge(proxy.max_header_bytes)
            }
            FramingViolation::Malformed => {
                ProxyError::BadRequest("malformed HTTP/1.1 request".into())
            }
            FramingViolation::ContentLengthWithTransferEncoding
            | FramingViolation::ConflictingContentLength => ProxyError::AmbiguousFraming,
            FramingViolation::Unobserved => {
                ProxyError::Internal("request framing was not observed; refusing to guess".into())
            }
        });
    }
    if head_size(&request) > proxy.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(proxy.max_header_bytes));
    }

    // 3. target
    let target = match &conn.tunnel {
        None => target::forward_target(request.uri())?,
        Some(tunnel) => target::tunneled_target(
            request.uri(),
            request.headers().get(http::header::HOST),
            &tunnel.authority,
            tunnel.scheme,
        )?,
    };
    record.target(&target);
    let (ips, dns_failure) = match &conn.tunnel {
        Some(tunnel) if !tunnel.ips.is_empty() => (tunnel.ips.clone(), None),
        _ => resolve_destination(proxy, &target.host).await?,
    };

    // 4. intent: plain headers, then a signed token that (when valid) wins over them; an
    // invalid token is a deny, never a fall-back to the plain headers.
    let intent = resolve_intent(proxy, conn, request.headers())?;
    record.intent = Some((intent.name.clone(), intent.task.clone(), intent.verified));

    // An agent holds no secrets: its own secret headers are removed before forwarding, or
    // (agent_secrets.on_present: deny) refused here.
    let credentials = proxy.credentials.load_full();
    let present = credentials.agent_secrets().present(request.headers());
    if !present.is_empty() {
        let names = present.join(", ");
        match credentials.agent_secrets().on_present {
            crate::config::credentials::OnPresent::Deny => {
                return Err(ProxyError::AgentSecretPresent(names));
            }
            crate::config::credentials::OnPresent::Remove => {
                tracing::info!(decision_id = %record.decision_id, headers = %names, "the agent sent secret headers; removed");
            }
        }
    }

    // 5. authorize
    let subject = Subject {
        request: Some(request_facts(
            &request,
            &target,
            credentials.agent_secrets().names(),
        )),
        destination: DestinationFacts {
            host: target.host.clone(),
            port: target.port,
            ip: ips.first().copied(),
        },
        connection: ConnectionFacts {
            mode: "forward",
            intercepted: conn.tunnel.is_some(),
            tls_sni: conn.tunnel.as_ref().and_then(|t| t.sni.clone()),
        },
    };
    let source = SourceFacts {
        caller: conn.caller.clone(),
        listener: conn.listener.clone(),
        address: conn.peer,
    };
    let permit = authorize(proxy, source, intent, subject, record)?;
    if let Some(failure) = dns_failure {
        return Err(ProxyError::Upstream(UpstreamError::Resolve(failure)));
    }

    // 6. credential
    let token = match &permit.decision().credential {
        None => None,
        Some(wanted) => {
            // The intent went to the policy; the record kept its name and task.
            let (intent_name, task) = match &record.intent {
                Some((name, task, _)) => (name.as_deref(), task.as_deref()),
                None => (None, None),
            };
            let ctx = crate::credentials::RequestContext {
                caller: conn.caller.spiffe_id().map(|id| id.as_str()),
                task,
                intent: intent_name,
                destination: &target.host,
            };
            match credentials.get(wanted, &ctx).await {
                Ok(token) => Some(token),
                Err(error) => {
                    tracing::warn!(decision_id = %record.decision_id, credential = %wanted.name, %error, "credential unavailable; denying");
                    return Err(ProxyError::CredentialUnavailable(wanted.name.clone()));
                }
            }
        }
    };

    // 7. inject + forward
    let upstream_request = forward::upstream_request(
        request,
        &target,
        &permit,
        credentials.agent_secrets(),
        token.as_ref().map(|t| &t.injection),
    )?;
    drop(token);
    let sent = std::time::Instant::now();
    let result = proxy.upstream.send(upstream_request).await;
    proxy.metrics.observe_upstream(sent.elapsed().as_secs_f64());
    if let Err(UpstreamError::Tls(_)) = &result {
        proxy.metrics.origin_tls_error();
    }
    result.map_err(ProxyError::from)
}

/// The declared intent of a request: plain `X-Agent-*` headers, overridden by a valid signed
/// intent token bound to the caller.
pub fn resolve_intent(
    proxy: &Proxy,
    conn: &ConnCtx,
    headers: &http::HeaderMap,
) -> Result<crate::intent::Intent, ProxyError> {
    let plain = parse_intent(headers)?;
    match crate::intent::intent_token(headers)? {
        None => Ok(plain),
        Some(token) => proxy
            .intent_issuers
            .apply(
                token,
                conn.caller.spiffe_id(),
                std::time::SystemTime::now(),
                plain,
            )
            .map_err(ProxyError::IntentToken),
    }
}

/// Resolves the destination. Non-public addresses are refused here, before the policy runs;
/// a DNS failure is not: the policy still decides (with `destination.ip` null), so a call the
/// policy denies is a 403 whether or not its name resolves, and only an allowed call reports
/// the DNS failure (502).
pub async fn resolve_destination(
    proxy: &Proxy,
    host: &str,
) -> Result<(Arc<[std::net::IpAddr]>, Option<ResolveError>), ProxyError> {
    match proxy.upstream.resolver.resolve(host).await {
        Ok(ips) => Ok((ips, None)),
        Err(private @ ResolveError::Private { .. }) => Err(ProxyError::PrivateDestination(private)),
        Err(dns) => Ok((Arc::from([]), Some(dns))),
    }
}

fn request_facts(
    request: &Request<Incoming>,
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

/// Bytes of the request head as received (request line + header lines), for the size limit.
fn head_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = request.method().as_str().len() + uri_len + 12;
    request.headers().iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    })
}

/// The one place a [`ProxyError`] becomes a response (SPEC §6).
pub fn error_response(error: &ProxyError, record: &mut Recorder) -> Response<ResponseBody> {
    if error.denies_after_allow() {
        record.allow = false;
        record.reason = Some(error.public_reason().to_string());
    } else if record.reason.is_none() {
        record.reason = Some(error.public_reason().to_string());
    }
    if !matches!(error, ProxyError::Denied { .. } | ProxyError::Policy(_)) {
        record.error = Some(error.reason());
    }
    match error.fault() {
        Fault::Caller => {
            tracing::debug!(decision_id = %record.decision_id, reason = error.reason(), %error, "request refused")
        }
        Fault::Upstream => {
            tracing::info!(decision_id = %record.decision_id, reason = error.reason(), %error, "upstream failed")
        }
        Fault::Internal => {
            tracing::warn!(decision_id = %record.decision_id, reason = error.reason(), %error, "request failed")
        }
    }
    let body = error.body(&record.decision_id).to_string();
    let mut response = Response::new(ResponseBody::own(body));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(&record.decision_id) {
        headers.insert(forward::DECISION_ID, id);
    }
    if error.closes_connection() {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
