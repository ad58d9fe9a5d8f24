//! Handed-off tasks, started: each takes a slot in its lane or waits in the
//! lane's queue, runs as a [`Running`] future on the supervisor's runtime,
//! is counted once when it ends, and on its way out starts the next waiter
//! of its lane.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::abort::Registration;
use crate::keyed::{self, Parked};
use crate::lane::Waiting;
use crate::metrics::{self, Ended, Stamp, TaskMetrics};
use crate::origin::{Origin, RequestLine};
use crate::started::Started;
use crate::stats::Outcome;
use crate::task_set::TaskSet;
use crate::work::{BlockingWork, BoxedWork, Details, LaneId, Queued, QueuedTask, Work};

/// Hands `tasks` (admitted, queued by `request`) to their lanes: each starts
/// at once if its lane has a free slot, or waits in the lane's queue. All
/// are refused (and counted so) if the set is closed: then `false`.
pub(crate) fn spawn_all(set: &Arc<TaskSet>, request: &RequestLine, tasks: Queued) -> bool {
    let n = tasks.len() as u64;
    if n == 0 {
        return true;
    }
    if !set.enter_running(n) {
        set.unpend(n);
        set.refuse(n, request);
        let tasks = tasks.iter().map(|task| (task.lane, task.name()));
        metrics::count_each(|lane| &set.lane(lane).metrics, tasks, Ended::Refused);
        return false;
    }
    let origin = request.origin();
    let handed_off = Stamp::now();
    let mut started = 0;
    for task in tasks {
        let task = (origin.clone(), task, handed_off);
        // A keyed task takes its key first, or waits for it.
        let task = match task.1.key() {
            None => task,
            Some(_) => match set.keys.take_or_wait(task) {
                Some(task) => task,
                None => {
                    set.task_queued();
                    continue;
                }
            },
        };
        if to_lane(set, task) {
            started += 1;
        }
    }
    set.unpend(started);
    true
}

/// Starts `task` if its lane has a free slot (`true`), or queues it there.
#[inline]
fn to_lane(set: &Arc<TaskSet>, (origin, task, handed_off): Parked) -> bool {
    let lane_id = task.lane;
    let lane = set.lane(lane_id);
    if lane.try_claim() {
        start(set, origin, task, handed_off);
        return true;
    }
    set.task_queued();
    lane.push(Waiting::Task(origin, task, handed_off));
    dispatch(set, lane_id);
    false
}

/// Gives `key`, whose holder has ended, to the next task waiting for it,
/// which goes on to its lane.
fn pass_key_on(set: &Arc<TaskSet>, key: &str) {
    if let Some(next) = set.keys.pass_on(key) {
        set.task_dequeued();
        if to_lane(set, next) {
            set.unpend(1);
        }
    }
}

/// Spawns `task`, which holds a slot in its lane, on the set's runtime.
fn start(set: &Arc<TaskSet>, origin: Origin, task: QueuedTask, handed_off: Stamp) {
    drop(
        set.runtime()
            .spawn(Running::start(Arc::clone(set), origin, task, handed_off)),
    );
}

/// Starts waiters of `lane_id` while it has free slots.
pub(crate) fn dispatch(set: &Arc<TaskSet>, lane_id: LaneId) {
    let lane = set.lane(lane_id);
    while let Some(waiting) = lane.next() {
        match waiting {
            Waiting::Task(origin, task, handed_off) => {
                set.task_dequeued();
                set.unpend(1);
                start(set, origin, task, handed_off);
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
pub(crate) fn release_slot(set: &Arc<TaskSet>, lane_id: LaneId) {
    let lane = set.lane(lane_id);
    lane.release();
    // Read after the release (both `SeqCst`): a waiter pushed meanwhile is
    // seen here or sees the free slot itself (see `Lane::next`).
    if lane.queued() > 0 {
        dispatch(set, lane_id);
    }
}

/// The future spawned for each handed-off task.
///
/// Written by hand rather than as an `async fn` to keep it small (tokio
/// copies it into the task's allocation, and an `async fn` holding a
/// `select` keeps room for every branch's state) and to register for the
/// abort only once
/// the task has returned `Pending` — a task that finishes on its first poll
/// never takes a lock.
pub(crate) struct Running {
    set: Arc<TaskSet>,
    origin: Origin,
    /// The task's name and key, if it has either.
    details: Option<Box<Details>>,
    span: tracing::Span,
    /// The task's lane, narrowed so that a `Running` stays small enough for
    /// tokio to move it inline rather than through `memcpy` (three moves per
    /// task; see the size test below).
    lane: u32,
    /// Whether this future gives the lane slot back when it ends. A started
    /// blocking closure owns its slot instead, so that a closure still
    /// running after a timeout or an abort keeps counting against the
    /// blocking lane's limit until it returns.
    holds_slot: bool,
    work: RunningWork,
    /// Made at the first `Pending`: where shutdown finds the task's waker
    /// to wake it when it aborts. Registered once, because this future is
    /// only ever polled by tokio as the root of the task spawned in
    /// [`start`], and tokio passes a task the same waker on every
    /// poll.
    registered: Option<Registration>,
    /// Set once the outcome is counted; if the future is dropped before that
    /// (the runtime shut down), `Drop` counts it as cancelled.
    counted: bool,
    /// When it was handed off and first polled (zero bytes without the
    /// `metrics` feature).
    metrics: TaskMetrics,
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
        let slot = Slot::taken(set, lane);
        let handle = set.runtime().spawn_blocking(move || {
            let _slot = slot;
            span.in_scope(function)
        });
        // The timer must be the runtime's: this may run on a thread outside
        // it (a handle used from a plain thread after the hand-off), where
        // `sleep` would panic.
        let deadline = timeout.map(|timeout| {
            let _runtime = set.runtime().enter();
            Box::pin(tokio::time::sleep(timeout))
        });
        Self::Blocking { handle, deadline }
    }
}

impl Running {
    fn start(set: Arc<TaskSet>, origin: Origin, task: QueuedTask, handed_off: Stamp) -> Self {
        let mut details = task.details;
        let name = details.as_ref().and_then(|details| details.name);
        // A disabled span is not free when `tracing`'s `log` feature is on
        // (axum's default `tower-log` turns it on): it still consults `log`
        // when made, entered, left and dropped. `Span::none` costs nothing.
        let span = if tracing::level_enabled!(tracing::Level::INFO) {
            let key = details
                .as_ref()
                .and_then(|details| details.key.as_deref())
                .map(keyed::for_log);
            tracing::info_span!(
                parent: None,
                "background_task",
                task.name = name,
                task.key = key.as_deref(),
                http.method = origin.method(),
                http.path = origin.path(),
            )
        } else {
            tracing::Span::none()
        };
        // Linked, then let go of: the request's span ends with the request.
        if let Some(added_in) = details.as_mut().and_then(|details| details.added_in.take()) {
            span.follows_from(&added_in);
        }
        // Kept only for a name or a key.
        if details
            .as_ref()
            .is_some_and(|details| details.name.is_none() && details.key.is_none())
        {
            details = None;
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
            details,
            span,
            lane: lane as u32,
            holds_slot,
            work,
            registered: None,
            counted: false,
            metrics: TaskMetrics::new(handed_off),
        }
    }

    /// Counts, logs (inside the task's span), hands the task's slot and key
    /// on, and takes the task off the running count.
    fn count(&mut self, outcome: Outcome) {
        self.record(outcome);
        let key = self.key();
        hand_on(&self.set, self.lane as LaneId, self.holds_slot, key);
        self.set.finish_running(1);
    }

    /// Counts and logs (inside the task's span) how the task ended.
    /// Inlined into `count`, which every task runs.
    #[inline(always)]
    fn record(&mut self, outcome: Outcome) {
        self.counted = true;
        let _entered = self.span.enter();
        let set = &self.set;
        if let Some(registration) = self.registered.take() {
            set.abort.unregister(registration);
        }
        set.counters.finished(&outcome);
        let lane = self.lane as LaneId;
        let name = self.name();
        self.metrics
            .ended(|| &set.lane(lane).metrics, name, outcome.ended());
        set.report(&outcome, &self.origin, name);
    }

    fn key(&self) -> Option<&str> {
        self.details
            .as_ref()
            .and_then(|details| details.key.as_deref())
    }

    fn name(&self) -> Option<&'static str> {
        self.details.as_ref().and_then(|details| details.name)
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
        let (set, lane) = (&this.set, this.lane as LaneId);
        this.metrics.polled(|| &set.lane(lane).metrics, this.name());
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
                    let started = Started::now(this.name(), &this.origin);
                    this.registered = Some(this.set.abort.register(cx.waker(), started));
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
    /// Only a task tokio dropped unfinished gets here uncounted: its runtime
    /// has shut down. Handing its slot on starts the next waiter of its lane
    /// (or key), which tokio drops at once too, and so on: done one inside
    /// another, a long queue would overflow the stack. The first such drop
    /// on a thread hands on in a loop the slots and keys of those dropped
    /// inside it.
    fn drop(&mut self) {
        if !self.counted {
            self.dropped_unfinished();
        }
    }
}

impl Running {
    /// See `Drop for Running`. Out of line: every task is dropped, and
    /// almost all of them have been counted by then.
    #[cold]
    #[inline(never)]
    fn dropped_unfinished(&mut self) {
        self.work = RunningWork::Done;
        self.record(Outcome::Cancelled);
        let (lane, holds_slot) = (self.lane as LaneId, self.holds_slot);
        if HANDING_ON.get() {
            let key = self.details.take().and_then(|details| details.key);
            let set = Arc::clone(&self.set);
            HANDED_ON_LATER.with_borrow_mut(|later| later.push((set, lane, holds_slot, key)));
        } else {
            HANDING_ON.set(true);
            let _handing_on = HandingOn;
            hand_on(&self.set, lane, holds_slot, self.key());
            while let Some((set, lane, holds_slot, key)) = HANDED_ON_LATER.with_borrow_mut(Vec::pop)
            {
                hand_on(&set, lane, holds_slot, key.as_deref());
            }
        }
        self.set.finish_running(1);
    }
}

/// A dropped task's slot and key, to hand on: its set, lane, whether it held
/// a slot there, and its key.
type HandOn = (Arc<TaskSet>, LaneId, bool, Option<Box<str>>);

thread_local! {
    /// Whether this thread is handing on the slot and key of a task tokio
    /// dropped unfinished (see `Drop for Running`).
    static HANDING_ON: Cell<bool> = const { Cell::new(false) };
    /// The slots and keys of the tasks dropped meanwhile, handed on by the
    /// first one's loop.
    static HANDED_ON_LATER: RefCell<Vec<HandOn>> = const { RefCell::new(Vec::new()) };
}

/// Clears [`HANDING_ON`] when dropped, even if the hand-on unwinds: the
/// drops after it must not leave their slots to a loop that is gone.
struct HandingOn;

impl Drop for HandingOn {
    fn drop(&mut self) {
        HANDING_ON.set(false);
    }
}

/// Gives back the slot a task held in `lane_id`, if `holds_slot`, and its
/// `key`, if any, starting the next waiter of each.
fn hand_on(set: &Arc<TaskSet>, lane_id: LaneId, holds_slot: bool, key: Option<&str>) {
    if holds_slot {
        release_slot(set, lane_id);
    }
    if let Some(key) = key {
        pass_key_on(set, key);
    }
}

/// A slot in a lane held apart from a running task's own: by a group's
/// step, or by a blocking closure that must keep counting against its lane
/// until it returns. Given back on drop.
pub(crate) struct Slot {
    set: Arc<TaskSet>,
    lane: LaneId,
}

impl Slot {
    /// A slot already claimed in `lane`, owned from now on.
    pub(crate) fn taken(set: &Arc<TaskSet>, lane: LaneId) -> Self {
        Self {
            set: Arc::clone(set),
            lane,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        release_slot(&self.set, self.lane);
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
#[cfg(test)]
mod tests {
    /// tokio moves a task's future into and out of its cell three times per
    /// task; at 128 bytes those moves were calls to `memcpy`, a cost out of
    /// proportion with the rest of a task's bookkeeping. (The `metrics`
    /// feature adds its timestamps, and that cost, on purpose.)
    #[test]
    #[cfg(not(feature = "metrics"))]
    fn a_running_task_is_moved_inline() {
        let size = std::mem::size_of::<super::Running>();
        assert!(size <= 120, "Running is {size} bytes");
    }
}
