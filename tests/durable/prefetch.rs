//! A worker claims [`DEFAULT_PREFETCH_MULTIPLIER`] × its concurrency jobs
//! per fetch, or what `Workers::prefetch` says, and leaves the rest to
//! other workers; at shutdown the claimed jobs it had not started go back
//! to the queue with the one it was running.

use std::time::Duration;

use tower_background::durable::{Workers, DEFAULT_PREFETCH_MULTIPLIER};
use tower_background::Supervisor;

use crate::support::{on_each_engine, runs, wait_until, Db, Engine, Slow, HEARTBEAT};

on_each_engine!(a_worker_claims_its_prefetch_and_no_more);

const JOBS: usize = 12;
const GRACE: Duration = Duration::from_secs(1);

async fn a_worker_claims_its_prefetch_and_no_more(db: Db) {
    let queue = db.queue().await;
    let mut logs = Vec::new();
    for i in 0..JOBS {
        let log = db.path(&format!("slow-{i}.log"));
        queue.push(&Slow::stuck(log.clone())).await.expect("push");
        logs.push(log);
    }

    for prefetch in [None, Some(1)] {
        let supervisor = Supervisor::builder().grace_period(GRACE).build();
        let workers = Workers::new(&queue)
            .register::<Slow>()
            .heartbeat(HEARTBEAT)
            .concurrency(1);
        let workers = match prefetch {
            Some(jobs) => workers.prefetch(jobs),
            None => workers,
        };
        workers.spawn(&supervisor);
        let started = || logs.iter().filter(|log| !runs(log).is_empty()).count();
        let before = started();
        wait_until("the worker starts a job", || started() > before).await;

        let expected = prefetch.unwrap_or(DEFAULT_PREFETCH_MULTIPLIER);
        assert_eq!(claimed(&db).await, expected as i64, "prefetch {prefetch:?}");
        supervisor.shutdown().await;
        // The running job and the ones fetched with it.
        assert_eq!(claimed(&db).await, 0, "every claimed job is back");
    }
}

/// Jobs held by a worker: claimed or running.
async fn claimed(db: &Db) -> i64 {
    match db.engine() {
        Engine::Sqlite => {
            let mut conn = db.sqlite_connection().await;
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM Jobs \
                 WHERE status NOT IN ('Pending', 'Done', 'Failed', 'Killed')",
            )
            .fetch_one(&mut conn)
            .await
        }
        Engine::Postgres => {
            let mut conn = db.postgres_connection().await;
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM apalis.jobs \
                 WHERE status NOT IN ('Pending', 'Done', 'Failed', 'Killed')",
            )
            .fetch_one(&mut conn)
            .await
        }
    }
    .expect("count the claimed jobs")
}
