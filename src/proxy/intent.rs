//! The intent stage: what the agent declares it is doing — the plain `X-Agent-*` headers,
//! overridden by a signed intent token that verifies for this caller. An invalid token is a
//! deny, never a fall-back to the plain headers; a malformed header is a 400.

use std::time::SystemTime;

use http::HeaderMap;

use crate::error::ProxyError;
use crate::intent::{Intent, intent_token, parse_intent};

use super::Proxy;
use super::ctx::ConnCtx;
use super::record::Recorder;

/// The declared intent of a request (or of a CONNECT, where it is optional context).
pub fn declared(
    proxy: &Proxy,
    conn: &ConnCtx,
    headers: &HeaderMap,
    record: &mut Recorder,
) -> Result<Intent, ProxyError> {
    let plain = parse_intent(headers)?;
    let intent = match intent_token(headers)? {
        None => plain,
        Some(token) => proxy
            .intent_issuers
            .apply(token, conn.caller.spiffe_id(), SystemTime::now(), plain)
            .map_err(ProxyError::IntentToken)?,
    };
    record.intent(&intent);
    Ok(intent)
}
