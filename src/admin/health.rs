//! `/healthz` (the process answers) and `/readyz` (listeners up, a policy loaded, not draining).

use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use serde_json::json;

use super::Reply;

/// Readiness: listeners up and a policy loaded; false while draining.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the proxy ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// `GET /healthz`.
pub fn live() -> Reply {
    Reply::json(StatusCode::OK, json!({"status": "ok"}))
}

/// `GET /readyz`.
pub fn ready(health: &Health) -> Reply {
    if health.is_ready() {
        Reply::json(StatusCode::OK, json!({"status": "ready"}))
    } else {
        Reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready"}),
        )
    }
}
