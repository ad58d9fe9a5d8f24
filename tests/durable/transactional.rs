//! Transactional enqueue: a job pushed inside the application's own
//! transaction exists exactly when the transaction's rows do. Rolled back,
//! neither the row nor the job ever existed; committed, both do, and a
//! worker runs the job.

use sqlx::{Connection, Executor};
use tower_background::durable::{JobError, JobId, JobOutcome, JobQueue, Workers};
use tower_background::Supervisor;

use crate::jobs::{self, Add};
use crate::support::{on_each_engine, Db, Engine, HEARTBEAT, POLL};

on_each_engine!(a_job_exists_exactly_when_its_transaction_commits);

/// The application's own table: one row per signup.
const CREATE: &str = "CREATE TABLE signups (email TEXT NOT NULL)";

/// Writes a signup row and pushes `Add` in one transaction that rolls back,
/// then in one that commits, on `$conn`; returns both jobs' ids.
macro_rules! rolled_back_then_committed {
    ($queue:expr, $conn:expr) => {{
        let (queue, conn) = ($queue, $conn);
        conn.execute(CREATE).await.unwrap();

        let mut tx = conn.begin().await.unwrap();
        tx.execute("INSERT INTO signups VALUES ('ada@example.com')")
            .await
            .unwrap();
        let gone = queue.push_in(&mut tx, &Add { x: 1, y: 1 }).await.unwrap();
        tx.rollback().await.unwrap();

        let mut tx = conn.begin().await.unwrap();
        tx.execute("INSERT INTO signups VALUES ('grace@example.com')")
            .await
            .unwrap();
        let kept = queue.push_in(&mut tx, &Add { x: 20, y: 22 }).await.unwrap();
        tx.commit().await.unwrap();

        let rows: Vec<(String,)> = sqlx::query_as("SELECT email FROM signups")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        assert_eq!(rows, [("grace@example.com".to_owned(),)]);
        (gone, kept)
    }};
}

async fn a_job_exists_exactly_when_its_transaction_commits(db: Db) {
    let queue = db.queue().await;
    let (gone, kept) = match db.engine() {
        Engine::Sqlite => rolled_back_then_committed!(&queue, &mut db.sqlite_connection().await),
        Engine::Postgres => {
            rolled_back_then_committed!(&queue, &mut db.postgres_connection().await)
        }
    };
    assert_outcomes(&queue, gone, kept).await;
}

/// The rolled-back job was never stored; the committed one runs.
async fn assert_outcomes(queue: &JobQueue, gone: JobId, kept: JobId) {
    assert_eq!(
        queue.outcome::<Add>(gone).await.unwrap(),
        JobOutcome::NotFound,
        "the rolled-back job exists"
    );
    let supervisor = Supervisor::new();
    jobs::register(Workers::new(queue))
        .heartbeat(HEARTBEAT)
        .spawn(&supervisor);
    assert_eq!(queue.wait_for::<Add>(kept, POLL).await.unwrap(), 42);
    assert_eq!(
        queue.outcome::<Add>(gone).await.unwrap(),
        JobOutcome::NotFound,
        "the rolled-back job ran"
    );
    supervisor.shutdown().await;
}

/// A transaction on the other engine is refused before anything is written.
#[tokio::test]
async fn a_transaction_on_the_other_engine_is_refused() {
    let db = Db::sqlite().await;
    let queue = db.queue().await;
    let Some(postgres) = Db::postgres().await else {
        eprintln!("skipped: DATABASE_URL not set");
        return;
    };
    let mut conn = postgres.postgres_connection().await;
    let mut tx = conn.begin().await.unwrap();
    let error = queue
        .push_in(&mut tx, &Add { x: 1, y: 2 })
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            JobError::EngineMismatch {
                queue: "sqlite",
                transaction: "postgres"
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.code(), "job-engine-mismatch");
}
