//! The application-lifespan task set: its one state word (closed, and how
//! many tasks are running), admission into the bounded set of pending
//! tasks, the lanes, waiting for idleness, the abort, and how every task's
//! end is counted and logged. Starting and running the tasks is
//! [`running`](crate::running)'s.
//!
//! Written by hand rather than on `tokio::task::JoinSet` or
//! `tokio_util::task::TaskTracker` because it needs three things neither
//! gives together without a lock on the per-task path: spawning through a
//! shared reference (`JoinSet` needs `&mut`), waiting for "nothing running"
//! without closing the set first (`TaskTracker::wait` needs `close`), and
//! aborting every task at once (done here by [`Abort`]: a flag every task's
//! wrapper reads, and the wakers of the waiting ones, woken together).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::Method;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::abort::Abort;
use crate::error::AddError;
use crate::failure::{FailureKind, TaskFailure};
use crate::keyed::Keys;
use crate::lane::{Lane, Waiting};
use crate::metrics::{self, Ended};
use crate::origin::{Origin, RequestLine};
use crate::started::Oldest;
use crate::stats::{Counters, DiscardReason, LaneStats, Outcome, Stats};
use crate::work::{LaneId, QueuedTask};

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
    /// The default lane, the blocking lane, then the named ones.
    lanes: Box<[Lane]>,
    /// The keys keyed tasks hold, and the tasks waiting for them.
    pub(crate) keys: Keys,
    /// Tasks admitted and not started: waiting for their response or for a
    /// slot. Bounded by `max_pending`, which is what makes `try_add` fail.
    pending: AtomicU64,
    max_pending: u64,
    /// Tasks (not group steps) in the lanes' queues.
    queued_tasks: AtomicU64,
    runtime: Handle,
    /// Given to tasks; fired when the grace period is nearly over.
    pub(crate) cancel: CancellationToken,
    /// Fired when the grace period is over: every running task is woken,
    /// sees the flag and drops its work.
    pub(crate) abort: Abort,
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

/// Why a task could not be admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Closed,
    Full,
}

impl TaskSet {
    pub(crate) fn new(
        runtime: Handle,
        lanes: Vec<Lane>,
        max_pending: usize,
        on_failure: Option<FailureHook>,
    ) -> Self {
        Self {
            state: AtomicU64::new(0),
            counters: Counters::default(),
            lanes: lanes.into_boxed_slice(),
            keys: Keys::default(),
            pending: AtomicU64::new(0),
            max_pending: max_pending as u64,
            queued_tasks: AtomicU64::new(0),
            runtime,
            cancel: CancellationToken::new(),
            abort: Abort::new(),
            idle: Notify::new(),
            idle_waiters: AtomicUsize::new(0),
            on_failure,
        }
    }

    /// The runtime tasks (and residents) are spawned on.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    pub(crate) fn stats(&self) -> Stats {
        let lanes = self
            .lanes
            .iter()
            .map(|lane| LaneStats {
                name: lane.name.to_string(),
                limit: (lane.limit != usize::MAX).then_some(lane.limit as u64),
                running: lane.running() as u64,
                queued: lane.queued() as u64,
                high_water: lane.high_water() as u64,
            })
            .collect();
        self.counters.snapshot(
            self.pending.load(Ordering::SeqCst),
            self.running(),
            self.queued_tasks.load(Ordering::SeqCst),
            lanes,
        )
    }

    /// Tasks handed off and not finished: queued for a slot or running.
    pub(crate) fn running(&self) -> u64 {
        self.state.load(Ordering::SeqCst) >> 1
    }

    /// Tasks accepted and not finished: `Stats::backlog` without the rest of
    /// the snapshot (a few atomic loads, for every request of `LoadShed`).
    pub(crate) fn backlog(&self) -> u64 {
        let pending = self.pending.load(Ordering::SeqCst);
        let queued = self.queued_tasks.load(Ordering::SeqCst);
        (pending + self.running()).saturating_sub(queued)
    }

    pub(crate) fn max_pending(&self) -> usize {
        self.max_pending as usize
    }

    pub(crate) fn lane_id(&self, name: &str) -> Option<LaneId> {
        self.lanes.iter().position(|lane| &*lane.name == name)
    }

    pub(crate) fn lane(&self, id: LaneId) -> &Lane {
        &self.lanes[id]
    }

    /// A handed-off task went into its lane's queue to wait for a slot.
    pub(crate) fn task_queued(&self) {
        self.queued_tasks.fetch_add(1, Ordering::SeqCst);
    }

    /// A task left its lane's queue (started, or cancelled by the abort).
    pub(crate) fn task_dequeued(&self) {
        self.queued_tasks.fetch_sub(1, Ordering::SeqCst);
    }

    /// Admits one task into the bounded set of pending tasks.
    pub(crate) fn admit(&self) -> Result<(), Refusal> {
        if self.is_closed() {
            return Err(Refusal::Closed);
        }
        let mut pending = self.pending.load(Ordering::SeqCst);
        loop {
            if pending >= self.max_pending {
                return Err(Refusal::Full);
            }
            match self.pending.compare_exchange_weak(
                pending,
                pending + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => pending = actual,
            }
        }
    }

    /// `n` admitted tasks left the pending set (started, discarded, refused).
    pub(crate) fn unpend(&self, n: u64) {
        self.pending.fetch_sub(n, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::SeqCst) & CLOSED != 0
    }

    /// Stops accepting tasks: every later spawn is refused.
    pub(crate) fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::SeqCst);
    }

    /// Counts `n` handed-off tasks as running, unless the set is closed:
    /// then nothing is counted and `false` says they must be refused. One
    /// `fetch_add` on the state word decides both, so a hand-off racing
    /// `close` is either seen by `shutdown` or refused, never lost.
    pub(crate) fn enter_running(&self, n: u64) -> bool {
        let previous = self.state.fetch_add(n * ONE_TASK, Ordering::SeqCst);
        if previous & CLOSED != 0 {
            self.finish_running(n);
            return false;
        }
        true
    }

    /// Whether the grace period is over: running tasks drop their work.
    pub(crate) fn is_aborted(&self) -> bool {
        self.abort.is_aborted()
    }

    /// Ends everything: the queued tasks are cancelled (first, so that none
    /// can start in between), then every running task is woken to drop its
    /// work.
    /// Offers every running task to `aborted`.
    pub(crate) fn abort_all(&self, aborted: &mut Oldest) {
        self.abort_queued();
        self.abort.fire(aborted);
    }

    /// Offers every task that is running and has waited at least once to
    /// `oldest`.
    pub(crate) fn survey(&self, oldest: &mut Oldest) {
        self.abort.survey(oldest);
    }

    /// Empties every lane's queue (at abort): the tasks waiting there never
    /// run and are counted as cancelled.
    fn abort_queued(&self) {
        // Keys first: a task waiting for its key would otherwise go on to
        // its lane when the key's holder is aborted.
        for (origin, task, _) in self.keys.drain() {
            self.cancel_queued(&origin, task);
        }
        for lane in self.lanes.iter() {
            for waiting in lane.drain() {
                if let Waiting::Task(origin, task, _) = waiting {
                    self.cancel_queued(&origin, task);
                }
            }
        }
    }

    /// Counts a task that never started as cancelled, and drops it.
    fn cancel_queued(&self, origin: &Origin, task: QueuedTask) {
        self.task_dequeued();
        self.unpend(1);
        let (id, name) = (task.lane, task.name());
        drop(task);
        self.counters.finished(&Outcome::Cancelled);
        metrics::count_each(
            |lane| &self.lane(lane).metrics,
            [(id, name)],
            Ended::Cancelled,
        );
        self.report(&Outcome::Cancelled, origin, name);
        self.finish_running(1);
    }

    pub(crate) fn refuse(&self, n: u64, request: &RequestLine) {
        self.counters.refused(n);
        tracing::warn!(
            http.method = request.method(),
            http.path = request.path(),
            tasks = n,
            "background tasks refused: the supervisor is shutting down",
        );
    }

    /// Counts a task the plain `add` methods could not accept, and logs it:
    /// a full queue at `WARN` (the first time, then every 1024th, so an
    /// overload does not also flood the log), an unknown lane at `ERROR`.
    pub(crate) fn reject(&self, error: &AddError, request: &RequestLine) {
        let rejected = self.counters.rejected();
        if matches!(error, AddError::UnknownLane(_)) {
            tracing::error!(
                http.method = request.method(),
                http.path = request.path(),
                %error,
                "background task rejected",
            );
        } else if rejected == 1 || rejected % 1024 == 0 {
            tracing::warn!(
                http.method = request.method(),
                http.path = request.path(),
                %error,
                rejected_so_far = rejected,
                "background task rejected",
            );
        }
    }

    pub(crate) fn discard(&self, n: u64, reason: DiscardReason, request: &RequestLine) {
        self.counters.discarded(n, reason);
        tracing::debug!(
            http.method = request.method(),
            http.path = request.path(),
            tasks = n,
            reason = reason.as_str(),
            "background tasks discarded",
        );
    }

    /// Takes `n` tasks off the running count and wakes idle waiters if that
    /// emptied the set.
    #[inline]
    pub(crate) fn finish_running(&self, n: u64) {
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

    /// Logs how a task ended, and passes a failure to the `on_failure` hook.
    /// Inlined so that the usual case, a completed task, costs no call.
    #[inline]
    pub(crate) fn report(&self, outcome: &Outcome, origin: &Origin, name: Option<&'static str>) {
        match outcome {
            Outcome::Completed => tracing::trace!("background task completed"),
            _ => self.report_unusual(outcome, origin, name),
        }
    }

    #[cold]
    fn report_unusual(&self, outcome: &Outcome, origin: &Origin, name: Option<&'static str>) {
        let (kind, message) = match outcome {
            // Handled by `report`.
            Outcome::Completed => return,
            Outcome::Cancelled => {
                tracing::debug!(task.name = name, "background task cancelled by shutdown");
                return;
            }
            Outcome::TimedOut => {
                tracing::error!(
                    task.name = name,
                    http.method = origin.method(),
                    http.path = origin.path(),
                    "background task timed out",
                );
                (FailureKind::Timeout, "timed out")
            }
            Outcome::Failed(message) => {
                tracing::error!(
                    task.name = name,
                    http.method = origin.method(),
                    http.path = origin.path(),
                    error = %message,
                    "background task failed",
                );
                (FailureKind::Error, message.as_str())
            }
            Outcome::Panicked(message) => {
                tracing::error!(
                    task.name = name,
                    http.method = origin.method(),
                    http.path = origin.path(),
                    panic = %message,
                    "background task panicked",
                );
                (FailureKind::Panic, message.as_str())
            }
        };
        if let Some(hook) = &self.on_failure {
            // The origin always holds a method that parsed once already.
            let method = origin
                .method()
                .and_then(|method| Method::from_bytes(method.as_bytes()).ok());
            let failure = TaskFailure {
                kind,
                name,
                message,
                method: method.as_ref(),
                path: origin.path(),
            };
            // The hook is user code running inside our bookkeeping: a panic in
            // it must not unwind through the counters.
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&failure))).is_err() {
                tracing::error!("the on_failure hook panicked");
            }
        }
    }
}
