//! [`JobQueue`]: where durable jobs are stored — an apalis storage in SQLite
//! or PostgreSQL — and what pushing, looking up and releasing them takes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apalis_core::backend::WaitForCompletion;
use apalis_core::task::status::Status;
use apalis_core::task::task_id::TaskId;

use super::announce::Announcer;
use super::batch::{self, Batcher};
use super::encoded::{EncodedJob, DEFAULT_MAX_JOB_BYTES, MAX_JOB_BYTES_LIMIT};
use super::engine::Engine;
use super::error::JobError;
use super::insert::Inserted;
use super::job::{Job, JobId};
use super::planner_hints;
use super::stats::{JobCounters, JobStats};

/// The longest a push waits for a database connection before it fails
/// ([`JobError::Database`]): what bounds [`JobQueue::push`] when the
/// database is down.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a statement of a PostgreSQL queue waits for a lock held by
/// someone else (a migration's `ALTER TABLE`, a `VACUUM FULL`, a long
/// transaction) before it fails ([`JobError::Database`]). With
/// [`ACQUIRE_TIMEOUT`], a `push` answers within 20 s, under the 30 s that
/// many clients and proxies give a request. (SQLite's writers wait for the
/// file lock [`ACQUIRE_TIMEOUT`], its busy timeout.)
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(15);

/// Connections in a SQLite queue's pool (sqlx's default).
#[cfg(feature = "sqlite")]
const DEFAULT_SQLITE_CONNECTIONS: u32 = 10;

/// How many deferred jobs ([`JobQueue::enqueue`]) may wait in memory for
/// the database unless [`JobQueue::max_pending`] says otherwise.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// The environment variable [`JobQueue::from_env`] reads.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// A durable job queue: a pool of connections to the database that holds
/// the jobs (apalis's job table), shared by the server that enqueues and
/// the workers that run them. Cheap to clone.
///
/// Give it to the handlers (axum's `State`, say), which
/// [`enqueue`](Self::enqueue) or [`push`](Self::push) jobs, and to
/// [`Workers`](super::Workers) to run them.
#[derive(Clone, Debug)]
pub struct JobQueue {
    pub(crate) engine: Engine,
    pub(crate) counters: Arc<JobCounters>,
    /// Tells this queue's workers (in this process) of its pushes.
    pub(crate) announcer: Arc<Announcer>,
    /// Stores concurrent pushes in shared commits.
    batcher: Arc<Batcher>,
    /// The largest job accepted, in bytes of JSON.
    max_job_bytes: Arc<AtomicUsize>,
}

/// What became of a job, as far as the queue knows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobOutcome<T> {
    /// The queue of `J` holds no job with this id: never pushed, pushed to
    /// another job type's queue, or not pushed *yet* (a job from
    /// [`enqueue`](JobQueue::enqueue) is pushed after its
    /// response).
    NotFound,
    /// Not finished: waiting, running, or failed with attempts left.
    Unfinished,
    /// Finished: the handler's output.
    Done(T),
    /// Failed on its last attempt, or was killed: the last error.
    Failed(String),
}

impl JobQueue {
    /// Opens (creating it if missing) the SQLite database file at `path`
    /// and creates or migrates apalis's tables in it.
    ///
    /// SQLite is the embedded engine: one file, no server, workers in the
    /// same process or in other processes on the same machine. Every
    /// connection uses WAL with `synchronous = FULL`: a push that returned
    /// `Ok` is on disk, and survives a power loss as well as a crash. What
    /// SQLite writes to temporary files by default (statement journals,
    /// sorts) stays in memory (`temp_store = MEMORY`): none of it is needed
    /// after a crash, and each statement of the queue touches at most a
    /// batch's pages.
    ///
    /// Each time it connects, it also writes SQLite's planner statistics
    /// for apalis's job table (`sqlite_stat1`, which SQLite leaves to the
    /// application) as those of a large queue, so that the workers'
    /// statements look their jobs up by id however many jobs the table
    /// holds.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite(path: impl AsRef<std::path::Path>) -> Result<Self, JobError> {
        use apalis_sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteStorage};
        use sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Inside a transaction, a statement that changes several rows
            // first copies each page it touches (its statement journal), to
            // undo that statement alone. By default the copy goes to a
            // temporary file: one more write per page, on the path of every
            // worker's claim. In memory it holds the pages of one statement,
            // and the queue's statements are bounded by a batch.
            .pragma("temp_store", "memory")
            // Several processes share the file: wait for a writer's lock
            // rather than fail at once.
            .busy_timeout(ACQUIRE_TIMEOUT);
        let pool = |connections: u32| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options.clone())
        };
        // apalis's setup sets `synchronous = OFF` on the one connection it
        // runs on (measured: one pooled connection in four ended up OFF).
        // Run it on a connection of its own, closed afterwards, so that no
        // push ever goes through an unsynced connection.
        let setup = pool(1).await.map_err(JobError::database)?;
        SqliteStorage::setup(&setup)
            .await
            .map_err(JobError::database)?;
        planner_hints::state_sqlite_statistics(&setup)
            .await
            .map_err(JobError::database)?;
        setup.close().await;
        let pool = pool(DEFAULT_SQLITE_CONNECTIONS)
            .await
            .map_err(JobError::database)?;
        Ok(Self::with_engine(Engine::Sqlite(pool)))
    }

    /// Connects to PostgreSQL at `url` (`postgres://user@host:port/db`) and
    /// creates or migrates apalis's tables (schema `apalis`).
    ///
    /// PostgreSQL is the multi-machine engine: any number of servers and
    /// worker processes share the queue. The queue's pool holds up to 10
    /// connections (sqlx's default), shared by its pushes and this
    /// process's workers: each job type's worker keeps one for `LISTEN`
    /// and borrows up to three more while busy (see
    /// [`Workers`](super::Workers)), so with many busy job types, pushes
    /// wait for a connection (at most [`ACQUIRE_TIMEOUT`]). Give the
    /// workers a queue of their own (a second `JobQueue::postgres`) to
    /// keep them apart.
    ///
    /// Each time it connects, it also replaces apalis's two indexes on
    /// `lock_by`, and `unique_job_id` (a copy of the primary key), with one
    /// partial index of the jobs workers hold. Its connections set
    /// `lock_timeout` to [`LOCK_TIMEOUT`] and turn `enable_sort`,
    /// `enable_seqscan`, `enable_hashjoin`, `enable_mergejoin` and `jit`
    /// off: the workers' statements then read only their batch's rows,
    /// whatever the table's size and statistics, and whatever they were
    /// when a session planned them. A transaction given to
    /// [`push_in`](Self::push_in) is yours, with your settings.
    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &str) -> Result<Self, JobError> {
        use apalis_postgres::PostgresStorage;

        let options: sqlx::postgres::PgConnectOptions = url.parse().map_err(JobError::database)?;
        let options = options.options(planner_hints::POSTGRES_SESSION);
        let pool = |options| {
            sqlx::postgres::PgPoolOptions::new()
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
        };
        // The migrations and the held-jobs index wait for each other's
        // locks across servers starting together, however long one takes:
        // they run on a connection of their own, without `lock_timeout`.
        let setup = pool(options.clone()).await.map_err(JobError::database)?;
        PostgresStorage::setup(&setup)
            .await
            .map_err(JobError::database)?;
        planner_hints::index_postgres_jobs(&setup)
            .await
            .map_err(JobError::database)?;
        setup.close().await;
        let lock_timeout = format!("{}ms", LOCK_TIMEOUT.as_millis());
        let pool = pool(options.options([("lock_timeout", lock_timeout.as_str())]))
            .await
            .map_err(JobError::database)?;
        Ok(Self::with_engine(Engine::Postgres(pool)))
    }

    /// Connects to the database `url` names: `postgres://` or
    /// `postgresql://` for PostgreSQL, `sqlite://path`, `sqlite:path` or a
    /// plain file path for SQLite. Any other `scheme://` is
    /// [`JobError::UnsupportedUrl`].
    pub async fn connect(url: &str) -> Result<Self, JobError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Self::postgres(url).await;
            #[cfg(not(feature = "postgres"))]
            return Err(JobError::UnsupportedUrl(url.to_owned()));
        }
        if url.contains("://") && !url.starts_with("sqlite://") {
            return Err(JobError::UnsupportedUrl(url.to_owned()));
        }
        #[cfg(feature = "sqlite")]
        {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            Self::sqlite(path).await
        }
        #[cfg(not(feature = "sqlite"))]
        Err(JobError::UnsupportedUrl(url.to_owned()))
    }

    /// Connects to `$DATABASE_URL` if it is set, or else to `default`
    /// (for example a SQLite file in the working directory).
    pub async fn from_env(default: &str) -> Result<Self, JobError> {
        match std::env::var(DATABASE_URL) {
            Ok(url) if !url.is_empty() => Self::connect(&url).await,
            _ => Self::connect(default).await,
        }
    }

    fn with_engine(engine: Engine) -> Self {
        Self {
            engine,
            counters: Arc::new(JobCounters::with_max_pending(DEFAULT_MAX_PENDING)),
            announcer: Arc::default(),
            batcher: Arc::default(),
            max_job_bytes: Arc::new(AtomicUsize::new(DEFAULT_MAX_JOB_BYTES)),
        }
    }

    /// Bounds the deferred jobs ([`enqueue`](Self::enqueue)) waiting in
    /// this process's memory for the database: past `max`, `enqueue`
    /// answers [`JobError::Full`] (a `503` with `Retry-After`) instead of
    /// queuing more. The bound is what a database outage can cost in
    /// memory, and what a crash can lose. Shared by every clone of this
    /// queue. Default: [`DEFAULT_MAX_PENDING`].
    #[must_use]
    pub fn max_pending(self, max: usize) -> Self {
        self.counters.set_max_pending(max);
        self
    }

    /// Bounds the size of a job, in bytes of its JSON: a larger one is
    /// refused where it is pushed or enqueued, with
    /// [`JobError::TooLarge`] (a `413` from a handler), so that it is never
    /// accepted and then refused by the database after the response, nor
    /// makes the commit it would share with other pushes fail. Shared by
    /// every clone of this queue. Default: [`DEFAULT_MAX_JOB_BYTES`]
    /// (1 MiB); at most [`MAX_JOB_BYTES_LIMIT`] (256 MiB). Large inputs are
    /// better stored elsewhere and named in the job.
    #[must_use]
    pub fn max_job_bytes(self, max: usize) -> Self {
        self.max_job_bytes
            .store(max.clamp(1, MAX_JOB_BYTES_LIMIT), Ordering::Relaxed);
        self
    }

    /// `job` as the queue stores it, checked against this queue's limits.
    pub(crate) fn encode<J: Job>(&self, job: &J) -> Result<EncodedJob, JobError> {
        EncodedJob::new(job, self.max_job_bytes.load(Ordering::Relaxed))
    }

    /// Which engine this is: `"sqlite"` or `"postgres"`.
    pub fn engine(&self) -> &'static str {
        match self.engine {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => "postgres",
        }
    }

    /// Pushes `job` now and returns its id once the database has it: the
    /// job survives a crash of this process from then on.
    ///
    /// From a handler, call this when the job must be stored before the
    /// response says so (the `2xx` then means "it will run"), and
    /// [`enqueue`](Self::enqueue) when the response should not wait for
    /// the database. A [unique](Job::unique_key) job whose key is held by a
    /// job of the same type that is waiting or running stores nothing and
    /// returns that job's id.
    ///
    /// Pushes made at once through a queue and its clones share commits: a
    /// push that finds others under way is stored in the next commit with
    /// theirs, and returns once that commit has. A push alone commits its
    /// job at once, in the calling task.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it returns, a push may or may not have stored its
    /// job; a job it stored runs like any other. A push that joined a
    /// shared commit is stored with it whether or not it is still awaited;
    /// a push committing alone stops where it is dropped (before its
    /// statement reached the database, or after). A job stored by a dropped
    /// push is not in [`stats`](Self::stats), and on SQLite this process's
    /// workers find it at their next poll rather than at once. hyper drops
    /// a handler's future when its client disconnects: where the job must
    /// be stored whatever the client does, `tokio::spawn` the push and
    /// await its handle (a job from [`enqueue`](Self::enqueue) is
    /// discarded with its request's tasks).
    pub async fn push<J: Job>(&self, job: &J) -> Result<JobId, JobError> {
        let inserted = self.push_encoded(&self.encode(job)?).await?;
        Ok(self.count(inserted))
    }

    /// Pushes `job` to run no earlier than `at` (to the second; a time in
    /// the past runs at once). Like [`push`](Self::push) otherwise: the job
    /// is stored when this returns, so a restart does not lose the delay.
    ///
    /// # Cancel safety
    ///
    /// As [`push`](Self::push)'s.
    pub async fn push_at<J: Job>(&self, job: &J, at: SystemTime) -> Result<JobId, JobError> {
        let inserted = self.push_encoded(&self.encode(job)?.at(at)).await?;
        Ok(self.count(inserted))
    }

    /// Pushes `job` to run no earlier than `delay` from now: see
    /// [`push_at`](Self::push_at).
    pub async fn push_after<J: Job>(&self, job: &J, delay: Duration) -> Result<JobId, JobError> {
        let at = SystemTime::now().checked_add(delay).ok_or_else(|| {
            JobError::InvalidSchedule(format!("a delay of {delay:?} is past the end of time"))
        })?;
        self.push_at(job, at).await
    }

    /// Counts an insert, tells this process's workers of it, and says
    /// which job holds it.
    pub(crate) fn count(&self, inserted: Inserted) -> JobId {
        self.counters.pushed();
        self.announcer.announce();
        match inserted {
            Inserted::New(id) => id,
            Inserted::Existing(id) => {
                self.counters.deduplicated();
                id
            }
        }
    }

    /// Pushes `jobs` together, in one transaction (on PostgreSQL, one
    /// statement per job type): all are stored, or none. Returns their ids
    /// in order (for a [unique](Job::unique_key) job whose key is held, the
    /// holder's). The first job that cannot be encoded is the error, before
    /// anything is pushed. For imports and fan-outs; from a handler after
    /// the response, see [`enqueue_all`](Self::enqueue_all).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it returns, the transaction holding the jobs may or
    /// may not have committed: all of them are stored, or none, and those
    /// stored run like any others (they are not in [`stats`](Self::stats)).
    pub async fn push_all<J: Job>(&self, jobs: &[J]) -> Result<Vec<JobId>, JobError> {
        let jobs = jobs
            .iter()
            .map(|job| self.encode(job))
            .collect::<Result<Vec<_>, _>>()?;
        let inserted = self.push_encoded_all(&jobs).await?;
        Ok(inserted
            .into_iter()
            .map(|inserted| self.count(inserted))
            .collect())
    }

    /// Stores `jobs` in one transaction of their own.
    pub(crate) async fn push_encoded_all(
        &self,
        jobs: &[EncodedJob],
    ) -> Result<Vec<Inserted>, JobError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&EncodedJob> = jobs.iter().collect();
        let holders = batch::commit(&self.engine, &refs).await?;
        Ok(jobs
            .iter()
            .zip(holders)
            .map(|(job, holder)| Inserted::of(job.id, holder))
            .collect())
    }

    /// Stores `job` in the next group commit (see [`super::batch`]).
    pub(crate) async fn push_encoded(&self, job: &EncodedJob) -> Result<Inserted, JobError> {
        self.batcher.push(&self.engine, job.clone()).await
    }

    /// Stores `job`, a deferred push's, in the next of the group commit's
    /// shared commits.
    pub(crate) async fn push_deferred(&self, job: &EncodedJob) -> Result<Inserted, JobError> {
        self.batcher.push_shared(&self.engine, job.clone()).await
    }

    /// What became of job `id` (of type `J`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn outcome<J: Job>(&self, id: JobId) -> Result<JobOutcome<J::Output>, JobError> {
        if self.job_type(id).await?.as_deref() != Some(J::NAME) {
            return Ok(JobOutcome::NotFound);
        }
        let ids = [TaskId::from_string(id.to_string())];
        let results = match &self.engine {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite(pool) => {
                let mut storage = apalis_sqlite::SqliteStorage::<J>::new(pool);
                WaitForCompletion::<J::Output>::check_status(&mut storage, ids)
                    .await
                    .map_err(JobError::database)?
            }
            #[cfg(feature = "postgres")]
            Engine::Postgres(pool) => {
                let mut storage = apalis_postgres::PostgresStorage::<J>::new(pool);
                WaitForCompletion::<J::Output>::check_status(&mut storage, ids)
                    .await
                    .map_err(JobError::database)?
            }
        };
        Ok(match results.into_iter().next() {
            None => JobOutcome::Unfinished,
            Some(result) => match (result.status, result.result) {
                (Status::Done, Ok(output)) => JobOutcome::Done(output),
                (_, Err(error)) => JobOutcome::Failed(error),
                (status, Ok(_)) => JobOutcome::Failed(format!("ended {status:?}")),
            },
        })
    }

    /// Waits until job `id` (of type `J`) has finished, checking every
    /// `poll` (e.g. 50 ms), and returns its output, or
    /// [`JobError::Failed`] with its last error. A job not found is waited
    /// for too (a deferred job is pushed after its response): bound the
    /// wait with a timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads, so `tokio::time::timeout` around it
    /// leaves the job as it was.
    pub async fn wait_for<J: Job>(&self, id: JobId, poll: Duration) -> Result<J::Output, JobError> {
        loop {
            match self.outcome::<J>(id).await? {
                JobOutcome::NotFound | JobOutcome::Unfinished => tokio::time::sleep(poll).await,
                JobOutcome::Done(output) => return Ok(output),
                JobOutcome::Failed(error) => return Err(JobError::Failed(error)),
            }
        }
    }

    /// The job type (queue name) job `id` was pushed under, if the database
    /// has it. Reads apalis's job table directly: apalis has no lookup by
    /// id that leaves the type out.
    pub(crate) async fn job_type(&self, id: JobId) -> Result<Option<String>, JobError> {
        let id = id.to_string();
        match &self.engine {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite(pool) => sqlx::query_scalar("SELECT job_type FROM Jobs WHERE id = ?")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(JobError::database),
            #[cfg(feature = "postgres")]
            Engine::Postgres(pool) => {
                sqlx::query_scalar("SELECT job_type FROM apalis.jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .map_err(JobError::database)
            }
        }
    }

    /// Returns to the queue the jobs `worker` holds — the ones it was
    /// running (`ids`) and those it had fetched and not started — so that
    /// another worker runs them. Used when the grace period of a shutdown
    /// ends with jobs still running. How many went back.
    pub(crate) async fn release(
        &self,
        queue: &str,
        worker: &str,
        ids: &[String],
    ) -> Result<u64, JobError> {
        match &self.engine {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite(pool) => {
                // apalis-sqlite's `reenqueue_abandoned` only takes back jobs
                // fetched and not started; its orphan query, limited to this
                // worker and with no wait, also takes back running ones.
                let _ = ids;
                apalis_sqlite::queries::reenqueue_orphaned(
                    pool,
                    0,
                    queue,
                    &apalis_core::backend::WorkerFilter::Only(worker.to_owned()),
                )
                .await
                .map_err(JobError::database)
            }
            #[cfg(feature = "postgres")]
            Engine::Postgres(pool) => {
                // The running jobs, and those fetched with them and not
                // started yet: the worker is stopped, so nothing it holds
                // changes between the two statements.
                let mut conn = pool.acquire().await.map_err(JobError::database)?;
                let mut held: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM apalis.jobs WHERE job_type = $1 AND lock_by = $2 \
                     AND status IN ('Queued', 'Running')",
                )
                .bind(queue)
                .bind(worker)
                .fetch_all(&mut *conn)
                .await
                .map_err(JobError::database)?;
                held.extend(ids.iter().cloned());
                held.sort_unstable();
                held.dedup();
                apalis_postgres::queries::reenqueue_abandoned(&mut *conn, queue, worker, &held)
                    .await
                    .map_err(JobError::database)
            }
        }
    }

    /// What this queue's users have done so far, in this process.
    pub fn stats(&self) -> JobStats {
        self.counters.snapshot()
    }
}

#[cfg(all(test, feature = "sqlite"))]
// With one engine enabled, matching the queue's engine cannot fail.
#[allow(irrefutable_let_patterns)]
mod tests {
    use super::*;

    /// apalis's setup turns `synchronous` off on the connection it runs
    /// on; none of the pool's connections may be that one. Each keeps its
    /// temporary data in memory too.
    #[tokio::test]
    async fn every_sqlite_connection_syncs_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let queue = JobQueue::sqlite(dir.path().join("jobs.db")).await.unwrap();
        let Engine::Sqlite(pool) = &queue.engine else {
            unreachable!("a SQLite queue")
        };
        let mut connections = Vec::new();
        for _ in 0..DEFAULT_SQLITE_CONNECTIONS {
            connections.push(pool.acquire().await.unwrap());
        }
        for connection in &mut connections {
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **connection)
                .await
                .unwrap();
            let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **connection)
                .await
                .unwrap();
            let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
                .fetch_one(&mut **connection)
                .await
                .unwrap();
            assert_eq!((synchronous, journal.as_str()), (2, "wal"), "2 is FULL");
            assert_eq!(temp_store, 2, "2 is MEMORY");
        }
    }
}
