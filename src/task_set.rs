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
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::failure::{FailureKind, TaskFailure};
use crate::handle::{Queued, RequestTasks};
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
    pub(crate) fn spawn_all(self: &Arc<Self>, request: &Arc<RequestTasks>, tasks: Queued) {
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
            let running = Running::start(Arc::clone(request), task);
            drop(self.runtime.spawn(running));
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

/// The future spawned for each handed-off task.
///
/// Written by hand rather than as an `async fn` to keep it small (tokio
/// copies it into the task's allocation; an `async fn` with a `select` was
/// 496 bytes, this is about 120) and to register the abort waiter only once
/// the task has returned `Pending` — a task that finishes on its first poll
/// never touches the cancellation token's lock.
struct Running {
    /// Also the way to the task set (`request.set()`), so a task holds one
    /// reference count, not two.
    request: Arc<RequestTasks>,
    span: tracing::Span,
    work: RunningWork,
    /// Created at the first `Pending`: wakes the task when shutdown aborts.
    abort: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Set once the outcome is counted; if the future is dropped before that
    /// (the runtime shut down), `Drop` counts it as cancelled.
    counted: bool,
}

enum RunningWork {
    Async(Pin<Box<dyn Future<Output = Result<(), String>> + Send>>),
    /// Already started on the blocking pool; dropping the handle detaches it.
    Blocking(JoinHandle<Result<(), String>>),
}

impl Running {
    fn start(request: Arc<RequestTasks>, task: Task) -> Self {
        let span = tracing::info_span!(
            parent: None,
            "background_task",
            http.method = %request.method(),
            http.path = request.path(),
        );
        span.follows_from(&task.added_in);
        let work = match task.work {
            Work::Async(future) => RunningWork::Async(future),
            Work::Blocking(function) => {
                let span = span.clone();
                let runtime = &request.set().runtime;
                RunningWork::Blocking(runtime.spawn_blocking(move || span.in_scope(function)))
            }
        };
        Self {
            request,
            span,
            work,
            abort: None,
            counted: false,
        }
    }

    /// Counts, logs (inside the task's span) and takes the task off the
    /// running count.
    fn count(&mut self, outcome: Outcome) {
        self.counted = true;
        let _entered = self.span.enter();
        let set = self.request.set();
        set.counters.finished(&outcome);
        set.report(&outcome, &self.request);
        set.finish_running(1);
    }
}

impl Future for Running {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.counted {
            return Poll::Ready(());
        }
        if this.request.set().abort.is_cancelled() {
            this.count(Outcome::Cancelled);
            return Poll::Ready(());
        }
        let polled = match &mut this.work {
            RunningWork::Async(future) => {
                let _entered = this.span.enter();
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(Ok(()))) => Poll::Ready(Outcome::Completed),
                    Ok(Poll::Ready(Err(message))) => Poll::Ready(Outcome::Failed(message)),
                    Err(payload) => Poll::Ready(Outcome::Panicked(panic_message(payload))),
                }
            }
            RunningWork::Blocking(handle) => Pin::new(handle).poll(cx).map(|joined| match joined {
                Ok(Ok(())) => Outcome::Completed,
                Ok(Err(message)) => Outcome::Failed(message),
                Err(error) if error.is_panic() => {
                    Outcome::Panicked(panic_message(error.into_panic()))
                }
                // The runtime is shutting down and dropped the closure unrun.
                Err(_) => Outcome::Cancelled,
            }),
        };
        match polled {
            Poll::Ready(outcome) => {
                this.count(outcome);
                Poll::Ready(())
            }
            Poll::Pending => {
                let set = this.request.set();
                let abort = this
                    .abort
                    .get_or_insert_with(|| Box::pin(set.abort.clone().cancelled_owned()));
                if abort.as_mut().poll(cx).is_ready() {
                    // Dropping the work (when this future is dropped) aborts it.
                    this.count(Outcome::Cancelled);
                    return Poll::Ready(());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.counted {
            self.count(Outcome::Cancelled);
        }
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
