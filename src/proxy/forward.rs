//! The forward stage: send the origin's request on the pooled client and, once its response
//! head is back, turn it into the agent's response — hop-by-hop headers removed, `via` and the
//! decision id added, the body streamed through (never buffered) within the request's total
//! time, carrying the record so the decision-log line is written when the stream ends.

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::kill::flows::UploadBody;
use crate::upstream::UpstreamError;

use super::Proxy;
use super::body::ResponseBody;
use super::inject::{VIA, strip_hop_by_hop};
use super::record::Recorder;

/// The header that ties every response to its decision-log line.
pub const DECISION_ID: HeaderName = HeaderName::from_static("x-tollgate-decision-id");

/// Sends the request and waits for the origin's response head (bounded by
/// `upstream.request_timeout`). With `pin` (a transparent connection's original address) every
/// connection goes to that address alone.
pub async fn send(
    proxy: &Proxy,
    request: Request<UploadBody>,
    pin: Option<std::net::IpAddr>,
) -> Result<Response<Incoming>, ProxyError> {
    let sent = std::time::Instant::now();
    let result = match pin {
        None => proxy.upstream().send(request).await,
        Some(ip) => proxy.upstream().send_pinned(request, ip).await,
    };
    proxy.metrics.observe_upstream(sent.elapsed().as_secs_f64());
    if let Err(UpstreamError::Tls(_)) = &result {
        proxy.metrics.origin_tls_error();
    }
    let response = result.map_err(ProxyError::from)?;
    check_framing(&response)?;
    Ok(response)
}

/// Refuses an origin response framed two ways: `Content-Length` and `Transfer-Encoding`
/// together (response smuggling; RFC 9112 §6.3 lets a recipient reject it, and Envoy does).
/// hyper reads the body as chunked but keeps the length header, which would reach the agent
/// with a body of another length; a 502 `upstream_protocol` is the precise answer.
fn check_framing(response: &Response<Incoming>) -> Result<(), ProxyError> {
    let headers = response.headers();
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::Upstream(UpstreamError::Protocol(
            "the origin's response carries both Content-Length and Transfer-Encoding".into(),
        )));
    }
    Ok(())
}

/// The agent's response: the origin's head prepared, its body streamed until the request's
/// total time runs out; `record` is written when the stream ends.
pub fn respond(
    proxy: &Proxy,
    mut response: Response<Incoming>,
    mut record: Recorder,
) -> Response<ResponseBody> {
    let deadline = tokio::time::Instant::now()
        + proxy
            .upstream()
            .request_timeout()
            .saturating_sub(record.elapsed());
    record.responded(response.status());
    agent_response_head(&mut response, record.decision_id());
    response.map(|body| ResponseBody::streamed(body, deadline, record))
}

/// Prepares the origin's response head for the agent.
fn agent_response_head(response: &mut Response<Incoming>, decision_id: &str) {
    let headers = response.headers_mut();
    strip_hop_by_hop(headers);
    headers.append(header::VIA, VIA);
    if let Ok(value) = HeaderValue::from_str(decision_id) {
        headers.insert(DECISION_ID, value);
    }
}
