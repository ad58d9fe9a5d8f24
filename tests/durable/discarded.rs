//! A deferred job whose push never starts is counted and logged, never
//! lost silently, and never left in `pending`:
//!
//! - discarded with its request's tasks (a `500` under
//!   `OnServerError::Skip`, a handler that never produced a response):
//!   counted `discarded`, logged at `WARN` with its JSON;
//! - refused at its hand-off because shutdown had begun: counted
//!   `abandoned`, logged at `ERROR` with its JSON;
//! - refused by `enqueue` itself (the supervisor shutting down): an error
//!   to the handler, and not counted at all.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_background::durable::{JobError, JobQueue};
use tower_background::{AddError, BackgroundTasks, OnServerError, Supervisor};

use crate::jobs::Add;
use crate::support::{Db, LogCapture};

// Logs are captured per thread: this one runs on a current-thread runtime.
mod never_started_pushes_are_counted_and_logged {
    #[tokio::test]
    async fn sqlite() {
        let db = crate::support::Db::sqlite().await;
        crate::support::bounded(super::never_started_pushes_are_counted_and_logged(db)).await;
    }

    #[tokio::test]
    async fn postgres() {
        if let Some(db) = crate::support::Db::postgres().await {
            crate::support::bounded(super::never_started_pushes_are_counted_and_logged(db)).await;
        }
    }
}

async fn fails(State(queue): State<JobQueue>, tasks: BackgroundTasks) -> StatusCode {
    queue.enqueue(&tasks, Add { x: 1, y: 1 }).expect("enqueued");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn never_answers(State(queue): State<JobQueue>, tasks: BackgroundTasks) -> StatusCode {
    queue.enqueue(&tasks, Add { x: 2, y: 2 }).expect("enqueued");
    std::future::pending().await
}

async fn answers(State(queue): State<JobQueue>, tasks: BackgroundTasks) -> StatusCode {
    queue.enqueue(&tasks, Add { x: 3, y: 3 }).expect("enqueued");
    StatusCode::OK
}

async fn never_started_pushes_are_counted_and_logged(db: Db) {
    let log = LogCapture::default();
    let _capture = log.install();
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    let app = Router::new()
        .route("/fails", post(fails))
        .route("/never-answers", post(never_answers))
        .route("/answers", post(answers))
        .with_state(queue.clone())
        .layer(supervisor.layer().on_server_error(OnServerError::Skip));
    let post = |path: &str| Request::post(path).body(Body::empty()).expect("request");

    // A server error, with the layer told to skip its tasks.
    let response = app
        .clone()
        .oneshot(post("/fails"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    response.into_body().collect().await.expect("body");
    // A handler dropped before it answered (hyper does this when the
    // client goes away).
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        app.clone().oneshot(post("/never-answers")),
    )
    .await;
    assert!(dropped.is_err(), "the handler never answers");
    assert_eq!(counts(&queue), (2, 2, 0, 0), "{:?}", queue.stats());

    // A response whose body ends once shutdown has begun: its tasks,
    // the push among them, are refused at the hand-off.
    let response = app
        .clone()
        .oneshot(post("/answers"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let handle = supervisor.tasks();
    let shutdown = tokio::spawn(supervisor.shutdown());
    while handle.try_add(async {}).is_ok() {
        tokio::task::yield_now().await;
    }
    response.into_body().collect().await.expect("body");
    assert_eq!(counts(&queue), (3, 2, 1, 0), "{:?}", queue.stats());

    // Refused by `enqueue` itself: the caller is told, and nothing counts.
    match queue.enqueue(&handle, Add { x: 4, y: 4 }) {
        Err(JobError::NotAccepted(AddError::ShuttingDown)) => {}
        other => panic!("expected NotAccepted(ShuttingDown), got {other:?}"),
    }
    let report = shutdown.await.expect("shutdown");
    let stats = queue.stats();
    assert_eq!(counts(&queue), (3, 2, 1, 0), "{stats:?} {report}");
    assert_eq!(stats.pushed, 0, "{stats:?}");
    assert_eq!(db.stored_jobs().await, 0, "no push ever started");

    let logged = log.text();
    let lines = |level: &str, args: &str, what: &str| {
        logged
            .lines()
            .filter(|line| line.contains(level) && line.contains(what))
            .filter(|line| line.contains(&format!("job.args={args}")))
            .count()
    };
    let discarded = "job not pushed";
    assert_eq!(lines("WARN", r#"{"x":1,"y":1}"#, discarded), 1, "{logged}");
    assert_eq!(lines("WARN", r#"{"x":2,"y":2}"#, discarded), 1, "{logged}");
    let abandoned = "shutdown came before its push started";
    assert_eq!(lines("ERROR", r#"{"x":3,"y":3}"#, abandoned), 1, "{logged}");
    assert!(!logged.contains(r#"{"x":4,"y":4}"#), "{logged}");
}

/// The queue's deferred jobs: `(deferred, discarded, abandoned, pending)`.
fn counts(queue: &JobQueue) -> (u64, u64, u64, u64) {
    let stats = queue.stats();
    (
        stats.deferred,
        stats.discarded,
        stats.abandoned,
        stats.pending,
    )
}
