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

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tower_background::durable::{JobOutcome, Workers};
use tower_background::Supervisor;

use crate::support::{bounded, on_each_engine, runs, wait_until, Db, Slow, HEARTBEAT, POLL};

on_each_engine!(killed_worker_job_is_run_again_by_another);

/// Set (to the database's URL) only in the worker process.
const WORKER_DATABASE: &str = "TOWER_BACKGROUND_TEST_WORKER_DATABASE";

/// Two roles. Run again by `killed_worker_job_is_run_again_by_another`
/// with [`WORKER_DATABASE`] set, this test *is* the worker process: it runs
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
        Workers::new(&queue)
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

    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["crash::worker_process", "--exact", "--nocapture"])
        .env(WORKER_DATABASE, db.url())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker process");
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
