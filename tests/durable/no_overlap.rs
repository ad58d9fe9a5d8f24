//! Two workers never run the same job at the same time: two worker sets
//! (each with a pool of its own and a name of its own, as two processes
//! would have) × 4 concurrent jobs share 200 jobs; every job records when
//! it starts and ends in a ledger; each must have run exactly once, never
//! overlapping another run of itself, and both sets must have taken part.
//!
//! The workers keep the default heartbeat (30 s): with a 1 s heartbeat, a
//! live worker whose keep-alive is late by a moment on a loaded machine is
//! taken for dead (apalis-sqlite counts whole seconds) and its jobs are run
//! again — at-least-once delivery, which [`crash`](crate::crash) shows, not
//! the locking this test is about.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower_background::durable::{Job, JobFailure, JobOutcome, Workers};
use tower_background::Supervisor;

use crate::support::{on_each_engine, wait_until, Db};

on_each_engine!(two_worker_sets_share_jobs_without_overlap);

const JOBS: u32 = 200;
const CONCURRENCY: usize = 4;

/// What the ledger knows of one job.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    running: u32,
    runs: u32,
    overlapped: bool,
}

/// Every job of every test in this process, by (test, job number).
fn ledger() -> std::sync::MutexGuard<'static, HashMap<(String, u32), Entry>> {
    static LEDGER: OnceLock<Mutex<HashMap<(String, u32), Entry>>> = OnceLock::new();
    LEDGER
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Records its start and end in the ledger, working a little in between.
#[derive(Debug, Serialize, Deserialize)]
struct Tally {
    test: String,
    n: u32,
}

impl Job for Tally {
    const NAME: &'static str = "tally";
    type Output = u32;

    async fn run(self) -> Result<u32, JobFailure> {
        let key = (self.test, self.n);
        {
            let mut ledger = ledger();
            let entry = ledger.entry(key.clone()).or_default();
            entry.overlapped |= entry.running > 0;
            entry.running += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut ledger = ledger();
        let entry = ledger.get_mut(&key).expect("started");
        entry.running -= 1;
        entry.runs += 1;
        Ok(key.1)
    }
}

async fn two_worker_sets_share_jobs_without_overlap(db: Db) {
    let test = db.label();
    let queue = db.queue().await;
    let mut ids = Vec::new();
    for n in 0..JOBS {
        let job = Tally {
            test: test.clone(),
            n,
        };
        ids.push((n, queue.push(&job).await.expect("push")));
    }

    let (first, second) = (db.queue().await, db.queue().await);
    let supervisor = Supervisor::builder().build();
    for (queue, name) in [(&first, "first"), (&second, "second")] {
        Workers::new(queue)
            .register::<Tally>()
            .concurrency(CONCURRENCY)
            .name(name)
            .spawn(&supervisor);
    }
    let finished = || first.stats().succeeded + second.stats().succeeded;
    wait_until("every job has run", || finished() >= u64::from(JOBS)).await;
    supervisor.shutdown().await;

    for (n, id) in ids {
        assert_eq!(
            queue.outcome::<Tally>(id).await.expect("outcome"),
            JobOutcome::Done(n)
        );
    }
    let ledger = ledger();
    for n in 0..JOBS {
        let entry = ledger[&(test.clone(), n)];
        assert_eq!(entry.runs, 1, "job {n} ran {} times", entry.runs);
        assert!(!entry.overlapped, "job {n} ran in two workers at once");
    }
    let (first, second) = (first.stats(), second.stats());
    assert_eq!(first.succeeded + second.succeeded, u64::from(JOBS));
    assert_eq!(first.failed + second.failed, 0);
    assert!(
        first.succeeded > 0 && second.succeeded > 0,
        "both worker sets ran jobs: {} and {}",
        first.succeeded,
        second.succeeded
    );
}
