//! [`postgres_jobs`]: the backend PostgreSQL workers run on: a
//! [`Pipeline`](super::pipeline::Pipeline) (claims and writes overlapped)
//! over statements that find their rows by id.
//!
//! apalis's `PostgresStorage` claims through `apalis.get_jobs` and
//! acknowledges with a statement that joins the job table to the batch.
//! When the table's statistics were taken while it held no row (a queue
//! that drains between bursts, analyzed at that moment), PostgreSQL takes
//! the table for a one-row table and plans both statements as a walk of the
//! whole primary key per batch: workers that ran thousands of jobs a second
//! run a few hundred until the next analyze. Here the claim updates
//! `id = ANY(ARRAY(…))` and the acknowledgement `id = ANY($ids)`: index
//! look-ups whatever the statistics say. Each is one statement, committed
//! on its own, where apalis wraps each in a transaction.
//!
//! Everything else (registration, heartbeats, giving back the jobs of dead
//! or stopped workers, marking jobs started) runs apalis's own statements,
//! and the rows written are the ones apalis writes, so apalis's tools and
//! the queue's own look-ups read them as before.

use std::collections::HashSet;

use apalis_core::backend::persistence::{Persistence, TaskEvent};
use apalis_core::backend::TaskResult;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::metadata::MetadataStore;
use apalis_core::task::status::Status;
use apalis_core::task::task_id::{TaskId, TaskIdError};
use apalis_core::worker::context::WorkerContext;
use apalis_postgres::queries::{
    keep_alive, lock_tasks, push_tasks, reenqueue_abandoned, reenqueue_orphaned,
};
use apalis_postgres::{Config, Error, PgTask};
use serde_json::Value;
use sqlx::postgres::types::PgHstore;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use ulid::Ulid;

use super::pipeline::Statements;
use super::worker_backend::{EngineStatements, Options, WorkerBackend};

/// The `storage_name` workers register under.
const STORAGE_NAME: &str = "PgStorage";

/// apalis's registration (`queries/worker/register.sql`): a name already
/// held by a live worker (its advisory lock) is refused.
const REGISTER: &str = "\
    INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) \
    VALUES ($1, $2, $3, $4, NOW()) \
    ON CONFLICT (id) DO UPDATE SET \
        worker_type = EXCLUDED.worker_type, \
        storage_name = EXCLUDED.storage_name, \
        layers = EXCLUDED.layers, \
        last_seen = NOW() \
    WHERE pg_try_advisory_lock(hashtext(workers.id))";

/// apalis's claim (`apalis.get_jobs`), with the rows to update named by id:
/// the next `$3` runnable jobs of type `$2`, by priority then time, skipping
/// those another worker is claiming, marked `Queued` for worker `$1`.
const CLAIM: &str = "\
    UPDATE apalis.jobs SET status = 'Queued', lock_by = $1, lock_at = NOW() \
    WHERE id = ANY(ARRAY( \
        SELECT id FROM apalis.jobs \
        WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)) \
          AND run_at < NOW() AND job_type = $2 \
        ORDER BY priority DESC, run_at ASC \
        LIMIT $3 \
        FOR UPDATE SKIP LOCKED)) \
    RETURNING job, id, job_type, status, attempts, max_attempts, \
        EXTRACT(EPOCH FROM run_at)::BIGINT AS run_at, \
        EXTRACT(EPOCH FROM lock_at)::BIGINT AS lock_at, \
        lock_by, \
        EXTRACT(EPOCH FROM done_at)::BIGINT AS done_at, \
        priority, idempotency_key, metadata";

/// apalis's acknowledgement (`queries/task/handle_result.sql`): each job's
/// outcome, for the jobs worker `$5` still holds. Only this worker touches
/// its held rows while it lives (another worker takes them back only once
/// its heartbeat has expired, skipping locked rows), so the rows need no
/// locking order.
const ACKNOWLEDGE: &str = "\
    UPDATE apalis.jobs AS jobs \
    SET status = done.status, attempts = done.attempt, last_result = done.result, done_at = NOW() \
    FROM UNNEST($1::TEXT[], $2::INT4[], $3::TEXT[], $4::JSONB[]) AS done(id, attempt, status, result) \
    WHERE jobs.id = ANY($1) AND jobs.id = done.id AND jobs.lock_by = $5";

/// The backend a PostgreSQL worker for jobs of type `Args` runs on,
/// configured as apalis's `PostgresStorage` is.
pub(crate) fn postgres_jobs<Args>(pool: &PgPool, config: Config) -> WorkerBackend<ById, Args> {
    let options = Options {
        batch_size: config.batch_size,
        heartbeat_interval: config.heartbeat_interval,
        results: config.persist_results,
        starts: config.lock_tasks,
    };
    let statements = ById {
        pool: pool.clone(),
        config,
    };
    WorkerBackend::new(statements, options)
}

/// The statements of [`postgres_jobs`].
#[derive(Clone, Debug)]
pub(crate) struct ById {
    pool: PgPool,
    config: Config,
}

impl Persistence for ById {
    type Compact = Vec<u8>;
    type Error = Error;
    type Response = Value;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let dead_for = self.config.orphaned_duration().as_secs();
        let mut tx = self.pool.begin().await?;
        reenqueue_orphaned(&mut *tx, queue, dead_for).await?;
        let registered = sqlx::query(REGISTER)
            .bind(worker.name())
            .bind(queue)
            .bind(STORAGE_NAME)
            .bind(worker.get_service())
            .execute(&mut *tx)
            .await?;
        if registered.rows_affected() == 0 {
            return Err(Error::WorkerAlreadyExists(worker.name().to_owned()));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let dead_for = self.config.orphaned_duration().as_secs();
        let mut tx = self.pool.begin().await?;
        keep_alive(&mut *tx, queue, worker).await?;
        reenqueue_orphaned(&mut *tx, queue, dead_for).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<PgTask>, Error> {
        let batch = i64::try_from(self.config.batch_size).unwrap_or(i64::MAX);
        let rows = sqlx::query(CLAIM)
            .bind(worker.name())
            .bind(self.config.queue.as_ref())
            .bind(batch)
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = rows
            .iter()
            .map(|row| Ok((claim_order(row)?, task_from_row(row)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        // `RETURNING` follows no order: run them in the order they were
        // chosen in.
        claimed.sort_by_key(|(order, _)| *order);
        Ok(claimed.into_iter().map(|(_, task)| task).collect())
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<PgTask>,
        worker: &WorkerContext,
    ) -> Result<u64, Error> {
        let ids = tasks
            .iter()
            .filter_map(|task| task.task_id().map(ToString::to_string))
            .collect::<Vec<_>>();
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        let count = reenqueue_abandoned(&mut *tx, queue, worker.name(), &ids).await?;
        if count as usize != tasks.len() {
            return Err(Error::ReenqueueMismatch {
                queued: tasks.len(),
                abandoned: count as usize,
            });
        }
        tx.commit().await?;
        Ok(count)
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Error> {
        let mut outcomes = Outcomes::default();
        let mut started = Vec::new();
        for event in &events {
            match event {
                TaskEvent::Complete(result) => outcomes.push(result)?,
                TaskEvent::Lock { task_id } => started.push(task_id.to_string()),
                _ => {}
            }
        }
        // A job that finished before its start was written needs only its
        // outcome.
        let finished: HashSet<&String> = outcomes.ids.iter().collect();
        started.retain(|id| !finished.contains(id));
        match (started.is_empty(), outcomes.ids.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => outcomes.write(&self.pool, worker.name()).await,
            (false, true) => {
                let mut connection = self.pool.acquire().await?;
                lock_tasks(&mut *connection, &started, worker.name()).await?;
                Ok(())
            }
            (false, false) => {
                let mut tx = self.pool.begin().await?;
                outcomes.write(&mut *tx, worker.name()).await?;
                lock_tasks(&mut *tx, &started, worker.name()).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    async fn push_tasks(&mut self, tasks: Vec<PgTask>) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        push_tasks(&mut *tx, queue, tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// PostgreSQL runs a claim and a write at once: the pipeline overlaps them.
impl Statements for ById {}

impl EngineStatements for ById {
    type Config = Config;

    fn config(&self) -> &Config {
        &self.config
    }
}

/// The outcomes of finished jobs, as the columns [`ACKNOWLEDGE`] binds.
#[derive(Default)]
struct Outcomes {
    ids: Vec<String>,
    attempts: Vec<i32>,
    statuses: Vec<String>,
    results: Vec<Value>,
}

impl Outcomes {
    /// Adds one job's outcome, written as apalis writes it (the status's and
    /// the result's JSON forms).
    fn push(&mut self, result: &TaskResult<Value>) -> Result<(), Error> {
        let status = match serde_json::to_value(&result.status).map_err(Error::JsonError)? {
            Value::String(status) => status,
            other => other.to_string(),
        };
        self.ids.push(result.task_id.to_string());
        self.attempts
            .push(i32::try_from(result.attempt).unwrap_or(i32::MAX));
        self.statuses.push(status);
        self.results
            .push(serde_json::to_value(&result.result).map_err(Error::JsonError)?);
        Ok(())
    }

    async fn write<'e, E>(&self, executor: E, worker: &str) -> Result<(), Error>
    where
        E: sqlx::Executor<'e, Database = sqlx::Postgres>,
    {
        sqlx::query(ACKNOWLEDGE)
            .bind(&self.ids)
            .bind(&self.attempts)
            .bind(&self.statuses)
            .bind(&self.results)
            .bind(worker)
            .execute(executor)
            .await?;
        Ok(())
    }
}

/// The key a claimed row was chosen by: higher priority first, then the
/// earlier time.
fn claim_order(row: &PgRow) -> Result<(std::cmp::Reverse<i32>, i64), Error> {
    let priority: Option<i32> = row.try_get("priority")?;
    let run_at: i64 = row.try_get("run_at")?;
    Ok((std::cmp::Reverse(priority.unwrap_or_default()), run_at))
}

/// A claimed row as the task apalis hands to the worker (what apalis's own
/// row conversion builds).
fn task_from_row(row: &PgRow) -> Result<PgTask, Error> {
    let id: String = row.try_get("id")?;
    let id = Ulid::from_string(&id)
        .map_err(|e| Error::TaskIdError(TaskIdError::Decode(e.to_string())))?;
    let status: String = row.try_get("status")?;
    let status = status.parse::<Status>().map_err(Error::StatusError)?;
    let job_type: String = row.try_get("job_type")?;
    let attempts: i32 = row.try_get("attempts")?;
    let max_attempts: Option<i32> = row.try_get("max_attempts")?;
    let run_at: i64 = row.try_get("run_at")?;
    let lock_at: Option<i64> = row.try_get("lock_at")?;
    let done_at: Option<i64> = row.try_get("done_at")?;
    let priority: Option<i32> = row.try_get("priority")?;
    let metadata: Option<PgHstore> = row.try_get("metadata")?;
    let idempotency_key: Option<String> = row.try_get("idempotency_key")?;
    let seconds = |at: i64| u64::try_from(at).unwrap_or_default();
    let metadata = metadata
        .map(|pairs| {
            pairs
                .into_iter()
                .filter_map(|(key, value)| Some((key, value?)))
                .collect()
        })
        .map(MetadataStore::from_map)
        .unwrap_or_default();
    let mut task = TaskBuilder::new(row.try_get::<Vec<u8>, _>("job")?)
        .task_id(TaskId::from_ulid(id))
        .queue(job_type.into())
        .status(status)
        .attempt(usize::try_from(attempts).unwrap_or_default())
        .max_attempts(max_attempts.map_or(25, |max| usize::try_from(max).unwrap_or_default()))
        .run_at_timestamp(seconds(run_at))
        .lock_at(lock_at.map(seconds))
        .done_at(done_at.map(seconds))
        .lock_by(row.try_get("lock_by")?)
        .priority(priority.map_or(0, |p| usize::try_from(p).unwrap_or_default()))
        .with_metadata(metadata);
    if let Some(key) = idempotency_key {
        task = task.idempotency_key(key);
    }
    Ok(task.build())
}
