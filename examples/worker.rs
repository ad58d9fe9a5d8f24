//! A worker process: runs the durable jobs that the `distributed` example's
//! server enqueues (`add`, `power`, `join`, `fibonacci`), as many of these
//! processes as you like, on this machine (SQLite) or on others
//! (PostgreSQL).
//!
//! It takes jobs from the queue until `SIGINT` (Ctrl-C) or `SIGTERM`, then
//! takes no new one, lets the running ones finish within the grace period,
//! returns to the queue those still running when its cleanup period
//! begins (and those it had fetched and not started), and exits with 0. If
//! it is killed instead, the other workers take its jobs back once its
//! heartbeat has expired (see `HEARTBEAT_SECS`).
//!
//! # Running it
//!
//! ```text
//! cargo run --all-features --example worker
//! ```
//!
//! Settings, from the environment:
//!
//! - `DATABASE_URL`: `postgres://user:password@host:port/db` for PostgreSQL;
//!   unset, the SQLite file `jobs.db` in the working directory (the
//!   server's default too, so run both from the same directory).
//! - `CONCURRENCY` (default 4): jobs of each kind this process runs at once.
//! - `HEARTBEAT_SECS` (default 2): how often it tells the database it is
//!   alive (new jobs are looked for every 100 ms, `Workers::poll_interval`,
//!   and on PostgreSQL at once through `LISTEN`). A worker takes for dead,
//!   and runs the jobs of, any worker that has missed two of *its own*
//!   heartbeats, so give every process sharing the queue, the server
//!   included, the same value.
//! - `GRACE_SECS` (default 15, the crate's default): how long shutdown waits
//!   for running jobs.
//! - `RUST_LOG` (default `info`): the log filter.
//!
//! It exits with 2 on a bad setting and 1 when the database cannot be
//! opened.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use tower_background::durable::{JobQueue, Workers, DEFAULT_CONCURRENCY};

mod jobs;
mod support;

use support::shutdown_signal;

/// The SQLite file used when `DATABASE_URL` is not set.
const DEFAULT_DATABASE: &str = "jobs.db";

#[tokio::main]
async fn main() -> ExitCode {
    support::main(run).await
}

// A worker serves no HTTP: `PORT` is not used.
async fn run(_port: u16, grace_period: Duration) -> Result<(), Box<dyn Error>> {
    let concurrency = support::setting("CONCURRENCY", DEFAULT_CONCURRENCY, "a number of jobs")?;
    if concurrency == 0 {
        return Err(support::bad_setting(
            "CONCURRENCY=0: a worker runs at least one job at a time",
        ));
    }
    let heartbeat = support::heartbeat()?;
    // Installed before the first job is taken: a signal that comes while
    // starting up still shuts the worker down cleanly.
    let signal =
        shutdown_signal().map_err(|error| format!("cannot listen for signals: {error}"))?;

    let database = support::database_location(DEFAULT_DATABASE);
    tracing::info!(%database, "opening the job queue");
    let queue = JobQueue::from_env(DEFAULT_DATABASE).await?;
    let workers = jobs::register(Workers::new(&queue))
        .concurrency(concurrency)
        .heartbeat(heartbeat);
    // The worker names in the database are this name, the job and a counter.
    tracing::info!(engine = queue.engine(), %database, ?workers, "worker started");

    workers.run_until(signal, grace_period).await;

    let stats = queue.stats();
    println!(
        "worker stopped: {} jobs succeeded, {} attempts failed, {} returned to the queue",
        stats.succeeded, stats.failed, stats.released,
    );
    Ok(())
}
