//! A worker process killed mid-job (SIGKILL: no shutdown, no clean-up):
//! another worker finishes the job once the dead worker's heartbeat has
//! expired (2 × heartbeat). The job **runs twice** — delivery is at least
//! once, which is why job handlers must be idempotent — and this test is
//! where that duplicate delivery is shown.
//!
//! The worker process is this test binary run again with
//! `--exact crash::worker_process` and [`WORKER_DATABASE`] set: that test
//! then runs the workers with `Workers::run_until`, as a real worker binary
//! does (without the variable it is an ordinary test of `run_until`).
//!
//! Killed mid-batch (a worker process running several jobs at once, more
//! queued behind them), the same holds job by job: every job it had
//! started and not finished runs again elsewhere, and only those — the
//! duplicates are exactly the jobs it had begun; a job it had claimed
//! without starting it runs once, after its heartbeat expires.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::process::{Child, Command};
use tower_background::durable::{JobOutcome, Workers};
use tower_background::Supervisor;

use crate::support::{bounded, on_each_engine, runs, wait_until, Db, Slow, HEARTBEAT, POLL};

on_each_engine!(
    killed_worker_job_is_run_again_by_another,
    killed_worker_batch_is_run_again_by_another,
);

/// Set (to the database's URL) only in the worker process.
const WORKER_DATABASE: &str = "TOWER_BACKGROUND_TEST_WORKER_DATABASE";

/// Set in the worker process to run that many jobs at once (the workers'
/// default when unset).
const WORKER_CONCURRENCY: &str = "TOWER_BACKGROUND_TEST_WORKER_CONCURRENCY";

/// The jobs the killed process runs at once in the mid-batch scenario: a
/// whole batch, claimed by one fetch and started together.
const BATCH: usize = 8;

/// Jobs queued behind the batch in the mid-batch scenario.
const QUEUED: usize = 8;

/// Two roles. Run again by the scenarios above with [`WORKER_DATABASE`]
/// set, this test *is* the worker process: it runs
/// `Slow` jobs until it is killed. Run as a test (no variable), it checks
/// the same entry point, `Workers::run_until`, the other way out: the signal
/// comes while a job runs, and the process returns within its grace period
/// after handing the job back to the queue.
#[test]
fn worker_process() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let Ok(url) = std::env::var(WORKER_DATABASE) else {
        runtime.block_on(worker_process_stops_on_its_signal());
        return;
    };
    runtime.block_on(async {
        let queue = tower_background::durable::JobQueue::connect(&url)
            .await
            .expect("the worker opens the queue");
        let mut workers = Workers::new(&queue);
        if let Ok(concurrency) = std::env::var(WORKER_CONCURRENCY) {
            workers = workers.concurrency(concurrency.parse().expect("a number of jobs"));
        }
        workers
            .register::<Slow>()
            .heartbeat(HEARTBEAT)
            .name("doomed")
            .run_until(std::future::pending::<()>(), Duration::from_secs(1))
            .await;
    });
}

/// `run_until` as a worker binary uses it, stopped by its signal mid-job.
async fn worker_process_stops_on_its_signal() {
    let db = Db::sqlite().await;
    let queue = db.queue().await;
    let log = db.path("slow.log");
    let id = queue.push(&Slow::stuck(log.clone())).await.expect("push");
    let job_started = {
        let log = log.clone();
        async move { wait_until("the job starts", || !runs(&log).is_empty()).await }
    };
    // `bounded`: a `run_until` that did not return would hang the test.
    bounded(
        Workers::new(&queue)
            .register::<Slow>()
            .heartbeat(HEARTBEAT)
            .run_until(job_started, Duration::from_secs(1)),
    )
    .await;
    assert_eq!(runs(&log), vec![std::process::id()], "the job ran once");
    assert_eq!(queue.stats().released, 1, "the job was handed back");
    assert_eq!(
        queue.outcome::<Slow>(id).await.expect("outcome"),
        JobOutcome::Unfinished
    );
}

/// Duplicate delivery, shown: the job runs once in the killed process and
/// once more in the worker that takes it back.
async fn killed_worker_job_is_run_again_by_another(db: Db) {
    let queue = db.queue().await;
    let log = db.path("slow.log");
    let id = queue.push(&Slow::stuck(log.clone())).await.expect("push");

    let mut child = start_worker_process(&db, None);
    let child_pid = child.id().expect("the worker process's id");

    // The job has started in the worker process: kill it mid-job.
    wait_until("the worker process starts the job", || {
        !runs(&log).is_empty()
    })
    .await;
    child.kill().await.expect("SIGKILL the worker process");
    assert_eq!(runs(&log), vec![child_pid]);
    assert_eq!(
        queue.outcome::<Slow>(id).await.expect("outcome"),
        JobOutcome::Unfinished
    );

    // Another worker (here, in this process) takes the job back once the
    // dead worker has missed two heartbeats, and runs it again.
    let supervisor = Supervisor::new();
    Workers::new(&queue)
        .register::<Slow>()
        .heartbeat(HEARTBEAT)
        .name("rescuer")
        .spawn(&supervisor);
    let run = queue
        .wait_for::<Slow>(id, POLL)
        .await
        .expect("the job ends");
    assert_eq!(run, 2, "finished on its second run");
    assert_eq!(
        runs(&log),
        vec![child_pid, std::process::id()],
        "run twice: in the killed worker, then in the rescuer (at-least-once delivery)"
    );
    assert_eq!(queue.stats().succeeded, 1);
    supervisor.shutdown().await;
}

/// Starts the worker process on `db`'s queue, running `concurrency` jobs at
/// once (the default if `None`). Killed if the test ends first.
fn start_worker_process(db: &Db, concurrency: Option<usize>) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args(["crash::worker_process", "--exact", "--nocapture"])
        .env(WORKER_DATABASE, db.url())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if let Some(concurrency) = concurrency {
        command.env(WORKER_CONCURRENCY, concurrency.to_string());
    }
    command.spawn().expect("start the worker process")
}

/// Duplicate delivery, counted: a worker process running a whole batch at
/// once is killed, with more jobs queued behind the batch; another worker
/// runs every job to the end. The jobs run twice are exactly those the
/// killed process had started and not finished; the queued ones (claimed
/// by it or not) run once.
async fn killed_worker_batch_is_run_again_by_another(db: Db) {
    let queue = db.queue().await;
    let log = |kind: &str, i: usize| db.path(&format!("{kind}-{i}.log"));
    // The batch first in line (workers take the oldest `run_at` first), so
    // that the killed process starts all of it; the queued jobs end at once.
    let first_in_line = SystemTime::now() - Duration::from_secs(60);
    let mut jobs = Vec::new();
    for i in 0..BATCH {
        let job = Slow::stuck(log("batch", i));
        let id = queue.push_at(&job, first_in_line).await.expect("push");
        jobs.push((id, job.log));
    }
    let queued: Vec<Slow> = (0..QUEUED)
        .map(|i| Slow {
            log: log("queued", i),
            first_run_ms: 0,
        })
        .collect();
    let queued_ids = queue.push_all(&queued).await.expect("push the queued");
    jobs.extend(
        queued_ids
            .into_iter()
            .zip(queued.into_iter().map(|job| job.log)),
    );

    let mut child = start_worker_process(&db, Some(BATCH));
    let child_pid = child.id().expect("the worker process's id");
    wait_until("the worker process runs the whole batch at once", || {
        jobs[..BATCH].iter().all(|(_, log)| !runs(log).is_empty())
    })
    .await;
    child.kill().await.expect("SIGKILL the worker process");

    // What the killed process left: jobs it had started and not finished
    // (the batch, and any queued job caught between its start and its
    // acknowledgement), and jobs it had claimed without starting them.
    let mut started_unfinished = 0;
    let mut claimed_unstarted = 0;
    for (id, log) in &jobs {
        let started_here = runs(log).contains(&child_pid);
        let status = db.status(*id).await;
        match (started_here, status.as_str()) {
            (_, "Done") => {}
            (true, _) => started_unfinished += 1,
            (false, "Pending") => {}
            (false, _) => claimed_unstarted += 1,
        }
    }
    assert!(started_unfinished >= BATCH, "{started_unfinished}");

    let supervisor = Supervisor::new();
    Workers::new(&queue)
        .register::<Slow>()
        .concurrency(BATCH)
        .heartbeat(HEARTBEAT)
        .name("rescuer")
        .spawn(&supervisor);
    for (id, _) in &jobs {
        queue
            .wait_for::<Slow>(*id, POLL)
            .await
            .expect("every job ends");
    }
    let all_runs: Vec<Vec<u32>> = jobs.iter().map(|(_, log)| runs(log)).collect();
    let duplicates = all_runs.iter().filter(|runs| runs.len() > 1).count();
    println!(
        "{} jobs: {started_unfinished} started and unfinished in the killed process, \
         {claimed_unstarted} claimed by it and not started; {duplicates} run twice \
         (at-least-once delivery)",
        jobs.len()
    );
    for runs in &all_runs[..BATCH] {
        assert_eq!(
            runs,
            &vec![child_pid, std::process::id()],
            "a job of the batch: run in the killed worker, then once in the rescuer"
        );
    }
    assert!(all_runs.iter().all(|runs| matches!(runs.len(), 1 | 2)));
    assert_eq!(duplicates, started_unfinished);
    supervisor.shutdown().await;
}
