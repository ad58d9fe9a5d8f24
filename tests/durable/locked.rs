//! PostgreSQL: a push that waits for a lock on the job table (a migration's
//! `ALTER TABLE`, a `VACUUM FULL`) fails after [`LOCK_TIMEOUT`] rather than
//! wait as long as the lock is held, even behind a deferred push whose
//! commit already waits for the lock (it does not wait for that commit and
//! then for its own); the deferred push, failed by the same timeout,
//! retries without first waiting behind the lock to check whether it was
//! stored, and is stored once the lock is gone, once.
//!
//! SQLite's side is the locked file of [`crate::db_down`]: its writers wait
//! the busy timeout.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tower_background::durable::{JobError, LOCK_TIMEOUT};
use tower_background::Supervisor;

use crate::jobs::Add;
use crate::support::{bounded, wait_until, Db};

/// What the push may take beyond [`LOCK_TIMEOUT`] on a loaded machine.
const MARGIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    bounded(a_push_blocked_by_a_lock_fails_after_lock_timeout(db)).await;
}

async fn a_push_blocked_by_a_lock_fails_after_lock_timeout(db: Db) {
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    let tasks = supervisor.tasks();

    let mut migration = db.postgres_connection().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE apalis.jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut migration)
        .await
        .expect("lock the job table");
    let deferred = queue
        .enqueue(&tasks, Add { x: 1, y: 1 })
        .expect("enqueue while the table is locked");
    // The deferred push's commit is the one in flight when `push` comes.
    wait_until_blocked(&db, 1).await;

    let started = Instant::now();
    let pushed = tokio::time::timeout(LOCK_TIMEOUT + MARGIN, queue.push(&Add { x: 2, y: 2 }))
        .await
        .expect("a push blocked by a lock answers within LOCK_TIMEOUT");
    let waited = started.elapsed();
    let error = pushed.expect_err("the table is locked");
    assert!(matches!(error, JobError::Database(_)), "{error:?}");
    assert!(error.to_string().contains("lock timeout"), "{error}");
    assert_eq!(queue.stats().pushed_deferred, 0);
    println!("the push waited {waited:?}, then: {error}");

    // The deferred push's commit timed out too, before the push's. A lock
    // timeout rolls the transaction back: nothing was committed, so the
    // deferred push goes straight to its retry, without looking for its
    // job first (a look-up that would wait behind the same lock).
    let retried = Instant::now();
    while queue.stats().push_retries == 0 {
        assert!(
            retried.elapsed() < MARGIN,
            "the deferred push still waits, {:?} after its commit timed out",
            started.elapsed() + retried.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    sqlx::raw_sql("ROLLBACK")
        .execute(&mut migration)
        .await
        .expect("release the lock");
    let _ = migration.close().await;
    wait_until("the deferred job is stored", || {
        queue.stats().pushed_deferred == 1
    })
    .await;
    assert!(supervisor.shutdown().await.is_complete());
    let stored = db.stored_args().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].0, deferred);
}

/// Waits until `n` statements of the test's database wait for a lock.
async fn wait_until_blocked(db: &Db, n: i64) {
    let mut observer = db.postgres_connection().await;
    for _ in 0..500 {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .expect("count the blocked statements");
        if blocked >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no statement came to wait for the lock");
}
