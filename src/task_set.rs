//! The application-lifespan task set: where handed-off tasks run, how they
//! are counted, waited for, cancelled and aborted.
//!
//! Written by hand rather than on `tokio::task::JoinSet` or
//! `tokio_util::task::TaskTracker` because it needs three things neither
//! gives together without a lock on the per-task path: spawning through a
//! shared reference (`JoinSet` needs `&mut`), waiting for "nothing running"
//! without closing the set first (`TaskTracker::wait` needs `close`), and
//! aborting every task at once (done here by one `CancellationToken` that
//! every task's wrapper watches, so no registry of `AbortHandle`s is needed).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::failure::{FailureKind, TaskFailure};
use crate::handle::RequestTasks;
use crate::stats::{Counters, DiscardReason, Outcome, Stats};
use crate::task::{Task, Work};

/// The hook set with `SupervisorBuilder::on_failure`.
pub(crate) type FailureHook = Arc<dyn Fn(&TaskFailure<'_>) + Send + Sync>;

/// The low bit of [`TaskSet::state`]: set once shutdown has begun.
const CLOSED: u64 = 1;
/// One running task, in [`TaskSet::state`] (the count sits above the flag).
const ONE_TASK: u64 = 2;

pub(crate) struct TaskSet {
    /// `running << 1 | CLOSED`. One word, so that "is it closed?" and "one
    /// more running" are decided together: a spawn that loses the race with
    /// `close` sees the flag and backs out, and `close` never misses a task
    /// that got in.
    state: AtomicU64,
    pub(crate) counters: Counters,
    runtime: Handle,
    /// Given to tasks; fired when the grace period is nearly over.
    pub(crate) cancel: CancellationToken,
    /// Never given out; fired when the grace period is over. Every task's
    /// wrapper drops the task's future at its next poll after this fires.
    pub(crate) abort: CancellationToken,
    /// Woken when the running count falls to zero while someone waits.
    idle: Notify,
    idle_waiters: AtomicUsize,
    on_failure: Option<FailureHook>,
}

impl std::fmt::Debug for TaskSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSet")
            .field("stats", &self.stats())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl TaskSet {
    pub(crate) fn new(runtime: Handle, on_failure: Option<FailureHook>) -> Self {
        Self {
            state: AtomicU64::new(0),
            counters: Counters::default(),
            runtime,
            cancel: CancellationToken::new(),
            abort: CancellationToken::new(),
            idle: Notify::new(),
            idle_waiters: AtomicUsize::new(0),
            on_failure,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.running())
    }

    pub(crate) fn running(&self) -> u64 {
        self.state.load(Ordering::SeqCst) >> 1
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::SeqCst) & CLOSED != 0
    }

    /// Stops accepting tasks: every later spawn is refused.
    pub(crate) fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::SeqCst);
    }

    /// Starts `tasks` (queued by `request`) now, or refuses them all if the
    /// set is closed.
    pub(crate) fn spawn_all(self: &Arc<Self>, request: &Arc<RequestTasks>, tasks: Vec<Task>) {
        let n = tasks.len() as u64;
        if n == 0 {
            return;
        }
        let previous = self.state.fetch_add(n * ONE_TASK, Ordering::SeqCst);
        if previous & CLOSED != 0 {
            self.finish_running(n);
            self.refuse(n, request);
            return;
        }
        for task in tasks {
            let run = run(Arc::clone(self), Arc::clone(request), task);
            drop(self.runtime.spawn(run));
        }
    }

    pub(crate) fn refuse(&self, n: u64, request: &RequestTasks) {
        self.counters.refused(n);
        tracing::warn!(
            http.method = %request.method(),
            http.path = request.path(),
            tasks = n,
            "background tasks refused: the supervisor is shutting down",
        );
    }

    pub(crate) fn discard(&self, n: u64, reason: DiscardReason, request: &RequestTasks) {
        self.counters.discarded(n, reason);
        tracing::debug!(
            http.method = %request.method(),
            http.path = request.path(),
            tasks = n,
            reason = reason.as_str(),
            "background tasks discarded",
        );
    }

    /// Takes `n` tasks off the running count and wakes idle waiters if that
    /// emptied the set.
    fn finish_running(&self, n: u64) {
        let previous = self.state.fetch_sub(n * ONE_TASK, Ordering::SeqCst);
        // Pairs with the `SeqCst` increment + load in `wait_idle`: either the
        // waiter sees the count at zero, or we see the waiter and wake it.
        if previous >> 1 == n && self.idle_waiters.load(Ordering::SeqCst) > 0 {
            self.idle.notify_waiters();
        }
    }

    /// Resolves once no handed-off task is running.
    ///
    /// Cancel safe: dropping the future unregisters the waiter.
    pub(crate) async fn wait_idle(&self) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }

        self.idle_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.idle_waiters);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn report(&self, outcome: &Outcome, request: &RequestTasks) {
        let (kind, message) = match outcome {
            Outcome::Completed => {
                tracing::trace!("background task completed");
                return;
            }
            Outcome::Cancelled => {
                tracing::debug!("background task cancelled by shutdown");
                return;
            }
            Outcome::Failed(message) => {
                tracing::error!(
                    http.method = %request.method(),
                    http.path = request.path(),
                    error = %message,
                    "background task failed",
                );
                (FailureKind::Error, message)
            }
            Outcome::Panicked(message) => {
                tracing::error!(
                    http.method = %request.method(),
                    http.path = request.path(),
                    panic = %message,
                    "background task panicked",
                );
                (FailureKind::Panic, message)
            }
        };
        if let Some(hook) = &self.on_failure {
            let failure = TaskFailure {
                kind,
                message,
                method: request.method(),
                path: request.path(),
            };
            // The hook is user code running inside our bookkeeping: a panic in
            // it must not unwind through the counters.
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&failure))).is_err() {
                tracing::error!("the on_failure hook panicked");
            }
        }
    }
}

/// Counts a task as finished exactly once: when its wrapper returns, or, if
/// the wrapper is dropped unfinished (the runtime shut down), as cancelled.
struct Finish {
    set: Arc<TaskSet>,
    request: Arc<RequestTasks>,
    outcome: Option<Outcome>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        // A task is counted by what it did: what it returned, its panic, or
        // (no outcome) its being dropped unfinished by an abort or the runtime.
        let outcome = self.outcome.take().unwrap_or(Outcome::Cancelled);
        self.set.counters.finished(&outcome);
        self.set.report(&outcome, &self.request);
        self.set.finish_running(1);
    }
}

/// The future spawned for each handed-off task.
async fn run(set: Arc<TaskSet>, request: Arc<RequestTasks>, task: Task) {
    let mut finish = Finish {
        set,
        request,
        outcome: None,
    };
    let span = tracing::info_span!(
        parent: None,
        "background_task",
        http.method = %finish.request.method(),
        http.path = finish.request.path(),
    );
    span.follows_from(&task.added_in);
    drop(task.added_in);

    let work = async move {
        match task.work {
            Work::Async(future) => match AssertUnwindSafe(future).catch_unwind().await {
                Ok(Ok(())) => Outcome::Completed,
                Ok(Err(message)) => Outcome::Failed(message),
                Err(payload) => Outcome::Panicked(panic_message(payload)),
            },
            Work::Blocking(function) => run_blocking(function).await,
        }
    };
    let outcome = finish
        .set
        .abort
        .run_until_cancelled(work)
        .instrument(span.clone())
        .await;
    finish.outcome = Some(outcome.unwrap_or(Outcome::Cancelled));
    // Count and log inside the task's span, so the failure log line carries it.
    span.in_scope(move || drop(finish));
}

async fn run_blocking(function: Box<dyn FnOnce() -> Result<(), String> + Send>) -> Outcome {
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(function)).await {
        Ok(Ok(())) => Outcome::Completed,
        Ok(Err(message)) => Outcome::Failed(message),
        Err(error) if error.is_panic() => Outcome::Panicked(panic_message(error.into_panic())),
        // The runtime is shutting down and dropped the closure unrun.
        Err(_) => Outcome::Cancelled,
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "<non-string panic payload>".to_owned(),
        },
    }
}
