//! [`SqlStore`]: a [`TaskStore`] in the database of a durable
//! [`JobQueue`] (SQLite or PostgreSQL), so that several servers share the
//! tracked tasks' records and locks.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::durable::{Engine, JobQueue};

use super::error::StoreError;
use super::id::TaskId;
use super::lock::LockKey;
use super::memory::{DEFAULT_CAPACITY, DEFAULT_TTL};
use super::record::{TaskError, TaskOutcome, TaskRecord, TaskStatus, CANCELLED};
use super::spec::TaskSpec;
use super::store::{Admission, TaskStore};

/// How long [`SqlStore`] keeps a running task's lock without a renewal
/// unless told otherwise: 30 seconds. The server running the task renews
/// it every 10 seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The error of a task given up when its lease lapsed.
const ABANDONED: &str = "abandoned: the server running the task stopped renewing its lease \
    (it crashed, was killed, or lost the database)";

/// A [`TaskStore`] in the database of a durable [`JobQueue`]: records and
/// locks shared by every server that uses the same database, so that a
/// task started on one is reported by `GET ?task_id=` on any other, and a
/// lock holds across all of them.
///
/// It uses the queue's connection pool, and keeps its records in a table
/// of its own, `tower_background_tasks`, which [`new`](SqlStore::new)
/// creates if it is missing (in PostgreSQL, in the first schema of the
/// connection's `search_path`, usually `public`).
///
/// # Example
///
/// ```no_run
/// # #[cfg(feature = "durable")]
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use axum::Router;
/// use tower_background::durable::JobQueue;
/// use tower_background::tracking::{Lock, SqlStore, TaskRegistry};
/// use tower_background::Supervisor;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Hello {
///     name: String,
/// }
///
/// async fn hello_task(args: Hello) -> String {
///     format!("Hello {}!", args.name)
/// }
///
/// // `$DATABASE_URL` (PostgreSQL, for several machines), else a SQLite file.
/// let queue = JobQueue::from_env("tasks.db").await?;
/// let supervisor = Supervisor::new();
/// let registry = TaskRegistry::builder()
///     .store(SqlStore::new(&queue).await?)
///     .build();
/// let app: Router = Router::new()
///     .route("/hello-single", registry.route("hello_task", Lock::Signature, hello_task))
///     .layer(supervisor.layer());
/// # drop(app);
/// # Ok(())
/// # }
/// ```
///
/// # What is stored
///
/// One row per task: its id, signature and args signature, status, start
/// and end times (to the millisecond), its result (JSON) or error message,
/// the idempotency key it was started with and the args signature that key
/// came with, and, while it runs, its lock key and lease. The tasks
/// themselves — their futures — stay in the process that started them: a
/// task runs on the server that accepted its `POST`, and only there.
///
/// A table made by an earlier version, without the idempotency columns,
/// gets them (`ALTER TABLE … ADD COLUMN`) when a store is built.
///
/// # Leases
///
/// A running task's lock is held under a lease ([`DEFAULT_LEASE`], 30 s)
/// that the server running it renews every third of it, from the start
/// until the outcome is recorded (the [`TaskRegistry`](super::TaskRegistry)
/// does this). If that server crashes, is killed or loses the database, the
/// lease lapses: the next start (or `GET` of the task) ends the record as
/// `failed` — `"abandoned: the server running the task stopped renewing
/// its lease …"` — and a start takes the lock. So a crashed server never
/// leaves a lock behind for longer than the lease. (The same happens to a
/// task whose end could not be recorded, say because it was dropped while
/// the runtime shut down.) A server that was only cut off from the
/// database for longer than the lease may still be running the task when
/// another one starts: keep the lease well above the database's worst
/// pauses.
///
/// Leases and retention run on the database's clock, never on the
/// servers' clocks, so servers whose clocks disagree agree on them. The
/// start and end times shown are the servers' (as with the
/// [`MemoryStore`](super::MemoryStore)).
///
/// # Retention
///
/// As the [`MemoryStore`](super::MemoryStore)'s: a running task's record
/// (and its idempotency key) is kept until it ends (or its lease lapses);
/// an ended one for the TTL
/// ([`DEFAULT_TTL`](super::DEFAULT_TTL), one hour); at most a capacity of
/// rows are kept ([`DEFAULT_CAPACITY`](super::DEFAULT_CAPACITY), 10 000),
/// the one that ended first evicted first, and a start that finds every row
/// a running task's is refused ([`Admission::Full`]). Expired rows are
/// deleted by starts and [`purge_expired`](TaskStore::purge_expired), and
/// never shown. The TTL, capacity and lease are each server's settings:
/// give every server the same.
///
/// # Atomicity
///
/// A start — giving up lapsed leases, deleting expired rows, looking up
/// the idempotency key, checking the lock, making room and inserting — is
/// one transaction, and starts never
/// run alongside each other: SQLite's `BEGIN IMMEDIATE` takes the
/// database's write lock, PostgreSQL's transaction takes an advisory lock
/// (`pg_advisory_xact_lock`). Of any number of concurrent starts with one
/// lock, on any number of servers, exactly one starts; and the capacity
/// is exact. Unique indexes on the lock key and on (signature,
/// idempotency key) back this up. Recording an
/// outcome (first one wins, releasing the lock) and renewing a lease are
/// single `UPDATE`s of a running task's row.
///
/// # Cancel safety
///
/// Every change is one transaction or one statement: dropped before the
/// database commits it, it has not happened.
pub struct SqlStore {
    engine: Engine,
    ttl: Duration,
    capacity: usize,
    lease: Duration,
}

impl SqlStore {
    /// A store in `queue`'s database, with the default TTL, capacity and
    /// lease; creates its table if it is missing.
    ///
    /// # Errors
    ///
    /// If the database cannot be reached, or the table cannot be created.
    pub async fn new(queue: &JobQueue) -> Result<Self, StoreError> {
        Self::builder(queue).build().await
    }

    /// Settings for a store in `queue`'s database.
    pub fn builder(queue: &JobQueue) -> SqlStoreBuilder {
        SqlStoreBuilder {
            engine: queue.engine.clone(),
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
            lease: DEFAULT_LEASE,
        }
    }

    /// How long ended records are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many records are kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The TTL in milliseconds, or `None` if it is too long to add to the
    /// clock: such records never expire (the capacity still evicts them).
    fn ttl_millis(&self, now: i64) -> Option<i64> {
        i64::try_from(self.ttl.as_millis())
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
    }

    /// When a lease taken or renewed at `now` lapses.
    fn lease_until(&self, now: i64) -> i64 {
        let lease = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        now.saturating_add(lease)
    }

    async fn setup(&self) -> Result<(), sqlx::Error> {
        on_engine!(&self.engine, |pool| {
            let mut tx = pool.begin_alone().await?;
            for statement in sql::SCHEMA {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
            // A table of an earlier version gets the columns it lacks.
            let columns: Vec<String> = sqlx::query_scalar(pool.columns())
                .fetch_all(&mut *tx)
                .await?;
            for (column, add) in sql::ADDED_COLUMNS {
                if !columns.iter().any(|present| present == column) {
                    sqlx::query(*add).execute(&mut *tx).await?;
                }
            }
            for statement in sql::INDEXES_OF_ADDED_COLUMNS {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    async fn start(&self, record: &TaskRecord, spec: &TaskSpec) -> Result<Admission, sqlx::Error> {
        let lock = spec.lock_key().map(LockKey::as_str);
        let signature = spec.signature().to_string();
        let idempotency = spec
            .idempotency()
            .map(|idempotency| (idempotency.key().as_str(), idempotency.args_signature()));
        on_engine!(&self.engine, |pool| {
            let mut tx = pool.begin_alone().await?;
            let now: i64 = sqlx::query_scalar(pool.now()).fetch_one(&mut *tx).await?;
            sqlx::query(sql::GIVE_UP_LAPSED)
                .bind(ABANDONED)
                .bind(now)
                .bind(self.ttl_millis(now))
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::DELETE_EXPIRED)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if let Some((key, args)) = idempotency {
                sqlx::query(sql::FREE_CANCELLED_KEY)
                    .bind(&signature)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                let first: Option<(String, Option<String>)> = sqlx::query_as(sql::KEY_HOLDER)
                    .bind(&signature)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some((first, first_args)) = first {
                    tx.commit().await?;
                    let first = parse_task_id(&first)?;
                    return Ok(if first_args == Some(args.to_string()) {
                        Admission::Repeated(first)
                    } else {
                        Admission::KeyReused(first)
                    });
                }
            }
            if let Some(lock) = lock {
                let holder: Option<String> = sqlx::query_scalar(sql::LOCK_HOLDER)
                    .bind(lock)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(holder) = holder {
                    tx.commit().await?;
                    return Ok(Admission::Locked(parse_task_id(&holder)?));
                }
            }
            let (rows, running): (i64, i64) =
                sqlx::query_as(sql::COUNT).fetch_one(&mut *tx).await?;
            let capacity = i64::try_from(self.capacity).unwrap_or(i64::MAX);
            if running >= capacity {
                tx.commit().await?;
                return Ok(Admission::Full);
            }
            if rows >= capacity {
                sqlx::query(sql::EVICT_FIRST_ENDED)
                    .bind(rows - capacity + 1)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(sql::INSERT)
                .bind(record.task_id.to_string())
                .bind(record.signature.to_string())
                .bind(record.args_signature.map(|args| args.to_string()))
                .bind(millis(record.start_time))
                .bind(lock)
                .bind(self.lease_until(now))
                .bind(idempotency.map(|(key, _)| key))
                .bind(idempotency.map(|(_, args)| args.to_string()))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Admission::Started)
        })
    }

    /// Ends the running task `task_id`, if it is, and releases its lock.
    async fn end(
        &self,
        task_id: TaskId,
        status: TaskStatus,
        end_time: SystemTime,
        result: Option<String>,
        error: Option<String>,
    ) -> Result<(), sqlx::Error> {
        on_engine!(&self.engine, |pool| {
            let mut conn = pool.acquire().await?;
            let now: i64 = sqlx::query_scalar(pool.now()).fetch_one(&mut *conn).await?;
            sqlx::query(sql::COMPLETE)
                .bind(task_id.to_string())
                .bind(status_text(status))
                .bind(millis(end_time))
                .bind(result)
                .bind(error)
                .bind(self.ttl_millis(now))
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    /// The row of `task_id`, unless it expired; a running task whose lease
    /// lapsed is given up first, so that it shows as what it is.
    async fn read(&self, task_id: TaskId) -> Result<Option<Stored>, sqlx::Error> {
        let id = task_id.to_string();
        on_engine!(&self.engine, |pool| {
            let mut conn = pool.acquire().await?;
            let now: i64 = sqlx::query_scalar(pool.now()).fetch_one(&mut *conn).await?;
            let mut row = sqlx::query_as::<_, Columns>(sql::GET)
                .bind(&id)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await?
                .map(Stored::from);
            if row.as_ref().is_some_and(|row| row.has_lapsed(now)) {
                sqlx::query(sql::GIVE_UP_LAPSED_ONE)
                    .bind(ABANDONED)
                    .bind(now)
                    .bind(self.ttl_millis(now))
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                row = sqlx::query_as::<_, Columns>(sql::GET)
                    .bind(&id)
                    .bind(now)
                    .fetch_optional(&mut *conn)
                    .await?
                    .map(Stored::from);
            }
            Ok(row)
        })
    }

    /// Extends the lease of the running task `task_id`; `false` if it is
    /// not running.
    async fn extend_lease(&self, task_id: TaskId) -> Result<bool, sqlx::Error> {
        on_engine!(&self.engine, |pool| {
            let mut conn = pool.acquire().await?;
            let now: i64 = sqlx::query_scalar(pool.now()).fetch_one(&mut *conn).await?;
            let renewed = sqlx::query(sql::RENEW)
                .bind(task_id.to_string())
                .bind(self.lease_until(now))
                .execute(&mut *conn)
                .await?;
            Ok(renewed.rows_affected() == 1)
        })
    }

    /// Gives up the lapsed leases and deletes the expired rows; returns how
    /// many rows were deleted.
    async fn purge(&self) -> Result<usize, sqlx::Error> {
        on_engine!(&self.engine, |pool| {
            let mut conn = pool.acquire().await?;
            let now: i64 = sqlx::query_scalar(pool.now()).fetch_one(&mut *conn).await?;
            sqlx::query(sql::GIVE_UP_LAPSED)
                .bind(ABANDONED)
                .bind(now)
                .bind(self.ttl_millis(now))
                .execute(&mut *conn)
                .await?;
            let deleted = sqlx::query(sql::DELETE_EXPIRED)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(usize::try_from(deleted.rows_affected()).unwrap_or(usize::MAX))
        })
    }
}

impl TaskStore for SqlStore {
    async fn try_start(
        &self,
        record: TaskRecord,
        spec: &TaskSpec,
    ) -> Result<Admission, StoreError> {
        self.start(&record, spec).await.map_err(StoreError::new)
    }

    async fn complete(
        &self,
        task_id: TaskId,
        outcome: TaskOutcome,
        end_time: SystemTime,
    ) -> Result<(), StoreError> {
        let (status, result, error) = match outcome {
            TaskOutcome::Finished(value) => {
                let result = serde_json::to_string(&value).map_err(StoreError::new)?;
                (TaskStatus::Finished, Some(result), None)
            }
            TaskOutcome::Failed(message) => (TaskStatus::Failed, None, Some(message)),
            TaskOutcome::Cancelled => (TaskStatus::Cancelled, None, Some(CANCELLED.to_owned())),
        };
        self.end(task_id, status, end_time, result, error)
            .await
            .map_err(StoreError::new)
    }

    async fn get(&self, task_id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        match self.read(task_id).await.map_err(StoreError::new)? {
            Some(stored) => stored.into_record().map(Some),
            None => Ok(None),
        }
    }

    async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.purge().await.map_err(StoreError::new)
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    async fn renew(&self, task_id: TaskId) -> Result<bool, StoreError> {
        self.extend_lease(task_id).await.map_err(StoreError::new)
    }
}

impl fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("engine", &engine_name(&self.engine))
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("lease", &self.lease)
            .finish()
    }
}

/// Settings for a [`SqlStore`], from [`SqlStore::builder`].
///
/// # Example
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_background::durable::JobQueue;
/// use tower_background::tracking::{SqlStore, TaskRegistry};
///
/// let queue = JobQueue::sqlite("tasks.db").await?;
/// let store = SqlStore::builder(&queue)
///     .ttl(Duration::from_secs(24 * 60 * 60))
///     .capacity(100_000)
///     .lease(Duration::from_secs(60))
///     .build()
///     .await?;
/// let registry = TaskRegistry::builder().store(store).build();
/// # drop(registry);
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct SqlStoreBuilder {
    engine: Engine,
    ttl: Duration,
    capacity: usize,
    lease: Duration,
}

impl SqlStoreBuilder {
    /// How long an ended task's record is kept (default
    /// [`DEFAULT_TTL`](super::DEFAULT_TTL), one hour). `Duration::ZERO`
    /// forgets it as soon as it ends; a TTL too long to add to the clock
    /// (`Duration::MAX`) keeps it until the capacity evicts it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many records are kept at most (default
    /// [`DEFAULT_CAPACITY`](super::DEFAULT_CAPACITY)), running tasks'
    /// included, so also how many tasks can run at once across all the
    /// servers. A capacity of 0 refuses every start.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// How long a running task's lock holds without a renewal (default
    /// [`DEFAULT_LEASE`], 30 s); the server running the task renews it
    /// every third of this. Shorter frees the lock of a crashed server
    /// sooner; longer tolerates longer database outages.
    ///
    /// # Panics
    ///
    /// If `lease` is zero.
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(!lease.is_zero(), "a task lease must be longer than zero");
        self.lease = lease;
        self
    }

    /// The store; creates its table in the database if it is missing.
    ///
    /// # Errors
    ///
    /// If the database cannot be reached, or the table cannot be created.
    pub async fn build(self) -> Result<SqlStore, StoreError> {
        let store = SqlStore {
            engine: self.engine,
            ttl: self.ttl,
            capacity: self.capacity,
            lease: self.lease,
        };
        store.setup().await.map_err(StoreError::new)?;
        Ok(store)
    }
}

impl fmt::Debug for SqlStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStoreBuilder")
            .field("engine", &engine_name(&self.engine))
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("lease", &self.lease)
            .finish()
    }
}

fn engine_name(engine: &Engine) -> &'static str {
    match engine {
        #[cfg(feature = "sqlite")]
        Engine::Sqlite(_) => "sqlite",
        #[cfg(feature = "postgres")]
        Engine::Postgres(_) => "postgres",
    }
}

/// The columns [`sql::GET`] reads, in order.
type Columns = (
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// A row of the table, as read.
struct Stored {
    task_id: String,
    signature: String,
    args_signature: Option<String>,
    status: String,
    start_time: i64,
    end_time: Option<i64>,
    result: Option<String>,
    error: Option<String>,
    lease_until: Option<i64>,
}

impl From<Columns> for Stored {
    fn from(columns: Columns) -> Self {
        let (
            task_id,
            signature,
            args_signature,
            status,
            start_time,
            end_time,
            result,
            error,
            lease_until,
        ) = columns;
        Self {
            task_id,
            signature,
            args_signature,
            status,
            start_time,
            end_time,
            result,
            error,
            lease_until,
        }
    }
}

impl Stored {
    /// Whether this is a running task's whose lease lapsed at or before
    /// `now`.
    fn has_lapsed(&self, now: i64) -> bool {
        self.lease_until.is_some_and(|until| until <= now)
    }

    fn into_record(self) -> Result<TaskRecord, StoreError> {
        let corrupt = |what: &str| {
            StoreError::new(format!(
                "the row of task {} has an unreadable {what}",
                self.task_id
            ))
        };
        let status = match self.status.as_str() {
            "running" => TaskStatus::Running,
            "finished" => TaskStatus::Finished,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            _ => return Err(corrupt("status")),
        };
        let result = match &self.result {
            Some(json) => Some(serde_json::from_str(json).map_err(|_| corrupt("result"))?),
            None => None,
        };
        Ok(TaskRecord {
            task_id: self.task_id.parse().map_err(|_| corrupt("id"))?,
            start_time: from_millis(self.start_time),
            status,
            signature: self.signature.parse().map_err(|_| corrupt("signature"))?,
            args_signature: match &self.args_signature {
                Some(args) => Some(args.parse().map_err(|_| corrupt("args signature"))?),
                None => None,
            },
            end_time: self.end_time.map(from_millis),
            result,
            error: self.error.map(TaskError::new),
        })
    }
}

fn parse_task_id(text: &str) -> Result<TaskId, sqlx::Error> {
    text.parse()
        .map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

fn status_text(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Running => "running",
        TaskStatus::Finished => "finished",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
    }
}

/// Milliseconds since the Unix epoch (negative before it), saturating.
fn millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The time `millis` milliseconds after the Unix epoch.
fn from_millis(millis: i64) -> SystemTime {
    let magnitude = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Runs `$body` with `$pool` bound to the engine's pool. The body is
/// written once and compiled for each engine, with its own types; the
/// statements are the same text for both (`$1` parameters, types both
/// know), and the two differences sit in [`Dialect`].
macro_rules! on_engine {
    ($engine:expr, |$pool:ident| $body:expr) => {
        match $engine {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite($pool) => $body,
            #[cfg(feature = "postgres")]
            Engine::Postgres($pool) => $body,
        }
    };
}
use on_engine;

/// What differs between the engines: how to read the database's clock, and
/// how to begin a transaction that no other start runs alongside.
trait Dialect {
    type Db: sqlx::Database;

    /// A query of one row and column: the database's clock, in
    /// milliseconds since the Unix epoch.
    fn now(&self) -> &'static str;

    /// A query of one column: the names of the table's columns.
    fn columns(&self) -> &'static str;

    /// Begins a transaction that runs alone among the store's starts (and
    /// setups), on any server.
    fn begin_alone(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

#[cfg(feature = "sqlite")]
impl Dialect for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;

    fn now(&self) -> &'static str {
        // `julianday('now')` has millisecond precision on every SQLite
        // version (`unixepoch('subsec')` needs 3.42).
        "SELECT CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"
    }

    fn columns(&self) -> &'static str {
        "SELECT name FROM pragma_table_info('tower_background_tasks')"
    }

    async fn begin_alone(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        // Takes the database's write lock at once (waiting up to the
        // queue's busy timeout), rather than at the first write, when two
        // readers could no longer both upgrade.
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

#[cfg(feature = "postgres")]
impl Dialect for sqlx::PgPool {
    type Db = sqlx::Postgres;

    fn now(&self) -> &'static str {
        // `clock_timestamp()`: now, not when the transaction began.
        "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    }

    fn columns(&self) -> &'static str {
        // The schema `CREATE TABLE` used: the first of the `search_path`.
        "SELECT column_name::TEXT FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'tower_background_tasks'"
    }

    async fn begin_alone(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(sql::ADVISORY_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// The statements, the same for SQLite and PostgreSQL. Times are
/// milliseconds since the Unix epoch: `start_time` and `end_time` on the
/// servers' clocks (as shown), `lease_until` and `expires_at` on the
/// database's. `end_order` orders the ended records for eviction.
mod sql {
    /// The key of the PostgreSQL advisory lock that serializes starts:
    /// `tb_tasks` in ASCII.
    #[cfg(feature = "postgres")]
    pub(super) const ADVISORY_LOCK: i64 = 0x7462_5f74_6173_6b73;

    pub(super) const SCHEMA: &[&str] = &[
        "CREATE TABLE IF NOT EXISTS tower_background_tasks (
            task_id        TEXT PRIMARY KEY,
            signature      TEXT NOT NULL,
            args_signature TEXT,
            status         TEXT NOT NULL,
            start_time     BIGINT NOT NULL,
            end_time       BIGINT,
            result         TEXT,
            error          TEXT,
            lock_key       TEXT UNIQUE,
            lease_until    BIGINT,
            end_order      BIGINT,
            expires_at     BIGINT,
            idempotency_key  TEXT,
            idempotency_args TEXT
        )",
        "CREATE INDEX IF NOT EXISTS tower_background_tasks_lease
            ON tower_background_tasks (lease_until)",
        "CREATE INDEX IF NOT EXISTS tower_background_tasks_end_order
            ON tower_background_tasks (end_order)",
        "CREATE INDEX IF NOT EXISTS tower_background_tasks_expiry
            ON tower_background_tasks (expires_at)",
    ];

    /// The columns added since the table was first made, and how to add
    /// each to a table that lacks it.
    pub(super) const ADDED_COLUMNS: &[(&str, &str)] = &[
        (
            "idempotency_key",
            "ALTER TABLE tower_background_tasks ADD COLUMN idempotency_key TEXT",
        ),
        (
            "idempotency_args",
            "ALTER TABLE tower_background_tasks ADD COLUMN idempotency_args TEXT",
        ),
    ];

    /// A key is scoped to its task's signature. (`NULL`s, rows without a
    /// key, are never equal, so they never conflict.)
    pub(super) const INDEXES_OF_ADDED_COLUMNS: &[&str] = &[
        "CREATE UNIQUE INDEX IF NOT EXISTS tower_background_tasks_idempotency
            ON tower_background_tasks (signature, idempotency_key)",
    ];

    /// Frees the key `$2` of the tasks of signature `$1` if the task that
    /// holds it was cancelled: see `MemoryStore`'s `start_now`.
    pub(super) const FREE_CANCELLED_KEY: &str = "UPDATE tower_background_tasks
        SET idempotency_key = NULL
        WHERE signature = $1 AND idempotency_key = $2 AND status = 'cancelled'";

    /// The task started with the key `$2` among the tasks of signature
    /// `$1`, and the args signature the key came with.
    pub(super) const KEY_HOLDER: &str = "SELECT task_id, idempotency_args
        FROM tower_background_tasks
        WHERE signature = $1 AND idempotency_key = $2";

    /// The next `end_order`: each record that ends comes after every one
    /// that ended before it (the clock's milliseconds could tie).
    macro_rules! next_end_order {
        () => {
            "COALESCE((SELECT MAX(end_order) FROM tower_background_tasks), 0) + 1"
        };
    }

    /// Ends the running tasks whose lease lapsed at `$2` as failed with
    /// `$1`, releasing their locks; they expire at `$3`. (The right-hand
    /// sides read the row as it was, so `end_time` is the old lease.)
    macro_rules! give_up_lapsed {
        () => {
            concat!(
                "UPDATE tower_background_tasks
                SET status = 'failed', error = $1, end_time = lease_until, lock_key = NULL,
                    lease_until = NULL, expires_at = $3, end_order = ",
                next_end_order!(),
                " WHERE status = 'running' AND lease_until <= $2"
            )
        };
    }

    /// See `give_up_lapsed!`: every task whose lease lapsed.
    pub(super) const GIVE_UP_LAPSED: &str = give_up_lapsed!();

    /// [`GIVE_UP_LAPSED`] for the task `$4` only.
    pub(super) const GIVE_UP_LAPSED_ONE: &str = concat!(give_up_lapsed!(), " AND task_id = $4");

    pub(super) const DELETE_EXPIRED: &str =
        "DELETE FROM tower_background_tasks WHERE expires_at <= $1";

    pub(super) const LOCK_HOLDER: &str =
        "SELECT task_id FROM tower_background_tasks WHERE lock_key = $1";

    /// All rows, and the running tasks' (`SUM` of nothing is `NULL`).
    pub(super) const COUNT: &str = "SELECT COUNT(*),
            COALESCE(SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END), 0)
        FROM tower_background_tasks";

    /// Deletes the `$1` ended records that ended first.
    pub(super) const EVICT_FIRST_ENDED: &str = "DELETE FROM tower_background_tasks
        WHERE task_id IN (
            SELECT task_id FROM tower_background_tasks
            WHERE status <> 'running'
            ORDER BY end_order, task_id
            LIMIT $1
        )";

    pub(super) const INSERT: &str = "INSERT INTO tower_background_tasks
            (task_id, signature, args_signature, status, start_time, lock_key, lease_until,
             idempotency_key, idempotency_args)
        VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8)";

    /// Ends the running task `$1` (first outcome wins) and releases its
    /// lock; it expires at `$6`.
    pub(super) const COMPLETE: &str = concat!(
        "UPDATE tower_background_tasks
        SET status = $2, end_time = $3, result = $4, error = $5, lock_key = NULL,
            lease_until = NULL, expires_at = $6, end_order = ",
        next_end_order!(),
        " WHERE task_id = $1 AND status = 'running'"
    );

    pub(super) const RENEW: &str = "UPDATE tower_background_tasks
        SET lease_until = $2
        WHERE task_id = $1 AND status = 'running'";

    /// The task `$1`, unless it expired at or before `$2`.
    pub(super) const GET: &str = "SELECT task_id, signature, args_signature, status,
            start_time, end_time, result, error, lease_until
        FROM tower_background_tasks
        WHERE task_id = $1 AND (expires_at IS NULL OR expires_at > $2)";
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn times_round_trip_to_the_millisecond_on_both_sides_of_the_epoch() {
        for millis_since in [0_i64, 1, 1_777_000_000_123, -1, -86_400_001] {
            assert_eq!(millis(from_millis(millis_since)), millis_since);
        }
        let time = UNIX_EPOCH + Duration::from_nanos(1_500_999_999);
        assert_eq!(millis(time), 1_500, "truncated, as shown");
        assert_eq!(millis(UNIX_EPOCH - Duration::from_millis(1)), -1);
    }

    #[test]
    fn statuses_are_stored_as_they_are_shown() {
        for status in [
            TaskStatus::Running,
            TaskStatus::Finished,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                Value::from(status_text(status))
            );
        }
    }
}
