//! `/v1/kill`: engage, list and lift kills (SPEC §7). The kill switch itself is
//! [`crate::kill`]; this file reads the operator's request and answers it.
//!
//! - `POST /v1/kill` `{"spiffe_id"|"task"|"all", "reason"?}`: 201 `{"kill": …}` for a new kill,
//!   200 when the target was already killed; the open flows it covers are ended before the
//!   answer, and `kill.flows_ended` counts them;
//! - `GET /v1/kill`: 200 `{"kills": […]}`, newest first, each with `flows_ended`;
//! - `DELETE /v1/kill/{kill-id}`, `/all`, `/task/{task}`, `/spiffe_id/{percent-encoded id}`, or
//!   `DELETE /v1/kill` with the same JSON body as `POST`: 200 `{"lifted": […]}`, 404 when no
//!   kill matched.
//!
//! A bad request is a 400 and a kill file that cannot be written a 500, each
//! `{"error", "message"}`.

use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::kill::{Kill, KillError, KillSwitch, KillTarget, LiftBy};

use super::Reply;

/// What a kill request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillReply {
    /// `POST`: the kill in force on the target; `new` when this request engaged it;
    /// `flows_ended`: the open flows it ended so far.
    Engaged {
        kill: Arc<Kill>,
        new: bool,
        flows_ended: u64,
    },
    /// `GET`: every kill in force, newest first, each with the open flows it ended.
    Listed(Vec<(Arc<Kill>, u64)>),
    /// `DELETE`: what was lifted (never empty).
    Lifted(Vec<Arc<Kill>>),
}

/// Why a kill request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillRequestError {
    /// The request body is empty.
    #[error(
        "the body is empty: send {{\"spiffe_id\": \"spiffe://…\"}}, {{\"task\": \"…\"}} or {{\"all\": true}}"
    )]
    EmptyBody,
    /// The request body is not JSON of the right shape (serde's message, with line and column).
    #[error("the body is not a valid kill: {0}")]
    Json(String),
    /// A `DELETE /v1/kill/…` path that names no kill.
    #[error(
        "DELETE /v1/kill{0}: expected /{{kill-id}}, /all, /task/{{task}} or /spiffe_id/{{percent-encoded id}}"
    )]
    BadPath(String),
    /// A `DELETE` that names its kill both in the path and in the body.
    #[error("name the kill to lift either in the path or in the body, not both")]
    PathAndBody,
    /// `DELETE` named a kill that is not in force.
    #[error("no kill in force matches {0}")]
    NoMatch(LiftBy),
    /// `/v1/killfoo` is not this resource at all.
    #[error("no admin route /v1/kill{0}")]
    NoRoute(String),
    /// The kill switch refused (a bad target or reason: 400; its file: 500).
    #[error(transparent)]
    Kill(#[from] KillError),
}

impl KillRequestError {
    /// The admin API's status: 400 for what the operator sent, 404 for what is not there,
    /// 500 for tollgate's own file.
    pub fn status(&self) -> StatusCode {
        match self {
            KillRequestError::NoMatch(_) | KillRequestError::NoRoute(_) => StatusCode::NOT_FOUND,
            KillRequestError::Kill(e) if !e.is_request_error() => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The admin API's `error` field, in step with [`status`](Self::status).
    pub fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::BAD_REQUEST => "bad_request",
            _ => "internal_error",
        }
    }
}

impl From<Result<KillReply, KillRequestError>> for Reply {
    fn from(result: Result<KillReply, KillRequestError>) -> Reply {
        let kills = |kills: &[Arc<Kill>]| -> Vec<Value> {
            kills.iter().map(|kill| json!(kill.as_ref())).collect()
        };
        match result {
            Ok(KillReply::Engaged {
                kill,
                new,
                flows_ended,
            }) => {
                let status = if new {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Reply::json(status, with_flows_ended(&kill, flows_ended, "kill"))
            }
            Ok(KillReply::Listed(all)) => {
                let listed: Vec<Value> = all
                    .iter()
                    .map(|(kill, ended)| {
                        let mut value = json!(kill.as_ref());
                        value["flows_ended"] = (*ended).into();
                        value
                    })
                    .collect();
                Reply::json(StatusCode::OK, json!({"kills": listed}))
            }
            Ok(KillReply::Lifted(lifted)) => {
                Reply::json(StatusCode::OK, json!({"lifted": kills(&lifted)}))
            }
            Err(e) => Reply::error(e.status(), e.code(), &e.to_string()),
        }
    }
}

/// `{"kill": {…, "flows_ended": n}}`: a kill with the count of open flows it ended (the
/// kill file's form of a kill has no count: it is a fact of this process, not of the kill).
fn with_flows_ended(kill: &Kill, flows_ended: u64, key: &str) -> Value {
    let mut value = json!(kill);
    value["flows_ended"] = flows_ended.into();
    json!({ key: value })
}

/// `POST /v1/kill`: the kill is engaged and, before this returns, every open flow it covers
/// is stopped (issue 15).
pub fn engage(switch: &KillSwitch, body: &[u8]) -> Result<KillReply, KillRequestError> {
    let (target, reason) = parse_body(body)?;
    let (kill, new) = switch.kill(target, reason)?;
    let flows_ended = switch.flows().ended(&kill.id);
    Ok(KillReply::Engaged {
        kill,
        new,
        flows_ended,
    })
}

/// `GET /v1/kill`.
pub fn list(switch: &KillSwitch) -> KillReply {
    let flows = switch.flows();
    KillReply::Listed(
        switch
            .list()
            .into_iter()
            .map(|kill| {
                let ended = flows.ended(&kill.id);
                (kill, ended)
            })
            .collect(),
    )
}

/// `DELETE /v1/kill…`, where `rest` is the request path after `/v1/kill` (no query).
pub fn lift(switch: &KillSwitch, rest: &str, body: &[u8]) -> Result<KillReply, KillRequestError> {
    if !rest.is_empty() && !rest.starts_with('/') {
        return Err(KillRequestError::NoRoute(rest.to_owned()));
    }
    let (by, reason) = parse_lift(rest, body)?;
    let lifted = switch.lift(by.clone(), reason)?;
    if lifted.is_empty() {
        return Err(KillRequestError::NoMatch(by));
    }
    Ok(KillReply::Lifted(lifted))
}

/// The body of `POST /v1/kill` (and of `DELETE /v1/kill`): one target, an optional reason.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    #[serde(default)]
    spiffe_id: Option<String>,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    all: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
}

/// The target and reason of a `POST`, or of a `DELETE /v1/kill` with a body.
fn parse_body(body: &[u8]) -> Result<(KillTarget, Option<String>), KillRequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(KillRequestError::EmptyBody);
    }
    // Parsed as a value first: a derived struct would also take a JSON array (`[]` is then
    // "no target" rather than "not an object"), and syntax errors keep their line and column.
    let value: Value =
        serde_json::from_slice(body).map_err(|e| KillRequestError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(KillRequestError::Json("expected a JSON object".into()));
    }
    let body: KillBody =
        serde_json::from_value(value).map_err(|e| KillRequestError::Json(e.to_string()))?;
    let target = KillTarget::from_fields(body.spiffe_id, body.task, body.all)?;
    Ok((target, body.reason))
}

/// What a `DELETE` names, from its path or (for bare `/v1/kill`) its body, and the reason the
/// body may carry.
fn parse_lift(rest: &str, body: &[u8]) -> Result<(LiftBy, Option<String>), KillRequestError> {
    if rest.is_empty() || rest == "/" {
        return parse_body(body).map(|(target, reason)| (LiftBy::Target(target), reason));
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        return Err(KillRequestError::PathAndBody);
    }
    let path = rest.strip_prefix('/').unwrap_or(rest);
    let decode = |encoded: &str| {
        percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| KillRequestError::BadPath(rest.to_owned()))
    };
    let target = |spiffe_id, task| -> Result<LiftBy, KillRequestError> {
        Ok(LiftBy::Target(KillTarget::from_fields(
            spiffe_id, task, None,
        )?))
    };
    let by = if path == "all" {
        LiftBy::Target(KillTarget::All)
    } else if let Some(task) = path.strip_prefix("task/") {
        target(None, Some(decode(task)?))?
    } else if let Some(id) = path.strip_prefix("spiffe_id/") {
        target(Some(decode(id)?), None)?
    } else if path == "task" || path == "spiffe_id" {
        return Err(KillRequestError::BadPath(rest.to_owned()));
    } else {
        LiftBy::Id(decode(path)?)
    };
    Ok((by, None))
}
