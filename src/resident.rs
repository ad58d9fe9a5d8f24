//! Residents: application-lifespan work that no request started (a consumer
//! loop, a scheduler, durable-job workers), run under the supervisor's
//! shutdown with [`Supervisor::spawn_resident`].
//!
//! A resident is not a task: it is not counted in [`Stats`], and
//! [`Supervisor::wait_idle`] does not wait for it (a loop would never let it
//! return). [`Supervisor::shutdown`] waits for residents within the same
//! grace period as the tasks, and tells each of them twice through its
//! [`Shutdown`]: [`closing`](Shutdown::closing) when shutdown begins (stop
//! taking new work, finish what you hold), and
//! [`cancelled`](Shutdown::cancelled) when the cleanup period begins (give
//! back what you hold, e.g. return a job to its queue). One still running
//! at the end of the grace period is aborted.
//!
//! [`Supervisor::spawn_resident`]: crate::Supervisor::spawn_resident
//! [`Supervisor::shutdown`]: crate::Supervisor::shutdown
//! [`Supervisor::wait_idle`]: crate::Supervisor::wait_idle
//! [`Stats`]: crate::Stats

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a resident is told of shutdown; see
/// [`Supervisor::spawn_resident`](crate::Supervisor::spawn_resident).
#[derive(Clone, Debug)]
pub struct Shutdown {
    closing: CancellationToken,
    cancel: CancellationToken,
}

impl Shutdown {
    /// Resolves when shutdown begins (or the supervisor is dropped): take
    /// no new work, finish what you hold, and return.
    ///
    /// Cancel safe.
    pub async fn closing(&self) {
        self.closing.cancelled().await;
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Resolves when the cleanup period begins, shortly before the resident
    /// is aborted: give back what is unfinished.
    ///
    /// Cancel safe.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// [`closing`](Self::closing) as a token, for code that takes one.
    pub fn closing_token(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// [`cancelled`](Self::cancelled) as a token, for code that takes one.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
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
    pub(crate) fn spawn<F, Fut>(&self, runtime: &Handle, cancel: &CancellationToken, make: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shutdown = Shutdown {
            closing: self.closing.clone(),
            cancel: cancel.clone(),
        };
        let handle = self.tracker.spawn_on(make(shutdown), runtime);
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
