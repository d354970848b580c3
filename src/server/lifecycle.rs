//! Graceful shutdown: on SIGTERM tollgate stops accepting, lets every connection finish the
//! request it is serving (HTTP/1.1: the current exchange, then close; HTTP/2: GOAWAY), waits up
//! to `limits.drain_timeout`, and exits 0. Readiness turns false when draining starts.
//!
//! Every task that serves agent traffic — connections, intercepted tunnels, blind tunnels — is
//! spawned on one [`TaskTracker`], so "everything is done" is a single wait.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Shared by accept loops and connection tasks.
#[derive(Clone)]
pub struct Lifecycle {
    draining: watch::Receiver<bool>,
    tracker: TaskTracker,
}

/// The side that starts the drain (owned by `app::run`).
pub struct Drain {
    draining: watch::Sender<bool>,
    tracker: TaskTracker,
}

/// Creates the pair.
pub fn lifecycle() -> (Drain, Lifecycle) {
    let (tx, rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    (
        Drain {
            draining: tx,
            tracker: tracker.clone(),
        },
        Lifecycle {
            draining: rx,
            tracker,
        },
    )
}

impl Lifecycle {
    /// Spawns a task that serves agent traffic; the drain waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Resolves once draining has started (immediately if it already has).
    pub async fn draining(&self) {
        let mut rx = self.draining.clone();
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

impl Drain {
    /// Starts draining and waits until every tracked task ended or `deadline` passed. Returns
    /// how many tasks were still running at the deadline.
    pub async fn drain(self, deadline: Duration) -> usize {
        let _ = self.draining.send(true);
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_tracked_tasks_that_finish_after_the_signal() {
        let (drain, life) = lifecycle();
        let watcher = life.clone();
        life.spawn(async move {
            watcher.draining().await;
            tokio::task::yield_now().await;
        });
        assert_eq!(drain.drain(Duration::from_secs(5)).await, 0);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let (drain, life) = lifecycle();
        life.spawn(std::future::pending());
        assert_eq!(drain.drain(Duration::from_millis(50)).await, 1);
    }
}
