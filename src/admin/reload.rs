//! `POST /v1/reload`: re-read the configuration and the policy, as SIGHUP does. 200
//! `{"result": "success", "revision"}`, or 422 `reload_failed` with why the running
//! configuration stays in force.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::Reply;

/// Reloads configuration and policy (`POST /v1/reload`, SIGHUP).
pub trait Reload: Send + Sync {
    /// Reloads; `Ok(revision in force)` or `Err(why the running state was kept)`.
    fn reload(&self) -> Result<String, String>;
}

/// Runs the reload off the async workers (it reads files and compiles the policy).
pub async fn reload(reloader: Arc<dyn Reload>) -> Reply {
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(revision)) => Reply::json(
            StatusCode::OK,
            json!({"result": "success", "revision": revision}),
        ),
        Ok(Err(why)) => Reply::error(StatusCode::UNPROCESSABLE_ENTITY, "reload_failed", &why),
        Err(_) => Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "reload panicked",
        ),
    }
}
