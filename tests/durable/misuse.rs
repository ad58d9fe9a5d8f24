//! Mistakes a handler can make, reported as errors and never as lost jobs:
//! enqueueing with no queue given to the supervisor (`JobError::NoQueue`,
//! a `500` that names the fix), and a job that cannot be encoded
//! (`JobError::Encode`, at the call, before anything is stored).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize, Serializer};
use tower::ServiceExt;
use tower_background::durable::{Job, JobError, JobFailure, JobId};
use tower_background::{BackgroundTasks, Supervisor};

use crate::jobs::Add;
use crate::support::{on_each_engine, Db};

on_each_engine!(unencodable_job_is_an_error_at_the_call);

/// A job whose arguments refuse to be serialized.
#[derive(Debug, Deserialize)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this job refuses to be encoded"))
    }
}

impl Job for Unencodable {
    const NAME: &'static str = "unencodable";
    type Output = ();

    async fn run(self) -> Result<(), JobFailure> {
        Ok(())
    }
}

fn routes<J: Job + Default>(supervisor: &Supervisor) -> Router {
    async fn later<J: Job + Default>(tasks: BackgroundTasks) -> Result<Json<JobId>, JobError> {
        Ok(Json(tasks.enqueue(J::default())?))
    }
    async fn now<J: Job + Default>(tasks: BackgroundTasks) -> Result<Json<JobId>, JobError> {
        Ok(Json(tasks.enqueue_now(J::default()).await?))
    }
    Router::new()
        .route("/later", post(later::<J>))
        .route("/now", post(now::<J>))
        .layer(supervisor.layer())
}

impl Default for Unencodable {
    fn default() -> Self {
        Self
    }
}

/// `Add { x: 41, y: 1 }`.
#[derive(Debug, Serialize, Deserialize)]
struct Answer(Add);

impl Default for Answer {
    fn default() -> Self {
        Self(Add { x: 41, y: 1 })
    }
}

impl Job for Answer {
    const NAME: &'static str = "answer";
    type Output = i64;

    async fn run(self) -> Result<i64, JobFailure> {
        self.0.run().await
    }
}

/// Posts to `path`; the status and the JSON body's `error` and `message`.
async fn post_to(app: &Router, path: &str) -> (StatusCode, String, String) {
    let request = Request::post(path).body(Body::empty()).expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
    (status, field("error"), field("message"))
}

#[tokio::test]
async fn enqueue_without_a_queue_is_no_queue() {
    let supervisor = Supervisor::new();
    let app = routes::<Answer>(&supervisor);
    for path in ["/later", "/now"] {
        let (status, error, message) = post_to(&app, path).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(error, "no-job-queue", "{path}");
        assert!(
            message.contains("SupervisorBuilder::jobs"),
            "{path}: {message}"
        );
    }
    assert!(supervisor.shutdown().await.is_complete());
}

async fn unencodable_job_is_an_error_at_the_call(db: Db) {
    let queue = db.queue().await;
    let pushed = queue.push(&Unencodable).await;
    assert!(matches!(pushed, Err(JobError::Encode(_))), "{pushed:?}");

    let supervisor = Supervisor::builder().jobs(queue.clone()).build();
    let app = routes::<Unencodable>(&supervisor);
    for path in ["/later", "/now"] {
        let (status, error, message) = post_to(&app, path).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(error, "job-encoding", "{path}");
        assert!(
            message.contains("this job refuses to be encoded"),
            "{path}: {message}"
        );
    }
    assert!(supervisor.shutdown().await.is_complete());
    let stats = queue.stats();
    assert_eq!(
        (stats.pushed, stats.deferred, stats.abandoned),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(db.stored_jobs().await, 0);
}
