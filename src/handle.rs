//! The per-request handle handlers queue their background work on.

use std::future::Future;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{Method, Uri};
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use crate::stats::DiscardReason;
use crate::task::{Task, TaskOutput};
use crate::task_set::TaskSet;

/// A request's background tasks: work queued here starts once the response
/// body has ended, in the supervisor's task set, detached from the
/// connection.
///
/// [`BackgroundTaskLayer`](crate::BackgroundTaskLayer) puts one into every
/// request's extensions. With the `axum` feature it is an extractor; without
/// it, take it from `request.extensions().get::<BackgroundTasks>()`.
///
/// The handle is cheap to clone (one reference count) and `Send + Sync`, so
/// it can be passed into spawned futures. What happens to work added through
/// it depends on where the request is:
///
/// | when `add` is called | what happens to the task |
/// |---|---|
/// | before the response body has ended | queued; started when it ends |
/// | after the response body ended (a clone kept by other code) | started at once |
/// | after the request's tasks were discarded (no response, or a policy) | discarded and counted |
/// | after [`Supervisor::shutdown`](crate::Supervisor::shutdown) began | refused, counted and logged at `WARN` |
///
/// # Example
///
/// ```
/// use tower_background::BackgroundTasks;
///
/// async fn signup(tasks: BackgroundTasks, email: String) -> http::StatusCode {
///     tasks.add(async move {
///         // send the welcome e-mail; an `Err` is logged and counted as failed
///         Ok::<_, std::io::Error>(())
///     });
///     tasks.add_blocking(move || {
///         // CPU-heavy or blocking work: runs on tokio's blocking pool
///     });
///     http::StatusCode::CREATED // sent at once; nothing above has started
/// }
/// ```
#[derive(Clone, Debug)]
pub struct BackgroundTasks {
    request: Arc<RequestTasks>,
}

/// The state one request's handles share with its response body.
#[derive(Debug)]
pub(crate) struct RequestTasks {
    set: Arc<TaskSet>,
    method: Method,
    uri: Uri,
    queue: Mutex<Queue>,
}

/// A request's queued tasks: the first is stored inline, since most
/// requests that queue anything queue one task.
pub(crate) type Queued = SmallVec<[Task; 1]>;

#[derive(Debug)]
enum Queue {
    /// The response has not ended; tasks wait here.
    Open(Queued),
    /// Handed off: later tasks start at once.
    HandedOff,
    /// Discarded: later tasks are discarded for the same reason.
    Discarded(DiscardReason),
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").finish_non_exhaustive()
    }
}

impl BackgroundTasks {
    pub(crate) fn new(set: Arc<TaskSet>, method: Method, uri: Uri) -> Self {
        Self {
            request: Arc::new(RequestTasks {
                set,
                method,
                uri,
                queue: Mutex::new(Queue::Open(SmallVec::new())),
            }),
        }
    }

    /// Queues an async task.
    ///
    /// `future` is not polled until the response body has ended; then it runs
    /// on the runtime's worker threads, in its own `background_task` span
    /// that follows from the span current here. Its output is `()` or a
    /// `Result` whose `Err` is counted as failed and logged at `ERROR` with
    /// the request's method and path; a panic is caught, counted and logged
    /// the same way.
    ///
    /// Never blocks and never fails: when the task cannot be accepted it is
    /// counted (see the table on [`BackgroundTasks`]).
    pub fn add<F>(&self, future: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.push(Task::from_future(future));
    }

    /// Queues a blocking or CPU-heavy closure.
    ///
    /// Runs like [`add`](Self::add)'s tasks, but on tokio's blocking thread
    /// pool (`spawn_blocking`), never on a worker thread, so it cannot stall
    /// the server. A blocking closure cannot be aborted: if it is still
    /// running when the grace period ends it is counted as cancelled and left
    /// to finish on its thread, and the runtime waits for that thread when it
    /// is dropped, delaying the process's exit. Check
    /// [`cancellation_token`](Self::cancellation_token) in long loops.
    pub fn add_blocking<F, T>(&self, function: F)
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        self.push(Task::from_blocking(function));
    }

    /// A token that is cancelled when shutdown's grace period is nearly over
    /// (at the start of the cleanup period, see
    /// [`SupervisorBuilder::cleanup_period`](crate::SupervisorBuilder::cleanup_period)).
    ///
    /// Tasks that want to stop cleanly watch it; tasks that ignore it are
    /// aborted when the grace period ends.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.request.set.cancel.clone()
    }

    fn push(&self, task: Task) {
        let request = &self.request;
        let set = &request.set;
        set.counters.submitted();
        if set.is_closed() {
            set.refuse(1, request);
            return;
        }
        let mut queue = request.lock();
        match &mut *queue {
            Queue::Open(tasks) => {
                tasks.push(task);
                set.counters.queued();
            }
            Queue::HandedOff => {
                drop(queue);
                set.spawn_all(request, smallvec::smallvec![task]);
            }
            Queue::Discarded(reason) => {
                let reason = *reason;
                drop(queue);
                set.discard(1, reason, request);
            }
        }
    }

    pub(crate) fn into_request(self) -> Arc<RequestTasks> {
        self.request
    }
}

impl RequestTasks {
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    pub(crate) fn path(&self) -> &str {
        self.uri.path()
    }

    pub(crate) fn set(&self) -> &Arc<TaskSet> {
        &self.set
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while the lock is held; should it ever, the queue is
        // still consistent, so poisoning is ignored rather than propagated.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the queued tasks if the queue is still open, leaving `next`.
    fn close_queue(&self, next: Queue) -> Option<Queued> {
        let mut queue = self.lock();
        match &*queue {
            Queue::Open(_) => match mem::replace(&mut *queue, next) {
                Queue::Open(tasks) => Some(tasks),
                _ => None,
            },
            _ => None,
        }
    }

    /// Starts the queued tasks; later adds start at once. Only the first
    /// hand-off or discard of a request has any effect.
    pub(crate) fn hand_off(self: &Arc<Self>) {
        if let Some(tasks) = self.close_queue(Queue::HandedOff) {
            if !tasks.is_empty() {
                self.set.counters.unqueued(tasks.len() as u64);
                self.set.spawn_all(self, tasks);
            }
        }
    }

    /// Drops the queued tasks, counted under `reason`; later adds are
    /// discarded too. Only the first hand-off or discard has any effect.
    pub(crate) fn discard(self: &Arc<Self>, reason: DiscardReason) {
        if let Some(tasks) = self.close_queue(Queue::Discarded(reason)) {
            let n = tasks.len() as u64;
            drop(tasks);
            if n > 0 {
                self.set.counters.unqueued(n);
                self.set.discard(n, reason, self);
            }
        }
    }
}
