//! The credential stage: when the decision names a credential, obtain it (the cache, or the
//! provider under the credential's timeout). Failing that the request is denied
//! (`credential_unavailable`), never forwarded without it.

use std::sync::Arc;

use crate::credentials::cache::CachedToken;
use crate::credentials::{CredentialStore, RequestContext};
use crate::error::ProxyError;

use super::authorize::Permit;
use super::ctx::ConnCtx;
use super::record::Recorder;
use super::target::Target;

/// The token the permit's decision asks for, if it asks for one.
pub async fn obtain(
    credentials: &CredentialStore,
    conn: &ConnCtx,
    target: &Target,
    permit: &Permit,
    record: &Recorder,
) -> Result<Option<Arc<CachedToken>>, ProxyError> {
    let Some(wanted) = &permit.decision().credential else {
        return Ok(None);
    };
    let intent = permit.intent();
    let ctx = RequestContext {
        caller: conn.caller.spiffe_id().map(|id| id.as_str()),
        task: intent.task.as_deref(),
        intent: intent.name.as_deref(),
        destination: &target.host,
    };
    match credentials.get(wanted, &ctx).await {
        Ok(token) => Ok(Some(token)),
        Err(error) => {
            tracing::warn!(decision_id = %record.decision_id(), credential = %wanted.name, %error, "credential unavailable; denying");
            Err(ProxyError::CredentialUnavailable(wanted.name.clone()))
        }
    }
}
