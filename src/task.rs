//! [`Task`]: a piece of background work and how it runs (its lane, its time
//! limit, its retries, its name and key).

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use crate::group::Group;
use crate::output::TaskOutput;
use crate::retry::Retry;
use crate::work::{self, BlockingWork, BoxedWork, Maker};

/// A background task with its options, for
/// [`BackgroundTasks::add`](crate::BackgroundTasks::add) and
/// [`try_add`](crate::BackgroundTasks::try_add).
///
/// A plain future needs no `Task`: `tasks.add(future)` runs it in the
/// default lane with no time limit. Make a `Task` to choose more. What it
/// runs is chosen by its constructor, and only options that apply to every
/// kind of work are methods, so an option that could not apply cannot be
/// written (retries need a new future per attempt, so only
/// [`Task::retrying`] takes a [`Retry`]).
///
/// | constructor | runs | [`lane`](Task::lane) default | [`timeout`](Task::timeout) limits |
/// |---|---|---|---|
/// | [`Task::new(future)`](Task::new) | on the runtime's worker threads | the default lane | the task |
/// | [`Task::blocking(closure)`](Task::blocking) | on tokio's blocking pool | the blocking lane | the wait for it (the closure is left to finish, unobserved) |
/// | [`Task::retrying(retry, make)`](Task::retrying) | a new future from `make` per attempt | the default lane | each attempt |
/// | [`Task::from(group)`](crate::Group) | the group's steps | the default lane | the group as a whole |
///
/// Every kind can also be given a [`name`](Task::name), which logs, failures
/// and the shutdown's report show, and a [`key`](Task::key), which runs it
/// one at a time with the other tasks of that key.
///
/// ```
/// # async fn send_email(_: &str) -> Result<(), std::io::Error> { Ok(()) }
/// use std::time::Duration;
/// use tower_background::{BackgroundTasks, Retry, Task};
///
/// fn welcome(tasks: &BackgroundTasks, to: String) {
///     tasks.add(
///         Task::retrying(Retry::exponential(3), move || {
///             let to = to.clone();
///             async move { send_email(&to).await }
///         })
///         .lane("email")                     // at most N at a time, set on the supervisor
///         .timeout(Duration::from_secs(10)), // each attempt
///     );
/// }
/// ```
///
/// A retry policy on work that makes one future does not compile:
///
/// ```compile_fail
/// # use tower_background::{Retry, Task};
/// let task = Task::new(async {}).retry(Retry::exponential(3));
/// ```
#[must_use = "a task does nothing until it is added"]
pub struct Task {
    pub(crate) kind: Kind,
    pub(crate) lane: Option<Cow<'static, str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) name: Option<&'static str>,
    pub(crate) key: Option<Box<str>>,
}

/// What a task runs, before its options are applied.
pub(crate) enum Kind {
    Async(BoxedWork),
    Blocking(BlockingWork),
    Retrying(Maker, Retry),
    Group(Group),
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Async(_) => "async",
            Kind::Blocking(_) => "blocking",
            Kind::Retrying(..) => "retrying",
            Kind::Group(_) => "group",
        };
        f.debug_struct("Task")
            .field("kind", &kind)
            .field("name", &self.name)
            .field("key", &self.key)
            .field("lane", &self.lane)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Task {
    /// An async task. Its output is `()` or a `Result` whose `Err` is
    /// counted as failed (see [`TaskOutput`]).
    pub fn new<F>(future: F) -> Self
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        Self::of(Kind::Async(work::boxed(future)))
    }

    /// A blocking or CPU-heavy closure, run on tokio's blocking pool within
    /// its lane's limit (the blocking lane's unless [`lane`](Self::lane)
    /// names another); see
    /// [`BackgroundTasks::add_blocking`](crate::BackgroundTasks::add_blocking).
    pub fn blocking<F, T>(function: F) -> Self
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        Self::of(Kind::Blocking(work::boxed_blocking(function)))
    }

    /// An async task retried under `retry`: `make` is called for each
    /// attempt, and an attempt that returned `Err` or timed out is retried
    /// (one that panicked is not). Every attempt after the first is counted
    /// in [`Stats::retried`](crate::Stats::retried); the task keeps its
    /// lane slot while it waits between attempts.
    pub fn retrying<M, F>(retry: Retry, make: M) -> Self
    where
        M: FnMut() -> F + Send + 'static,
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        Self::of(Kind::Retrying(work::boxed_maker(make), retry))
    }

    /// Run in the named lane, configured with
    /// [`SupervisorBuilder::lane`](crate::SupervisorBuilder::lane). A lane
    /// that was not configured is an error when the task is added
    /// ([`AddError::UnknownLane`](crate::AddError::UnknownLane)). Blocking
    /// work in a named lane still runs on tokio's blocking pool, within that
    /// lane's limit.
    pub fn lane(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.lane = Some(name.into());
        self
    }

    /// Name the task (`"welcome-email"`): its span (`task.name`), its log
    /// lines, its [`TaskFailure`](crate::TaskFailure), the shutdown's
    /// progress lines and [`ShutdownReport`](crate::ShutdownReport) say it.
    /// Unnamed tasks are known by their request's method and path only.
    ///
    /// A name is a `&'static str` so that it is a label chosen in code, never
    /// a value from a request, and costs nothing to carry.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = Some(name);
        self
    }

    /// Run one at a time with the other tasks of the same `key` (a customer,
    /// an account, a document), in the order they were handed off; tasks
    /// of different keys run side by side within their lanes' limits.
    ///
    /// A task waits for its key before it takes a slot in its lane, so a
    /// key that is busy never holds a slot. While it waits it is pending
    /// (counted in [`Stats::queued`](crate::Stats::queued), bounded by
    /// [`max_queued`](crate::SupervisorBuilder::max_queued)) and is drained
    /// and aborted at shutdown like any queued task. A key that no task
    /// holds takes no memory. Keys are values, never code, and never
    /// metric labels; log lines and spans show at most their first 64
    /// characters. A blocking task that times out gives its key up while
    /// its closure, which cannot be stopped, may still be running.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into().into_boxed_str());
        self
    }

    /// Give up after `timeout`: the work is dropped and counted as timed out
    /// (for a retried task, the attempt is, and retried if the policy
    /// allows). What it limits depends on the kind of task; see the table
    /// on [`Task`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn of(kind: Kind) -> Self {
        Self {
            kind,
            lane: None,
            timeout: None,
            name: None,
            key: None,
        }
    }
}

impl From<Group> for Task {
    fn from(group: Group) -> Self {
        Self::of(Kind::Group(group))
    }
}
