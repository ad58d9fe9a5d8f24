//! A mistake a handler can make, reported as an error and never as a lost
//! job: a job that cannot be encoded (`JobError::Encode`, at the call,
//! before anything is stored). Enqueueing with no queue cannot be written:
//! `enqueue` is a method of the queue.

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize, Serializer};
use tower::ServiceExt;
use tower_background::durable::{Job, JobError, JobFailure, JobId, JobQueue};
use tower_background::{BackgroundTasks, Supervisor};

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

fn routes<J: Job + Default>(supervisor: &Supervisor, queue: &JobQueue) -> Router {
    async fn later<J: Job + Default>(
        State(queue): State<JobQueue>,
        tasks: BackgroundTasks,
    ) -> Result<Json<JobId>, JobError> {
        Ok(Json(queue.enqueue(&tasks, J::default())?))
    }
    async fn now<J: Job + Default>(State(queue): State<JobQueue>) -> Result<Json<JobId>, JobError> {
        Ok(Json(queue.push(&J::default()).await?))
    }
    Router::new()
        .route("/later", post(later::<J>))
        .route("/now", post(now::<J>))
        .with_state(queue.clone())
        .layer(supervisor.layer())
}

impl Default for Unencodable {
    fn default() -> Self {
        Self
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

async fn unencodable_job_is_an_error_at_the_call(db: Db) {
    let queue = db.queue().await;
    let pushed = queue.push(&Unencodable).await;
    assert!(matches!(pushed, Err(JobError::Encode(_))), "{pushed:?}");

    let supervisor = Supervisor::new();
    let app = routes::<Unencodable>(&supervisor, &queue);
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
