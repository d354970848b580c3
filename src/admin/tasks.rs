//! `DELETE /v1/tasks/{task}`: a task ended. Its open flows are ended (streams reset, tunnels
//! and HTTP/1 connections reset, as a kill does), its cached credentials are dropped and
//! oauth2 tokens revoked, so a task that is over holds nothing an agent could still spend.
//! Unlike a kill, nothing stays in force: a later request declaring the task is decided as
//! usual.

use http::StatusCode;
use serde_json::json;

use crate::credentials::CredentialStore;
use crate::intent::{InvalidTaskName, TaskName};
use crate::kill::KillSwitch;

use super::Reply;

/// What ending a task dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnded {
    /// Cached credentials dropped.
    pub dropped: usize,
    /// Of those, tokens revoked at their authorization server.
    pub revoked: usize,
    /// Open flows of the task ended.
    pub flows_ended: u64,
    /// The id the cut flows' decision-log lines carry as `kill_id`.
    pub ending_id: String,
}

/// Ends `task` (the raw path segment after `/v1/tasks/`).
pub async fn end(
    store: &CredentialStore,
    kills: &KillSwitch,
    task: &str,
) -> Result<(TaskName, TaskEnded), InvalidTaskName> {
    let task = TaskName::parse(task)?;
    // The flows first: what is flowing stops now; revoking tokens may wait on the network.
    let (ending, flows_ended) = kills.end_task_flows(&task);
    let (dropped, revoked) = store.end_task(&task).await;
    tracing::info!(
        task = %task,
        ending_id = %ending.id,
        flows_ended,
        dropped,
        revoked,
        "task ended: its open flows were ended, its credentials dropped and revoked"
    );
    Ok((
        task,
        TaskEnded {
            dropped,
            revoked,
            flows_ended,
            ending_id: ending.id.clone(),
        },
    ))
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
                    "flows_ended": ended.flows_ended,
                    "ending_id": ended.ending_id,
                }),
            ),
            Err(e) => Reply::error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        }
    }
}
