//! Periodic jobs: two servers running the same schedule store each tick
//! once, the workers run them, and both loops stop with their supervisor's
//! shutdown. A malformed cron expression is a typed error.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower_background::durable::{Job, JobError, JobFailure, Periodic, Workers};
use tower_background::Supervisor;

use crate::support::{on_each_engine, Db, Engine, HEARTBEAT};

on_each_engine!(two_servers_store_each_tick_once);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Tick;

impl Job for Tick {
    const NAME: &'static str = "tick";
    type Output = ();

    async fn run(self) -> Result<(), JobFailure> {
        Ok(())
    }
}

/// Counts `(jobs, distinct keys, done)` of the `tick` type in `$table`.
macro_rules! count_ticks_in {
    ($table:literal) => {
        concat!(
            "SELECT COUNT(*), COUNT(DISTINCT idempotency_key), ",
            "SUM(CASE WHEN status = 'Done' THEN 1 ELSE 0 END) FROM ",
            $table,
            " WHERE job_type = 'tick' AND idempotency_key LIKE 'periodic:tick:%'"
        )
    };
}

/// `(jobs, distinct keys, done)` of the `tick` type.
async fn ticks(db: &Db) -> (i64, i64, i64) {
    let row: (i64, i64, Option<i64>) = match db.engine() {
        Engine::Sqlite => {
            sqlx::query_as(count_ticks_in!("Jobs"))
                .fetch_one(&mut db.sqlite_connection().await)
                .await
        }
        Engine::Postgres => {
            sqlx::query_as(count_ticks_in!("apalis.jobs"))
                .fetch_one(&mut db.postgres_connection().await)
                .await
        }
    }
    .expect("count the ticks");
    (row.0, row.1, row.2.unwrap_or(0))
}

async fn two_servers_store_each_tick_once(db: Db) {
    let (one, two) = (Supervisor::new(), Supervisor::new());
    let (queue_one, queue_two) = (db.queue().await, db.queue().await);
    for (queue, supervisor) in [(&queue_one, &one), (&queue_two, &two)] {
        Periodic::new("* * * * * *", || Tick)
            .expect("every second")
            .spawn(queue, supervisor);
    }
    Workers::new(&queue_one)
        .register::<Tick>()
        .heartbeat(HEARTBEAT)
        .spawn(&one);

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let reports = [two.shutdown().await, one.shutdown().await];
    assert!(reports.iter().all(|report| !report.aborted), "{reports:?}");

    let (jobs, keys, done) = ticks(&db).await;
    assert!(jobs >= 2, "{jobs} ticks in 3.5 s");
    assert_eq!(jobs, keys, "a tick stored twice");
    assert!(done >= 1, "no tick ran");
    let pushes = queue_one.stats().pushed + queue_two.stats().pushed;
    let deduplicated = queue_one.stats().deduplicated + queue_two.stats().deduplicated;
    assert_eq!(
        pushes - deduplicated,
        jobs as u64,
        "every push accounted for"
    );
}

#[test]
fn a_malformed_cron_expression_is_a_typed_error() {
    for bad in ["every minute", "* * *", "61 * * * * *"] {
        let error = Periodic::new(bad, || Tick).unwrap_err();
        assert!(matches!(error, JobError::InvalidSchedule(_)), "{error:?}");
        assert_eq!(error.code(), "invalid-schedule");
        assert!(error.to_string().contains(bad), "{error}");
    }
    let hourly = Periodic::new("0 0 * * * *", || Tick).unwrap();
    let next = hourly.upcoming(2);
    assert_eq!(
        next[1].duration_since(next[0]).unwrap(),
        Duration::from_secs(3600)
    );
}
