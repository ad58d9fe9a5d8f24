//! A push through a queue wakes that queue's idle workers in this process
//! at once: with a poll interval and a heartbeat of an hour, the job still
//! runs.

use std::time::Duration;

use tower_background::durable::Workers;
use tower_background::Supervisor;

use crate::jobs::{self, Add};
use crate::support::{on_each_engine, Db, POLL};

on_each_engine!(a_push_wakes_this_process_idle_workers);

async fn a_push_wakes_this_process_idle_workers(db: Db) {
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    // apalis also looks at each heartbeat: make both an hour.
    jobs::register(Workers::new(&queue))
        .heartbeat(Duration::from_secs(3600))
        .poll_interval(Duration::from_secs(3600))
        .spawn(&supervisor);
    // Past the workers' first look at the queue: from here only a wake-up
    // (or the hour) makes them look again.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for x in 0..3 {
        let id = queue.push(&Add { x, y: 1 }).await.unwrap();
        assert_eq!(queue.wait_for::<Add>(id, POLL).await.unwrap(), x + 1);
    }
    supervisor.shutdown().await;
}
