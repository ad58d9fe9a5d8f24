//! A worker process killed mid-job (SIGKILL: no shutdown, no clean-up):
//! another worker finishes the job once the dead worker's heartbeat has
//! expired (2 × heartbeat). The job **runs twice** — delivery is at least
//! once, which is why job handlers must be idempotent — and this test is
//! where that duplicate delivery is shown.
//!
//! The worker process is this test binary run again with
//! `--exact crash::worker_process --ignored`: that test is a no-op unless
//! [`WORKER_DATABASE`] is set, and then runs the workers with
//! `Workers::run_until`, as a real worker binary does.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tower_background::durable::{JobOutcome, Workers};
use tower_background::Supervisor;

use crate::support::{on_each_engine, runs, wait_until, Db, Slow, HEARTBEAT, POLL};

on_each_engine!(killed_worker_job_is_run_again_by_another);

/// Set (to the database's URL) only in the worker process.
const WORKER_DATABASE: &str = "TOWER_BACKGROUND_TEST_WORKER_DATABASE";

/// The worker process: runs `Slow` jobs until it is killed.
#[test]
#[ignore = "a worker process for `killed_worker_job_is_run_again_by_another`, which starts it"]
fn worker_process() {
    let Ok(url) = std::env::var(WORKER_DATABASE) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
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

/// Duplicate delivery, shown: the job runs once in the killed process and
/// once more in the worker that takes it back.
async fn killed_worker_job_is_run_again_by_another(db: Db) {
    let queue = db.queue().await;
    let log = db.path("slow.log");
    let id = queue.push(&Slow::stuck(log.clone())).await.expect("push");

    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "crash::worker_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
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
    let supervisor = Supervisor::builder().jobs(queue.clone()).build();
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
