//! The one thread every rebuild runs on: the reload loop's polls, `POST /v1/reload` and SIGHUP.
//!
//! Rebuilding reads files and compiles the policy: blocking work, kept off the async workers.
//! It used to go to tokio's blocking pool, which runs a task on whichever of its threads is
//! idle and starts another when two overlap (a poll every 500 ms and an admin reload). From
//! then on the pool kept two threads alive, the polls alternating between them, and a policy
//! compiled on either: each thread's allocator heap held pages of its own revisions, and the
//! resident memory stepped up by about 10 % some minutes into a long run (the 30-minute soak,
//! docs/TESTING.md). One thread, started with the process, does every rebuild in order: one
//! heap holds what rebuilding leaves behind, two reloads never run at once, and the process
//! has the same threads from its first minute to its last.
//!
//! This module depends on nothing else in tollgate.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// A job for the rebuild thread.
type Job = Box<dyn FnOnce() + Send>;

/// Handle to the rebuild thread; cheap to clone. The thread ends when the last handle drops.
#[derive(Clone)]
pub struct RebuildThread {
    jobs: mpsc::Sender<Job>,
}

/// A rebuild that did not finish: the job panicked (the thread goes on with the next one) or
/// the thread is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rebuild did not finish (it panicked, or the rebuild thread is gone)")]
pub struct Unfinished;

impl RebuildThread {
    /// Starts the thread (named `rebuild`).
    pub fn start() -> std::io::Result<RebuildThread> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("rebuild".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // A panicking rebuild drops its answer (the caller sees `Unfinished`) and
                    // does not take the thread, or the rebuilds after it, down.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })?;
        Ok(RebuildThread { jobs })
    }

    /// Queues `job` now and resolves to its result once the thread has run it (after the jobs
    /// queued before it).
    pub fn run<T, F>(
        &self,
        job: F,
    ) -> impl std::future::Future<Output = Result<T, Unfinished>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let queued = self.jobs.send(Box::new(move || {
            let _ = answer.send(job());
        }));
        async move {
            queued.map_err(|_| Unfinished)?;
            answered.await.map_err(|_| Unfinished)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_every_job_on_one_thread_in_order_and_survives_a_panic() {
        let thread = RebuildThread::start().unwrap();
        let name = || std::thread::current().name().map(str::to_owned);
        let first = thread.run(move || (name(), std::thread::current().id()));
        let panics = thread.run(|| -> u32 { panic!("a rebuild that panics") });
        let second = thread.run(move || std::thread::current().id());
        let (named, id) = first.await.unwrap();
        assert_eq!(named.as_deref(), Some("rebuild"));
        assert_ne!(id, std::thread::current().id());
        assert_eq!(panics.await, Err(Unfinished));
        assert_eq!(
            second.await.unwrap(),
            id,
            "the same thread, after the panic"
        );
    }

    #[tokio::test]
    async fn jobs_run_one_at_a_time_in_the_order_queued() {
        let thread = RebuildThread::start().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let runs: Vec<_> = (0..20)
            .map(|i| {
                let log = log.clone();
                thread.run(move || log.lock().unwrap().push(i))
            })
            .collect();
        for run in runs {
            run.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), (0..20).collect::<Vec<_>>());
    }
}
