//! Durable jobs over HTTP: aiotaskq's Starlette "simple app" in Rust. The
//! server stores jobs in a database; workers (in this process and in any
//! number of `worker` processes) run them. Once a job is in the database,
//! no crash of a server or a worker loses it.
//!
//! - `POST /add` `{"x": 41, "y": 1}`, `POST /power` `{"a": 2, "b": 10}`,
//!   `POST /join` `{"ls": [2021, 2, 20], "delimiter": "-"}` and
//!   `POST /fibonacci` `{"n": 21}` check the job and answer
//!   `202 Accepted` with `{"id", "job", "status"}` and a
//!   `Location: /jobs/{job}/{id}`; the job is pushed to the queue once the
//!   response has been sent (`JobQueue::enqueue`). A body that is
//!   not the job's JSON, or a job that would fail (a result that does not
//!   fit in an `i64`, `n` above 35), is a `400` with a JSON error instead.
//! - `?wait=true` on those `POST`s pushes the job before answering
//!   (`JobQueue::push`) and waits for its result, as the reference does:
//!   `201 Created` with the result as the body, or `504` after 10 s —
//!   unless the request says `Prefer: respond-async` (RFC 7240): then it
//!   gets the `202` form, with `Preference-Applied: respond-async`.
//! - `GET /jobs/{job}/{id}`: `pending` (waiting, running or to be retried;
//!   an id the queue has never seen is `pending` too), then `done` with its
//!   `result`, or `failed` with its `error`.
//! - `GET /healthcheck`: `200 {}`. `GET /stats`: the supervisor's task
//!   counts and this process's job counts.
//!
//! Ctrl-C (`SIGINT`) or `SIGTERM` stops the HTTP server first (open
//! connections get at most 10 s), then the supervisor, within the grace
//! period: the deferred pushes finish, and the in-process workers take no
//! new job and let the running ones finish; any still running when the
//! cleanup period begins go back to the queue.
//!
//! # Running it
//!
//! One server and two workers, each in a terminal of its own, in the same
//! directory (they share the SQLite file `jobs.db` there):
//!
//! ```text
//! cargo run --all-features --example distributed
//! cargo run --all-features --example worker
//! cargo run --all-features --example worker
//! ```
//!
//! With `DATABASE_URL=postgres://user:password@host:port/db` set for all
//! three, the queue is in PostgreSQL, and the workers may be on other
//! machines.
//!
//! Settings: `PORT` (default 3000) sets the port on 127.0.0.1,
//! `GRACE_SECS` (default 15, the crate's default) the grace period,
//! `WORKERS` (default 4) how many jobs of each kind this process runs at
//! once (`0`: none, only worker processes run them), `HEARTBEAT_SECS`
//! (default 2; give every process the same value, see `worker.rs`), and
//! `RUST_LOG` (default `info`) the log filter.
//!
//! In another terminal:
//!
//! ```text
//! # 202 and a Location; a worker runs the job a moment later
//! curl -i -X POST http://127.0.0.1:3000/add -H 'content-type: application/json' -d '{"x": 41, "y": 1}'
//! # {"id":"…","job":"add","status":"done","result":42}
//! curl -s http://127.0.0.1:3000/jobs/add/<id>
//! # 201 with the result: 10946
//! curl -s -X POST 'http://127.0.0.1:3000/fibonacci?wait=true' -H 'content-type: application/json' -d '{"n": 21}'
//! # 202 and a Location, with preference-applied: respond-async
//! curl -i -X POST 'http://127.0.0.1:3000/fibonacci?wait=true' -H 'prefer: respond-async' -H 'content-type: application/json' -d '{"n": 21}'
//! # 400: {"error":"invalid-job","message":"2^64 does not fit in an i64"}
//! curl -s -X POST http://127.0.0.1:3000/power -H 'content-type: application/json' -d '{"a": 2, "b": 64}'
//! curl -s http://127.0.0.1:3000/stats
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_background::durable::{
    Job, JobError, JobId, JobOutcome, JobQueue, JobStats, Workers, DEFAULT_CONCURRENCY,
};
use tower_background::tracking::RespondAsync;
use tower_background::{BackgroundTasks, Monitor, Stats, Supervisor};

mod jobs;
mod support;

use jobs::{Add, Check, Fibonacci, Join, Power};
use support::serve_axum;

/// The SQLite file used when `DATABASE_URL` is not set.
const DEFAULT_DATABASE: &str = "jobs.db";
/// How long `?wait=true` waits for a job's result.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `?wait=true` asks the database whether the job has finished.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// The jobs this server knows, for `GET /jobs/{job}/{id}`'s `404`.
const JOBS: [&str; 4] = [Add::NAME, Power::NAME, Join::NAME, Fibonacci::NAME];

#[tokio::main]
async fn main() -> ExitCode {
    support::main(run).await
}

async fn run(port: u16, grace_period: Duration) -> Result<(), Box<dyn Error>> {
    let workers = support::setting(
        "WORKERS",
        DEFAULT_CONCURRENCY,
        "a number of jobs (0: no workers in this process)",
    )?;
    let heartbeat = support::heartbeat()?;

    let database = support::database_location(DEFAULT_DATABASE);
    tracing::info!(%database, "opening the job queue");
    let queue = JobQueue::from_env(DEFAULT_DATABASE).await?;
    tracing::info!(engine = queue.engine(), %database, "job queue open");

    let background = Supervisor::builder().grace_period(grace_period).build();
    if workers > 0 {
        let workers = jobs::register(Workers::new(&queue))
            .concurrency(workers)
            .heartbeat(heartbeat);
        tracing::info!(?workers, "running jobs in this process too");
        // Stopped by `background.shutdown()`, within the grace period.
        workers.spawn(&background);
    } else {
        tracing::info!("WORKERS=0: only worker processes run the jobs");
    }

    let app = Router::new()
        .route("/add", post(submit::<Add>))
        .route("/power", post(submit::<Power>))
        .route("/join", post(submit::<Join>))
        .route("/fibonacci", post(submit::<Fibonacci>))
        .route("/jobs/{job}/{id}", get(job_status))
        .route("/healthcheck", get(healthcheck))
        .route("/stats", get(stats))
        .with_state(AppState {
            queue: queue.clone(),
            monitor: background.monitor(),
        })
        .layer(background.layer());

    // Serves until SIGINT or SIGTERM, then drains HTTP (at most 10 s) before
    // shutting the supervisor down, which stops the workers: see
    // `serve_axum` for why in that order.
    serve_axum(port, app, background).await?;
    println!("durable jobs: {}", serde_json::to_string(&queue.stats())?);
    Ok(())
}

#[derive(Clone)]
struct AppState {
    queue: JobQueue,
    monitor: Monitor,
}

#[derive(Deserialize)]
struct Submit {
    /// Push the job before answering and wait for its result.
    #[serde(default)]
    wait: bool,
}

/// What `202`, `GET /jobs/…` and `504` say about a job.
#[derive(Serialize)]
struct JobReport<T> {
    id: JobId,
    job: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A job not finished, or not known to the queue.
fn pending<J: Job>(id: JobId) -> JobReport<J::Output> {
    JobReport {
        id,
        job: J::NAME,
        status: "pending",
        result: None,
        error: None,
    }
}

/// `POST /{job}`: checks the job, then enqueues it (`202`), or with
/// `?wait=true` pushes it and waits for its result (`201`) — unless the
/// client prefers `respond-async`.
async fn submit<J: Job + Check>(
    State(state): State<AppState>,
    tasks: BackgroundTasks,
    RespondAsync(respond_async): RespondAsync,
    // Taking the `Result`s lets us answer bad input with JSON rather than
    // axum's plain-text rejections.
    query: Result<Query<Submit>, QueryRejection>,
    body: Result<Json<J>, JsonRejection>,
) -> Result<Response, JobError> {
    let wait = match query {
        Ok(Query(Submit { wait })) => wait,
        Err(rejection) => {
            return Ok(error(
                rejection.status(),
                "invalid-query",
                rejection.body_text(),
            ))
        }
    };
    let job = match body {
        Ok(Json(job)) => job,
        // Bad JSON or a missing field: 400 (axum says 422 for the latter);
        // no `content-type: application/json`: 415.
        Err(JsonRejection::MissingJsonContentType(rejection)) => {
            return Ok(error(
                rejection.status(),
                "expected-json",
                rejection.body_text(),
            ))
        }
        Err(rejection) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid-json",
                rejection.body_text(),
            ))
        }
    };
    if let Err(message) = job.check() {
        return Ok(error(StatusCode::BAD_REQUEST, "invalid-job", message));
    }

    if !wait || respond_async {
        // Pushed to the queue after the 202 has been sent.
        let id = state.queue.enqueue(&tasks, job)?;
        let mut response = (
            StatusCode::ACCEPTED,
            [(header::LOCATION, location::<J>(id))],
            Json(pending::<J>(id)),
        )
            .into_response();
        if respond_async {
            // Said whether or not it changed the answer (it does with
            // `?wait=true`), as the tracked routes say it.
            let (name, value) = RespondAsync::applied();
            response.headers_mut().insert(name, value);
        }
        return Ok(response);
    }

    // In the database before we wait, and before any response.
    let id = state.queue.push(&job).await?;
    match tokio::time::timeout(WAIT_TIMEOUT, state.queue.wait_for::<J>(id, WAIT_POLL)).await {
        Ok(output) => Ok((StatusCode::CREATED, Json(output?)).into_response()),
        Err(_elapsed) => {
            let report = JobReport {
                error: Some(format!(
                    "not finished after {WAIT_TIMEOUT:?}; GET {} for its result",
                    location::<J>(id)
                )),
                ..pending::<J>(id)
            };
            Ok((
                StatusCode::GATEWAY_TIMEOUT,
                [(header::LOCATION, location::<J>(id))],
                Json(report),
            )
                .into_response())
        }
    }
}

fn location<J: Job>(id: JobId) -> String {
    format!("/jobs/{}/{id}", J::NAME)
}

/// `GET /jobs/{job}/{id}`: `404` for a job name this server does not
/// know, `400` for an id that is not one.
async fn job_status(
    State(state): State<AppState>,
    Path((job, id)): Path<(String, String)>,
) -> Result<Response, JobError> {
    match job.as_str() {
        Add::NAME => report::<Add>(&state.queue, &id).await,
        Power::NAME => report::<Power>(&state.queue, &id).await,
        Join::NAME => report::<Join>(&state.queue, &id).await,
        Fibonacci::NAME => report::<Fibonacci>(&state.queue, &id).await,
        _ => {
            let message = format!("no job is named {job:?}; the jobs are {}", JOBS.join(", "));
            Ok(error(StatusCode::NOT_FOUND, "unknown-job", message))
        }
    }
}

/// What the queue knows of job `id`. A job not in `J`'s queue is a `404`:
/// one enqueued moments ago may not be stored yet (it is pushed after its
/// response), so clients retry a `404` that follows a `202` briefly.
async fn report<J: Job>(queue: &JobQueue, id: &str) -> Result<Response, JobError> {
    let Ok(id) = id.parse::<JobId>() else {
        let message =
            format!("{id:?} is not a job id (26 characters of Crockford base 32, a ULID)");
        return Ok(error(StatusCode::BAD_REQUEST, "invalid-job-id", message));
    };
    let unfinished = pending::<J>(id);
    let report = match queue.outcome::<J>(id).await? {
        JobOutcome::Done(result) => JobReport {
            status: "done",
            result: Some(result),
            ..unfinished
        },
        JobOutcome::Failed(error) => JobReport {
            status: "failed",
            error: Some(error),
            ..unfinished
        },
        JobOutcome::NotFound => {
            let message = format!(
                "no {} job has the id {id} (one enqueued moments ago may not be stored yet)",
                J::NAME
            );
            return Ok(error(StatusCode::NOT_FOUND, "job-not-found", message));
        }
        _ => unfinished,
    };
    Ok(Json(report).into_response())
}

async fn healthcheck() -> Json<serde_json::Value> {
    Json(json!({}))
}

/// `GET /stats`.
#[derive(Serialize)]
struct StatsReport {
    engine: &'static str,
    /// The supervisor's tasks: the deferred pushes among them.
    tasks: Stats,
    /// What this process did with jobs; other processes keep their own.
    jobs: JobStats,
}

async fn stats(State(state): State<AppState>) -> Json<StatsReport> {
    Json(StatsReport {
        engine: state.queue.engine(),
        tasks: state.monitor.stats(),
        jobs: state.queue.stats(),
    })
}

fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": error, "message": message.into() });
    (status, Json(body)).into_response()
}
