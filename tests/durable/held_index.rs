//! PostgreSQL: the queue replaces apalis's indexes on `lock_by` with one
//! partial index of the jobs a worker holds, so that a worker's
//! acknowledgement finds its batch by primary key rather than through
//! every job it ever finished (SQLite's side, planner statistics, is
//! checked by the unit tests of `src/durable/planner_hints.rs`), and drops
//! apalis's copy of the primary key (`unique_job_id`), which every write
//! maintained twice. Servers starting together each make the change or
//! find it made.

use sqlx::Connection;
use tower_background::durable::JobQueue;

use crate::support::{bounded, Db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    bounded(async {
        let (first, second) =
            tokio::join!(JobQueue::connect(db.url()), JobQueue::connect(db.url()));
        first.expect("the first server connects");
        second.expect("the second server connects");
        // And on every later start, unchanged.
        JobQueue::connect(db.url())
            .await
            .expect("a restart connects");

        let mut connection = db.postgres_connection().await;
        let on_lock_by: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname, indexdef FROM pg_indexes \
             WHERE schemaname = 'apalis' AND tablename = 'jobs' AND indexdef LIKE '%(lock_by)%'",
        )
        .fetch_all(&mut connection)
        .await
        .unwrap();
        let on_id: Vec<String> = sqlx::query_scalar(
            "SELECT indexname FROM pg_indexes \
             WHERE schemaname = 'apalis' AND tablename = 'jobs' AND indexdef LIKE '%(id)'",
        )
        .fetch_all(&mut connection)
        .await
        .unwrap();
        let _ = connection.close().await;
        assert_eq!(on_id, ["jobs_pkey"], "one index on id: the primary key");
        assert_eq!(on_lock_by.len(), 1, "{on_lock_by:?}");
        let (name, definition) = &on_lock_by[0];
        assert_eq!(name, "tower_background_held_jobs");
        assert!(
            definition.contains("WHERE (status = ANY (ARRAY['Queued'::text, 'Running'::text]))"),
            "{definition}"
        );
    })
    .await;
}
