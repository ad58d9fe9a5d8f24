//! Statistics for SQLite's query planner on apalis's job table, so that a
//! worker's acknowledgement finds its jobs by id.
//!
//! apalis acknowledges finished jobs with one `UPDATE … FROM
//! json_each(?) WHERE Jobs.id = … AND Jobs.lock_by = ?`. Without
//! statistics, SQLite assumes every index equality matches a handful of
//! rows and drives that join from the `lock_by` index — which lists every
//! job the worker ever took, since finished jobs keep their `lock_by` — so
//! each acknowledgement reads all of a worker's past jobs, and a worker
//! slows down as its history grows. Real statistics (from `ANALYZE`) say
//! what is true, that one `lock_by` value matches many rows, and the
//! planner then looks each job up by its primary key. A new, empty table
//! has none, so this states it: SQLite documents `sqlite_stat1` as the
//! application's to fill.

use sqlx::SqlitePool;

/// What `sqlite_stat1` says of the `lock_by` index when the table is
/// empty: many rows, all sharing one value. Only the ratio of the two
/// numbers matters to the planner.
const LOCK_BY_STATISTICS: &str = "1000000 1000000";

/// Gathers statistics on the job table (bounded, as `PRAGMA optimize`
/// does) and, where they say nothing of the `lock_by` index, states that
/// it is not selective.
pub(crate) async fn state_lock_by_is_not_selective(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut connection = pool.acquire().await?;
    sqlx::raw_sql("PRAGMA analysis_limit = 1000; ANALYZE Jobs;")
        .execute(&mut *connection)
        .await?;
    sqlx::query(
        "INSERT INTO sqlite_stat1 (tbl, idx, stat) SELECT 'Jobs', 'LIdx', ?1 \
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_stat1 WHERE tbl = 'Jobs' AND idx = 'LIdx')",
    )
    .bind(LOCK_BY_STATISTICS)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::durable::{Engine, JobQueue};

    /// apalis-sqlite 1.0's acknowledgement (`queries/task/ack.sql`).
    const ACK: &str = "EXPLAIN QUERY PLAN \
        WITH j AS (SELECT value ->> 'task_id' AS task_id, value ->> 'attempt' AS attempt, \
          value ->> 'result' AS result, value ->> 'status' AS status FROM json_each(?1)) \
        UPDATE Jobs SET status = j.status, attempts = j.attempt, last_result = j.result, \
          done_at = strftime('%s', 'now') \
        FROM j WHERE Jobs.id = j.task_id AND Jobs.lock_by = ?2";

    #[tokio::test]
    async fn a_new_queue_acknowledges_jobs_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let queue = JobQueue::sqlite(dir.path().join("jobs.db")).await.unwrap();
        let Engine::Sqlite(pool) = &queue.engine else {
            unreachable!("a SQLite queue")
        };
        // `EXPLAIN QUERY PLAN` rows are (id, parent, unused, detail).
        let plan: Vec<String> = sqlx::query_as::<_, (i64, i64, i64, String)>(ACK)
            .bind("[]")
            .bind("worker")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|step| step.3)
            .collect();
        let jobs = plan
            .iter()
            .find(|step| step.contains("Jobs"))
            .unwrap_or_else(|| panic!("no step reads Jobs: {plan:?}"));
        assert!(jobs.contains("(id=?)"), "{plan:?}");
    }
}
