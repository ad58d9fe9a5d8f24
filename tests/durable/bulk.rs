//! Bulk pushes: `push_all` stores many jobs together and returns their ids
//! in order; `enqueue_all` does the same from a handler, after the
//! response. A job that cannot be stored is an error before anything is,
//! and so is a deferred batch larger than `max_pending`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_background::durable::{JobError, JobId, JobQueue, Workers};
use tower_background::{BackgroundTasks, Supervisor};

use crate::jobs::{self, Add};
use crate::support::{on_each_engine, Db, HEARTBEAT, POLL};

on_each_engine!(
    push_all_stores_every_job_in_order,
    enqueue_all_pushes_after_the_response
);

/// How many jobs a bulk push holds in these tests.
const JOBS: i64 = 1000;

fn adds() -> Vec<Add> {
    (0..JOBS).map(|x| Add { x, y: 1 }).collect()
}

async fn push_all_stores_every_job_in_order(db: Db) {
    let queue = db.queue().await;
    let ids = queue.push_all(&adds()).await.unwrap();
    assert_eq!(ids.len(), JOBS as usize);
    assert_eq!(db.stored_jobs().await, JOBS);
    assert_eq!(queue.stats().pushed, JOBS as u64);
    assert!(queue.push_all::<Add>(&[]).await.unwrap().is_empty());

    // A job that breaks the rules stops the batch before anything is stored.
    let error = queue
        .push_all(&[crate::unique::invoice("ok"), crate::unique::invoice("")])
        .await
        .unwrap_err();
    assert!(matches!(error, JobError::InvalidUniqueKey(_)), "{error:?}");
    assert_eq!(db.stored_jobs().await, JOBS);

    let supervisor = Supervisor::new();
    jobs::register(Workers::new(&queue))
        .heartbeat(HEARTBEAT)
        .concurrency(16)
        .spawn(&supervisor);
    for (x, id) in [(0, ids[0]), (JOBS - 1, ids[JOBS as usize - 1])] {
        assert_eq!(queue.wait_for::<Add>(id, POLL).await.unwrap(), x + 1);
    }
    supervisor.shutdown().await;
}

/// `POST /fan-out`: queues [`JOBS`] jobs after the response.
async fn fan_out(
    State(queue): State<JobQueue>,
    tasks: BackgroundTasks,
) -> Result<Json<Vec<JobId>>, JobError> {
    Ok(Json(queue.enqueue_all(&tasks, adds())?))
}

/// `POST /fan-out` through `app`: the response, its body unread.
async fn post_fan_out(app: &Router) -> axum::response::Response {
    app.clone()
        .oneshot(Request::post("/fan-out").body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn enqueue_all_pushes_after_the_response(db: Db) {
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    let app = Router::new()
        .route("/fan-out", post(fan_out))
        .with_state(queue.clone())
        .layer(supervisor.layer());

    let response = post_fan_out(&app).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(queue.stats().deferred, JOBS as u64);
    assert_eq!(
        queue.stats().pushed_deferred,
        0,
        "pushed before the response ended"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let ids: Vec<JobId> = serde_json::from_slice(&body).unwrap();

    jobs::register(Workers::new(&queue))
        .heartbeat(HEARTBEAT)
        .spawn(&supervisor);
    let last = ids[JOBS as usize - 1];
    assert_eq!(queue.wait_for::<Add>(last, POLL).await.unwrap(), JOBS);
    let stats = queue.stats();
    assert_eq!(
        (stats.pushed_deferred, stats.pushed),
        (JOBS as u64, JOBS as u64)
    );

    // A batch that could never wait in memory whole is a 413, not a 503
    // whose retry would fail forever.
    // (The bound is the queue's, shared with the app's clone of it.)
    let queue = queue.max_pending(JOBS as usize - 1);
    let response = post_fan_out(&app).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(response.headers().get("retry-after").is_none());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "job-batch-too-large", "{body}");
    let after = queue.stats();
    assert_eq!(
        (after.deferred, after.refused_full, after.pending),
        (JOBS as u64, 0, 0),
        "{after:?}"
    );
    supervisor.shutdown().await;
}
