//! Work as the task set runs it: type-erased, so a request can queue async
//! futures, blocking closures and groups side by side, and the queued unit
//! that carries it to its lane.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use smallvec::SmallVec;

use crate::output::TaskOutput;
use crate::stats::Outcome;

/// The index of a lane in the task set; 0 and 1 always exist.
pub(crate) type LaneId = usize;
/// Where [`add`](crate::BackgroundTasks::add) puts tasks.
pub(crate) const DEFAULT_LANE: LaneId = 0;
/// Where [`add_blocking`](crate::BackgroundTasks::add_blocking) puts tasks.
pub(crate) const BLOCKING_LANE: LaneId = 1;

/// A request's queued tasks: the first is stored inline, since most
/// requests that queue anything queue one task.
pub(crate) type Queued = SmallVec<[QueuedTask; 1]>;

/// A boxed async task, already mapped to how it ended.
pub(crate) type BoxedWork = Pin<Box<dyn Future<Output = Outcome> + Send>>;
/// A boxed blocking closure.
pub(crate) type BlockingWork = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Makes a fresh attempt of a retried task.
pub(crate) type Maker = Box<dyn FnMut() -> BoxedWork + Send>;

/// What a task does once it has a slot in its lane.
pub(crate) enum Work {
    /// Polled on the runtime's worker threads.
    Async(BoxedWork),
    /// Run on tokio's blocking pool, never on a worker thread.
    Blocking(BlockingWork),
    /// The same, given up on (and counted as timed out) after a time limit;
    /// boxed so that the limit does not make every task larger.
    BlockingWithTimeout(Box<(BlockingWork, Duration)>),
}

/// A queued task: its work, the lane it runs in, and its [`Details`].
pub(crate) struct QueuedTask {
    pub(crate) work: Work,
    pub(crate) lane: LaneId,
    /// `None` for an unnamed task added where no subscriber records the
    /// current span, or none would record the task's `INFO` span (the usual
    /// case without tracing): boxed, so a task costs 8 bytes for them, not
    /// 56.
    pub(crate) details: Option<Box<Details>>,
}

/// What only some tasks have.
pub(crate) struct Details {
    /// The span that was current when the task was added, so the task's own
    /// span can say it `follows_from` the request that queued it.
    pub(crate) added_in: Option<tracing::Span>,
    /// The name given with [`Task::name`](crate::Task::name).
    pub(crate) name: Option<&'static str>,
    /// The key given with [`Task::key`](crate::Task::key).
    pub(crate) key: Option<Box<str>>,
}

impl std::fmt::Debug for QueuedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedTask")
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

impl QueuedTask {
    #[inline]
    pub(crate) fn new(
        work: Work,
        lane: LaneId,
        name: Option<&'static str>,
        key: Option<Box<str>>,
    ) -> Self {
        // Only the task's own span (at `INFO`) uses it.
        let added_in = if tracing::level_enabled!(tracing::Level::INFO) {
            let current = tracing::Span::current();
            (!current.is_none()).then_some(current)
        } else {
            None
        };
        let details = (added_in.is_some() || name.is_some() || key.is_some()).then(|| {
            Box::new(Details {
                added_in,
                name,
                key,
            })
        });
        Self {
            work,
            lane,
            details,
        }
    }

    pub(crate) fn name(&self) -> Option<&'static str> {
        self.details.as_ref().and_then(|details| details.name)
    }

    pub(crate) fn key(&self) -> Option<&str> {
        self.details
            .as_ref()
            .and_then(|details| details.key.as_deref())
    }
}

/// `future`, boxed, with its output mapped to an outcome.
pub(crate) fn boxed<F>(future: F) -> BoxedWork
where
    F: Future + Send + 'static,
    F::Output: TaskOutput,
{
    Box::pin(IntoOutcome { future })
}

pin_project_lite::pin_project! {
    /// `future` with its output mapped to an [`Outcome`]. Written out rather
    /// than as `async move { .. future.await .. }`, whose state machine keeps
    /// the captured future and the awaited one as two copies: this box is
    /// what a task waiting on I/O holds for as long as it waits.
    struct IntoOutcome<F> {
        #[pin]
        future: F,
    }
}

impl<F> Future for IntoOutcome<F>
where
    F: Future,
    F::Output: TaskOutput,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Outcome> {
        self.project()
            .future
            .poll(cx)
            .map(|output| Outcome::from_result(output.into_result()))
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

/// `make`, boxed, making boxed attempts.
pub(crate) fn boxed_maker<M, F>(mut make: M) -> Maker
where
    M: FnMut() -> F + Send + 'static,
    F: Future + Send + 'static,
    F::Output: TaskOutput,
{
    Box::new(move || boxed(make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boxed_task_is_no_larger_than_its_future() {
        // What a task waiting on I/O holds beyond tokio's own task: the
        // boxed future, which must not keep a second copy of the user's.
        let nap = || tokio::time::sleep(Duration::from_secs(1));
        let user_future = async move { nap().await };
        let size = std::mem::size_of_val(&user_future);
        let work = boxed(async move { nap().await });
        assert_eq!(std::mem::size_of_val(&*work), size);
    }
}
