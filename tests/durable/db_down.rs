//! The database goes away (see [`Db::cuttable_queue`] for what "down" is on
//! each engine, and why):
//!
//! - `JobQueue::push` fails with a clear error, `JobError::Database`, which an
//!   axum handler turns into a `503` with `Retry-After` and a JSON body; it
//!   works again once the database is back.
//! - A deferred push (`enqueue`) is retried, counted in `push_retries`, and
//!   delivered when the database returns; the job then runs to the end.
//! - A burst of deferred pushes during the outage (their group commits
//!   failing together) is stored once each when the database returns: none
//!   lost, none twice.
//! - If shutdown's grace period ends while the database is still away, the
//!   deferred job is counted `abandoned` and logged at `ERROR` with its
//!   JSON; the database never got it.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, Response, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_background::durable::{JobError, JobId, JobOutcome, JobQueue, Workers};
use tower_background::{BackgroundTasks, Supervisor};

use crate::jobs::Add;
use crate::support::{on_each_engine, wait_until, Db, LogCapture, HEARTBEAT, POLL};

on_each_engine!(
    enqueue_now_while_down_is_a_503,
    deferred_push_is_retried_until_database_returns,
    a_burst_deferred_during_an_outage_is_stored_once_each,
);

/// How many requests the outage burst sends at once.
const BURST: usize = 200;

const JOB: Add = Add { x: 41, y: 1 };

async fn enqueue_now(State(queue): State<JobQueue>) -> Result<Json<JobId>, JobError> {
    Ok(Json(queue.push(&JOB).await?))
}

async fn enqueue(
    State(queue): State<JobQueue>,
    tasks: BackgroundTasks,
) -> Result<Json<JobId>, JobError> {
    Ok(Json(queue.enqueue(&tasks, JOB)?))
}

fn routes(supervisor: &Supervisor, queue: &JobQueue) -> Router {
    Router::new()
        .route("/now", post(enqueue_now))
        .route("/later", post(enqueue))
        .with_state(queue.clone())
        .layer(supervisor.layer())
}

async fn post_to(app: &Router, path: &str) -> Response<Body> {
    let request = Request::post(path).body(Body::empty()).expect("request");
    app.clone().oneshot(request).await.expect("infallible")
}

/// The response's status, and its body as JSON (reading it to the end, which
/// also hands the request's deferred work off).
async fn status_and_json(response: Response<Body>) -> (StatusCode, serde_json::Value) {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

async fn enqueue_now_while_down_is_a_503(db: Db) {
    let (queue, mut outage) = db.cuttable_queue().await;
    let supervisor = Supervisor::new();
    let app = routes(&supervisor, &queue);
    assert_eq!(
        status_and_json(post_to(&app, "/now").await).await.0,
        StatusCode::OK
    );

    outage.begin().await;
    let (pushed, response) = tokio::join!(queue.push(&JOB), post_to(&app, "/now"));
    assert!(matches!(pushed, Err(JobError::Database(_))), "{pushed:?}");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let (_, body) = status_and_json(response).await;
    assert_eq!(body["error"], "job-database-unavailable", "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(
        message.starts_with("the job database is unavailable: "),
        "{message}"
    );
    assert_eq!(
        message.matches("unavailable").count(),
        1,
        "the cause is named once: {message}"
    );

    // Nothing was stored, nothing is left behind to retry: the error went
    // to the client.
    outage.end().await;
    let (status, body) = status_and_json(post_to(&app, "/now").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = queue.stats();
    assert_eq!(
        (stats.pushed, stats.deferred, stats.push_retries),
        (2, 0, 0),
        "{stats:?}"
    );
    assert_eq!(db.stored_jobs().await, 2);
    assert!(supervisor.shutdown().await.is_complete());
}

async fn deferred_push_is_retried_until_database_returns(db: Db) {
    let (queue, mut outage) = db.cuttable_queue().await;
    let supervisor = Supervisor::new();
    let app = routes(&supervisor, &queue);
    // The workers have a connection of their own (on PostgreSQL, only the
    // server loses the database).
    let workers = db.queue().await;
    Workers::new(&workers)
        .register::<Add>()
        .heartbeat(HEARTBEAT)
        .spawn(&supervisor);

    outage.begin().await;
    // The response does not wait for the database.
    let (status, body) = status_and_json(post_to(&app, "/later").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id: JobId = serde_json::from_value(body).expect("the job's id");
    wait_until("a push has failed and is retried", || {
        queue.stats().push_retries > 0
    })
    .await;
    assert_eq!(queue.stats().pushed_deferred, 0);

    outage.end().await;
    assert_eq!(
        workers
            .wait_for::<Add>(id, POLL)
            .await
            .expect("the job ends"),
        42
    );
    let stats = queue.stats();
    assert_eq!(
        (stats.deferred, stats.pushed_deferred, stats.abandoned),
        (1, 1, 0),
        "{stats:?}"
    );
    assert!(stats.push_retries > 0, "{stats:?}");
    assert!(supervisor.shutdown().await.is_complete());
}

async fn a_burst_deferred_during_an_outage_is_stored_once_each(db: Db) {
    let (queue, mut outage) = db.cuttable_queue().await;
    let supervisor = Supervisor::new();
    let app = routes(&supervisor, &queue);

    outage.begin().await;
    let responses = futures_util::future::join_all(
        (0..BURST).map(|_| async { status_and_json(post_to(&app, "/later").await).await }),
    )
    .await;
    assert!(responses
        .iter()
        .all(|(status, _)| *status == StatusCode::OK));
    wait_until("the pushes fail and are retried", || {
        queue.stats().push_retries > 0
    })
    .await;
    assert_eq!(queue.stats().pushed_deferred, 0);

    outage.end().await;
    wait_until("every deferred job is stored", || {
        queue.stats().pushed_deferred == BURST as u64
    })
    .await;
    assert_eq!(db.stored_jobs().await, BURST as i64, "lost or doubled jobs");
    let stats = queue.stats();
    assert_eq!(
        (stats.deferred, stats.pushed_deferred, stats.abandoned),
        (BURST as u64, BURST as u64, 0),
        "{stats:?}"
    );
    assert!(supervisor.shutdown().await.is_complete());
}

// Logs are captured per thread: these run on a current-thread runtime.
mod deferred_push_abandoned_when_shutdown_ends_while_down {
    #[tokio::test]
    async fn sqlite() {
        let db = crate::support::Db::sqlite().await;
        crate::support::bounded(super::deferred_push_abandoned_when_shutdown_ends_while_down(db))
            .await;
    }

    #[tokio::test]
    async fn postgres() {
        if let Some(db) = crate::support::Db::postgres().await {
            crate::support::bounded(
                super::deferred_push_abandoned_when_shutdown_ends_while_down(db),
            )
            .await;
        }
    }
}

async fn deferred_push_abandoned_when_shutdown_ends_while_down(db: Db) {
    let log = LogCapture::default();
    let _capture = log.install();
    let (queue, mut outage) = db.cuttable_queue().await;
    let supervisor = Supervisor::builder()
        .grace_period(Duration::from_secs(1))
        .build();
    let app = routes(&supervisor, &queue);

    outage.begin().await;
    let (status, body) = status_and_json(post_to(&app, "/later").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id: JobId = serde_json::from_value(body).expect("the job's id");
    let report = supervisor.shutdown().await;

    let stats = queue.stats();
    assert_eq!(
        (stats.deferred, stats.pushed_deferred, stats.abandoned),
        (1, 0, 1),
        "{stats:?} {report}"
    );
    let logged = log.text();
    let line = logged
        .lines()
        .find(|line| line.contains("job abandoned"))
        .unwrap_or_else(|| panic!("no 'job abandoned' line in:\n{logged}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&id.to_string()), "{line}");
    assert!(line.contains(r#"job.args={"x":41,"y":1}"#), "{line}");

    outage.end().await;
    assert_eq!(db.stored_jobs().await, 0, "the database never got the job");
    assert_eq!(
        queue.outcome::<Add>(id).await.expect("outcome"),
        JobOutcome::NotFound
    );
}
