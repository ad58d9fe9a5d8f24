//! How a job is inserted into apalis's job table on one connection, per
//! engine ([`JobDatabase`]), including a unique job's "the one already
//! waiting or running, or this one".

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;

use super::error::JobError;
use super::job::JobId;

/// A future that inserts one job: `None` if the job was stored, or for a
/// unique job whose key is held, `Some` of the holder's id.
pub(crate) type Insert<'a> =
    Pin<Box<dyn Future<Output = Result<Option<JobId>, JobError>> + Send + 'a>>;

/// Plain jobs of one type, stored by one [`JobDatabase::insert_many`].
pub(crate) type Rows = Vec<(JobId, Vec<u8>, u32, Option<SystemTime>)>;

/// What an insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The job was stored under its own id.
    New(JobId),
    /// A job of the same type with the same unique key was waiting or
    /// running: nothing was stored, and this is that job's id.
    Existing(JobId),
}

impl Inserted {
    /// What [`JobDatabase::insert`] found, for a job of id `id`.
    pub(crate) fn of(id: JobId, holder: Option<JobId>) -> Self {
        holder.map_or(Self::New(id), Self::Existing)
    }
}

/// Rows in one of SQLite's multi-row inserts: nine bound values each,
/// well under SQLite's limit on a statement's variables (32 766).
#[cfg(feature = "sqlite")]
const SQLITE_ROWS_PER_STATEMENT: usize = 1_000;

/// How many times a unique insert tries when the key changes hands under
/// it (its holder finishes between the insert and the look-up).
const UNIQUE_TRIES: usize = 3;

/// A database whose transactions can hold a job: [`sqlx::Sqlite`] (feature
/// `sqlite`) and [`sqlx::Postgres`] (feature `postgres`). Sealed.
pub trait JobDatabase: sqlx::Database + sealed::Sealed {
    /// The engine's name, as [`JobQueue::engine`](super::JobQueue::engine)
    /// gives it.
    #[doc(hidden)]
    const ENGINE: &'static str;

    /// The most rows one [`insert_many`](Self::insert_many) statement
    /// holds: up to this many plain jobs of one type are one statement.
    #[doc(hidden)]
    const ROWS_PER_STATEMENT: usize;

    /// Inserts a job on `connection`. With `key_held_for_good`, a unique
    /// key is never given up by a finished job (a periodic job's tick).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn insert<'a>(
        connection: &'a mut Self::Connection,
        queue: &'static str,
        id: JobId,
        args: Vec<u8>,
        max_attempts: u32,
        run_at: Option<SystemTime>,
        unique_key: Option<&'a str>,
        key_held_for_good: bool,
    ) -> Insert<'a>;

    /// Inserts plain jobs of type `queue` (`(id, args, max attempts, run
    /// at)`): one statement for up to
    /// [`ROWS_PER_STATEMENT`](Self::ROWS_PER_STATEMENT) of them.
    #[doc(hidden)]
    fn insert_many<'a>(
        connection: &'a mut Self::Connection,
        queue: &'static str,
        rows: Rows,
    ) -> Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>>;
}

/// apalis's task for a job, without a unique key (both engines store the
/// same task type).
fn task(
    id: JobId,
    args: Vec<u8>,
    max_attempts: u32,
    run_at: Option<SystemTime>,
) -> TaskBuilder<Vec<u8>> {
    let builder = TaskBuilder::new(args)
        .task_id(TaskId::from_string(id.to_string()))
        .max_attempts(max_attempts as usize);
    match run_at {
        Some(at) => builder.run_at_time(at),
        None => builder,
    }
}

/// Now, in whole seconds since the Unix epoch: the `run_at` apalis gives a
/// job that names none.
fn unix_seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
}

/// The id a stored job row holds.
fn parse_id(id: &str) -> Result<JobId, JobError> {
    id.parse()
        .map_err(|_| JobError::database(std::io::Error::other(format!("bad job id {id:?}"))))
}

#[cfg(feature = "sqlite")]
impl JobDatabase for sqlx::Sqlite {
    fn insert_many<'a>(
        connection: &'a mut sqlx::SqliteConnection,
        queue: &'static str,
        rows: Rows,
    ) -> Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>> {
        Box::pin(async move {
            // The row apalis's own push writes (`queries::push_tasks`, one
            // statement per row), as multi-row statements: SQLite runs a
            // statement per call, so rows per statement is what makes a
            // batch cheap.
            let now = unix_seconds_now();
            let tasks: Vec<_> = rows
                .into_iter()
                .map(|(id, args, attempts, at)| task(id, args, attempts, at).build())
                .collect();
            for chunk in tasks.chunks(SQLITE_ROWS_PER_STATEMENT) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, \
                     run_at, priority, metadata) ",
                );
                insert.push_values(chunk, |mut row, task| {
                    let id = task.task_id().map(ToString::to_string);
                    let metadata = serde_json::to_string(task.metadata()).unwrap_or_default();
                    row.push_bind(task.args.as_slice())
                        .push_bind(id)
                        .push_bind(queue)
                        .push_bind("Pending")
                        .push_bind(0_i64)
                        .push_bind(task.max_attempts().unwrap_or(25) as i64)
                        .push_bind(task.run_at().unwrap_or(now) as i64)
                        .push_bind(0_i64)
                        .push_bind(metadata);
                });
                insert
                    .build()
                    .execute(&mut *connection)
                    .await
                    .map_err(JobError::database)?;
            }
            Ok(())
        })
    }

    const ENGINE: &'static str = "sqlite";
    const ROWS_PER_STATEMENT: usize = SQLITE_ROWS_PER_STATEMENT;

    fn insert<'a>(
        connection: &'a mut sqlx::SqliteConnection,
        queue: &'static str,
        id: JobId,
        args: Vec<u8>,
        max_attempts: u32,
        run_at: Option<SystemTime>,
        unique_key: Option<&'a str>,
        key_held_for_good: bool,
    ) -> Insert<'a> {
        Box::pin(async move {
            let builder = task(id, args, max_attempts, run_at);
            let Some(key) = unique_key else {
                let task = builder.build();
                apalis_sqlite::queries::push_tasks(connection, queue, &[task])
                    .await
                    .map_err(JobError::database)?;
                return Ok(None);
            };
            let task = builder.idempotency_key(key).build();
            for _ in 0..UNIQUE_TRIES {
                // A finished job gives its key up (one failed with
                // attempts left waits for its retry: not finished);
                // apalis's insert skips a key that is still held (its
                // unique index, `ON CONFLICT DO NOTHING`), and the look-up
                // names whoever holds it.
                if !key_held_for_good {
                    sqlx::query(
                        "UPDATE Jobs SET idempotency_key = NULL \
                         WHERE job_type = ?1 AND idempotency_key = ?2 \
                         AND (status IN ('Done', 'Killed') \
                         OR (status = 'Failed' AND attempts >= max_attempts))",
                    )
                    .bind(queue)
                    .bind(key)
                    .execute(&mut *connection)
                    .await
                    .map_err(JobError::database)?;
                }
                apalis_sqlite::queries::push_tasks(
                    &mut *connection,
                    queue,
                    std::slice::from_ref(&task),
                )
                .await
                .map_err(JobError::database)?;
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM Jobs WHERE job_type = ?1 AND idempotency_key = ?2",
                )
                .bind(queue)
                .bind(key)
                .fetch_optional(&mut *connection)
                .await
                .map_err(JobError::database)?;
                if let Some(holder) = holder {
                    let holder = parse_id(&holder)?;
                    return Ok((holder != id).then_some(holder));
                }
            }
            Err(JobError::database(std::io::Error::other(
                "the unique key kept changing hands",
            )))
        })
    }
}

#[cfg(feature = "postgres")]
impl JobDatabase for sqlx::Postgres {
    fn insert_many<'a>(
        connection: &'a mut sqlx::PgConnection,
        queue: &'static str,
        rows: Rows,
    ) -> Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>> {
        Box::pin(async move {
            let tasks: Vec<_> = rows
                .into_iter()
                .map(|(id, args, attempts, at)| task(id, args, attempts, at).build())
                .collect();
            let tasks = match <[_; 1]>::try_from(tasks) {
                Ok([task]) => return insert_one_postgres(connection, queue, task).await,
                Err(tasks) => tasks,
            };
            // One statement for them all (`unnest`).
            apalis_postgres::queries::push_tasks(connection, queue, tasks)
                .await
                .map_err(JobError::database)
        })
    }

    const ENGINE: &'static str = "postgres";
    // apalis's insert binds one array per column (`unnest`).
    const ROWS_PER_STATEMENT: usize = usize::MAX;

    fn insert<'a>(
        connection: &'a mut sqlx::PgConnection,
        queue: &'static str,
        id: JobId,
        args: Vec<u8>,
        max_attempts: u32,
        run_at: Option<SystemTime>,
        unique_key: Option<&'a str>,
        key_held_for_good: bool,
    ) -> Insert<'a> {
        use sqlx::Connection;

        Box::pin(async move {
            let builder = task(id, args, max_attempts, run_at);
            let Some(key) = unique_key else {
                let task = builder.build();
                apalis_postgres::queries::push_tasks(connection, queue, vec![task])
                    .await
                    .map_err(JobError::database)?;
                return Ok(None);
            };
            let task = builder.idempotency_key(key).build();
            for _ in 0..UNIQUE_TRIES {
                if !key_held_for_good {
                    sqlx::query(
                        "UPDATE apalis.jobs SET idempotency_key = NULL \
                         WHERE job_type = $1 AND idempotency_key = $2 \
                         AND (status IN ('Done', 'Killed') \
                         OR (status = 'Failed' AND attempts >= max_attempts))",
                    )
                    .bind(queue)
                    .bind(key)
                    .execute(&mut *connection)
                    .await
                    .map_err(JobError::database)?;
                }
                // apalis's PostgreSQL insert fails on a held key, and a
                // failed statement aborts its transaction: insert inside a
                // savepoint (a transaction of its own outside one), so the
                // caller's transaction survives the conflict.
                let mut savepoint = connection.begin().await.map_err(JobError::database)?;
                match apalis_postgres::queries::push_tasks(
                    &mut *savepoint,
                    queue,
                    vec![task.clone()],
                )
                .await
                {
                    Ok(()) => {
                        savepoint.commit().await.map_err(JobError::database)?;
                        return Ok(None);
                    }
                    Err(error) if is_unique_violation(&error) => {
                        savepoint.rollback().await.map_err(JobError::database)?;
                    }
                    Err(error) => return Err(JobError::database(error)),
                }
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM apalis.jobs WHERE job_type = $1 AND idempotency_key = $2",
                )
                .bind(queue)
                .bind(key)
                .fetch_optional(&mut *connection)
                .await
                .map_err(JobError::database)?;
                if let Some(holder) = holder {
                    return Ok(Some(parse_id(&holder)?));
                }
            }
            Err(JobError::database(std::io::Error::other(
                "the unique key kept changing hands",
            )))
        })
    }
}

/// apalis's PostgreSQL insert (`queries::push_tasks`) of one plain job,
/// as a row of values. apalis's statement takes one array per column and
/// unnests them: for many rows one statement, but for one row more work
/// for PostgreSQL than the row itself, on the path of every lone push.
/// The values are the ones apalis binds for the job, so the row is the
/// one apalis writes.
#[cfg(feature = "postgres")]
async fn insert_one_postgres(
    connection: &mut sqlx::PgConnection,
    queue: &'static str,
    task: apalis_postgres::PgTask,
) -> Result<(), JobError> {
    use sqlx::postgres::types::PgHstore;

    const INSERT_ONE: &str = "\
        INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, \
            run_at, priority, metadata, idempotency_key) \
        VALUES ($1, $2, $3, 'Pending', 0, $4, to_timestamp($5::BIGINT), $6, $7, NULL)";
    let id = task.task_id().map(ToString::to_string);
    let run_at = task.run_at().unwrap_or_else(unix_seconds_now) as i64;
    let priority = task.priority().map_or(0, |priority| priority as i32);
    let max_attempts = task.max_attempts().map_or(25, |attempts| attempts as i32);
    let metadata = PgHstore(
        task.metadata()
            .clone()
            .into_inner()
            .into_iter()
            .map(|(key, value)| (key, Some(value)))
            .collect(),
    );
    sqlx::query(INSERT_ONE)
        .bind(id)
        .bind(queue)
        .bind(task.args)
        .bind(max_attempts)
        .bind(run_at)
        .bind(priority)
        .bind(metadata)
        .execute(connection)
        .await
        .map(drop)
        .map_err(JobError::database)
}

/// Whether apalis's PostgreSQL insert failed on the unique index.
#[cfg(feature = "postgres")]
fn is_unique_violation(error: &apalis_postgres::Error) -> bool {
    matches!(
        error,
        apalis_postgres::Error::Database(sqlx::Error::Database(error)) if error.is_unique_violation()
    )
}

#[cfg(all(test, feature = "postgres"))]
mod postgres_tests {
    use std::time::{Duration, SystemTime};

    use super::{insert_one_postgres, task};
    use crate::durable::job::JobId;
    use crate::durable::scratch_postgres::{self, ScratchDatabase};

    /// A job inserted alone is the row apalis's own insert writes for it:
    /// every column but the id, the default `run_at` (now) within a
    /// second. Needs `DATABASE_URL`; without it, says so and passes.
    #[tokio::test]
    async fn one_job_is_the_row_apalis_writes() {
        let Some((database, queue)) = ScratchDatabase::queue("insert_one").await else {
            return;
        };
        let pool = scratch_postgres::pool(&queue);
        let later = SystemTime::now() + Duration::from_secs(3600);
        for (max_attempts, run_at) in [(25, None), (3, Some(later))] {
            let (ours, theirs) = (JobId::new(), JobId::new());
            let mut connection = pool.acquire().await.unwrap();
            let job = task(ours, b"{\"n\":1}".to_vec(), max_attempts, run_at).build();
            insert_one_postgres(&mut connection, "parity", job)
                .await
                .unwrap();
            let job = task(theirs, b"{\"n\":1}".to_vec(), max_attempts, run_at).build();
            apalis_postgres::queries::push_tasks(&mut *connection, "parity", vec![job])
                .await
                .unwrap();
            let row = |id: JobId| {
                sqlx::query_as::<
                    _,
                    (
                        String,
                        Vec<u8>,
                        String,
                        i32,
                        i32,
                        f64,
                        i32,
                        String,
                        Option<String>,
                    ),
                >(
                    "SELECT job_type, job, status, attempts, max_attempts, \
                            EXTRACT(EPOCH FROM run_at)::FLOAT8, priority, \
                            COALESCE(metadata::TEXT, 'NULL'), idempotency_key \
                     FROM apalis.jobs WHERE id = $1",
                )
                .bind(id.to_string())
                .fetch_one(pool)
            };
            let (mut ours, mut theirs) = (row(ours).await.unwrap(), row(theirs).await.unwrap());
            assert!((ours.5 - theirs.5).abs() <= 1.0, "{ours:?} / {theirs:?}");
            (ours.5, theirs.5) = (0.0, 0.0);
            assert_eq!(ours, theirs);
        }
        database.remove(queue).await;
    }
}
