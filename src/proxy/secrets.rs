//! The secrets stage: an agent holds no secrets. Secret headers it sends anyway (the
//! configured `agent_secrets.headers` and the well-known ones) are refused here with
//! `agent_secret_present` (`on_present: deny`), or noted here and removed by the inject stage
//! (`on_present: remove`, the default); the policy never sees their values either way.

use http::HeaderMap;

use crate::config::credentials::OnPresent;
use crate::credentials::CredentialStore;
use crate::error::ProxyError;

use super::record::Recorder;

/// Checks the request's headers against the agent-secret rules in force.
pub fn check(
    credentials: &CredentialStore,
    headers: &HeaderMap,
    record: &mut Recorder,
) -> Result<(), ProxyError> {
    let rules = credentials.agent_secrets();
    let present = rules.present(headers);
    if present.is_empty() {
        return Ok(());
    }
    let names = present.join(", ");
    match rules.on_present {
        OnPresent::Deny => Err(ProxyError::AgentSecretPresent(names)),
        OnPresent::Remove => {
            tracing::info!(decision_id = %record.decision_id(), headers = %names, "the agent sent secret headers; removed");
            record.stripped_headers(present.iter().map(|name| name.to_string()).collect());
            Ok(())
        }
    }
}
