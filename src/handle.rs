//! The per-request handle handlers queue their background work on.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use http::{Method, Uri};
use tokio_util::sync::CancellationToken;

use crate::attempt::{self, Kind};
use crate::error::AddError;
use crate::group::Group;
use crate::options::TaskOptions;
use crate::origin::RequestLine;
use crate::request_queue::{Closed, RequestQueue};
use crate::running;
use crate::stats::DiscardReason;
use crate::task::{self, Task, TaskOutput, Work, BLOCKING_LANE, DEFAULT_LANE};
use crate::task_set::{Refusal, TaskSet};

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
/// | while [`max_queued`](crate::SupervisorBuilder::max_queued) tasks are waiting | rejected, counted and logged at `WARN`, and the request answered `503` (`try_add` returns [`AddError::QueueFull`] instead) |
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
        Self {
            request: Arc::new(RequestTasks {
                set,
                line: RequestLine::new(method, uri),
                queue: RequestQueue::new(),
                refusal: OnceLock::new(),
            }),
        }
    }

    /// Queues an async task.
    ///
    /// `future` is not polled until the response body has ended; then it runs
    /// on the runtime's worker threads, in the default lane (at most
    /// [`max_running`](crate::SupervisorBuilder::max_running) at once), in
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
    /// tasks waiting), the supervisor is shutting down, or the options name a
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
    pub fn add<F>(&self, future: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        // Straight to the default lane: no options to apply.
        let _ = self.offer(Self::plain(future), true);
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
    pub fn try_add<F>(&self, future: F) -> Result<(), AddError>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.offer(Self::plain(future), false)
    }

    /// Queues a blocking or CPU-heavy closure.
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
        self.with(TaskOptions::new()).add_blocking(function);
    }

    /// Like [`add_blocking`](Self::add_blocking), but returns an error
    /// instead of counting a task it cannot accept.
    pub fn try_add_blocking<F, T>(&self, function: F) -> Result<(), AddError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        self.with(TaskOptions::new()).try_add_blocking(function)
    }

    /// Queues a [`Group`] of steps, run one after another or together; the
    /// group counts as one task.
    pub fn add_group(&self, group: Group) {
        self.with(TaskOptions::new()).add_group(group);
    }

    /// Like [`add_group`](Self::add_group), but returns an error instead of
    /// counting a group it cannot accept.
    pub fn try_add_group(&self, group: Group) -> Result<(), AddError> {
        self.with(TaskOptions::new()).try_add_group(group)
    }

    /// Adds with [`TaskOptions`]: a named lane, a timeout, a retry policy.
    ///
    /// ```
    /// # async fn send_email(_: &str) -> Result<(), std::io::Error> { Ok(()) }
    /// use std::time::Duration;
    /// use tower_background::{BackgroundTasks, Retry, TaskOptions};
    ///
    /// fn welcome(tasks: &BackgroundTasks, to: String) {
    ///     let options = TaskOptions::new()
    ///         .lane("email")
    ///         .timeout(Duration::from_secs(10))
    ///         .retry(Retry::exponential(3));
    ///     tasks.with(options).add_retrying(move || {
    ///         let to = to.clone();
    ///         async move { send_email(&to).await }
    ///     });
    /// }
    /// ```
    pub fn with(&self, options: TaskOptions) -> WithOptions<'_> {
        WithOptions {
            tasks: self,
            options,
        }
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

    pub(crate) fn into_request(self) -> Arc<RequestTasks> {
        self.request
    }

    fn set(&self) -> &Arc<TaskSet> {
        &self.request.set
    }

    /// `future` as a task of the default lane, without options.
    fn plain<F>(future: F) -> Task
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        Task::new(Work::Async(task::boxed(future)), DEFAULT_LANE)
    }

    /// Offers `task` to the request's queue. With `counted`, a task that is
    /// not accepted is counted (refused, rejected or discarded) as the plain
    /// `add` methods promise; without, only the error says so.
    fn offer(&self, task: Task, counted: bool) -> Result<(), AddError> {
        let request = &self.request;
        let set = &request.set;
        match set.admit() {
            Ok(()) => {}
            Err(Refusal::Closed) => {
                if counted {
                    set.counters.submitted();
                    set.refuse(1, &request.line);
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
                set.counters.submitted();
                running::spawn_all(set, &request.line, smallvec::smallvec![task]);
                Ok(())
            }
            Closed::Discarded(reason) => {
                set.unpend(1);
                if counted {
                    set.counters.submitted();
                    set.discard(1, reason, &request.line);
                }
                Err(AddError::Discarded)
            }
        }
    }
}

/// A [`BackgroundTasks`] handle with [`TaskOptions`], from
/// [`BackgroundTasks::with`]: the same `add` methods, applied with the
/// options.
///
/// A lane name that was not configured is an error: the `try_` methods
/// return [`AddError::UnknownLane`]; the others count the task as rejected
/// and log at `ERROR`.
#[derive(Debug)]
#[must_use = "nothing is added until one of the `add` methods is called"]
pub struct WithOptions<'a> {
    tasks: &'a BackgroundTasks,
    options: TaskOptions,
}

impl WithOptions<'_> {
    /// [`BackgroundTasks::add`] with the options.
    pub fn add<F>(self, future: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        let _ = self.offer(Kind::Async(task::boxed(future)), true);
    }

    /// [`BackgroundTasks::try_add`] with the options.
    pub fn try_add<F>(self, future: F) -> Result<(), AddError>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.offer(Kind::Async(task::boxed(future)), false)
    }

    /// [`BackgroundTasks::add_blocking`] with the options.
    pub fn add_blocking<F, T>(self, function: F)
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        let _ = self.offer(Kind::Blocking(task::boxed_blocking(function)), true);
    }

    /// [`BackgroundTasks::try_add_blocking`] with the options.
    pub fn try_add_blocking<F, T>(self, function: F) -> Result<(), AddError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        self.offer(Kind::Blocking(task::boxed_blocking(function)), false)
    }

    /// Queues an async task that is retried under the options'
    /// [`Retry`](crate::Retry) policy: `make` is called for each attempt.
    /// Without a retry policy it makes one attempt.
    pub fn add_retrying<M, F>(self, make: M)
    where
        M: FnMut() -> F + Send + 'static,
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        let _ = self.offer(Kind::Retrying(attempt::boxed_maker(make)), true);
    }

    /// [`add_retrying`](Self::add_retrying), returning an error instead of
    /// counting a task it cannot accept.
    pub fn try_add_retrying<M, F>(self, make: M) -> Result<(), AddError>
    where
        M: FnMut() -> F + Send + 'static,
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.offer(Kind::Retrying(attempt::boxed_maker(make)), false)
    }

    /// [`BackgroundTasks::add_group`] with the options (the lane and timeout
    /// apply to the group as a whole).
    pub fn add_group(self, group: Group) {
        let _ = self.offer(Kind::Group(group), true);
    }

    /// [`BackgroundTasks::try_add_group`] with the options.
    pub fn try_add_group(self, group: Group) -> Result<(), AddError> {
        self.offer(Kind::Group(group), false)
    }

    fn offer(self, kind: Kind, counted: bool) -> Result<(), AddError> {
        let set = self.tasks.set();
        let options = self.options;
        let lane = match &options.lane {
            None => match kind {
                Kind::Blocking(_) => BLOCKING_LANE,
                _ => DEFAULT_LANE,
            },
            Some(name) => match set.lane_id(name) {
                Some(lane) => lane,
                None => {
                    let error = AddError::UnknownLane(name.to_string());
                    if counted {
                        set.reject(&error, &self.tasks.request.line);
                        self.tasks.request.answer_with(error.clone());
                    }
                    return Err(error);
                }
            },
        };
        let work = attempt::work(kind, &options, set);
        self.tasks.offer(Task::new(work, lane), counted)
    }
}
impl RequestTasks {
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
            drop(tasks);
            if n > 0 {
                self.set.unpend(n);
                self.set.discard(n, reason, &self.line);
            }
        }
    }
}
