//! One unit of background work, type-erased so a request can queue async
//! futures, blocking closures and groups side by side.
//!
//! A queued async task is boxed as a [`Start`]: it owns the concrete future,
//! unpolled, and when the task starts it moves that future into the tokio
//! task it spawns and frees the box. A running task is then one allocation,
//! tokio's, as with a bare `tokio::spawn`, not tokio's plus a boxed future
//! polled through a vtable.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::Unconstrained;
use tokio::time::Sleep;

use crate::lane::LaneId;
use crate::stats::Outcome;
use crate::task_set::Starting;

/// The output of a background task: `()` or a `Result` whose error can be
/// displayed.
///
/// A task that returns `Err(e)` is counted as *failed* and `e` is logged at
/// `ERROR` (and passed to the
/// [`on_failure`](crate::SupervisorBuilder::on_failure) hook); the `Ok` value
/// is dropped. This trait is sealed: it is implemented for exactly those two
/// shapes.
pub trait TaskOutput: sealed::Sealed + Send + 'static {
    /// `Ok(())` if the task succeeded, otherwise the error's message.
    #[doc(hidden)]
    fn into_result(self) -> Result<(), String>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<T, E> TaskOutput for Result<T, E>
where
    T: Send + 'static,
    E: Display + Send + 'static,
{
    fn into_result(self) -> Result<(), String> {
        self.map(drop).map_err(|error| error.to_string())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<T, E> Sealed for Result<T, E> {}
}

/// A boxed async task, already mapped to how it ended: a group's step or a
/// retried task's attempt, polled where it is.
pub(crate) type BoxedWork = Pin<Box<dyn Future<Output = Outcome> + Send>>;
/// A queued async task, started by moving its future out of the box.
pub(crate) type StartWork = Box<dyn Start>;
/// A boxed blocking closure.
pub(crate) type BlockingWork = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// What a task does once it has a slot in its lane.
pub(crate) enum Work {
    /// Polled on the runtime's worker threads.
    Async(StartWork),
    /// Run on tokio's blocking pool, never on a worker thread.
    Blocking(BlockingWork),
    /// The same, given up on (and counted as timed out) after a time limit;
    /// boxed so that the limit does not make every task larger.
    BlockingWithTimeout(Box<(BlockingWork, Duration)>),
}

/// A queued task: its work, the lane it runs in, and the span that was
/// current when it was added, so the task's own span can say it
/// `follows_from` the request that queued it.
pub(crate) struct Task {
    pub(crate) work: Work,
    pub(crate) lane: LaneId,
    /// `None` when no subscriber records the current span, or none would
    /// record the task's `INFO` span (the usual case without tracing):
    /// boxed, so a task costs 8 bytes for it, not 40.
    pub(crate) added_in: Option<Box<tracing::Span>>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

impl Task {
    pub(crate) fn new(work: Work, lane: LaneId) -> Self {
        Self {
            work,
            lane,
            // Only the task's own span (at `INFO`) uses it.
            added_in: if tracing::level_enabled!(tracing::Level::INFO) {
                let current = tracing::Span::current();
                (!current.is_none()).then(|| Box::new(current))
            } else {
                None
            },
        }
    }
}

/// Type-erased work that spawns its future, by value, into a tokio task.
pub(crate) trait Start: Send {
    /// Moves the future out of the box into the task `starting` spawns.
    fn start(self: Box<Self>, starting: Starting<'_>);
}

impl<W> Start for W
where
    W: Future<Output = Outcome> + Send + 'static,
{
    fn start(self: Box<Self>, starting: Starting<'_>) {
        starting.spawn(*self);
    }
}

/// `future`, boxed to be started, with its output mapped to an outcome and,
/// with `timeout`, given up on (counted as timed out) after that long.
pub(crate) fn start<F>(future: F, timeout: Option<Duration>) -> StartWork
where
    F: Future + Send + 'static,
    F::Output: TaskOutput,
{
    let work = Mapped { future };
    match timeout {
        None => Box::new(work),
        Some(limit) => limited(work, limit),
    }
}

/// `work`, boxed to be started with a time limit.
pub(crate) fn limited<W>(work: W, limit: Duration) -> StartWork
where
    W: Future<Output = Outcome> + Send + 'static,
{
    Box::new(Timed { work, limit })
}

/// `future`, boxed, with its output mapped to an outcome.
pub(crate) fn boxed<F>(future: F) -> BoxedWork
where
    F: Future + Send + 'static,
    F::Output: TaskOutput,
{
    Box::pin(Mapped { future })
}

pin_project! {
    /// A task's future with its output mapped to an outcome.
    pub(crate) struct Mapped<F> {
        #[pin]
        future: F,
    }
}

impl<F> Future for Mapped<F>
where
    F: Future,
    F::Output: TaskOutput,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.project()
            .future
            .poll(cx)
            .map(|output| Outcome::from_result(output.into_result()))
    }
}

/// Queued work with a time limit; the clock starts at its first poll.
struct Timed<W> {
    work: W,
    limit: Duration,
}

impl<W> Start for Timed<W>
where
    W: Future<Output = Outcome> + Send + 'static,
{
    fn start(self: Box<Self>, starting: Starting<'_>) {
        let Timed { work, limit } = *self;
        starting.spawn(Limited {
            work,
            limit,
            deadline: None,
        });
    }
}

pin_project! {
    /// `work`, counted as timed out if it has not ended `limit` after its
    /// first poll: `tokio::time::timeout` (which this replaced, in an `async`
    /// block), but with the deadline made at that poll, inside the task, so
    /// that the thread that starts the task need not be in a runtime.
    ///
    /// The deadline is polled outside tokio's co-operative budget, as
    /// `Timeout` polls it when the work used up the budget; this future is
    /// only polled first thing in its task, with a fresh budget, where the
    /// two agree.
    struct Limited<W> {
        #[pin]
        work: W,
        limit: Duration,
        #[pin]
        deadline: Option<Unconstrained<Sleep>>,
    }
}

impl<W> Future for Limited<W>
where
    W: Future<Output = Outcome>,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        if this.deadline.is_none() {
            this.deadline
                .set(Some(tokio::task::unconstrained(tokio::time::sleep(
                    *this.limit,
                ))));
        }
        if let Poll::Ready(outcome) = this.work.poll(cx) {
            return Poll::Ready(outcome);
        }
        match this.deadline.as_pin_mut().map(|deadline| deadline.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Outcome::TimedOut),
            _ => Poll::Pending,
        }
    }
}

/// `function`, boxed, with its output mapped to a message.
pub(crate) fn boxed_blocking<F, T>(function: F) -> BlockingWork
where
    F: FnOnce() -> T + Send + 'static,
    T: TaskOutput,
{
    Box::new(move || function().into_result())
}
