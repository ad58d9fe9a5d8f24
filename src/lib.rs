//! Background tasks for Tower HTTP servers (axum, hyper, tonic), done right:
//! queued by the handler, started only after the response body has ended
//! (its last frame produced), run in a task set that lives as long as the
//! application, and drained within a grace period at shutdown, with every
//! task counted.
//!
//! # How it fits together
//!
//! - A [`Supervisor`] owns the task set. Build one at start-up and
//!   [`shutdown`](Supervisor::shutdown) it after the server has stopped.
//! - Its [`BackgroundTaskLayer`] puts a [`BackgroundTasks`] handle into every
//!   request's extensions (with the `axum` feature, the handle is an
//!   extractor).
//! - Handlers call [`add`](BackgroundTasks::add) (async work) or
//!   [`add_blocking`](BackgroundTasks::add_blocking) (blocking or CPU-heavy
//!   work). Nothing starts until the response body has ended; then the work is
//!   spawned into the supervisor's task set, detached from the connection, so
//!   neither the response nor the next request on a keep-alive connection
//!   waits for it.
//! - Work no request started goes through the same task set:
//!   [`Supervisor::tasks`] is a handle whose tasks start at once, and
//!   [`Supervisor::spawn_resident`] runs a loop for the application's life,
//!   both drained by the same shutdown.
//!
//! # Example
//!
//! A plain `tower` service, driven in-process the way a test would:
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_background::{BackgroundTasks, Supervisor};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let background = Supervisor::new();
//! let emails_sent = Arc::new(AtomicUsize::new(0));
//!
//! let sent = emails_sent.clone();
//! let app = background.layer().layer(service_fn(move |request: Request<()>| {
//!     let sent = sent.clone();
//!     async move {
//!         let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
//!         tasks.add(async move {
//!             sent.fetch_add(1, Ordering::SeqCst); // "send the e-mail"
//!         });
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("welcome"))))
//!     }
//! }));
//!
//! let response = app.oneshot(Request::new(())).await.unwrap();
//! // The response is here; the task has not started.
//! assert_eq!(emails_sent.load(Ordering::SeqCst), 0);
//!
//! // Reading the body to its end hands the task off.
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "welcome");
//! background.wait_idle().await;
//! assert_eq!(emails_sent.load(Ordering::SeqCst), 1);
//!
//! let report = background.shutdown().await;
//! assert_eq!(report.stats.completed, 1);
//! # }
//! ```
//!
//! With axum (feature `axum`, on by default), the handle is an extractor:
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # mod example {
//! use axum::{extract::Query, http::StatusCode, routing::post, Router};
//! use tower_background::{BackgroundTasks, Supervisor};
//!
//! #[derive(serde::Deserialize)]
//! struct Signup {
//!     email: String,
//! }
//!
//! async fn signup(tasks: BackgroundTasks, Query(q): Query<Signup>) -> StatusCode {
//!     tasks.add(async move { send_welcome_email(&q.email).await });
//!     tasks.add_blocking(render_pdf_report);
//!     StatusCode::CREATED
//! }
//! # async fn send_welcome_email(_: &str) -> Result<(), std::io::Error> { Ok(()) }
//! # fn render_pdf_report() {}
//!
//! fn app(background: &Supervisor) -> Router {
//!     Router::new()
//!         .route("/signup", post(signup))
//!         .layer(background.layer())
//! }
//! # }
//! ```
//!
//! # Guarantees
//!
//! | | |
//! |---|---|
//! | **after the response** | a task starts only after its response body has ended (last frame produced, or the body dropped) |
//! | **detached** | tasks run in the supervisor's task set, never in the connection's future |
//! | **client gone** | tasks still run by default; [`OnDisconnect::Skip`] discards them |
//! | **no response** | an error from the inner service or a dropped response future discards the tasks |
//! | **failures contained** | an `Err` or a panic is caught, logged at `ERROR` with the request's method and path, counted, and passed to an optional hook |
//! | **bounded shutdown** | [`Supervisor::shutdown`] waits at most the grace period, then cancels and aborts what is left |
//! | **nothing dropped quietly** | async tasks run without a concurrency limit by default, like `tokio::spawn`; every limit is in the [table below](#limits-lanes-and-groups), and a task refused at one is counted, logged, and its request answered `503` |
//! | **counted** | every task ends in exactly one [`Stats`] counter |
//!
//! # Limits, lanes and groups
//!
//! Every task runs in one lane, each with its own limit on how many run at
//! once; tasks beyond it wait in the lane's queue, in order, and start as
//! slots free up. How many tasks may wait at all, for their response or for
//! a slot, is bounded too:
//!
//! | limit | default | what it bounds | past it |
//! |---|---|---|---|
//! | [`max_running`](SupervisorBuilder::max_running): the default lane, for [`add`](BackgroundTasks::add) | none | tasks running at once | tasks wait in the lane's queue |
//! | [`blocking_limit`](SupervisorBuilder::blocking_limit): the blocking lane, for [`add_blocking`](BackgroundTasks::add_blocking) | 16 | threads of tokio's blocking pool (512) taken at once, so CPU-heavy work cannot starve file I/O | closures wait in the lane's queue |
//! | [`lane`](SupervisorBuilder::lane): a named lane, with [`Task::lane`] | set per lane | calls to a rate-limited service | tasks wait in the lane's queue |
//! | [`max_queued`](SupervisorBuilder::max_queued) | 65 536 tasks | memory: tasks waiting for their response or for a slot (each is its boxed future and at most 64 bytes) | [`add`](BackgroundTasks::add) rejects the task: counted in [`Stats::rejected`], logged at `WARN`, and the request answered `503` with `Retry-After` ([`try_add`](BackgroundTasks::try_add) returns [`AddError::QueueFull`] instead) |
//! | shutdown | [`grace_period`](SupervisorBuilder::grace_period) 15 s | how long [`Supervisor::shutdown`] waits | tasks are cancelled, then aborted, counted in [`Stats::cancelled`]; [`add`](BackgroundTasks::add) after shutdown began is refused ([`Stats::refused`], `503`) |
//!
//! Running async tasks are not limited by default: a task waiting on I/O
//! costs tokio little, and a limit would turn a burst the server can absorb
//! into refused work. Set one to protect a downstream service, preferably on
//! a named lane. A [`Task`] also gives its work a timeout or a [`Retry`]
//! policy; a [`Group`] runs steps one after another or together as
//! one task; [`LoadShedLayer`] answers `503` before the handler runs while
//! the backlog is too deep.
//!
//! ```
//! use std::time::Duration;
//! use tower_background::{AddError, BackgroundTasks, Group, Retry, Supervisor, Task};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let background = Supervisor::builder()
//!     .max_running(256)
//!     .blocking_limit(4)
//!     .lane("email", 4)
//!     .max_queued(10_000)
//!     .build();
//! # drop(background);
//! # }
//!
//! fn handler(tasks: &BackgroundTasks) -> Result<(), AddError> {
//!     // Fails with `AddError::QueueFull` rather than queue without bound.
//!     tasks.try_add(async { /* ... */ })?;
//!     tasks.try_add(
//!         Task::retrying(Retry::exponential(3), || async { Ok::<_, std::io::Error>(()) /* send it */ })
//!             .lane("email")
//!             .timeout(Duration::from_secs(10)),
//!     )?;
//!     tasks.try_add(
//!         Group::sequential()
//!             .step(async { /* notify */ })
//!             .blocking_step(|| { /* write the audit file */ }),
//!     )
//! }
//! ```
//!
//! Background tasks are not persisted: whatever is queued or running is lost
//! if the process crashes. Work that must survive a crash, or be shared by
//! several machines, is a durable job instead ([`durable`], features
//! `sqlite` and `postgres`): stored in a database, run by workers, at least
//! once.
//!
//! # Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `axum` | yes | [`BackgroundTasks`] as an axum 0.8 extractor (depends on `axum-core` only) |
//! | `serde` | yes | `Serialize` for [`Stats`] and [`ShutdownReport`] |
//! | `tracking` | no | [`tracking`]: tasks with ids, status, results and locks over HTTP, and an axum route that starts and reports them (full axum, serde_json, uuid, time, sha2) |
//! | `sqlite` | no | [`durable`]: jobs stored in a SQLite file before they run, run by [apalis](https://docs.rs/apalis) workers in this process or others on the machine (apalis, sqlx; Rust 1.94) |
//! | `postgres` | no | [`durable`] on PostgreSQL: jobs shared by servers and workers on many machines (apalis, sqlx; Rust 1.94) |
//! | `metrics` | no | counters, lane gauges and wait and run histograms on the [`metrics`](https://docs.rs/metrics) facade, for any exporter ([below](#metrics)) |
//!
//! With `default-features = false` the crate works with any `tower` HTTP
//! service: hyper 1, tonic, or your own.
//!
//! # Metrics
//!
//! With the `metrics` feature the supervisor records, through whichever
//! recorder the application installs (`metrics-exporter-prometheus`, a
//! StatsD or OpenTelemetry bridge), the series below; the `metrics` example
//! serves them at `GET /metrics`. Install the recorder **before**
//! [`SupervisorBuilder::build`]: the lane gauges and unnamed tasks' series
//! are registered then, and handles registered with no recorder stay
//! no-ops. Without the feature none of this is compiled in.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `background_tasks_total` | counter | `lane`, `name`, `outcome` | tasks by how they ended: `completed`, `failed`, `panicked`, `timed_out`, `cancelled` (the [`Stats`] counters of handed-off tasks), `discarded`, `refused`, `rejected` (tasks that never ran) |
//! | `background_tasks_running` | gauge | `lane` | slots taken now ([`LaneStats::running`]) |
//! | `background_tasks_queued` | gauge | `lane` | tasks and group steps waiting for a slot ([`LaneStats::queued`]) |
//! | `background_tasks_limit` | gauge | `lane` | the lane's limit; absent for a lane without one |
//! | `background_task_wait_seconds` | histogram | `lane`, `name` | from the hand-off (the response's end) to the task's first poll: its lane's queue and the runtime's own delay |
//! | `background_task_run_seconds` | histogram | `lane`, `name` | from the first poll to the end, whatever the outcome (a task cancelled before it started has none) |
//! | `background_task_retries_total` | counter | | [`Stats::retried`] |
//! | `background_task_steps_skipped_total` | counter | | [`Stats::skipped`] |
//! | `background_requests_shed_total` | counter | | [`Stats::shed`] |
//!
//! Label values are bounded: `lane` is a configured lane (empty for a task
//! rejected for naming a lane that does not exist), `name` a
//! [`Task::name`], which is a `&'static str`, or empty for an unnamed task,
//! and nothing from a request ever becomes a label. A name's series appear,
//! at zero for every outcome, with its first task. Gauges move by increments,
//! so two supervisors in one process add up in the same series.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod abort;
mod attempt;
mod builder;
#[cfg(feature = "durable")]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub mod durable;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod failure;
mod group;
mod handle;
mod keyed;
mod lane;
pub mod layer;
pub mod load_shed;
mod metrics;
mod monitor;
mod origin;
mod output;
mod policy;
mod report;
mod request_queue;
mod resident;
mod retry;
mod running;
mod slot;
mod started;
mod stats;
mod supervisor;
mod task;
mod task_set;
#[cfg(feature = "tracking")]
pub mod tracking;
mod work;

pub use builder::{
    SupervisorBuilder, DEFAULT_BLOCKING_LIMIT, DEFAULT_CLEANUP_PERIOD, DEFAULT_GRACE_PERIOD,
    DEFAULT_MAX_QUEUED, DEFAULT_MAX_RUNNING,
};
pub use error::AddError;
#[cfg(feature = "axum")]
pub use extract::MissingBackgroundTaskLayer;
pub use failure::{FailureKind, TaskFailure};
pub use group::Group;
pub use handle::{BackgroundTasks, IntoTask};
pub use layer::BackgroundTaskLayer;
pub use load_shed::LoadShedLayer;
pub use monitor::Monitor;
pub use output::TaskOutput;
pub use policy::{OnDisconnect, OnServerError};
pub use report::ShutdownReport;
pub use resident::Shutdown;
pub use retry::Retry;
pub use started::UnfinishedTask;
pub use stats::{DiscardReasons, LaneStats, Stats};
pub use supervisor::Supervisor;
pub use task::Task;
