//! Durable jobs: work that survives a crash or a restart of the server,
//! shared by any number of worker processes (features `sqlite`,
//! `postgres`).
//!
//! Background tasks live in the server's memory: if the process dies, what
//! was queued is gone. A durable [`Job`] is stored in a database first and
//! run by a worker later — in the server process, or in worker processes on
//! this machine or others. The queue engine is [apalis] 1.0 (its job table,
//! locking, heartbeats and orphan recovery); this module adds what the rest
//! of the crate promises:
//!
//! - **From a handler**, [`JobQueue::enqueue`] pushes the job after the
//!   response has been sent, as one of the request's background tasks
//!   (retrying, counted, never dropped silently), and [`JobQueue::push`]
//!   pushes it before, for work that must survive a crash right after the
//!   `2xx`. Handlers reach the queue as they reach any shared value: axum's
//!   `State`, an `Extension`, a field of their service.
//! - **Workers** ([`Workers`]) run in the server as
//!   [residents](crate::Supervisor::spawn_resident) of the supervisor, shut
//!   down with the same grace period as the tasks, or in processes of their
//!   own with [`Workers::run_until`]. A job still running when the
//!   shutdown's cleanup period begins goes back to the queue.
//!
//! The module is built on the crate's public API only: a deferred push is a
//! task added with [`BackgroundTasks::try_add`](crate::BackgroundTasks::try_add),
//! a worker a resident.
//!
//! | engine | feature | constructor | for |
//! |---|---|---|---|
//! | SQLite | `sqlite` | [`JobQueue::sqlite`] | one machine: a file, no server |
//! | PostgreSQL | `postgres` | [`JobQueue::postgres`] | many machines |
//!
//! [`JobQueue::from_env`] picks one from `DATABASE_URL`.
//!
//! # Delivery is at least once
//!
//! A job is run again if its worker dies mid-job (after the worker's
//! heartbeat expires, 2 × [`Workers::heartbeat`]), if a shutdown's cleanup
//! period begins while it runs, or if it fails (up to [`Job::MAX_ATTEMPTS`]
//! tries). Two workers never run the same job at the same time (apalis
//! locks a job to one worker when it fetches it) as long as every process
//! sharing the queue uses the same heartbeat (see [`Workers::heartbeat`]),
//! but a job can run twice in sequence: **handlers must be idempotent**.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(all(feature = "sqlite", feature = "axum"))]
//! # mod example {
//! use axum::extract::State;
//! use axum::{routing::post, Router};
//! use serde::{Deserialize, Serialize};
//! use tower_background::durable::{Job, JobError, JobFailure, JobId, JobQueue, Workers};
//! use tower_background::{BackgroundTasks, Supervisor};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Fibonacci {
//!     n: u32,
//! }
//!
//! impl Job for Fibonacci {
//!     const NAME: &'static str = "fibonacci";
//!     type Output = u64;
//!     async fn run(self) -> Result<u64, JobFailure> {
//!         let (mut a, mut b) = (0u64, 1u64);
//!         for _ in 0..self.n {
//!             (a, b) = (b, a.checked_add(b).ok_or("overflow")?);
//!         }
//!         Ok(a)
//!     }
//! }
//!
//! async fn start(
//!     State(queue): State<JobQueue>,
//!     tasks: BackgroundTasks,
//! ) -> Result<String, JobError> {
//!     let id: JobId = queue.enqueue(&tasks, Fibonacci { n: 50 })?;
//!     Ok(id.to_string())
//! }
//!
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let queue = JobQueue::from_env("jobs.db").await?;
//!     let supervisor = Supervisor::new();
//!     Workers::new(&queue).register::<Fibonacci>().spawn(&supervisor);
//!     let app: Router = Router::new()
//!         .route("/fibonacci", post(start))
//!         .with_state(queue)
//!         .layer(supervisor.layer());
//!     // serve `app` ... then:
//!     supervisor.shutdown().await;
//!     Ok(())
//! }
//! # }
//! ```
//!
//! # Rust version
//!
//! apalis 1.0 uses sqlx 0.9, which needs Rust 1.94; the rest of the crate
//! builds with 1.75.
//!
//! [apalis]: https://docs.rs/apalis

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("feature `durable` needs an engine: enable `sqlite` or `postgres`");

mod announce;
mod batch;
mod encoded;
mod engine;
mod enqueue;
mod error;
mod in_flight;
mod insert;
mod job;
mod job_events;
mod periodic;
mod pipeline;
mod planner_hints;
#[cfg(feature = "postgres")]
mod postgres_backend;
mod queue;
#[cfg(all(test, feature = "postgres"))]
mod scratch_postgres;
#[cfg(feature = "sqlite")]
mod sqlite_backend;
mod stats;
mod transaction;
mod wake_up;
mod worker_backend;
mod workers;

pub use encoded::{DEFAULT_MAX_JOB_BYTES, MAX_JOB_BYTES_LIMIT, MAX_UNIQUE_KEY_LEN};
pub use error::JobError;
pub use insert::JobDatabase;
pub use job::{Job, JobFailure, JobId};
pub use periodic::Periodic;
pub use queue::{
    JobOutcome, JobQueue, ACQUIRE_TIMEOUT, DATABASE_URL, DEFAULT_MAX_PENDING, LOCK_TIMEOUT,
};
pub use stats::JobStats;
pub use workers::{
    Workers, DEFAULT_CONCURRENCY, DEFAULT_HEARTBEAT, DEFAULT_POLL_INTERVAL,
    DEFAULT_PREFETCH_MULTIPLIER,
};

// For `tracking::SqlStore`, which keeps its tables in the queue's database.
#[cfg(feature = "tracking")]
pub(crate) use engine::Engine;
