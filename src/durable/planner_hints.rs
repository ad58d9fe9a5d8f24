//! What the query planners are told about apalis's job table, so that a
//! worker's statements read the rows of its batch, not the table.
//!
//! A worker claims a batch (by the fetch index), marks it running, and
//! records its outcomes, each step naming the batch's jobs by id. Finished
//! jobs stay in the table with their `status` and `lock_by`, so an index on
//! either column lists most of the table: a plan that drives one of these
//! steps from such an index reads every job the worker ever took, or every
//! pending job, and a worker slows down as the table grows. Both planners
//! pick such plans when their statistics describe the table at some moment
//! it was small, which for a queue is most moments: on a fresh table, and
//! whenever a backlog arrives after the last `ANALYZE`.
//!
//! - SQLite reads statistics only from `sqlite_stat1`, which SQLite
//!   documents as the application's to fill. [`state_sqlite_statistics`]
//!   writes there what a large queue looks like: ids unique, `status`,
//!   `job_type` and `lock_by` each shared by many rows. With them, marking
//!   a batch running and acknowledging it look jobs up by id.
//! - PostgreSQL's statistics cannot be stated, so the traps are removed
//!   instead. [`index_postgres_jobs`] replaces apalis's two indexes on
//!   `lock_by` with one partial index of the jobs a worker holds (`Queued`
//!   or `Running`), which serves every `lock_by` look-up apalis and this
//!   crate make that is not by id. (It also drops `unique_job_id`, a copy
//!   of the primary key that every insert and update of a job maintained
//!   a second time.) And every session of the queue's pool plans with
//!   [`POSTGRES_SESSION`]: no sort where an index gives the order, no
//!   sequential scan where an index serves, joins by nested loops, and no
//!   JIT compilation.
//!   The pool runs only the queue's own statements (a transaction given
//!   to `push_in` is the caller's, with the caller's settings). One trap
//!   is left that neither removes: statistics taken while the table held
//!   no row make PostgreSQL plan every statement for a one-row table,
//!   whatever its size now. The workers' claim and acknowledgement
//!   therefore name their rows by id (`postgres_backend.rs`), and with
//!   sequential scans off no estimate turns that into a walk of the table.
//!
//! The statistics and the index are idempotent and set each time a queue
//! connects.

/// What `sqlite_stat1` says of apalis's job table: one row for the table
/// and one per index, each `rows, rows per equal first column, per equal
/// first two columns, …`. Only the proportions matter to the planner.
/// An index apalis does not have (any more) is ignored.
#[cfg(feature = "sqlite")]
const SQLITE_STATISTICS: &[(Option<&str>, &str)] = &[
    (None, "1000000"),
    (Some("sqlite_autoindex_Jobs_1"), "1000000 1"),
    (Some("LIdx"), "1000000 100000"),
    (
        Some("idx_jobs_job_type_status_run_at"),
        "1000000 100000 20000 2",
    ),
    (Some("idx_jobs_status_run_at"), "1000000 200000 2"),
    (Some("idx_jobs_completed_done_at"), "500000 250000 1 1"),
    (Some("idx_jobs_running"), "1000 1"),
    (Some("idx_jobs_idempotency_key"), "1000000 100000 1"),
    (Some("idx_jobs_pending"), "400000 40000 40000 1 1"),
    (Some("idx_jobs_failed"), "1000 100 100 1 1"),
    (Some("idx_jobs_claimable"), "500000 166666 100000"),
];

/// Replaces what `sqlite_stat1` says of the job table with
/// [`SQLITE_STATISTICS`]. Connections opened afterwards plan with them.
#[cfg(feature = "sqlite")]
pub(crate) async fn state_sqlite_statistics(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // `ANALYZE` creates `sqlite_stat1` if it is missing; bounded, as
    // `PRAGMA optimize` runs it.
    sqlx::raw_sql(
        "PRAGMA analysis_limit = 1000; ANALYZE Jobs; DELETE FROM sqlite_stat1 WHERE tbl = 'Jobs';",
    )
    .execute(&mut *tx)
    .await?;
    for (index, stat) in SQLITE_STATISTICS {
        sqlx::query("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('Jobs', ?1, ?2)")
            .bind(index)
            .bind(stat)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Settings of every session of a PostgreSQL queue's pool.
///
/// - No sort where an index gives the order: a claim takes the first jobs
///   in the fetch index's order. Under statistics taken while the table
///   held no row, PostgreSQL would rather read every job of the type and
///   sort them, once per claim.
/// - Joins by nested loops: the queue's statements join a batch of ids (or
///   a few workers) to the job table's indexes, which a hash or merge join
///   would read whole.
/// - No sequential scan where an index serves: a session keeps a prepared
///   statement's generic plan until the table's statistics change, and a
///   generic plan made while the table had no page (a drained queue that
///   autovacuum truncated) reads the whole table, which costs nothing
///   then. Run on the table once it has filled, the claim and the
///   acknowledgement each compared every job with their batch of ids,
///   until the next analyze.
/// - No JIT compilation: the queue's statements are short, and compiling
///   one costs far more than running it. The one whose estimate crosses
///   `jit_above_cost` is sqlx's look-up of the `hstore` type (the
///   `metadata` column's), which each new connection runs once, before
///   its first push or claim: compiled, it held that push or claim up.
///
/// Prepared statements keep PostgreSQL's choice of plan (`plan_cache_mode`
/// left alone): planned at each execution, the foreign-key check that a
/// claim runs for each job it claims (`lock_by` names a worker) would be
/// planned again for every job.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_SESSION: [(&str, &str); 5] = [
    ("enable_sort", "off"),
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("jit", "off"),
];

/// The partial index that replaces apalis's `lock_by` indexes.
#[cfg(feature = "postgres")]
const HELD_JOBS_INDEX: &str = "tower_background_held_jobs";

/// Creates [`HELD_JOBS_INDEX`], drops apalis's full `lock_by` indexes and
/// its second unique index on `id` (the primary key already is one), once
/// per database; servers starting together take turns.
#[cfg(feature = "postgres")]
pub(crate) async fn index_postgres_jobs(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    // Checked first without a lock: on every start but the first, nothing
    // is locked at all.
    if postgres_jobs_indexed(pool).await? {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(HELD_JOBS_INDEX)
        .execute(&mut *tx)
        .await?;
    if !postgres_jobs_indexed(&mut *tx).await? {
        let statements = format!(
            "CREATE INDEX IF NOT EXISTS {HELD_JOBS_INDEX} ON apalis.jobs (lock_by) \
               WHERE status IN ('Queued', 'Running'); \
             DROP INDEX IF EXISTS apalis.idx_apalis_jobs_lock_by; \
             DROP INDEX IF EXISTS apalis.lidx; \
             DROP INDEX IF EXISTS apalis.unique_job_id;"
        );
        // Built from constants only.
        sqlx::raw_sql(sqlx::AssertSqlSafe(statements))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Whether the job table's indexes are those [`index_postgres_jobs`] leaves.
#[cfg(feature = "postgres")]
async fn postgres_jobs_indexed<'c>(
    executor: impl sqlx::PgExecutor<'c>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT to_regclass('apalis.' || $1) IS NOT NULL \
         AND to_regclass('apalis.idx_apalis_jobs_lock_by') IS NULL \
         AND to_regclass('apalis.lidx') IS NULL \
         AND to_regclass('apalis.unique_job_id') IS NULL",
    )
    .bind(HELD_JOBS_INDEX)
    .fetch_one(executor)
    .await
}

#[cfg(all(test, feature = "sqlite"))]
// With one engine enabled, matching the queue's engine cannot fail.
#[allow(irrefutable_let_patterns)]
mod tests {
    use crate::durable::engine::Engine;
    use crate::durable::JobQueue;

    /// apalis-sqlite 1.0's statement marking a batch running
    /// (`queries/task/lock.sql`).
    const LOCK: &str = "EXPLAIN QUERY PLAN \
        UPDATE Jobs SET status = 'Running', lock_at = strftime('%s', 'now'), lock_by = ?2 \
        WHERE id IN (SELECT value FROM json_each(?1)) \
          AND (status = 'Queued' OR status = 'Pending' \
               OR (status = 'Failed' AND attempts < max_attempts))";

    /// apalis-sqlite 1.0's acknowledgement (`queries/task/ack.sql`).
    const ACK: &str = "EXPLAIN QUERY PLAN \
        WITH j AS (SELECT value ->> 'task_id' AS task_id, value ->> 'attempt' AS attempt, \
          value ->> 'result' AS result, value ->> 'status' AS status FROM json_each(?1)) \
        UPDATE Jobs SET status = j.status, attempts = j.attempt, last_result = j.result, \
          done_at = strftime('%s', 'now') \
        FROM j WHERE Jobs.id = j.task_id AND Jobs.lock_by = ?2";

    /// The step of `statement`'s plan that reads the job table.
    async fn plan_on_jobs(statement: &'static str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let queue = JobQueue::sqlite(dir.path().join("jobs.db")).await.unwrap();
        let Engine::Sqlite(pool) = &queue.engine else {
            unreachable!("a SQLite queue")
        };
        // `EXPLAIN QUERY PLAN` rows are (id, parent, unused, detail).
        let plan: Vec<String> = sqlx::query_as::<_, (i64, i64, i64, String)>(statement)
            .bind("[]")
            .bind("worker")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|step| step.3)
            .collect();
        let jobs: Vec<&String> = plan.iter().filter(|step| step.contains("Jobs")).collect();
        assert_eq!(jobs.len(), 1, "one step reads Jobs: {plan:?}");
        jobs[0].clone()
    }

    #[tokio::test]
    async fn a_new_queue_marks_a_batch_running_by_id() {
        let step = plan_on_jobs(LOCK).await;
        assert!(step.contains("(id=?)"), "{step}");
    }

    #[tokio::test]
    async fn a_new_queue_acknowledges_jobs_by_id() {
        let step = plan_on_jobs(ACK).await;
        assert!(step.contains("(id=?)"), "{step}");
    }
}

#[cfg(all(test, feature = "postgres"))]
mod postgres_tests {
    use super::POSTGRES_SESSION;
    use crate::durable::scratch_postgres::{self, ScratchDatabase};

    /// Every connection of a PostgreSQL queue plans with
    /// [`POSTGRES_SESSION`], compiles nothing (a new connection's look-up
    /// of `hstore` is not held up by LLVM), and keeps a prepared
    /// statement's generic plan once PostgreSQL has chosen it (a
    /// foreign-key check that runs once per claimed job is planned once
    /// per session, not once per job). Needs `DATABASE_URL`; without it,
    /// says so and passes.
    #[tokio::test]
    async fn every_postgres_session_plans_for_batches() {
        let Some((database, queue)) = ScratchDatabase::queue("session").await else {
            return;
        };
        let pool = scratch_postgres::pool(&queue);
        let mut connections = Vec::new();
        for _ in 0..3 {
            connections.push(pool.acquire().await.unwrap());
        }
        for connection in &mut connections {
            for (setting, value) in POSTGRES_SESSION {
                let shown: String =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
                        .fetch_one(&mut **connection)
                        .await
                        .unwrap();
                assert_eq!(shown, value, "{setting}");
            }
            let jit: String = sqlx::query_scalar("SHOW jit")
                .fetch_one(&mut **connection)
                .await
                .unwrap();
            assert_eq!(
                jit, "off",
                "PostgreSQL's default, on, compiles sqlx's type look-up"
            );
            // PostgreSQL plans a prepared statement for its parameters five
            // times, then weighs a generic plan; this one has no better.
            for _ in 0..8 {
                sqlx::query("SELECT 1 FROM apalis.workers WHERE id = $1 FOR KEY SHARE")
                    .bind("no-such-worker")
                    .fetch_optional(&mut **connection)
                    .await
                    .unwrap();
            }
            let generic: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(generic_plans), 0) FROM pg_prepared_statements \
                 WHERE statement LIKE 'SELECT 1 FROM apalis.workers%'",
            )
            .fetch_one(&mut **connection)
            .await
            .unwrap();
            assert!(
                generic > 0,
                "eight executions of a look-up by primary key were all planned again"
            );
        }
        drop(connections);
        database.remove(queue).await;
    }
}
