//! `POST /v1/reload`: re-read the configuration and the policy, as SIGHUP does. 200
//! `{"result": "success", "revision", "pending_restart": []}` when everything changed is in
//! force; 200 `{"result": "partial", …}` when the reload was applied but `pending_restart`
//! names changed keys only a restart applies; or 422 `reload_failed` with why the running
//! configuration stays in force.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::Reply;
use crate::rebuild_thread::Unfinished;

/// What a reload put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The policy revision in force.
    pub revision: String,
    /// Changed configuration keys that only a restart applies (the rest was applied).
    pub pending_restart: Vec<String>,
}

/// What a reload resolves to: `Ok(what is in force)` or `Err(why the running state was kept)`;
/// [`Unfinished`] when the rebuild panicked (the running state stays in force too).
pub type ReloadOutcome =
    Pin<Box<dyn Future<Output = Result<Result<Reloaded, String>, Unfinished>> + Send>>;

/// Reloads configuration and policy (`POST /v1/reload`, SIGHUP).
pub trait Reload: Send + Sync {
    /// Starts a reload off the async workers (it reads files and compiles the policy) and
    /// resolves when it is done.
    fn reload(&self) -> ReloadOutcome;
}

/// `POST /v1/reload`: the reload's outcome as the admin API answers it.
pub async fn reload(reloader: Arc<dyn Reload>) -> Reply {
    match reloader.reload().await {
        Ok(Ok(reloaded)) => {
            let result = if reloaded.pending_restart.is_empty() {
                "success"
            } else {
                "partial"
            };
            Reply::json(
                StatusCode::OK,
                json!({
                    "result": result,
                    "revision": reloaded.revision,
                    "pending_restart": reloaded.pending_restart,
                }),
            )
        }
        Ok(Err(why)) => Reply::error(StatusCode::UNPROCESSABLE_ENTITY, "reload_failed", &why),
        Err(Unfinished) => Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "reload panicked",
        ),
    }
}
