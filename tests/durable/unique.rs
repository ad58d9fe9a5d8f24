//! Unique and delayed jobs. A job whose unique key is held by a waiting or
//! running job of its type stores nothing and returns the holder's id, also
//! when two processes push the key at once; once the holder has finished,
//! the key stores a new job. A key that is not a plain value is refused at
//! the push. A delayed job does not start before its time.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tower_background::durable::{Job, JobError, JobFailure, JobId, JobOutcome, JobQueue, Workers};
use tower_background::Supervisor;

use crate::support::{on_each_engine, Db, Engine, HEARTBEAT, POLL};

on_each_engine!(
    a_held_key_returns_its_holder_and_a_free_one_stores_again,
    a_failed_job_keeps_its_key_while_it_has_attempts_left,
    two_processes_pushing_one_key_store_one_job,
    a_delayed_job_does_not_start_before_its_time
);

/// Set (to the database's URL) only in the pushing process.
const PUSHER_DATABASE: &str = "TOWER_BACKGROUND_TEST_PUSHER_DATABASE";

/// How many pushes of one key each process makes at once.
const PUSHES: usize = 20;

/// An invoice to send: at most one waiting or running per invoice.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SendInvoice {
    invoice: String,
}

impl Job for SendInvoice {
    const NAME: &'static str = "send-invoice";
    type Output = String;

    async fn run(self) -> Result<String, JobFailure> {
        Ok(self.invoice)
    }

    fn unique_key(&self) -> Option<String> {
        Some(self.invoice.clone())
    }
}

pub(crate) fn invoice(key: &str) -> SendInvoice {
    SendInvoice {
        invoice: key.to_owned(),
    }
}

fn workers(queue: &JobQueue, supervisor: &Supervisor) {
    Workers::new(queue)
        .register::<SendInvoice>()
        .heartbeat(HEARTBEAT)
        .spawn(supervisor);
}

async fn a_held_key_returns_its_holder_and_a_free_one_stores_again(db: Db) {
    let queue = db.queue().await;
    let first = queue.push(&invoice("inv-1")).await.unwrap();
    let again = queue.push(&invoice("inv-1")).await.unwrap();
    let other = queue.push(&invoice("inv-2")).await.unwrap();
    assert_eq!(again, first, "a waiting job's key stored a second job");
    assert_ne!(other, first);
    assert_eq!(db.stored_jobs().await, 2);
    let stats = queue.stats();
    assert_eq!((stats.pushed, stats.deduplicated), (3, 1), "{stats:?}");

    // Once the holder is done, the key is free.
    let supervisor = Supervisor::new();
    workers(&queue, &supervisor);
    assert_eq!(
        queue.wait_for::<SendInvoice>(first, POLL).await.unwrap(),
        "inv-1"
    );
    let next = queue.push(&invoice("inv-1")).await.unwrap();
    assert_ne!(next, first, "a finished job kept its key");
    assert_eq!(
        queue.wait_for::<SendInvoice>(next, POLL).await.unwrap(),
        "inv-1"
    );
    supervisor.shutdown().await;

    // A key is a plain value, checked before anything is stored.
    for bad in ["", "two\nlines", &"k".repeat(300)] {
        let error = queue.push(&invoice(bad)).await.unwrap_err();
        assert!(matches!(error, JobError::InvalidUniqueKey(_)), "{error:?}");
        assert_eq!(error.code(), "invalid-unique-key");
    }
    assert_eq!(db.stored_jobs().await, 3);
}

/// A job that failed with attempts left is waiting for its retry: its key
/// is held until its last attempt has failed.
async fn a_failed_job_keeps_its_key_while_it_has_attempts_left(db: Db) {
    let queue = db.queue().await;
    let first = queue.push(&invoice("inv-9")).await.unwrap();
    set_failed(&db, first, 1).await;
    let again = queue.push(&invoice("inv-9")).await.unwrap();
    assert_eq!(again, first, "a job waiting for its retry lost its key");
    assert_eq!(db.stored_jobs().await, 1);

    set_failed(&db, first, SendInvoice::MAX_ATTEMPTS).await;
    let next = queue.push(&invoice("inv-9")).await.unwrap();
    assert_ne!(next, first, "a job failed for good kept its key");
    assert_eq!(db.stored_jobs().await, 2);
}

/// Marks job `id` as apalis does when an attempt fails: `Failed`, with
/// `attempts` made.
async fn set_failed(db: &Db, id: JobId, attempts: u32) {
    let id = id.to_string();
    let attempts = i64::from(attempts);
    let updated = match db.engine() {
        Engine::Sqlite => {
            sqlx::query("UPDATE Jobs SET status = 'Failed', attempts = ? WHERE id = ?")
                .bind(attempts)
                .bind(id)
                .execute(&mut db.sqlite_connection().await)
                .await
                .map(|done| done.rows_affected())
        }
        Engine::Postgres => {
            sqlx::query("UPDATE apalis.jobs SET status = 'Failed', attempts = $1 WHERE id = $2")
                .bind(attempts as i32)
                .bind(id)
                .execute(&mut db.postgres_connection().await)
                .await
                .map(|done| done.rows_affected())
        }
    };
    assert_eq!(updated.expect("the job's row"), 1);
}

/// Pushes `invoice("shared")` [`PUSHES`] times at once; the ids it got.
async fn push_shared(queue: &JobQueue) -> Vec<JobId> {
    let job = invoice("shared");
    let pushes = (0..PUSHES).map(|_| queue.push(&job));
    join_all(pushes)
        .await
        .into_iter()
        .map(|pushed| pushed.expect("push"))
        .collect()
}

/// Run again by `two_processes_pushing_one_key_store_one_job` with
/// [`PUSHER_DATABASE`] set, this test is the second process: it pushes the
/// shared key and prints the ids it got, one per line. Without the
/// variable it does nothing.
#[test]
fn pusher_process() {
    let Ok(url) = std::env::var(PUSHER_DATABASE) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let queue = JobQueue::connect(&url).await.expect("open the queue");
        for id in push_shared(&queue).await {
            println!("pushed {id}");
        }
    });
}

async fn two_processes_pushing_one_key_store_one_job(db: Db) {
    let queue = db.queue().await;
    // Creates the tables, so both processes start pushing at once.
    queue.push(&invoice("warm-up")).await.unwrap();
    let child = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["unique::pusher_process", "--exact", "--nocapture"])
        .env(PUSHER_DATABASE, db.url())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the pushing process");
    let (ours, theirs) = tokio::join!(push_shared(&queue), child.wait_with_output());
    let theirs = theirs.expect("the pushing process ends");
    assert!(theirs.status.success(), "{theirs:?}");
    let theirs: Vec<JobId> = String::from_utf8_lossy(&theirs.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("pushed "))
        .map(|id| id.parse().expect("a job id"))
        .collect();
    assert_eq!(theirs.len(), PUSHES, "the other process's pushes");
    let holder = ours[0];
    assert!(
        ours.iter().chain(&theirs).all(|id| *id == holder),
        "two jobs for one key: {ours:?} {theirs:?}"
    );
    assert_eq!(db.stored_jobs().await, 2, "the warm-up and one shared job");
}

async fn a_delayed_job_does_not_start_before_its_time(db: Db) {
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    workers(&queue, &supervisor);
    let pushed = Instant::now();
    let id = queue
        .push_after(&invoice("later"), Duration::from_secs(2))
        .await
        .unwrap();
    // Stored to the second: it may start from 1 s on, never at once.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        queue.outcome::<SendInvoice>(id).await.unwrap(),
        JobOutcome::Unfinished
    );
    assert_eq!(
        queue.wait_for::<SendInvoice>(id, POLL).await.unwrap(),
        "later"
    );
    assert!(
        pushed.elapsed() >= Duration::from_secs(1),
        "{:?}",
        pushed.elapsed()
    );
    supervisor.shutdown().await;
}
