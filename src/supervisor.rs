//! [`Supervisor`]: owns the application-lifespan task set and shuts it down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::handle::BackgroundTasks;
use crate::layer::BackgroundTaskLayer;
use crate::monitor::Monitor;
use crate::report::ShutdownReport;
use crate::resident::{Residents, Shutdown};
use crate::started::Oldest;
use crate::stats::Stats;
use crate::task_set::TaskSet;

/// How long `shutdown` waits, after aborting, for the aborted tasks'
/// wrappers to be polled once more and count themselves. An aborted async
/// task stops at its next poll, so this is only reached by a task that
/// blocks its worker thread.
const ABORT_SETTLE: Duration = Duration::from_millis(100);

/// How often `shutdown` logs what it is still waiting for.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How many of the oldest running tasks a progress line names.
const PROGRESS_OLDEST: usize = 3;
/// How many aborted tasks the report names.
const REPORT_ABORTED: usize = 10;

/// Owns the task set that background tasks run in, for the whole life of the
/// application, and shuts it down.
///
/// Build one at start-up ([`Supervisor::new`] or [`Supervisor::builder`]),
/// give its [`layer`](Supervisor::layer) to the router, and call
/// [`shutdown`](Supervisor::shutdown) after the server has stopped.
/// Deliberately not `Clone`: there is one owner, and `shutdown` consumes it.
/// Use a [`Monitor`] to read its counters elsewhere.
///
/// # Shutdown, step by step
///
/// 1. New tasks are refused from the moment `shutdown` is called (counted in
///    [`Stats::refused`], logged at `WARN`).
/// 2. It waits for the running tasks, and for the queued ones, which start
///    as slots free up, for at most the grace period less the cleanup period.
/// 3. Then it cancels the
///    [cancellation token](crate::BackgroundTasks::cancellation_token) and
///    waits out the cleanup period, for tasks to stop cleanly.
/// 4. Then it aborts what is left: each async task is dropped at its next
///    poll; a blocking closure cannot be interrupted and is left to finish on
///    its thread, unobserved. Both count as cancelled.
/// 5. It returns a [`ShutdownReport`] with the final counts and the oldest
///    aborted tasks (name, request, age).
///
/// While it waits it logs at `INFO`, when it begins and every 5 seconds,
/// how many tasks are still running and queued and the oldest few running
/// ones, with their [name](crate::Task::name), request and age:
///
/// ```text
/// background tasks: still waiting running=1 queued=0 oldest=report (POST /report, 5s)
/// ```
///
/// `shutdown` returns as soon as no task is running, and never much later
/// than the grace period (plus up to 100 ms for aborted tasks to settle).
///
/// An aborted task's future has been dropped, and so its drop guards (a
/// pooled connection, a temporary file) have run, by the time `shutdown`
/// returns. Dropping them takes tokio's own time per task, which grows with
/// their number (`BENCHMARKS.md` has today's figures): leave that margin in
/// the grace period if many tasks may outlast it.
///
/// Each task is counted by what it did: a task that returns during the
/// cleanup period, having noticed the token or not, counts as completed or
/// failed by its return value; only a task that had to be aborted counts as
/// cancelled.
///
/// A blocking closure left running by the abort still holds up the end of
/// the process: dropping a tokio runtime waits for its blocking threads. Have
/// long blocking work check the
/// [cancellation token](crate::BackgroundTasks::cancellation_token), or end
/// the runtime with `Runtime::shutdown_timeout`.
///
/// # With `axum::serve`
///
/// Stop the server first, so that every in-flight request finishes and hands
/// its tasks off, then shut the supervisor down. `with_graceful_shutdown`
/// waits for open connections without limit, so bound that drain too:
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # mod example {
/// use std::time::Duration;
/// use axum::{routing::post, Router};
/// use tokio::sync::oneshot;
/// use tower_background::{BackgroundTasks, Supervisor};
///
/// async fn signup(tasks: BackgroundTasks) -> http::StatusCode {
///     tasks.add(async { /* send the welcome e-mail */ });
///     http::StatusCode::CREATED
/// }
///
/// # async fn shutdown_signal() {}
/// async fn serve() -> std::io::Result<()> {
///     let background = Supervisor::builder()
///         .grace_period(Duration::from_secs(15))
///         .build();
///     let app = Router::new()
///         .route("/signup", post(signup))
///         .layer(background.layer());
///     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
///
///     let (stop, stopped) = oneshot::channel::<()>();
///     let server = axum::serve(listener, app).with_graceful_shutdown(async {
///         let _ = stopped.await;
///     });
///     let server = tokio::spawn(async move { server.await });
///     shutdown_signal().await;
///     let _ = stop.send(());
///     // 1. Drain HTTP for at most 10 s; the requests that finish hand off their tasks.
///     let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
///     // 2. Then the background tasks, for at most 15 s.
///     let report = background.shutdown().await;
///     println!("{report}");
///     Ok(())
/// }
/// # }
/// ```
///
/// On Kubernetes the pod gets `SIGTERM`, then `SIGKILL` 30 s later
/// (`terminationGracePeriodSeconds`). That budget covers both steps: with
/// the default 15 s grace period and a 10 s bound on the HTTP drain, 5 s
/// remain for the process to exit. Raise `terminationGracePeriodSeconds`
/// rather than squeeze either step.
///
/// # Dropping without `shutdown`
///
/// Dropping a supervisor that was not shut down is an immediate shutdown
/// with no grace period: new tasks are refused, the cancellation token is
/// cancelled, every running task is aborted and counted as cancelled, and a
/// `WARN` says how many were running. (Tasks still run when the runtime
/// itself is dropped first; they are then dropped by tokio, and counted as
/// cancelled.)
///
/// # What is lost on a crash
///
/// Everything queued or running: tasks live in memory only. Work that must
/// survive a crash belongs in a durable queue.
#[derive(Debug)]
pub struct Supervisor {
    set: Arc<TaskSet>,
    grace_period: Duration,
    cleanup_period: Duration,
    residents: Residents,
    shut_down: bool,
}

// `Supervisor::new`, `Supervisor::builder` and `Default` live beside the
// settings they apply, in `builder.rs`.
impl Supervisor {
    pub(crate) fn from_parts(
        set: Arc<TaskSet>,
        grace_period: Duration,
        cleanup_period: Duration,
    ) -> Self {
        Self {
            set,
            grace_period,
            cleanup_period,
            residents: Residents::default(),
            shut_down: false,
        }
    }

    /// A handle for tasks no request started (a startup job, the follow-up
    /// work of a queue consumer or of a WebSocket connection): tasks added
    /// through it start at once, and are counted in [`Stats`], limited by
    /// their lane, waited for by [`wait_idle`](Self::wait_idle) and drained
    /// by [`shutdown`](Self::shutdown) like a request's handed-off tasks.
    ///
    /// Their log lines and [`TaskFailure`](crate::TaskFailure)s have no
    /// request method or path. A task it cannot accept (shutdown has begun,
    /// the queue is full) is counted and logged as for a request, or
    /// returned as an error by [`try_add`](BackgroundTasks::try_add). The
    /// handle is cheap to clone and can be kept for the application's life.
    ///
    /// ```
    /// use tower_background::Supervisor;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let background = Supervisor::new();
    /// let tasks = background.tasks();
    /// tasks.add(async { /* warm the cache */ });
    /// background.wait_idle().await;
    /// assert_eq!(background.stats().completed, 1);
    /// # }
    /// ```
    pub fn tasks(&self) -> BackgroundTasks {
        BackgroundTasks::unattached(Arc::clone(&self.set))
    }

    /// Runs `make(shutdown)` on the supervisor's runtime for the life of the
    /// application, as a *resident*: work no request started (a queue
    /// consumer, a scheduler, a warm-up job) that stops with
    /// [`shutdown`](Self::shutdown), within the same grace period as the
    /// tasks.
    ///
    /// The future gets a [`Shutdown`]: [`closing`](Shutdown::closing)
    /// resolves when shutdown begins, [`cancelled`](Shutdown::cancelled)
    /// when its cleanup period begins; `shutdown` waits for the future to
    /// return and aborts it at the end of the grace period. A resident is
    /// not a task: it is not counted in [`Stats`] and
    /// [`wait_idle`](Self::wait_idle) does not wait for it. Work that should
    /// be counted like a request's tasks is added from it through
    /// [`tasks`](Self::tasks).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_background::Supervisor;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let background = Supervisor::new();
    /// background.spawn_resident(|shutdown| async move {
    ///     let mut ticks = tokio::time::interval(Duration::from_secs(60));
    ///     loop {
    ///         tokio::select! {
    ///             _ = ticks.tick() => { /* refresh a cache, poll a queue */ }
    ///             () = shutdown.closing() => break,
    ///         }
    ///     }
    /// });
    /// let report = background.shutdown().await; // the loop has returned
    /// assert!(!report.aborted);
    /// # }
    /// ```
    ///
    /// If the supervisor's runtime has shut down, `make` is still called,
    /// but its future never runs: tokio drops what is spawned on a runtime
    /// that has shut down.
    pub fn spawn_resident<F, Fut>(&self, make: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.residents
            .spawn(self.set.runtime(), &self.set.cancel, make);
    }

    /// A layer that hands every request's tasks to this supervisor, with the
    /// default policies (see [`BackgroundTaskLayer`]).
    pub fn layer(&self) -> BackgroundTaskLayer {
        BackgroundTaskLayer::new(Arc::clone(&self.set))
    }

    /// A cloneable view of the counters and idleness.
    pub fn monitor(&self) -> Monitor {
        Monitor::new(Arc::clone(&self.set))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.set.stats()
    }

    /// Resolves once no handed-off task is running; see
    /// [`Monitor::wait_idle`].
    pub async fn wait_idle(&self) {
        self.set.wait_idle().await;
    }

    /// The token tasks can watch to stop cleanly; see
    /// [`BackgroundTasks::cancellation_token`](crate::BackgroundTasks::cancellation_token).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.set.cancel.clone()
    }

    /// Stops accepting tasks, waits for the running ones within the grace
    /// period, cancels and then aborts what is left, and reports. See
    /// [Shutdown, step by step](Supervisor#shutdown-step-by-step).
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future before it completes drops the
    /// supervisor, which aborts the remaining tasks at once (see
    /// [Dropping without `shutdown`](Supervisor#dropping-without-shutdown)).
    pub async fn shutdown(mut self) -> ShutdownReport {
        let started = Instant::now();
        let set = Arc::clone(&self.set);
        set.close();
        let residents = &self.residents;
        residents.close();
        tracing::info!(
            running = set.running(),
            queued = set.stats().queued,
            residents = residents.len(),
            grace_period = ?self.grace_period,
            oldest = oldest_running(&set).map(tracing::field::display),
            "background tasks: shutting down",
        );

        // `None`: a grace period too long to add to a clock (`Duration::MAX`)
        // means waiting for as long as it takes.
        let deadline = started.checked_add(self.grace_period);
        let cleanup_starts = deadline.map(|deadline| deadline - self.cleanup_period);
        let mut aborted = false;
        let mut cancelled_while_queued = 0;
        let mut aborted_tasks = Oldest::new(REPORT_ABORTED);
        if !wait_idle_until(&set, residents, cleanup_starts).await {
            tracing::info!(
                running = set.running(),
                "background tasks: cleanup period, cancelling",
            );
            set.cancel.cancel();
            if !wait_idle_until(&set, residents, deadline).await {
                aborted = true;
                cancelled_while_queued = set.stats().queued;
                tracing::warn!(
                    running = set.running(),
                    queued = cancelled_while_queued,
                    "background tasks: grace period over, aborting",
                );
                set.abort_all(&mut aborted_tasks);
                residents.abort_all();
                // Aborted tasks and residents are dropped at their next
                // poll: wait for that, so their drop guards have run.
                let settled = async {
                    set.wait_idle().await;
                    residents.wait().await;
                };
                let _ = timeout(ABORT_SETTLE, settled).await;
            }
        }
        self.shut_down = true;

        let listed = aborted_tasks.unfinished(Instant::now());
        let report = ShutdownReport {
            stats: set.stats(),
            elapsed: started.elapsed(),
            aborted,
            cancelled_while_queued,
            aborted_tasks_unlisted: aborted_tasks.seen() - listed.len() as u64,
            aborted_tasks: listed,
        };
        if report.is_complete() {
            tracing::info!(%report, "background tasks: shut down");
        } else {
            tracing::warn!(%report, "background tasks: shut down with unfinished tasks");
        }
        report
    }
}

/// Waits until no task is running or queued and every resident has
/// returned (`true`), or until `deadline` (`false`), logging what is left
/// every [`PROGRESS_EVERY`].
async fn wait_idle_until(set: &TaskSet, residents: &Residents, deadline: Option<Instant>) -> bool {
    let idle = async {
        residents.wait().await;
        set.wait_idle().await;
    };
    tokio::pin!(idle);
    loop {
        let progress = Instant::now() + PROGRESS_EVERY;
        let until = deadline.map_or(progress, |deadline| deadline.min(progress));
        if timeout_at(until, idle.as_mut()).await.is_ok() {
            return true;
        }
        if deadline.is_some_and(|deadline| until >= deadline) {
            return false;
        }
        tracing::info!(
            running = set.running(),
            queued = set.stats().queued,
            residents = residents.len(),
            oldest = oldest_running(set).map(tracing::field::display),
            "background tasks: still waiting",
        );
    }
}

/// The oldest few running tasks, for a log line: `name (METHOD /path, 5s),
/// ...`, or `None` when none has waited yet.
fn oldest_running(set: &TaskSet) -> Option<String> {
    let mut oldest = Oldest::new(PROGRESS_OLDEST);
    set.survey(&mut oldest);
    if oldest.seen() == 0 {
        return None;
    }
    let now = Instant::now();
    let listed = oldest.unfinished(now);
    let mut line = listed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let more = oldest.seen() - listed.len() as u64;
    if more > 0 {
        line.push_str(&format!(" and {more} more"));
    }
    Some(line)
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        let set = &self.set;
        set.close();
        set.cancel.cancel();
        set.abort_all(&mut Oldest::new(0));
        self.residents.close();
        self.residents.abort_all();
        let running = set.running();
        if running > 0 {
            tracing::warn!(
                running,
                "background tasks: supervisor dropped without shutdown(); aborting running tasks",
            );
        }
    }
}
