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
//! `id = ANY(ARRAY(…))`, and the acknowledgement reads its batch of
//! outcomes and looks each job up by its id: index look-ups whatever the
//! statistics say. Each is one statement, committed on its own, where
//! apalis wraps each in a transaction.
//!
//! Everything else (registration, heartbeats, giving back the jobs of dead
//! or stopped workers, marking jobs started) runs apalis's own statements,
//! and the rows written are the ones apalis writes, so apalis's tools and
//! the queue's own look-ups read them as before.

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
/// outcome, for the jobs worker `$2` still holds. Only this worker touches
/// its held rows while it lives (another worker takes them back only once
/// its heartbeat has expired, skipping locked rows), so the rows need no
/// locking order.
///
/// `$1` is a JSON object of the outcomes keyed by job id. The jobs are
/// named by its keys, `id = ANY(ARRAY(…))` as in [`CLAIM`]: a list the
/// planner cannot size, so it looks the jobs up by id whatever its
/// statistics say of the table. Each row then finds its outcome by its own
/// id (a binary search of the object's keys). A join of the table to the
/// batch would leave the order to the planner, and it may read the table
/// first (its estimate of a worker's rows is one row until statistics
/// catch up), then the whole batch once per job: a write would cost the
/// square of its size.
const ACKNOWLEDGE: &str = "\
    UPDATE apalis.jobs AS jobs \
    SET status = $1 -> jobs.id ->> 'status', \
        attempts = ($1 -> jobs.id ->> 'attempt')::INT4, \
        last_result = $1 -> jobs.id -> 'result', \
        done_at = NOW() \
    WHERE jobs.id = ANY(ARRAY(SELECT JSONB_OBJECT_KEYS($1))) AND jobs.lock_by = $2";

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
        started.retain(|id| !outcomes.by_id.contains_key(id));
        match (started.is_empty(), outcomes.by_id.is_empty()) {
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

/// The outcomes of finished jobs, as [`ACKNOWLEDGE`] binds them.
#[derive(Default)]
struct Outcomes {
    /// Each job's outcome, by id.
    by_id: serde_json::Map<String, Value>,
}

impl Outcomes {
    /// Adds one job's outcome, written as apalis writes it (the status's and
    /// the result's JSON forms).
    fn push(&mut self, result: &TaskResult<Value>) -> Result<(), Error> {
        let status = match serde_json::to_value(&result.status).map_err(Error::JsonError)? {
            Value::String(status) => status,
            other => other.to_string(),
        };
        let outcome = serde_json::json!({
            "status": status,
            "attempt": i32::try_from(result.attempt).unwrap_or(i32::MAX),
            "result": serde_json::to_value(&result.result).map_err(Error::JsonError)?,
        });
        self.by_id.insert(result.task_id.to_string(), outcome);
        Ok(())
    }

    async fn write<'e, E>(&self, executor: E, worker: &str) -> Result<(), Error>
    where
        E: sqlx::Executor<'e, Database = sqlx::Postgres>,
    {
        sqlx::query(ACKNOWLEDGE)
            .bind(sqlx::types::Json(&self.by_id))
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

#[cfg(test)]
mod tests {
    use apalis_core::backend::TaskResult;
    use apalis_core::task::status::Status;
    use apalis_core::task::task_id::TaskId;
    use serde_json::Value;
    use sqlx::PgPool;

    use super::{Outcomes, ACKNOWLEDGE, CLAIM};
    use crate::durable::scratch_postgres::{self, ScratchDatabase};

    const WORKER: &str = "plan-probe";

    /// Fills the table with 20 000 jobs.
    const FILL: &str = "DELETE FROM apalis.jobs; \
        INSERT INTO apalis.jobs (id, job_type, job) \
            SELECT 'job-' || g, 'probe', '\\x00' FROM generate_series(1, 20000) AS g";

    /// Jobs a probed statement claims or acknowledges: a large batch (a
    /// worker's prefetch may be set this large, and outcomes gather while
    /// the previous write is in flight).
    const BATCH: i64 = 300;

    /// Rows the plan's steps may examine per job written, every repeat
    /// counted: its look-up by id and its update. A plan that reads the
    /// batch once per job examines the batch's size per job; a walk of the
    /// table, the table's.
    const ROWS_PER_JOB: i64 = 10;

    /// A claim examines a few rows per job, whatever the statistics say:
    /// it reads its jobs in the fetch index's order rather than every job
    /// of the type, sorted. Needs `DATABASE_URL`; without it, says so and
    /// passes.
    #[tokio::test]
    async fn a_claim_examines_a_few_rows_per_job() {
        examines_a_few_rows_per_job("claim_plan", Probed::Claim).await;
    }

    /// The acknowledgement examines a few rows per job, whatever the
    /// statistics say: its cost grows with its batch, not with the batch's
    /// square nor with the table. Needs `DATABASE_URL`; without it, says so
    /// and passes.
    #[tokio::test]
    async fn an_acknowledgement_examines_a_few_rows_per_job() {
        examines_a_few_rows_per_job("acknowledge_plan", Probed::Acknowledge).await;
    }

    /// A worker statement whose plan is probed.
    #[derive(Clone, Copy, Debug)]
    enum Probed {
        /// [`CLAIM`] of [`BATCH`] jobs.
        Claim,
        /// [`ACKNOWLEDGE`] of [`BATCH`] held jobs.
        Acknowledge,
    }

    /// Plans and runs `probed` on a queue's pool under each state of the
    /// statistics a queue's table goes through, with each plan PostgreSQL
    /// may give it, and bounds the rows each examines per job.
    async fn examines_a_few_rows_per_job(name: &str, probed: Probed) {
        let Some((database, queue)) = ScratchDatabase::queue(name).await else {
            return;
        };
        let pool = scratch_postgres::pool(&queue);
        sqlx::query(
            "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) \
             VALUES ($1, 'probe', 'PgStorage', '', NOW())",
        )
        .bind(WORKER)
        .execute(pool)
        .await
        .unwrap();
        let statistics: [(&str, &[&str]); 3] = [
            (
                "taken before any job was held",
                &[FILL, "ANALYZE apalis.jobs"],
            ),
            // What autovacuum records of a queue that has drained since:
            // no row, on the pages the table keeps or on none (and the
            // columns as they were, as an `ANALYZE` that samples no row
            // leaves them).
            (
                "taken while the table held no row",
                &[
                    FILL,
                    "DELETE FROM apalis.jobs",
                    "VACUUM (TRUNCATE false, ANALYZE) apalis.jobs",
                    FILL,
                ],
            ),
            (
                "taken while the table held no row and no page",
                &[
                    FILL,
                    "DELETE FROM apalis.jobs",
                    "VACUUM ANALYZE apalis.jobs",
                    FILL,
                ],
            ),
        ];
        for (statistics, statements) in statistics {
            for statement in statements {
                // One at a time: `VACUUM` runs outside a transaction.
                sqlx::raw_sql(*statement).execute(pool).await.unwrap();
            }
            for (planned, plan) in plans(pool, probed).await {
                check_examined(
                    probed,
                    &format!("{planned}, with statistics {statistics}"),
                    &plan,
                );
            }
        }
        let plan = generic_plan_made_while_empty(pool, probed).await;
        check_examined(
            probed,
            "with a generic plan made while the table had no page",
            &plan,
        );
        database.remove(queue).await;
    }

    /// Fails unless `plan` examined at most [`ROWS_PER_JOB`] rows per job.
    fn check_examined(probed: Probed, planned: &str, plan: &Value) {
        let examined: i64 = nodes(plan).into_iter().map(rows_examined).sum();
        assert!(
            examined <= ROWS_PER_JOB * BATCH,
            "{probed:?} {planned}: {BATCH} jobs examined {examined} rows: {plan:#}"
        );
    }

    /// Prepares `probed` as the worker's connection does (a statement kept
    /// by the session); its `EXECUTE`, a `format` pattern of the worker
    /// (`%1$L`) and the arguments (`%2$s`).
    async fn prepare(tx: &mut sqlx::PgConnection, probed: Probed) -> &'static str {
        let (prepare, execute) = match probed {
            Probed::Claim => (
                format!("PREPARE probed (TEXT, TEXT, INT8) AS {CLAIM}"),
                "EXECUTE probed (%1$L, 'probe', %2$s)",
            ),
            Probed::Acknowledge => (
                format!("PREPARE probed (JSONB, TEXT) AS {ACKNOWLEDGE}"),
                "EXECUTE probed (%2$L::JSONB, %1$L)",
            ),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(prepare))
            .execute(&mut *tx)
            .await
            .unwrap();
        execute
    }

    /// The arguments `probed` runs with on the filled table: a batch's size,
    /// or the outcomes of a batch it holds.
    async fn arguments(tx: &mut sqlx::PgConnection, probed: Probed) -> String {
        match probed {
            Probed::Claim => BATCH.to_string(),
            Probed::Acknowledge => held_outcomes(tx).await.to_string(),
        }
    }

    /// `execute` with its arguments quoted into it: `EXECUTE` takes no
    /// parameters of its own.
    async fn quoted(tx: &mut sqlx::PgConnection, execute: &str, arguments: String) -> String {
        sqlx::query_scalar("SELECT format($1, $2, $3)")
            .bind(execute)
            .bind(WORKER)
            .bind(arguments)
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    }

    /// Runs `probed` with the generic plan PostgreSQL made for it while the
    /// table had no page (a drained queue that autovacuum truncated), on a
    /// table that has filled since, in a transaction that is rolled back.
    /// A session keeps a statement's generic plan until the table's
    /// statistics change, so this is the plan a worker's connection may
    /// run for as long as autovacuum leaves the table alone.
    async fn generic_plan_made_while_empty(pool: &PgPool, probed: Probed) -> Value {
        for statement in ["DELETE FROM apalis.jobs", "VACUUM ANALYZE apalis.jobs"] {
            sqlx::raw_sql(statement).execute(pool).await.unwrap();
        }
        let mut connection = pool.acquire().await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
        sqlx::raw_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            .execute(&mut *tx)
            .await
            .unwrap();
        let execute = prepare(&mut tx, probed).await;
        let nothing = match probed {
            Probed::Claim => BATCH.to_string(),
            Probed::Acknowledge => "{}".to_owned(),
        };
        let planned_empty = quoted(&mut tx, execute, nothing).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(planned_empty))
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(FILL).execute(&mut *tx).await.unwrap();
        let arguments = arguments(&mut tx, probed).await;
        let execute = quoted(&mut tx, execute, arguments).await;
        let plan = explain(&mut tx, &execute).await;
        tx.rollback().await.unwrap();
        sqlx::raw_sql("DEALLOCATE probed")
            .execute(&mut *connection)
            .await
            .unwrap();
        plan
    }

    /// Prepares `probed` as the worker's connection does (a statement
    /// kept by the session), then runs it twice in a transaction that is
    /// rolled back: planned for its parameters, as its first executions
    /// are, then with the generic plan PostgreSQL may keep for the later
    /// ones. The plans, each with how it was planned.
    async fn plans(pool: &PgPool, probed: Probed) -> Vec<(&'static str, Value)> {
        let mut connection = pool.acquire().await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
        let execute = prepare(&mut tx, probed).await;
        let arguments = arguments(&mut tx, probed).await;
        let execute = quoted(&mut tx, execute, arguments).await;
        let mut plans = Vec::new();
        for (planned, mode) in [
            ("planned for its parameters", "force_custom_plan"),
            ("with a generic plan", "force_generic_plan"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET LOCAL plan_cache_mode = {mode}"
            )))
            .execute(&mut *tx)
            .await
            .unwrap();
            plans.push((planned, explain(&mut tx, &execute).await));
        }
        tx.rollback().await.unwrap();
        sqlx::raw_sql("DEALLOCATE probed")
            .execute(&mut *connection)
            .await
            .unwrap();
        plans
    }

    /// Runs `execute` under `EXPLAIN ANALYZE`: its plan, with what each
    /// step did.
    async fn explain(tx: &mut sqlx::PgConnection, execute: &str) -> Value {
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {execute}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    }

    /// Claims [`BATCH`] jobs for [`WORKER`]; their outcomes, as
    /// [`ACKNOWLEDGE`] takes them.
    async fn held_outcomes(tx: &mut sqlx::PgConnection) -> Value {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE apalis.jobs SET status = 'Queued', lock_by = $1, lock_at = NOW() \
             WHERE id IN (SELECT id FROM apalis.jobs ORDER BY id LIMIT $2) RETURNING id",
        )
        .bind(WORKER)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let mut outcomes = Outcomes::default();
        for id in ids {
            let done = TaskResult {
                task_id: TaskId::from_string(id),
                attempt: 1,
                status: Status::Done,
                result: Ok(Value::Null),
            };
            outcomes.push(&done).unwrap();
        }
        Value::Object(outcomes.by_id)
    }

    /// Every step of an `EXPLAIN (FORMAT JSON)` plan.
    fn nodes(plan: &Value) -> Vec<&Value> {
        let mut found = Vec::new();
        let mut next = vec![&plan[0]["Plan"]];
        while let Some(node) = next.pop() {
            if let Some(children) = node["Plans"].as_array() {
                next.extend(children);
            }
            found.push(node);
        }
        found
    }

    /// Rows a step returned or filtered out, over all its repeats
    /// (`EXPLAIN` gives each as a mean per repeat).
    fn rows_examined(node: &Value) -> i64 {
        let per_loop = |key: &str| node[key].as_f64().unwrap_or_default();
        let rows = per_loop("Actual Rows")
            + per_loop("Rows Removed by Filter")
            + per_loop("Rows Removed by Index Recheck")
            + per_loop("Rows Removed by Join Filter");
        (rows * per_loop("Actual Loops")).round() as i64
    }
}
