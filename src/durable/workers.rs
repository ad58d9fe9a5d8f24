//! [`Workers`]: apalis workers that run durable jobs, in the server process
//! (stopped by the supervisor's shutdown) or in a worker process of their own.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BackendExt, TaskId, WorkerBuilder, WorkerBuilderExt, WorkerError};

use super::engine::Engine;
use super::in_flight::InFlight;
use super::job::Job;
#[cfg(feature = "postgres")]
use super::postgres_backend::postgres_jobs;
use super::queue::JobQueue;
#[cfg(feature = "sqlite")]
use super::sqlite_backend::sqlite_jobs;
use super::wake_up;
use crate::resident::Shutdown;
use crate::supervisor::Supervisor;

/// Jobs each registered job type runs at once, per process, by default.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// How many jobs one fetch claims, per job a worker runs at once, unless
/// [`Workers::prefetch`] says otherwise (Celery's prefetch multiplier has
/// the same default).
pub const DEFAULT_PREFETCH_MULTIPLIER: usize = 4;
/// How often a worker tells the database it is alive, by default. A worker
/// silent for two intervals is taken for dead, and its jobs are given to
/// other workers.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// How often an idle worker asks the database for new jobs, by default:
/// an upper bound on how long a job pushed to an idle queue waits to start.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How many heartbeats a worker may miss before others take it for dead.
const MISSED_HEARTBEATS: usize = 2;
/// The first wait before restarting a worker that stopped on an error (the
/// database went away); it doubles up to 30 s.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(250);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

type Runner = Box<dyn FnOnce(Settings, Shutdown) -> BoxFuture + Send>;
type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The workers of one process: one apalis worker per registered job type,
/// each running up to [`concurrency`](Self::concurrency) jobs at once.
///
/// In the server process, [`spawn`](Self::spawn) them on the supervisor:
/// they stop with [`Supervisor::shutdown`], within the same grace period.
/// In a worker process of its own, [`run_until`](Self::run_until) a signal.
/// Either way, at shutdown a worker takes no new job and lets its running
/// jobs finish; jobs still running when the cleanup period begins are
/// stopped and **returned to the queue** for another worker (counted in
/// [`JobStats::released`](super::JobStats::released)), not lost. If this
/// process dies instead, other workers take its jobs back once its
/// heartbeat is two [`heartbeat`](Self::heartbeat) intervals old.
///
/// Each worker has a name unique to this process and start (host, process
/// id, job, a counter), so a restarted process never collides with its own
/// previous registration (apalis #504, apalis-sqlite #58).
///
/// On PostgreSQL, a worker claims its next batch while the outcomes of the
/// previous one are being written, so a slow or blocked write does not
/// stop it from running jobs. Each job type's worker holds one connection
/// of the queue's pool for `LISTEN`, and a busy one borrows up to three
/// more at a time (a claim, a write, a heartbeat), for milliseconds each.
/// SQLite has one writer at a time: there a worker writes the previous
/// batch's outcomes in the transaction that claims the next batch, one
/// commit per batch, and outcomes wait at most 20 ms for that claim.
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn example() -> Result<(), tower_background::durable::JobError> {
/// use serde::{Deserialize, Serialize};
/// use tower_background::durable::{Job, JobFailure, JobQueue, Workers};
/// use tower_background::Supervisor;
///
/// #[derive(Serialize, Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// impl Job for Add {
///     const NAME: &'static str = "add";
///     type Output = i64;
///     async fn run(self) -> Result<i64, JobFailure> { Ok(self.a + self.b) }
/// }
///
/// let queue = JobQueue::sqlite("jobs.db").await?;
/// let supervisor = Supervisor::new();
/// Workers::new(&queue).register::<Add>().concurrency(8).spawn(&supervisor);
/// // ... serve ...
/// supervisor.shutdown().await; // stops the workers too
/// # Ok(())
/// # }
/// ```
pub struct Workers {
    queue: JobQueue,
    settings: Settings,
    runners: Vec<(&'static str, Runner)>,
}

#[derive(Clone, Debug)]
struct Settings {
    concurrency: usize,
    /// Jobs claimed per fetch; `None`: [`DEFAULT_PREFETCH_MULTIPLIER`] ×
    /// `concurrency`.
    prefetch: Option<usize>,
    heartbeat: Duration,
    poll_interval: Duration,
    name: String,
}

impl Settings {
    /// Jobs claimed per fetch (apalis's own default is 10, whatever the
    /// concurrency).
    fn fetch_batch(&self) -> usize {
        self.prefetch
            .unwrap_or_else(|| self.concurrency.saturating_mul(DEFAULT_PREFETCH_MULTIPLIER))
            .max(1)
    }
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("engine", &self.queue.engine())
            .field("settings", &self.settings)
            .field(
                "jobs",
                &self
                    .runners
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Workers {
    /// Workers for the jobs in `queue`; register the job types they run.
    pub fn new(queue: &JobQueue) -> Self {
        Self {
            queue: queue.clone(),
            settings: Settings {
                concurrency: DEFAULT_CONCURRENCY,
                prefetch: None,
                heartbeat: DEFAULT_HEARTBEAT,
                poll_interval: DEFAULT_POLL_INTERVAL,
                name: default_name(),
            },
            runners: Vec::new(),
        }
    }

    /// Runs jobs of type `J` (those enqueued under [`J::NAME`](Job::NAME)).
    /// Registering a type twice runs it once.
    pub fn register<J: Job>(mut self) -> Self {
        if self.runners.iter().any(|(name, _)| *name == J::NAME) {
            return self;
        }
        let queue = self.queue.clone();
        let runner: Runner = Box::new(move |settings, signals| {
            Box::pin(run_job_type::<J>(queue, settings, signals))
        });
        self.runners.push((J::NAME, runner));
        self
    }

    /// How many jobs of each registered type this process runs at once
    /// (default [`DEFAULT_CONCURRENCY`]; at least 1).
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.settings.concurrency = jobs.max(1);
        self
    }

    /// How many jobs of a type a worker claims from the database at once
    /// (default [`DEFAULT_PREFETCH_MULTIPLIER`] × the
    /// [`concurrency`](Self::concurrency); at least 1). Claims and their
    /// completions are each one commit per batch, so a larger batch runs
    /// short jobs faster. A worker claims again only once every job it
    /// claimed has been handed to a free slot. The jobs claimed but not
    /// started yet wait for this worker's free slots, though, while another
    /// idle worker cannot take them: for long jobs spread over several
    /// processes, set it to the concurrency. For a stream of short jobs
    /// the claim is the bound instead: a worker runs at most one batch per
    /// claim's round trip, and a larger prefetch (hundreds) raises that. Claimed jobs not started when the worker stops go back
    /// to the queue; a worker that dies holds them until its heartbeat
    /// expires, like the jobs it was running.
    pub fn prefetch(mut self, jobs: usize) -> Self {
        self.settings.prefetch = Some(jobs.max(1));
        self
    }

    /// How often each worker records that it is alive (default
    /// [`DEFAULT_HEARTBEAT`]). A worker silent for two intervals is taken
    /// for dead and its jobs are run again by others: shorter means a
    /// crashed worker's jobs come back sooner, at the cost of a write per
    /// interval. SQLite counts whole seconds: it is at least 1 s.
    ///
    /// Keep it at 5 s or more outside tests: SQLite stores heartbeats in
    /// whole seconds, so with 1 s a keep-alive a few milliseconds late on a
    /// loaded machine can make a live worker look dead.
    ///
    /// **Every process sharing a queue must use the same heartbeat**: a
    /// worker judges the others by its own interval, so one with a shorter
    /// heartbeat takes live workers with a longer one for dead and runs
    /// their jobs a second time.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.settings.heartbeat = interval.max(Duration::from_secs(1));
        self
    }

    /// How often an idle worker asks the database for new jobs (default
    /// [`DEFAULT_POLL_INTERVAL`]); each poll is one query per job type.
    ///
    /// Most jobs do not wait for it. A push through the workers' own
    /// [`JobQueue`] (or a clone of it) in this process wakes them at once,
    /// on both engines; on PostgreSQL, so does a push from any process
    /// (`LISTEN`). What the poll finds is the rest: on SQLite, pushes from
    /// other processes, and jobs pushed inside a transaction
    /// ([`JobQueue::push_in`]), which are announced before their commit.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The start of every worker's name (default `"{host}-{pid}"`); the job
    /// name and a counter are added to it.
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.settings.name = prefix.into();
        self
    }

    /// Starts the workers in this process as residents of `supervisor`
    /// ([`Supervisor::spawn_resident`]): they stop with its
    /// [`shutdown`](Supervisor::shutdown), within its grace period. They are
    /// not tasks: they are not in [`Stats`](crate::Stats) and
    /// [`Supervisor::wait_idle`] does not wait for them.
    pub fn spawn(self, supervisor: &Supervisor) {
        for (_, runner) in self.runners {
            let settings = self.settings.clone();
            supervisor.spawn_resident(move |signals| runner(settings, signals));
        }
    }

    /// Runs the workers in this process until `signal` completes (e.g.
    /// `tokio::signal::ctrl_c()`), then shuts them down within
    /// `grace_period`, as [`spawn`](Self::spawn)ed workers are: for a worker
    /// process of its own.
    ///
    /// # Cancel safety
    ///
    /// Dropped before `signal` completes, it stops the workers at once, as
    /// a [`Supervisor`] dropped without its shutdown does: their running
    /// jobs are aborted and not returned to the queue by this process;
    /// other workers take them back as they take a dead process's, once
    /// the heartbeat is two intervals old.
    pub async fn run_until<F>(self, signal: F, grace_period: Duration)
    where
        F: Future,
    {
        let supervisor = Supervisor::builder().grace_period(grace_period).build();
        self.spawn(&supervisor);
        signal.await;
        supervisor.shutdown().await;
    }
}

/// `"{host}-{pid}"`: unique among live processes sharing a database.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Makes every worker name this process uses unique, restarts included.
static STARTS: AtomicU64 = AtomicU64::new(0);

/// Runs the worker for job type `J` until shutdown; restarts it (under a
/// new name) if it stops on an error.
async fn run_job_type<J: Job>(queue: JobQueue, settings: Settings, signals: Shutdown) {
    let mut delay = FIRST_RESTART_DELAY;
    loop {
        let name = format!(
            "{}-{}-{}",
            settings.name,
            J::NAME,
            STARTS.fetch_add(1, Ordering::Relaxed)
        );
        let in_flight = InFlight::new(Arc::clone(&queue.counters));
        let run = start_worker::<J>(&queue, &settings, &name, &in_flight, &signals);
        let mut run = Box::pin(run);
        let outcome = tokio::select! {
            result = &mut run => Some(result),
            () = signals.cancelled() => None,
        };
        // Dropping the worker drops the jobs it was running.
        drop(run);
        release(&queue, J::NAME, &name, &in_flight).await;
        match outcome {
            Some(Ok(())) | None => return,
            Some(Err(error)) if signals.is_closing() => {
                tracing::warn!(worker = %name, %error, "durable worker: stopped with an error during shutdown");
                return;
            }
            Some(Err(error)) => {
                tracing::error!(worker = %name, %error, retry_in = ?delay, "durable worker: stopped with an error; restarting");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = signals.closing() => return,
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

/// Builds and runs one apalis worker for `J` until `closing` fires and its
/// running jobs have finished.
fn start_worker<J: Job>(
    queue: &JobQueue,
    settings: &Settings,
    name: &str,
    in_flight: &InFlight,
    signals: &Shutdown,
) -> Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>> {
    let in_flight = in_flight.clone();
    let handler = move |job: J, id: TaskId| {
        let running = in_flight.start(id.to_string());
        async move {
            let result = job.run().await;
            running.finish(result.is_ok());
            result
        }
    };
    let closing = signals.closing_token();
    let stop = async move {
        closing.cancelled().await;
        Ok::<(), WorkerError>(())
    };
    match &queue.engine {
        #[cfg(feature = "sqlite")]
        Engine::Sqlite(pool) => {
            let config = apalis_sqlite::Config::default()
                .queue(J::NAME)
                .batch_size(settings.fetch_batch())
                .heartbeat_interval(settings.heartbeat)
                .missed_heartbeats(MISSED_HEARTBEATS);
            // Without a poll strategy an idle apalis worker looks for new
            // jobs only when its heartbeat fires (every 30 s by default).
            // This queue's own pushes are announced in-process; pushes from
            // other processes are not, and the tick finds them.
            let announced = queue.announcer.subscribe();
            let storage = sqlite_jobs::<J>(pool, config).poll_with_strategy(wake_up::WakeUp::new(
                settings.poll_interval,
                Some(announced),
            ));
            let worker = WorkerBuilder::new(name)
                .backend(storage)
                .catch_panic()
                .concurrency(settings.concurrency)
                .build(handler);
            Box::pin(worker.run_until(stop))
        }
        #[cfg(feature = "postgres")]
        Engine::Postgres(pool) => {
            let config = apalis_postgres::Config::default()
                .queue(J::NAME)
                .batch_size(settings.fetch_batch())
                .heartbeat_interval(settings.heartbeat)
                .missed_heartbeats(MISSED_HEARTBEATS);
            // New jobs are announced (`LISTEN`, one connection per job
            // type, which hears every process's pushes); the tick is the
            // fallback if that connection is lost. The backend is apalis's
            // `PostgresStorage` with claims and acknowledgements by id
            // (`postgres_backend` says why).
            let announced = apalis_postgres::Pubsub::new(pool.clone(), J::NAME.to_owned());
            let storage = postgres_jobs::<J>(pool, config).poll_with_strategy(
                wake_up::WakeUp::new(settings.poll_interval, Some(announced)),
            );
            let worker = WorkerBuilder::new(name)
                .backend(storage)
                .catch_panic()
                .concurrency(settings.concurrency)
                .build(handler);
            Box::pin(worker.run_until(stop))
        }
    }
}

/// Returns to the queue the jobs a stopped worker was still running.
async fn release(queue: &JobQueue, job: &'static str, worker: &str, in_flight: &InFlight) {
    let ids = in_flight.take();
    if ids.is_empty() {
        return;
    }
    match queue.release(job, worker, &ids).await {
        Ok(returned) => {
            // `returned` also counts the jobs fetched and not started.
            let released = ids.len() as u64;
            queue.counters.released(released);
            tracing::warn!(
                worker,
                job,
                released,
                not_started = returned.saturating_sub(released),
                "durable worker: stopped mid-job; jobs returned to the queue"
            );
        }
        Err(error) => tracing::error!(
            worker,
            job,
            jobs = ids.len(),
            %error,
            "durable worker: could not return jobs to the queue; other workers will take them back when this worker's heartbeat expires",
        ),
    }
}
