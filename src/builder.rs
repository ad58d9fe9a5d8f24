//! [`SupervisorBuilder`]: the supervisor's settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::failure::TaskFailure;
use crate::lane::Lane;
use crate::supervisor::Supervisor;
use crate::task_set::{FailureHook, TaskSet};

/// How long [`Supervisor::shutdown`] waits for tasks, unless set with
/// [`SupervisorBuilder::grace_period`]: 15 s. Of Kubernetes' default 30 s
/// termination budget, that leaves 15 s for draining HTTP connections first
/// (bound that drain to 10 s and some margin remains for the process to exit).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(15);

/// How many tasks of the default lane run at once, unless set with
/// [`SupervisorBuilder::max_running`]: no limit (`usize::MAX`), like
/// `tokio::spawn`. An async task waiting on I/O costs its future and a few
/// hundred bytes of bookkeeping, so a burst of them is what the runtime is
/// for; a limit here would only make them wait in the queue, and once the
/// queue is full, refuse them. Set a limit (or a [named
/// lane](SupervisorBuilder::lane)) to protect a downstream service, not the
/// server.
pub const DEFAULT_MAX_RUNNING: usize = usize::MAX;

/// How many tasks may wait at once, for their response or for a slot, unless
/// set with [`SupervisorBuilder::max_queued`]: 65 536. A waiting task holds
/// its boxed future and at most 40 bytes in its request's queue (64 in a
/// lane's queue), so the bound holds the crate's own share of that memory to a few
/// megabytes. With the default lane unlimited, only tasks whose response has
/// not ended yet, blocking tasks beyond
/// [`DEFAULT_BLOCKING_LIMIT`] and tasks of limited lanes wait.
pub const DEFAULT_MAX_QUEUED: usize = 65_536;

/// How many blocking tasks run at once, unless set with
/// [`SupervisorBuilder::blocking_limit`]: 16, well below tokio's blocking
/// pool (512 threads), which file I/O and `spawn_blocking` elsewhere also use.
pub const DEFAULT_BLOCKING_LIMIT: usize = 16;

/// The last part of the grace period in which tasks are asked to stop,
/// unless set with [`SupervisorBuilder::cleanup_period`]: 1 s, or a tenth of
/// the grace period if that is shorter.
pub const DEFAULT_CLEANUP_PERIOD: Duration = Duration::from_secs(1);

impl Supervisor {
    /// A supervisor with the default settings
    /// ([`DEFAULT_GRACE_PERIOD`], [`DEFAULT_CLEANUP_PERIOD`], the limits in
    /// [the crate's table](crate#limits-lanes-and-groups), no failure hook),
    /// spawning on the current runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`; use
    /// [`SupervisorBuilder::runtime`] to build one elsewhere.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a supervisor.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }
}

impl Default for Supervisor {
    /// Same as [`Supervisor::new`].
    fn default() -> Self {
        Self::new()
    }
}

/// Settings for a [`Supervisor`], from [`Supervisor::builder`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_background::Supervisor;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let background = Supervisor::builder()
///     .grace_period(Duration::from_secs(25))
///     .cleanup_period(Duration::from_secs(2))
///     .on_failure(|failure| eprintln!("report to the error tracker: {failure}"))
///     .build();
/// # drop(background);
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct SupervisorBuilder {
    grace_period: Duration,
    /// `None`: the default, which depends on the grace period.
    cleanup_period: Option<Duration>,
    on_failure: Option<FailureHook>,
    runtime: Option<Handle>,
    max_running: usize,
    max_queued: usize,
    blocking_limit: usize,
    lanes: Vec<(String, usize)>,
}

impl fmt::Debug for SupervisorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorBuilder")
            .field("grace_period", &self.grace_period)
            .field("cleanup_period", &self.cleanup_period)
            .field("on_failure", &self.on_failure.as_ref().map(|_| "<hook>"))
            .field("runtime", &self.runtime)
            .field("max_running", &self.max_running)
            .field("max_queued", &self.max_queued)
            .field("blocking_limit", &self.blocking_limit)
            .field("lanes", &self.lanes)
            .finish_non_exhaustive()
    }
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        Self {
            grace_period: DEFAULT_GRACE_PERIOD,
            cleanup_period: None,
            on_failure: None,
            runtime: None,
            max_running: DEFAULT_MAX_RUNNING,
            max_queued: DEFAULT_MAX_QUEUED,
            blocking_limit: DEFAULT_BLOCKING_LIMIT,
            lanes: Vec::new(),
        }
    }
}

impl SupervisorBuilder {
    /// The longest [`Supervisor::shutdown`] waits for running tasks before it
    /// aborts what is left (default [`DEFAULT_GRACE_PERIOD`]).
    ///
    /// This is the whole budget, cleanup included: `shutdown` returns within
    /// it (plus at most 100 ms for aborted tasks to settle) whatever the tasks
    /// do. `Duration::MAX` means no limit.
    pub fn grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// The final part of the grace period, during which the
    /// [cancellation token](crate::BackgroundTasks::cancellation_token) is
    /// cancelled so tasks can clean up before they are aborted (default
    /// [`DEFAULT_CLEANUP_PERIOD`] or a tenth of the grace period, whichever
    /// is shorter; a value set here is capped at the grace period).
    ///
    /// With a 15 s grace period and a 1 s cleanup period, tasks are asked to
    /// stop 14 s into shutdown, and aborted at 15 s.
    pub fn cleanup_period(mut self, cleanup_period: Duration) -> Self {
        self.cleanup_period = Some(cleanup_period);
        self
    }

    /// Calls `hook` for every task that returns `Err` or panics, after the
    /// failure has been counted and logged at `ERROR`.
    ///
    /// The hook runs on the task's thread, inside the task's span; keep it
    /// short (hand the failure to a channel for anything slow). A panic in
    /// the hook is caught and logged.
    pub fn on_failure<F>(mut self, hook: F) -> Self
    where
        F: Fn(&TaskFailure<'_>) + Send + Sync + 'static,
    {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    /// How many tasks of the default lane (those added without a named lane)
    /// run at once; more wait in the queue (default [`DEFAULT_MAX_RUNNING`]:
    /// no limit; at least 1).
    ///
    /// A limit makes tasks wait for a slot, and a burst longer than
    /// [`max_queued`](Self::max_queued) tasks then has some refused (each
    /// request that added one is answered `503`, see
    /// [`BackgroundTasks::add`](crate::BackgroundTasks::add)). Prefer a
    /// [named lane](Self::lane) for the tasks that call a service with a
    /// connection limit, and leave the rest unlimited.
    pub fn max_running(mut self, limit: usize) -> Self {
        self.max_running = limit;
        self
    }

    /// How many tasks may wait at once, for their response or for a slot in
    /// their lane (default [`DEFAULT_MAX_QUEUED`]). Past it, `try_add`
    /// returns [`AddError::QueueFull`](crate::AddError::QueueFull) and `add`
    /// rejects the task: counted in [`Stats::rejected`](crate::Stats::rejected),
    /// logged at `WARN`, and the request is answered `503` with
    /// `Retry-After` if its response has not been produced yet. This is
    /// what bounds the memory the crate holds for tasks not yet running.
    pub fn max_queued(mut self, limit: usize) -> Self {
        self.max_queued = limit;
        self
    }

    /// How many blocking tasks (and blocking group steps) run at once
    /// (default [`DEFAULT_BLOCKING_LIMIT`]; at least 1).
    pub fn blocking_limit(mut self, limit: usize) -> Self {
        self.blocking_limit = limit;
        self
    }

    /// A named lane: its tasks run at most `limit` at a time, apart from
    /// every other lane, for work that calls a rate-limited service.
    /// Tasks go there with [`Task::lane`](crate::Task::lane).
    /// The names `"default"` and `"blocking"` set those lanes' limits.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let background = tower_background::Supervisor::builder()
    ///     .lane("email", 4) // the mail provider allows 4 connections
    ///     .build();
    /// # drop(background);
    /// # }
    /// ```
    pub fn lane(mut self, name: impl Into<String>, limit: usize) -> Self {
        self.lanes.push((name.into(), limit));
        self
    }

    /// The runtime tasks are spawned on (default: the runtime `build` is
    /// called in). Needed only to build the supervisor outside a runtime.
    ///
    /// A runtime of their own does not shield the server from its
    /// background tasks; it costs it more. Every hand-off then crosses
    /// runtimes: the task goes into the other runtime's shared queue and its
    /// worker is woken, which costs the serving thread more than running the
    /// task would (`BENCHMARKS.md` has today's figures). To bound what tasks
    /// take from requests, use the lane limits instead
    /// ([`max_running`](Self::max_running), [`blocking_limit`](Self::blocking_limit),
    /// [`lane`](Self::lane)).
    ///
    /// Timers belong to the runtime where they are made: a
    /// `tokio::time::sleep` created in the handler and queued as the task
    /// stays in the serving runtime's timer wheel. Create it inside the
    /// task's `async` block to put it on this runtime.
    pub fn runtime(mut self, runtime: Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Builds the supervisor.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime when no [`runtime`](Self::runtime) was given,
    /// like `tokio::spawn`.
    pub fn build(self) -> Supervisor {
        let runtime = self.runtime.unwrap_or_else(Handle::current);
        crate::metrics::describe();
        let mut limits = vec![
            ("default".to_owned(), self.max_running),
            ("blocking".to_owned(), self.blocking_limit),
        ];
        for (name, limit) in self.lanes {
            match limits.iter_mut().find(|(lane, _)| *lane == name) {
                Some(lane) => lane.1 = limit,
                None => limits.push((name, limit)),
            }
        }
        // Each lane made once, with its final limit: making one registers
        // its metrics.
        let lanes = limits
            .iter()
            .map(|(name, limit)| Lane::new(name, *limit))
            .collect();
        let set = Arc::new(TaskSet::new(
            runtime,
            lanes,
            self.max_queued,
            self.on_failure,
        ));
        let cleanup_period = self
            .cleanup_period
            .unwrap_or_else(|| DEFAULT_CLEANUP_PERIOD.min(self.grace_period / 10))
            .min(self.grace_period);
        Supervisor::from_parts(set, self.grace_period, cleanup_period)
    }
}
