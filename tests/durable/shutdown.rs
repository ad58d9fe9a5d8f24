//! A shutdown whose grace period ends while a worker in the server process
//! runs a job that ignores cancellation: `shutdown()` still returns within
//! the grace period, the job goes back to the queue (`released`), unfinished,
//! and the next worker runs it to the end (a second run: at least once).

use std::time::Duration;

use tower_background::durable::{JobOutcome, Workers};
use tower_background::Supervisor;

use crate::support::{on_each_engine, runs, wait_until, Db, Slow, HEARTBEAT, POLL};

on_each_engine!(job_past_grace_returns_to_queue);

const GRACE: Duration = Duration::from_secs(1);

async fn job_past_grace_returns_to_queue(db: Db) {
    let queue = db.queue().await;
    let log = db.path("slow.log");
    let supervisor = Supervisor::builder().grace_period(GRACE).build();
    Workers::new(&queue)
        .register::<Slow>()
        .heartbeat(HEARTBEAT)
        .spawn(&supervisor);
    let id = queue.push(&Slow::stuck(log.clone())).await.expect("push");
    wait_until("the worker starts the job", || !runs(&log).is_empty()).await;

    let report = supervisor.shutdown().await;
    // A bound on a hang, not a speed check: shutdown keeps to its grace
    // period (the job's release is a single query).
    assert!(report.elapsed < GRACE + Duration::from_secs(5), "{report}");
    assert_eq!(queue.stats().released, 1, "{:?}", queue.stats());
    assert_eq!(
        queue.outcome::<Slow>(id).await.expect("outcome"),
        JobOutcome::Unfinished
    );
    assert_eq!(db.status(id).await, "Pending", "back in the queue");
    assert_eq!(runs(&log).len(), 1);

    // A worker started afterwards runs it to the end.
    let supervisor = Supervisor::new();
    Workers::new(&queue)
        .register::<Slow>()
        .heartbeat(HEARTBEAT)
        .spawn(&supervisor);
    assert_eq!(
        queue
            .wait_for::<Slow>(id, POLL)
            .await
            .expect("the job ends"),
        2
    );
    assert_eq!(runs(&log).len(), 2);
    supervisor.shutdown().await;
}
