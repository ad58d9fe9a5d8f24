//! The FastAPI "backlog" service from a well-known Q&A, the way it should
//! have worked.
//!
//! In the Q&A, `POST /` queued a long query as a FastAPI background task and
//! `GET /backlog/` reported how many were unfinished. Under the test client
//! the response waited for the task; the fix was a wrapper that pushed the
//! work onto the event loop by hand, a `time.sleep` in a thread (fine only
//! if the work releases the GIL), a global dict as the backlog, and a body
//! parsed with `split("=")`, which raises on a malformed form.
//!
//! Here:
//!
//! - `POST /` with a form body `query_name=foo&query_sequence=42` answers
//!   `202 Accepted` at once, with the query's id and the backlog length.
//!   Each query is one [`Group::sequential()`]: an async phase (2 s,
//!   standing in for I/O) and then a blocking phase (2 s of CPU on the
//!   blocking lane, so it can stall neither the server nor the async work).
//!   Neither starts before the response has been sent.
//! - `GET /backlog` answers `{"backlog": N}`: the queries accepted and not
//!   finished. N falls to 0 as they finish.
//! - `GET /stats` answers the supervisor's full [`Stats`].
//! - A bad form (a missing field, a `query_sequence` that is not an integer,
//!   an empty `query_name`, no form content type) is a `400` with a JSON
//!   body `{"error": ..., "message": ...}`, never a panic. (A body that
//!   cannot be read at all keeps axum's status, such as `413` for one too
//!   large.)
//! - When the queue is full, `POST /` answers `503 Service Unavailable` with
//!   `Retry-After: 1` and a JSON body
//!   ([`AddError`](tower_background::AddError) is that response),
//!   instead of letting the backlog grow without bound.
//!
//! # The backlog count
//!
//! `backlog` is the crate's [`Stats::backlog`]: tasks waiting for their
//! response, waiting for a slot, or running. Each query is one task (a
//! group counts once), and the example adds nothing else, so it counts
//! unfinished queries; no dict of our own to keep in step. The count in a
//! `POST /` answer includes the query just accepted: at that moment it is
//! *waiting* for its response to be sent.
//!
//! # The limits, and why they are spelled out
//!
//! A hidden limit surprises you in production; a missing one lets a burst
//! exhaust memory or a thread pool. So this example sets all three:
//!
//! | setting | here | meaning |
//! |---|---|---|
//! | [`max_running`](tower_background::SupervisorBuilder::max_running) | 4 | queries in progress at once (a query keeps its slot in both phases) |
//! | [`blocking_limit`](tower_background::SupervisorBuilder::blocking_limit) | 2 | blocking phases at once, so the CPU work leaves cores to the server |
//! | [`max_queued`](tower_background::SupervisorBuilder::max_queued) | 100 (`MAX_QUEUED`) | queries waiting to start; one more gets `503` |
//!
//! With these, five queries take about 8 s: four start together, two of
//! them run their blocking phase while the other two wait for the blocking
//! lane, and the fifth starts when the first two are done.
//!
//! # Running it
//!
//! ```text
//! cargo run --example backlog
//! ```
//!
//! `PORT` (default 3000) sets the port on 127.0.0.1, `GRACE_SECS` (default
//! 15) the shutdown grace period, `MAX_QUEUED` (default 100) the queue's
//! size, and `RUST_LOG` (default `info`) the log filter.
//!
//! In another terminal:
//!
//! ```text
//! $ for i in 1 2 3 4 5; do
//!     curl -s -d "query_name=foo&query_sequence=4$i" http://127.0.0.1:3000/; echo
//!   done
//! {"backlog":1,"query_id":"q-1","query_name":"foo","query_sequence":41}
//! {"backlog":2,"query_id":"q-2","query_name":"foo","query_sequence":42}
//! ...
//! {"backlog":5,"query_id":"q-5","query_name":"foo","query_sequence":45}
//!
//! $ while sleep 1; do curl -s http://127.0.0.1:3000/backlog; echo; done
//! {"backlog":5}
//! ...
//! {"backlog":3}      # about 4 s in: q-1 and q-2 are done
//! ...
//! {"backlog":1}      # about 6 s in: q-3 and q-4 too
//! ...
//! {"backlog":0}      # about 8 s in
//!
//! $ curl -s http://127.0.0.1:3000/stats
//! {"submitted":5,"waiting":0,"queued":0,"running":0,"completed":5,...,"lanes":[
//!   {"name":"default","limit":4,"running":0,"queued":0,"high_water":4},
//!   {"name":"blocking","limit":2,"running":0,"queued":0,"high_water":2}]}
//!
//! $ curl -s -d "query_name=foo&query_sequence=abc" http://127.0.0.1:3000/
//! {"error":"invalid_form","message":"Failed to deserialize form body: query_sequence: invalid digit found in string"}
//!
//! $ curl -s -d "query_name=foo" http://127.0.0.1:3000/
//! {"error":"invalid_form","message":"Failed to deserialize form body: missing field `query_sequence`"}
//!
//! $ curl -s -H 'content-type: application/json' -d '{}' http://127.0.0.1:3000/
//! {"error":"invalid_content_type","message":"Form requests must have `Content-Type: application/x-www-form-urlencoded`"}
//! ```
//!
//! With `MAX_QUEUED=2`, the seventh query of a quick burst (four running,
//! two waiting) gets
//!
//! ```text
//! HTTP/1.1 503 Service Unavailable
//! retry-after: 1
//! {"error":"background-queue-full","message":"the background task queue is full (2 tasks waiting)"}
//! ```
//!
//! Then press Ctrl-C in the server's terminal: it finishes the requests in
//! flight, waits for the queries (at most `GRACE_SECS`), and prints the
//! report. A blocking phase cannot be aborted, so it watches the
//! cancellation token and stops early when asked, returning an error (the
//! query counts as failed); async phases still running at the end of the
//! grace period are aborted (cancelled). With `GRACE_SECS=3` and six queries
//! in flight:
//!
//! ```text
//! SIGINT received, shutting down
//! ... ERROR ... background task failed ... error=q-3: stopped by shutdown after 907 rounds
//! ... ERROR ... background task failed ... error=q-4: stopped by shutdown after 773 rounds
//! background tasks after 3.001s: 2 completed, 2 failed, 2 cancelled
//! ```

use std::env::{self, VarError};
use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_background::{BackgroundTasks, Group, Monitor, Stats, Supervisor};
use tracing::info;

mod support;

use support::serve_axum;

/// Queries in progress at once.
const MAX_RUNNING: usize = 4;
/// Blocking phases at once.
const BLOCKING_LIMIT: usize = 2;
/// Queries waiting to start, unless `MAX_QUEUED` says otherwise.
const DEFAULT_MAX_QUEUED: usize = 100;
/// How long each phase of a query takes.
const ASYNC_PHASE: Duration = Duration::from_secs(2);
const BLOCKING_PHASE: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> ExitCode {
    support::main(run).await
}

async fn run(port: u16, grace_period: Duration) -> Result<(), Box<dyn Error>> {
    let max_queued = max_queued()?;
    let background = Supervisor::builder()
        .grace_period(grace_period)
        .max_running(MAX_RUNNING)
        .blocking_limit(BLOCKING_LIMIT)
        .max_queued(max_queued)
        .build();
    println!(
        "limits: max_running {MAX_RUNNING}, blocking_limit {BLOCKING_LIMIT}, max_queued {max_queued}"
    );

    let state = AppState {
        monitor: background.monitor(),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    let app = Router::new()
        .route("/", post(submit))
        .route("/backlog", get(backlog))
        .route("/stats", get(stats))
        .with_state(state)
        .layer(background.layer());

    // Serves until SIGINT or SIGTERM, then drains HTTP (at most 10 s) before
    // shutting the supervisor down, as the quickstart does.
    serve_axum(port, app, background).await
}

#[derive(Clone, Debug)]
struct AppState {
    monitor: Monitor,
    next_id: Arc<AtomicU64>,
}

/// The form the Q&A's client posts.
#[derive(Debug, Deserialize)]
struct Query {
    query_name: String,
    query_sequence: i64,
}

/// `POST /`: accepts a query, answers at once.
async fn submit(
    State(state): State<AppState>,
    tasks: BackgroundTasks,
    // Taking the `Result` lets us answer a bad form with JSON rather than
    // axum's plain-text rejection.
    form: Result<Form<Query>, FormRejection>,
) -> Response {
    let Query {
        query_name,
        query_sequence,
    } = match form {
        Ok(Form(query)) => query,
        Err(rejection) => return form_error(rejection),
    };
    if query_name.trim().is_empty() {
        return bad_request("invalid_form", "query_name must not be empty");
    }

    let id = format!("q-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let accepted = Instant::now();
    let cancel = tasks.cancellation_token();
    let (async_id, blocking_id) = (id.clone(), id.clone());
    let query = Group::sequential()
        .step(async move {
            info!(query = %async_id, waited = ?accepted.elapsed(), "async phase: started");
            tokio::time::sleep(ASYNC_PHASE).await; // the I/O part of the query
            info!(query = %async_id, "async phase: done");
        })
        .blocking_step(move || compute(&blocking_id, query_sequence, &cancel));

    // `try_add` rather than `add`: when the queue is full the handler
    // answers the error itself and logs nothing as accepted (a plain `add`
    // would have the layer turn the response into the same `503` +
    // `Retry-After`).
    if let Err(error) = tasks.try_add(query) {
        return error.into_response();
    }

    let backlog = state.monitor.stats().backlog();
    info!(query = %id, query_name, query_sequence, backlog, "accepted");
    let body = json!({
        "query_id": id,
        "query_name": query_name,
        "query_sequence": query_sequence,
        "backlog": backlog,
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// The blocking phase: about `BLOCKING_PHASE` of CPU work, on the blocking
/// lane.
///
/// A blocking closure cannot be aborted at shutdown, so it checks the
/// cancellation token between rounds and stops early (as a failed query)
/// when the grace period is nearly over.
fn compute(id: &str, sequence: i64, cancel: &CancellationToken) -> Result<u64, String> {
    info!(query = %id, "blocking phase: started");
    let started = Instant::now();
    let mut value = sequence as u64;
    let mut rounds = 0_u64;
    while started.elapsed() < BLOCKING_PHASE {
        if cancel.is_cancelled() {
            return Err(format!("{id}: stopped by shutdown after {rounds} rounds"));
        }
        // Stands in for the real computation: a round of a simple PRNG.
        for _ in 0..100_000 {
            value = value
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            value ^= value >> 33;
        }
        rounds += 1;
    }
    info!(query = %id, rounds, result = value, "blocking phase: done, query finished");
    Ok(value)
}

/// `GET /backlog`: the queries accepted and not finished.
async fn backlog(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "backlog": state.monitor.stats().backlog() }))
}

/// `GET /stats`: every counter.
async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(state.monitor.stats())
}

/// A `400` with a JSON body saying what is wrong with the form.
fn form_error(rejection: FormRejection) -> Response {
    match rejection {
        FormRejection::InvalidFormContentType(_) => {
            bad_request("invalid_content_type", rejection.body_text())
        }
        FormRejection::BytesRejection(_) => {
            // The body could not be read (too large, or the connection
            // failed): keep axum's status, answer in JSON.
            let body = json!({ "error": "invalid_body", "message": rejection.body_text() });
            (rejection.status(), Json(body)).into_response()
        }
        // Missing fields, a `query_sequence` that is not an integer, bad
        // percent-encoding. axum answers 422 for some of these; the
        // service promises 400 for any bad form.
        _ => bad_request("invalid_form", rejection.body_text()),
    }
}

fn bad_request(error: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": error, "message": message.into() });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// `MAX_QUEUED` from the environment (default [`DEFAULT_MAX_QUEUED`]).
fn max_queued() -> Result<usize, String> {
    match env::var("MAX_QUEUED") {
        Ok(value) => match value.parse() {
            Ok(0) => Err("MAX_QUEUED=0 would refuse every query".to_owned()),
            Ok(limit) => Ok(limit),
            Err(error) => Err(format!(
                "MAX_QUEUED={value:?} is not a whole number: {error}"
            )),
        },
        Err(VarError::NotPresent) => Ok(DEFAULT_MAX_QUEUED),
        Err(VarError::NotUnicode(value)) => Err(format!("MAX_QUEUED={value:?} is not valid UTF-8")),
    }
}
