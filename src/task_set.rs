//! The application-lifespan task set: where handed-off tasks run, how they
//! are counted, waited for, cancelled and aborted.
//!
//! Written by hand rather than on `tokio::task::JoinSet` or
//! `tokio_util::task::TaskTracker` because it needs three things neither
//! gives together without a lock on the per-task path: spawning through a
//! shared reference (`JoinSet` needs `&mut`), waiting for "nothing running"
//! without closing the set first (`TaskTracker::wait` needs `close`), and
//! aborting every task at once (done here by [`Abort`]: a flag every task's
//! wrapper reads, and the wakers of the waiting ones, woken together).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Method;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use tokio::sync::oneshot;

use crate::abort::{Abort, Registration};
use crate::error::AddError;
use crate::failure::{FailureKind, TaskFailure};
use crate::handle::{Queued, RequestTasks};
use crate::lane::{Lane, LaneId, Waiting};
use crate::origin::Origin;
use crate::stats::{Counters, DiscardReason, LaneStats, Outcome, Stats};
use crate::task::{BlockingWork, BoxedWork, Task, Work};

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
    abort: Abort,
    /// Woken when the running count falls to zero while someone waits.
    idle: Notify,
    idle_waiters: AtomicUsize,
    on_failure: Option<FailureHook>,
    /// Where `BackgroundTasks::enqueue` pushes durable jobs; set once, by
    /// `SupervisorBuilder::jobs`.
    #[cfg(feature = "durable")]
    pub(crate) jobs: std::sync::OnceLock<crate::durable::JobQueue>,
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
            pending: AtomicU64::new(0),
            max_pending: max_pending as u64,
            queued_tasks: AtomicU64::new(0),
            runtime,
            cancel: CancellationToken::new(),
            abort: Abort::new(),
            idle: Notify::new(),
            idle_waiters: AtomicUsize::new(0),
            on_failure,
            #[cfg(feature = "durable")]
            jobs: std::sync::OnceLock::new(),
        }
    }

    /// The runtime tasks (and residents) are spawned on.
    #[cfg_attr(not(feature = "durable"), allow(dead_code))]
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

    /// Hands `tasks` (admitted, queued by `request`) to their lanes: each
    /// starts at once if its lane has a free slot, or waits in the lane's
    /// queue. All are refused if the set is closed.
    pub(crate) fn spawn_all(self: &Arc<Self>, request: &Arc<RequestTasks>, tasks: Queued) {
        let n = tasks.len() as u64;
        if n == 0 {
            return;
        }
        let previous = self.state.fetch_add(n * ONE_TASK, Ordering::SeqCst);
        if previous & CLOSED != 0 {
            self.finish_running(n);
            self.unpend(n);
            self.refuse(n, request);
            return;
        }
        let origin = request.origin();
        let mut started = 0;
        for task in tasks {
            let lane_id = task.lane;
            let lane = &self.lanes[lane_id];
            if lane.try_claim() {
                started += 1;
                self.spawn(origin.clone(), task);
            } else {
                self.queued_tasks.fetch_add(1, Ordering::SeqCst);
                lane.push(Waiting::Task(origin.clone(), task));
                self.dispatch(lane_id);
            }
        }
        self.unpend(started);
    }

    fn spawn(self: &Arc<Self>, origin: Origin, task: Task) {
        drop(
            self.runtime
                .spawn(Running::start(Arc::clone(self), origin, task)),
        );
    }

    /// Starts waiters of `lane_id` while it has free slots.
    fn dispatch(self: &Arc<Self>, lane_id: LaneId) {
        let lane = &self.lanes[lane_id];
        while let Some(waiting) = lane.next() {
            match waiting {
                Waiting::Task(origin, task) => {
                    self.queued_tasks.fetch_sub(1, Ordering::SeqCst);
                    self.unpend(1);
                    self.spawn(origin, task);
                }
                // A step whose group has gone hands the slot straight back.
                Waiting::Step(step) => {
                    if step.send(()).is_err() {
                        lane.release();
                    }
                }
            }
        }
    }

    /// Gives back a slot of `lane_id` and starts the next waiter.
    #[inline]
    pub(crate) fn release_slot(self: &Arc<Self>, lane_id: LaneId) {
        let lane = &self.lanes[lane_id];
        lane.release();
        // Read after the release (both `SeqCst`): a waiter pushed meanwhile
        // is seen here or sees the free slot itself (see `Lane::next`).
        if lane.queued() > 0 {
            self.dispatch(lane_id);
        }
    }

    /// Waits for a slot in `lane_id`, for a step of a running group. `None`
    /// if the queue was emptied by an abort first.
    ///
    /// Cancel safe: a slot granted to a dropped waiter is handed back.
    pub(crate) async fn acquire(self: &Arc<Self>, lane_id: LaneId) -> Option<Slot> {
        let lane = &self.lanes[lane_id];
        if !lane.try_claim() {
            let (granted, grant) = oneshot::channel();
            lane.push(Waiting::Step(granted));
            self.dispatch(lane_id);
            let mut grant = Grant {
                set: self,
                lane: lane_id,
                receiver: Some(grant),
            };
            let received = match grant.receiver.as_mut() {
                Some(receiver) => receiver.await,
                None => return None,
            };
            grant.receiver = None;
            received.ok()?;
        }
        Some(Slot {
            set: Arc::clone(self),
            lane: lane_id,
        })
    }

    /// Whether the grace period is over: running tasks drop their work.
    pub(crate) fn is_aborted(&self) -> bool {
        self.abort.is_aborted()
    }

    /// Ends everything: the queued tasks are cancelled (first, so that none
    /// can start in between), then every running task is woken to drop its
    /// work.
    pub(crate) fn abort_all(&self) {
        self.abort_queued();
        self.abort.fire();
    }

    /// Empties every lane's queue (at abort): the tasks waiting there never
    /// run and are counted as cancelled.
    fn abort_queued(&self) {
        for lane in self.lanes.iter() {
            for waiting in lane.drain() {
                if let Waiting::Task(origin, task) = waiting {
                    self.queued_tasks.fetch_sub(1, Ordering::SeqCst);
                    self.unpend(1);
                    drop(task);
                    self.counters.finished(&Outcome::Cancelled);
                    self.report(&Outcome::Cancelled, &origin);
                    self.finish_running(1);
                }
            }
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

    /// Counts a task the plain `add` methods could not accept, and logs it:
    /// a full queue at `WARN` (the first time, then every 1024th, so an
    /// overload does not also flood the log), an unknown lane at `ERROR`.
    pub(crate) fn reject(&self, error: &AddError, request: &RequestTasks) {
        let rejected = self.counters.rejected();
        if matches!(error, AddError::UnknownLane(_)) {
            tracing::error!(
                http.method = %request.method(),
                http.path = request.path(),
                %error,
                "background task rejected",
            );
        } else if rejected == 1 || rejected % 1024 == 0 {
            tracing::warn!(
                http.method = %request.method(),
                http.path = request.path(),
                %error,
                rejected_so_far = rejected,
                "background task rejected",
            );
        }
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
    #[inline]
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

    /// Logs how a task ended, and passes a failure to the `on_failure` hook.
    /// Inlined so that the usual case, a completed task, costs no call.
    #[inline]
    fn report(&self, outcome: &Outcome, origin: &Origin) {
        match outcome {
            Outcome::Completed => tracing::trace!("background task completed"),
            _ => self.report_unusual(outcome, origin),
        }
    }

    #[cold]
    fn report_unusual(&self, outcome: &Outcome, origin: &Origin) {
        let (kind, message) = match outcome {
            // Handled by `report`.
            Outcome::Completed => return,
            Outcome::Cancelled => {
                tracing::debug!("background task cancelled by shutdown");
                return;
            }
            Outcome::TimedOut => {
                tracing::error!(
                    http.method = origin.method(),
                    http.path = origin.path(),
                    "background task timed out",
                );
                (FailureKind::Timeout, "timed out")
            }
            Outcome::Failed(message) => {
                tracing::error!(
                    http.method = origin.method(),
                    http.path = origin.path(),
                    error = %message,
                    "background task failed",
                );
                (FailureKind::Error, message.as_str())
            }
            Outcome::Panicked(message) => {
                tracing::error!(
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
            let method = Method::from_bytes(origin.method().as_bytes()).unwrap_or_default();
            let failure = TaskFailure {
                kind,
                message,
                method: &method,
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

/// The future spawned for each handed-off task.
///
/// Written by hand rather than as an `async fn` to keep it small (tokio
/// copies it into the task's allocation; an `async fn` with a `select` was
/// 496 bytes, this is about 120) and to register for the abort only once
/// the task has returned `Pending` — a task that finishes on its first poll
/// never takes a lock.
struct Running {
    set: Arc<TaskSet>,
    origin: Origin,
    span: tracing::Span,
    lane: LaneId,
    /// Whether this future gives the lane slot back when it ends. A started
    /// blocking closure owns its slot instead, so that a closure still
    /// running after a timeout or an abort keeps counting against the
    /// blocking lane's limit until it returns.
    holds_slot: bool,
    work: RunningWork,
    /// Made at the first `Pending`: where shutdown finds the task's waker
    /// to wake it when it aborts. Registered once, because this future is
    /// only ever polled by tokio as the root of the task spawned in
    /// [`TaskSet::spawn`], and tokio passes a task the same waker on every
    /// poll.
    registered: Option<Registration>,
    /// Set once the outcome is counted; if the future is dropped before that
    /// (the runtime shut down), `Drop` counts it as cancelled.
    counted: bool,
}

enum RunningWork {
    Async(BoxedWork),
    /// Already started on the blocking pool; dropping the handle detaches it.
    Blocking {
        handle: JoinHandle<Result<(), String>>,
        deadline: Option<Pin<Box<Sleep>>>,
    },
    /// Nothing left to poll: the work was dropped (aborted), or never
    /// started because shutdown had already aborted.
    Done,
}

impl RunningWork {
    /// Starts `function` on the blocking pool. The closure owns the lane
    /// slot: a closure still running after a timeout or an abort keeps
    /// counting against the lane's limit until it returns.
    fn blocking(
        set: &Arc<TaskSet>,
        span: &tracing::Span,
        lane: LaneId,
        function: BlockingWork,
        timeout: Option<std::time::Duration>,
    ) -> Self {
        let span = span.clone();
        let slot = Slot {
            set: Arc::clone(set),
            lane,
        };
        let handle = set.runtime.spawn_blocking(move || {
            let _slot = slot;
            span.in_scope(function)
        });
        // The timer must be the runtime's: this may run on a thread outside
        // it (a handle used from a plain thread after the hand-off), where
        // `sleep` would panic.
        let deadline = timeout.map(|timeout| {
            let _runtime = set.runtime.enter();
            Box::pin(tokio::time::sleep(timeout))
        });
        Self::Blocking { handle, deadline }
    }
}

impl Running {
    fn start(set: Arc<TaskSet>, origin: Origin, task: Task) -> Self {
        // A disabled span is not free when `tracing`'s `log` feature is on
        // (axum's default `tower-log` turns it on): it still consults `log`
        // when made, entered, left and dropped. `Span::none` costs nothing.
        let span = if tracing::level_enabled!(tracing::Level::INFO) {
            tracing::info_span!(
                parent: None,
                "background_task",
                http.method = origin.method(),
                http.path = origin.path(),
            )
        } else {
            tracing::Span::none()
        };
        if let Some(added_in) = &task.added_in {
            span.follows_from(&**added_in);
        }
        let lane = task.lane;
        let mut holds_slot = true;
        let work = match task.work {
            // Aborted before it could start: it never will (counted at the
            // first poll).
            _ if set.is_aborted() => RunningWork::Done,
            Work::Async(future) => RunningWork::Async(future),
            Work::Blocking(function) => {
                holds_slot = false;
                RunningWork::blocking(&set, &span, lane, function, None)
            }
            Work::BlockingWithTimeout(boxed) => {
                let (function, timeout) = *boxed;
                holds_slot = false;
                RunningWork::blocking(&set, &span, lane, function, Some(timeout))
            }
        };
        Self {
            set,
            origin,
            span,
            lane,
            holds_slot,
            work,
            registered: None,
            counted: false,
        }
    }

    /// Counts, logs (inside the task's span) and takes the task off the
    /// running count.
    fn count(&mut self, outcome: Outcome) {
        self.counted = true;
        let _entered = self.span.enter();
        let set = &self.set;
        if let Some(registration) = self.registered.take() {
            set.abort.unregister(registration);
        }
        set.counters.finished(&outcome);
        set.report(&outcome, &self.origin);
        if self.holds_slot {
            set.release_slot(self.lane);
        }
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
        if this.set.is_aborted() {
            this.abort_work();
            return Poll::Ready(());
        }
        let polled = match &mut this.work {
            RunningWork::Async(future) => {
                let _entered = this.span.enter();
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                    Ok(poll) => poll,
                    Err(payload) => Poll::Ready(Outcome::Panicked(panic_message(payload))),
                }
            }
            RunningWork::Blocking { handle, deadline } => match Pin::new(handle).poll(cx) {
                Poll::Ready(joined) => Poll::Ready(match joined {
                    Ok(Ok(())) => Outcome::Completed,
                    Ok(Err(message)) => Outcome::Failed(message),
                    Err(error) if error.is_panic() => {
                        Outcome::Panicked(panic_message(error.into_panic()))
                    }
                    // The runtime is shutting down and dropped the closure unrun.
                    Err(_) => Outcome::Cancelled,
                }),
                // Past the deadline the closure is left to finish unobserved,
                // still holding its slot.
                Poll::Pending => {
                    let expired = deadline
                        .as_mut()
                        .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                    if expired {
                        Poll::Ready(Outcome::TimedOut)
                    } else {
                        Poll::Pending
                    }
                }
            },
            RunningWork::Done => Poll::Ready(Outcome::Cancelled),
        };
        match polled {
            Poll::Ready(outcome) => {
                this.count(outcome);
                Poll::Ready(())
            }
            Poll::Pending => {
                if this.registered.is_none() {
                    this.registered = Some(this.set.abort.register(cx.waker()));
                    // `fire` may have drained our shard just before.
                    if this.set.is_aborted() {
                        this.abort_work();
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Running {
    /// Drops the work first, so that its own clean-up (drop guards) has run
    /// by the time the task is counted and `wait_idle` or `shutdown` can
    /// return; then counts it as cancelled.
    fn abort_work(&mut self) {
        self.work = RunningWork::Done;
        self.count(Outcome::Cancelled);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.counted {
            self.abort_work();
        }
    }
}

/// A slot in a lane, held by a group's step; given back on drop.
pub(crate) struct Slot {
    set: Arc<TaskSet>,
    lane: LaneId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.set.release_slot(self.lane);
    }
}

/// A step's place in a lane's queue while it waits. Dropped before the grant
/// was received (the step was cancelled), it hands a slot that arrived in the
/// meantime back to the lane.
struct Grant<'a> {
    set: &'a Arc<TaskSet>,
    lane: LaneId,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if receiver.try_recv().is_ok() {
                self.set.release_slot(self.lane);
            }
        }
    }
}

pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "<non-string panic payload>".to_owned(),
        },
    }
}
