//! Residents: long-lived services (durable-job workers) that live as long as
//! the application and stop with [`Supervisor::shutdown`], within the same
//! grace period as the background tasks.
//!
//! A resident is not a task: it is not counted in [`Stats`], and
//! [`Supervisor::wait_idle`] does not wait for it (it would never return).
//! Shutdown tells it twice: `closing` when shutdown begins (stop taking new
//! work, finish what you hold), and the task set's cancellation token when
//! the cleanup period begins (give back what you hold, e.g. return a job to
//! its queue). One still running at the end of the grace period is aborted.
//!
//! [`Supervisor::shutdown`]: crate::Supervisor::shutdown
//! [`Supervisor::wait_idle`]: crate::Supervisor::wait_idle
//! [`Stats`]: crate::Stats

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a resident is told of shutdown.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "durable"), allow(dead_code))]
pub(crate) struct ShutdownSignals {
    /// Fired when shutdown begins: take no new work.
    pub(crate) closing: CancellationToken,
    /// Fired when the cleanup period begins: give back what is unfinished.
    pub(crate) cancel: CancellationToken,
}

/// The residents of one supervisor.
#[derive(Debug, Default)]
pub(crate) struct Residents {
    tracker: TaskTracker,
    closing: CancellationToken,
    aborts: Mutex<Vec<AbortHandle>>,
}

impl Residents {
    /// Spawns a resident on `runtime`. `cancel` is the task set's
    /// cancellation token.
    #[cfg_attr(not(feature = "durable"), allow(dead_code))]
    pub(crate) fn spawn<F, Fut>(&self, runtime: &Handle, cancel: &CancellationToken, make: F)
    where
        F: FnOnce(ShutdownSignals) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let signals = ShutdownSignals {
            closing: self.closing.clone(),
            cancel: cancel.clone(),
        };
        let handle = self.tracker.spawn_on(make(signals), runtime);
        self.aborts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle.abort_handle());
    }

    /// How many residents have not returned yet.
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Tells every resident that shutdown has begun.
    pub(crate) fn close(&self) {
        self.tracker.close();
        self.closing.cancel();
    }

    /// Waits until every resident has returned (after [`close`](Self::close)).
    pub(crate) async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Aborts every resident still running.
    pub(crate) fn abort_all(&self) {
        for handle in self
            .aborts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            handle.abort();
        }
    }
}
