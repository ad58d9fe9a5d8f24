//! The deferred jobs waiting in memory for the database are bounded
//! (`JobQueue::max_pending`), and what waits there is never lost silently:
//!
//! - With the database away, `enqueue` fills the bound; the next call is a
//!   `503` (`job-queue-full`, `Retry-After: 1`, a JSON body) and counted in
//!   `refused_full`; when the database returns, every accepted job is
//!   stored once and `pending` is back to zero.
//! - Shutdown begun with a full buffer stores it within the grace period
//!   if the database is back in time.
//! - If the database stays away past the grace period, every pending job is
//!   counted `abandoned` and logged at `ERROR` with its JSON.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, Response, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_background::durable::{JobError, JobId, JobQueue};
use tower_background::{BackgroundTasks, Supervisor};

use crate::jobs::Add;
use crate::support::{on_each_engine, wait_until, Db, LogCapture};

on_each_engine!(
    a_full_buffer_answers_503_and_loses_nothing,
    shutdown_stores_a_full_buffer_within_grace,
);

// Logs are captured per thread: this one runs on a current-thread runtime.
mod shutdown_abandons_a_full_buffer_counted_and_logged {
    #[tokio::test]
    async fn sqlite() {
        let db = crate::support::Db::sqlite().await;
        crate::support::bounded(super::shutdown_abandons_a_full_buffer_counted_and_logged(
            db,
        ))
        .await;
    }

    #[tokio::test]
    async fn postgres() {
        if let Some(db) = crate::support::Db::postgres().await {
            crate::support::bounded(super::shutdown_abandons_a_full_buffer_counted_and_logged(
                db,
            ))
            .await;
        }
    }
}

/// The bound these tests set: small, so the buffer fills quickly.
const MAX_PENDING: usize = 20;

async fn enqueue(
    State(queue): State<JobQueue>,
    tasks: BackgroundTasks,
) -> Result<Json<JobId>, JobError> {
    Ok(Json(queue.enqueue(&tasks, Add { x: 1, y: 2 })?))
}

fn app(supervisor: &Supervisor, queue: &JobQueue) -> Router {
    Router::new()
        .route("/later", post(enqueue))
        .with_state(queue.clone())
        .layer(supervisor.layer())
}

/// Posts to `/later` and reads the answer to its end (which hands the
/// request's deferred push off): the response, and its body as JSON.
async fn post_later(app: &Router) -> (Response<()>, serde_json::Value) {
    let request = Request::post("/later")
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&body).expect("a JSON body");
    (Response::from_parts(parts, ()), json)
}

/// Fills the queue's buffer with the database away: `MAX_PENDING` accepted
/// jobs, then one refused.
async fn fill(app: &Router, queue: &JobQueue) {
    for _ in 0..MAX_PENDING {
        let (response, body) = post_later(app).await;
        assert_eq!(response.status(), StatusCode::OK, "{body}");
    }
    let (response, body) = post_later(app).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(body["error"], "job-queue-full", "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(
        message.starts_with(&format!("{MAX_PENDING} deferred jobs already wait")),
        "{message}"
    );
    let stats = queue.stats();
    assert_eq!(
        (stats.deferred, stats.pending, stats.refused_full),
        (MAX_PENDING as u64, MAX_PENDING as u64, 1),
        "{stats:?}"
    );
}

async fn a_full_buffer_answers_503_and_loses_nothing(db: Db) {
    let (queue, mut outage) = db.cuttable_queue().await;
    assert_eq!(queue.stats().pending, 0);
    let queue = queue.max_pending(MAX_PENDING);
    let supervisor = Supervisor::new();
    let app = app(&supervisor, &queue);

    outage.begin().await;
    fill(&app, &queue).await;
    outage.end().await;

    wait_until("the buffer is stored", || queue.stats().pending == 0).await;
    let stats = queue.stats();
    assert_eq!(
        (stats.pushed_deferred, stats.abandoned),
        (MAX_PENDING as u64, 0),
        "{stats:?}"
    );
    assert_eq!(db.stored_jobs().await, MAX_PENDING as i64, "each once");
    // Room again.
    let (response, body) = post_later(&app).await;
    assert_eq!(response.status(), StatusCode::OK, "{body}");
    assert!(supervisor.shutdown().await.is_complete());
    assert_eq!(db.stored_jobs().await, MAX_PENDING as i64 + 1);
}

async fn shutdown_stores_a_full_buffer_within_grace(db: Db) {
    let (queue, mut outage) = db.cuttable_queue().await;
    let queue = queue.max_pending(MAX_PENDING);
    let supervisor = Supervisor::builder()
        .grace_period(Duration::from_secs(30))
        .build();
    let app = app(&supervisor, &queue);

    outage.begin().await;
    fill(&app, &queue).await;
    // Shutdown begins with every push still retrying; the database comes
    // back during the grace period.
    let shutdown = tokio::spawn(supervisor.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    outage.end().await;
    let report = shutdown.await.expect("shutdown");
    assert!(report.is_complete(), "{report}");

    let stats = queue.stats();
    assert_eq!(
        (stats.pushed_deferred, stats.abandoned, stats.pending),
        (MAX_PENDING as u64, 0, 0),
        "{stats:?}"
    );
    assert_eq!(db.stored_jobs().await, MAX_PENDING as i64, "each once");
}

async fn shutdown_abandons_a_full_buffer_counted_and_logged(db: Db) {
    let log = LogCapture::default();
    let _capture = log.install();
    let (queue, mut outage) = db.cuttable_queue().await;
    let queue = queue.max_pending(MAX_PENDING);
    let supervisor = Supervisor::builder()
        .grace_period(Duration::from_secs(1))
        .build();
    let app = app(&supervisor, &queue);

    outage.begin().await;
    fill(&app, &queue).await;
    let report = supervisor.shutdown().await;

    let stats = queue.stats();
    assert_eq!(
        (stats.pushed_deferred, stats.abandoned, stats.pending),
        (0, MAX_PENDING as u64, 0),
        "{stats:?} {report}"
    );
    let logged = log.text();
    let abandoned = logged
        .lines()
        .filter(|line| line.contains("job abandoned") && line.contains("ERROR"))
        .filter(|line| line.contains(r#"job.args={"x":1,"y":2}"#))
        .count();
    assert_eq!(abandoned, MAX_PENDING, "one ERROR line each:\n{logged}");
    outage.end().await;
    assert_eq!(db.stored_jobs().await, 0, "the database never got them");
}
