//! PostgreSQL: a worker claims and runs new jobs while the write of an
//! earlier job's outcome waits. The write of job A's outcome is held up by
//! a row lock taken by another session; job B, pushed afterwards, runs
//! before A's outcome is written, and both outcomes are written once the
//! lock is gone.
//!
//! apalis's own driver writes outcomes and claims one after the other, so
//! there B waits for A's write until the write fails at [`LOCK_TIMEOUT`]
//! and the worker restarts.

use std::time::Duration;

use sqlx::Connection;
use tower_background::durable::{JobId, Workers, LOCK_TIMEOUT};
use tower_background::Supervisor;

use crate::support::{bounded, runs, wait_until, Db, Slow, HEARTBEAT};

/// How long B may take to run: well under [`LOCK_TIMEOUT`], so that only a
/// worker that claims while A's write waits gets there in time.
const B_RUNS_WITHIN: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    bounded(a_waiting_write_does_not_hold_up_claims(db)).await;
}

async fn a_waiting_write_does_not_hold_up_claims(db: Db) {
    assert!(B_RUNS_WITHIN < LOCK_TIMEOUT);
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    Workers::new(&queue)
        .register::<Slow>()
        .heartbeat(HEARTBEAT)
        .concurrency(2)
        .spawn(&supervisor);

    // A runs for a moment: long enough to lock its row while it runs.
    let log_a = db.path("a.log");
    let a = queue
        .push(&Slow {
            log: log_a.clone(),
            first_run_ms: 3_000,
        })
        .await
        .expect("push A");
    wait_until("A starts", || !runs(&log_a).is_empty()).await;
    assert_eq!(
        status_becomes(&db, a, "Running").await,
        "Running",
        "A's start is written"
    );

    let mut holder = db.postgres_connection().await;
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM apalis.jobs WHERE id = $1 FOR UPDATE")
        .bind(a.to_string())
        .execute(&mut holder)
        .await
        .expect("lock A's row");
    // A ends, and the write of its outcome waits for the lock.
    wait_until("A ends", || queue.stats().succeeded == 1).await;

    let log_b = db.path("b.log");
    let b = queue
        .push(&Slow {
            log: log_b.clone(),
            first_run_ms: 0,
        })
        .await
        .expect("push B");
    let b_ran = tokio::time::timeout(B_RUNS_WITHIN, async {
        while runs(&log_b).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        b_ran.is_ok(),
        "B did not run within {B_RUNS_WITHIN:?} while A's write waited"
    );
    assert_eq!(
        db.status(a).await,
        "Running",
        "A's outcome is not written yet"
    );

    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");
    let _ = holder.close().await;
    assert_eq!(
        status_becomes(&db, a, "Done").await,
        "Done",
        "A's outcome is written"
    );
    assert_eq!(
        status_becomes(&db, b, "Done").await,
        "Done",
        "B's outcome is written"
    );
    assert_eq!(runs(&log_a).len(), 1, "A ran once");
    assert_eq!(runs(&log_b).len(), 1, "B ran once");
    assert!(supervisor.shutdown().await.is_complete());
}

/// Job `id`'s status once it reads `wanted`, or the last one read after
/// a bounded wait.
async fn status_becomes(db: &Db, id: JobId, wanted: &str) -> String {
    let mut status = db.status(id).await;
    for _ in 0..1_000 {
        if status == wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = db.status(id).await;
    }
    status
}
