//! The per-request handle handlers queue their background work on, and
//! [`IntoTask`], what its `add` accepts.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use http::{Method, Uri};
use tokio_util::sync::CancellationToken;

use crate::attempt;
use crate::error::AddError;
use crate::group::Group;
use crate::metrics::{self, Ended};
use crate::origin::RequestLine;
use crate::output::TaskOutput;
use crate::request_queue::{Closed, RequestQueue};
use crate::running;
use crate::stats::DiscardReason;
use crate::task::{Kind, Task};
use crate::task_set::{Refusal, TaskSet};
use crate::work::{self, BoxedWork, QueuedTask, Work, BLOCKING_LANE, DEFAULT_LANE};

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
/// | after [`Supervisor::shutdown`](crate::Supervisor::shutdown) began | refused, counted and logged at `WARN`, and the request answered `503` |
/// | while [`max_queued`](crate::SupervisorBuilder::max_queued) tasks are waiting | rejected, counted and logged at `WARN` (the first, then every 1024th), and the request answered `503` (`try_add` returns [`AddError::QueueFull`] instead) |
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
    line: RequestLine,
    queue: RequestQueue,
    /// The first error a plain `add` could not return to its caller: the
    /// response, if it does not exist yet, becomes this error instead.
    refusal: OnceLock<AddError>,
}

impl BackgroundTasks {
    pub(crate) fn new(set: Arc<TaskSet>, method: Method, uri: &Uri) -> Self {
        Self::with_line(set, RequestLine::new(method, uri))
    }

    /// A handle for work no request started: there is no response to wait
    /// for, so it is handed off from the start and its tasks start at once.
    pub(crate) fn unattached(set: Arc<TaskSet>) -> Self {
        let tasks = Self::with_line(set, RequestLine::none());
        tasks.request.hand_off();
        tasks
    }

    fn with_line(set: Arc<TaskSet>, line: RequestLine) -> Self {
        Self {
            request: Arc::new(RequestTasks {
                set,
                line,
                queue: RequestQueue::new(),
                refusal: OnceLock::new(),
            }),
        }
    }

    /// Queues a task: a future, a [`Task`] (a future, a blocking closure or
    /// a retried task, with a lane or a time limit), or a [`Group`](crate::Group).
    ///
    /// Nothing is polled until the response body has ended; then the task
    /// runs in its lane (the default lane unless the [`Task`] names one), in
    /// its own `background_task` span that follows from the span current
    /// here. Its output is `()` or a `Result` whose `Err` is counted as
    /// failed and logged at `ERROR` with the request's method and path; a
    /// panic is caught, counted and logged the same way.
    ///
    /// Never blocks and never fails: a task that cannot be accepted is
    /// counted (see the table on [`BackgroundTasks`]), and the client is told.
    ///
    /// # When the task cannot be accepted
    ///
    /// If the queue is full ([`max_queued`](crate::SupervisorBuilder::max_queued)
    /// tasks waiting), the supervisor is shutting down, or the task names a
    /// lane that does not exist, the task is counted
    /// ([`Stats::rejected`](crate::Stats::rejected) or
    /// [`Stats::refused`](crate::Stats::refused)), logged at `WARN` (`ERROR`
    /// for an unknown lane), and the request's response is replaced by the
    /// [`AddError`]: `503 Service Unavailable` with `Retry-After` and a JSON
    /// body `{"error": code, "message": ...}` (`500` for an unknown lane).
    /// The tasks the request did queue are discarded with it, so that the
    /// client's retry is their only copy. A handler's own `4xx` or `5xx`
    /// response is left as it is.
    ///
    /// The answer is the layer's because it is the only one the client acts
    /// on: a `200` with the work silently dropped loses it, while a `503`
    /// with `Retry-After` is what load balancers and HTTP clients already
    /// retry. Only a response that does not exist yet can be replaced: a task
    /// added from the response body or through a handle kept past the
    /// response is only counted and logged. To choose the answer yourself
    /// (another status, or doing the work inline), use
    /// [`try_add`](Self::try_add), which never touches the response.
    pub fn add(&self, task: impl IntoTask) {
        let _ = task.add_to(self, true);
    }

    /// Like [`add`](Self::add), but returns an error instead of counting a
    /// task it cannot accept, and leaves the response to the handler, which
    /// can answer `503` with `Retry-After` (with the `axum` feature,
    /// [`AddError`] is that response) or do something else.
    ///
    /// ```
    /// # #[cfg(feature = "axum")]
    /// # mod example {
    /// use axum::http::StatusCode;
    /// use tower_background::{AddError, BackgroundTasks};
    ///
    /// async fn export(tasks: BackgroundTasks) -> Result<StatusCode, AddError> {
    ///     tasks.try_add(async { /* build the export */ })?;
    ///     Ok(StatusCode::ACCEPTED)
    /// }
    /// # }
    /// ```
    pub fn try_add(&self, task: impl IntoTask) -> Result<(), AddError> {
        task.add_to(self, false)
    }

    /// Queues a blocking or CPU-heavy closure: `add(Task::blocking(function))`.
    ///
    /// Runs like [`add`](Self::add)'s tasks, but in the blocking lane (at
    /// most [`blocking_limit`](crate::SupervisorBuilder::blocking_limit) at
    /// once) on tokio's blocking thread pool (`spawn_blocking`), never on a
    /// worker thread, so it can neither stall the server nor exhaust the pool
    /// that file I/O also uses. A blocking closure cannot be aborted: if it
    /// is still running when the grace period ends it is counted as cancelled
    /// and left to finish on its thread, and the runtime waits for that
    /// thread when it is dropped, delaying the process's exit. Check
    /// [`cancellation_token`](Self::cancellation_token) in long loops.
    pub fn add_blocking<F, T>(&self, function: F)
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        self.add(Task::blocking(function));
    }

    /// Like [`add_blocking`](Self::add_blocking), but returns an error
    /// instead of counting a task it cannot accept.
    pub fn try_add_blocking<F, T>(&self, function: F) -> Result<(), AddError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        self.try_add(Task::blocking(function))
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

    /// Tells, later, whether this handle's supervisor has begun its
    /// shutdown: for a task that must say why it never started (a
    /// deferred durable push).
    #[cfg(feature = "durable")]
    pub(crate) fn shutdown_probe(&self) -> ShutdownProbe {
        ShutdownProbe(Arc::clone(&self.request.set))
    }

    pub(crate) fn into_request(self) -> Arc<RequestTasks> {
        self.request
    }

    /// Resolves `task`'s lane and applies its options, then offers it. With
    /// `counted`, a task that is not accepted is counted (refused, rejected
    /// or discarded) as `add` promises; without, only the error says so.
    pub(crate) fn submit(&self, task: Task, counted: bool) -> Result<(), AddError> {
        let request = &self.request;
        let set = &request.set;
        let lane = match &task.lane {
            None => match task.kind {
                Kind::Blocking(_) => BLOCKING_LANE,
                _ => DEFAULT_LANE,
            },
            Some(name) => match set.lane_id(name) {
                Some(lane) => lane,
                None => {
                    let error = AddError::UnknownLane(name.to_string());
                    if counted {
                        set.reject(&error, &request.line);
                        metrics::rejected_in_unknown_lane(task.name);
                        request.answer_with(error.clone());
                    }
                    return Err(error);
                }
            },
        };
        // A group with a blocking step would hold a slot of the blocking
        // lane while its step waits for one: with every slot held by such
        // groups, none could ever run. Its steps, not the group, are the
        // blocking work, and they take the blocking lane's slots.
        let lane = match &task.kind {
            Kind::Group(group) if lane == BLOCKING_LANE && group.has_blocking_step() => {
                DEFAULT_LANE
            }
            _ => lane,
        };
        let work = attempt::work(task.kind, task.timeout, set);
        self.offer(QueuedTask::new(work, lane, task.name, task.key), counted)
    }

    /// Offers a plain future to the default lane; `counted` as for
    /// [`submit`](Self::submit).
    pub(crate) fn offer_plain(&self, work: BoxedWork, counted: bool) -> Result<(), AddError> {
        self.offer(
            QueuedTask::new(Work::Async(work), DEFAULT_LANE, None, None),
            counted,
        )
    }

    /// Offers `task` to the request's queue; `counted` as for
    /// [`submit`](Self::submit).
    fn offer(&self, task: QueuedTask, counted: bool) -> Result<(), AddError> {
        let request = &self.request;
        let set = &request.set;
        let lane_of = |lane| &set.lane(lane).metrics;
        match set.admit() {
            Ok(()) => {}
            Err(Refusal::Closed) => {
                if counted {
                    set.counters.submitted();
                    set.refuse(1, &request.line);
                    metrics::count_each(lane_of, [(task.lane, task.name())], Ended::Refused);
                    request.answer_with(AddError::ShuttingDown);
                }
                return Err(AddError::ShuttingDown);
            }
            Err(Refusal::Full) => {
                let error = AddError::QueueFull {
                    limit: set.max_pending(),
                };
                if counted {
                    set.reject(&error, &request.line);
                    metrics::count_each(lane_of, [(task.lane, task.name())], Ended::Rejected);
                    request.answer_with(error.clone());
                }
                return Err(error);
            }
        }
        let (task, closed) = match request.queue.push(task, || set.counters.submitted()) {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        match closed {
            Closed::HandedOff => {
                // Counted first: the task may end before `spawn_all` returns.
                set.counters.submitted();
                if running::spawn_all(set, &request.line, smallvec::smallvec![task]) {
                    Ok(())
                } else {
                    Err(request.refused_at_hand_off(counted))
                }
            }
            Closed::Discarded(reason) => {
                set.unpend(1);
                if counted {
                    set.counters.submitted();
                    set.discard(1, reason, &request.line);
                    metrics::count_each(lane_of, [(task.lane, task.name())], Ended::Discarded);
                }
                Err(AddError::Discarded)
            }
        }
    }
}

/// Whether a supervisor has begun its shutdown (it takes no new task), from
/// [`BackgroundTasks::shutdown_probe`].
#[cfg(feature = "durable")]
pub(crate) struct ShutdownProbe(Arc<TaskSet>);

#[cfg(feature = "durable")]
impl ShutdownProbe {
    pub(crate) fn shutdown_begun(&self) -> bool {
        self.0.is_closed()
    }
}

#[cfg(feature = "durable")]
impl std::fmt::Debug for ShutdownProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownProbe")
            .field("shutdown_begun", &self.shutdown_begun())
            .finish()
    }
}

impl RequestTasks {
    /// The answer to a task added after the hand-off that the set closed on
    /// since `admit`: `spawn_all` counted it as refused, even for
    /// `try_add` (it was counted as submitted), and the error says so too,
    /// so that `Ok` always means taken. Out of line: `offer` runs for every
    /// task.
    #[cold]
    #[inline(never)]
    fn refused_at_hand_off(&self, counted: bool) -> AddError {
        if counted {
            self.answer_with(AddError::ShuttingDown);
        }
        AddError::ShuttingDown
    }

    /// Remembers that a plain `add` could not accept a task, so that the
    /// response (if the handler has not returned yet) says so; the first
    /// error wins.
    fn answer_with(&self, error: AddError) {
        let _ = self.refusal.set(error);
    }

    /// Why a plain `add` on this request could not accept a task, if one
    /// could not.
    pub(crate) fn refusal(&self) -> Option<&AddError> {
        self.refusal.get()
    }

    /// Starts the queued tasks; later adds start at once. Only the first
    /// hand-off or discard of a request has any effect.
    pub(crate) fn hand_off(self: &Arc<Self>) {
        if let Some(tasks) = self.queue.close(Closed::HandedOff) {
            running::spawn_all(&self.set, &self.line, tasks);
        }
    }

    /// Drops the queued tasks, counted under `reason`; later adds are
    /// discarded too. Only the first hand-off or discard has any effect.
    pub(crate) fn discard(self: &Arc<Self>, reason: DiscardReason) {
        if let Some(tasks) = self.queue.close(Closed::Discarded(reason)) {
            let n = tasks.len() as u64;
            let set = &self.set;
            let each = tasks.iter().map(|task| (task.lane, task.name()));
            metrics::count_each(|lane| &set.lane(lane).metrics, each, Ended::Discarded);
            drop(tasks);
            if n > 0 {
                set.unpend(n);
                set.discard(n, reason, &self.line);
            }
        }
    }
}

/// What [`BackgroundTasks::add`](crate::BackgroundTasks::add) accepts: a
/// future, a [`Task`], or a [`Group`].
pub trait IntoTask: Sized {
    /// The task, with its options.
    fn into_task(self) -> Task;

    /// Offers the task to `tasks`: what `add` (`counted`) and `try_add` do.
    /// A plain future goes straight to the default lane, without a [`Task`].
    #[doc(hidden)]
    fn add_to(self, tasks: &BackgroundTasks, counted: bool) -> Result<(), AddError> {
        tasks.submit(self.into_task(), counted)
    }
}

impl IntoTask for Task {
    fn into_task(self) -> Task {
        self
    }
}

impl IntoTask for Group {
    fn into_task(self) -> Task {
        Task::from(self)
    }
}

impl<F> IntoTask for F
where
    F: Future + Send + 'static,
    F::Output: TaskOutput,
{
    fn into_task(self) -> Task {
        Task::new(self)
    }

    fn add_to(self, tasks: &BackgroundTasks, counted: bool) -> Result<(), AddError> {
        tasks.offer_plain(work::boxed(self), counted)
    }
}
