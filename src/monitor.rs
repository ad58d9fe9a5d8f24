//! [`Monitor`]: a cloneable, read-only view of a supervisor.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::stats::Stats;
use crate::task_set::TaskSet;

/// A cheap, cloneable view of a [`Supervisor`](crate::Supervisor): its
/// counters, idleness and cancellation token, for a `/stats` route or a
/// test, while the supervisor itself stays with the code that will shut it
/// down.
///
/// # Example
///
/// ```
/// use tower_background::Supervisor;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let background = Supervisor::new();
/// let monitor = background.monitor();
/// assert_eq!(monitor.stats().running, 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Monitor {
    set: Arc<TaskSet>,
}

impl Monitor {
    pub(crate) fn new(set: Arc<TaskSet>) -> Self {
        Self { set }
    }

    /// The task set this monitor views.
    pub(crate) fn task_set(&self) -> &Arc<TaskSet> {
        &self.set
    }

    /// A snapshot of the counters; a handful of atomic loads, no lock.
    pub fn stats(&self) -> Stats {
        self.set.stats()
    }

    /// [`Stats::backlog`] alone: tasks accepted and not finished. Three
    /// atomic loads, without building the rest of the snapshot.
    pub fn backlog(&self) -> u64 {
        self.set.backlog()
    }

    /// Resolves once no handed-off task is running.
    ///
    /// Meant for tests: consume (or drop) the response body so its tasks are
    /// handed off, then `wait_idle().await`, then assert on their effects, with
    /// no sleeping. Tasks still waiting for their response are not waited
    /// for; tasks handed off while this waits extend the wait.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only stops the wait.
    pub async fn wait_idle(&self) {
        self.set.wait_idle().await;
    }

    /// The token cancelled when shutdown's cleanup period begins; see
    /// [`BackgroundTasks::cancellation_token`](crate::BackgroundTasks::cancellation_token).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.set.cancel.clone()
    }

    /// Whether shutdown has begun (or the supervisor was dropped): tasks
    /// offered from now on are refused.
    pub fn is_closed(&self) -> bool {
        self.set.is_closed()
    }
}
