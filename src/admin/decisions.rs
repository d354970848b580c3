//! `GET /v1/decisions?limit=N`: the most recent decision-log lines, newest first (at most
//! [`RECENT_CAPACITY`], 100 without `limit`).

use http::StatusCode;

use crate::telemetry::decision_log::{RECENT_CAPACITY, Recent};

use super::Reply;

/// `GET /v1/decisions` without `limit`.
const DEFAULT_DECISIONS: usize = 100;

/// Answers with the newest decisions; `query` may only hold `limit`.
pub fn recent(recent: &Recent, query: Option<&str>) -> Reply {
    let mut limit = DEFAULT_DECISIONS;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", value)) => match value.parse::<usize>() {
                Ok(n) if n >= 1 => limit = n.min(RECENT_CAPACITY),
                _ => {
                    return Reply::error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "limit must be a whole number of at least 1",
                    );
                }
            },
            _ => {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the only parameter is limit",
                );
            }
        }
    }
    // The lines are kept as the decision log wrote them, each one JSON object: they are
    // joined into the answer as they are, not parsed again.
    let lines = recent.newest(limit);
    let mut body = Vec::with_capacity(16 + lines.iter().map(|l| l.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"decisions\":[");
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(line);
    }
    body.extend_from_slice(b"]}");
    Reply::raw_json(StatusCode::OK, body)
}
