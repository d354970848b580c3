//! `DELETE /v1/tasks/{task}`: a task ended. Its cached credentials are dropped and oauth2 tokens
//! revoked, so a task that is over holds nothing an agent could still spend.

use http::StatusCode;
use serde_json::json;

use crate::credentials::CredentialStore;
use crate::intent::{InvalidTaskName, TaskName};

use super::Reply;

/// What ending a task dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskEnded {
    /// Cached credentials dropped.
    pub dropped: usize,
    /// Of those, tokens revoked at their authorization server.
    pub revoked: usize,
}

/// Ends `task` (the raw path segment after `/v1/tasks/`).
pub async fn end(
    store: &CredentialStore,
    task: &str,
) -> Result<(TaskName, TaskEnded), InvalidTaskName> {
    let task = TaskName::parse(task)?;
    let (dropped, revoked) = store.end_task(&task).await;
    tracing::info!(
        task = %task,
        dropped,
        revoked,
        "task ended: its credentials were dropped and revoked"
    );
    Ok((task, TaskEnded { dropped, revoked }))
}

impl From<Result<(TaskName, TaskEnded), InvalidTaskName>> for Reply {
    fn from(result: Result<(TaskName, TaskEnded), InvalidTaskName>) -> Reply {
        match result {
            Ok((task, ended)) => Reply::json(
                StatusCode::OK,
                json!({
                    "task": task.as_str(),
                    "credentials_dropped": ended.dropped,
                    "credentials_revoked": ended.revoked,
                }),
            ),
            Err(e) => Reply::error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        }
    }
}
