//! A mistake a handler can make, reported as an error and never as a lost
//! job: a job that cannot be encoded (`JobError::Encode`), one whose JSON
//! does not decode back into it, so that no worker could run it
//! (`JobError::Undecodable`), or one larger than the queue takes
//! (`JobError::TooLarge`, a `413`), each at the call, before anything is
//! stored. Enqueueing with no queue cannot be written:
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
on_each_engine!(oversized_job_is_an_error_at_the_call);
on_each_engine!(undecodable_job_is_an_error_at_the_call);

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

/// A job that serializes without a field it needs to deserialize.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Undecodable {
    #[serde(skip_serializing)]
    needed: u32,
}

impl Job for Undecodable {
    const NAME: &'static str = "undecodable";
    type Output = u32;

    async fn run(self) -> Result<u32, JobFailure> {
        Ok(self.needed)
    }
}

/// A job whose JSON is [`LIMIT`] + 1 bytes, once the queue's limit is
/// [`LIMIT`].
#[derive(Debug, Serialize, Deserialize)]
struct Oversized {
    text: String,
}

/// The limit the oversized test sets.
const LIMIT: usize = 1_000;

impl Default for Oversized {
    fn default() -> Self {
        // `{"text":"…"}` is 11 bytes around the text.
        Self {
            text: "x".repeat(LIMIT + 1 - 11),
        }
    }
}

impl Job for Oversized {
    const NAME: &'static str = "oversized";
    type Output = ();

    async fn run(self) -> Result<(), JobFailure> {
        Ok(())
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

/// Posts to both routes for `J`, each of which must answer `status` with
/// error `code` and a message holding every one of `says`; then checks
/// that the queue neither pushed, deferred nor abandoned anything.
async fn refused_by_both_routes<J: Job + Default>(
    queue: &JobQueue,
    status: StatusCode,
    code: &str,
    says: &[&str],
) {
    let supervisor = Supervisor::new();
    let app = routes::<J>(&supervisor, queue);
    for path in ["/later", "/now"] {
        let (answered, error, message) = post_to(&app, path).await;
        assert_eq!(answered, status, "{path}");
        assert_eq!(error, code, "{path}");
        for said in says {
            assert!(message.contains(said), "{path}: {message}");
        }
    }
    assert!(supervisor.shutdown().await.is_complete());
    let stats = queue.stats();
    assert_eq!(
        (stats.pushed, stats.deferred, stats.abandoned),
        (0, 0, 0),
        "{stats:?}"
    );
}

async fn unencodable_job_is_an_error_at_the_call(db: Db) {
    let queue = db.queue().await;
    let pushed = queue.push(&Unencodable).await;
    assert!(matches!(pushed, Err(JobError::Encode(_))), "{pushed:?}");

    refused_by_both_routes::<Unencodable>(
        &queue,
        StatusCode::INTERNAL_SERVER_ERROR,
        "job-encoding",
        &["this job refuses to be encoded"],
    )
    .await;
    assert_eq!(db.stored_jobs().await, 0);
}

async fn oversized_job_is_an_error_at_the_call(db: Db) {
    let queue = db.queue().await.max_job_bytes(LIMIT);
    let job = Oversized::default();
    assert_eq!(serde_json::to_vec(&job).unwrap().len(), LIMIT + 1);
    let pushed = queue.push(&job).await;
    assert!(
        matches!(pushed, Err(JobError::TooLarge { bytes, max }) if bytes == LIMIT + 1 && max == LIMIT),
        "{pushed:?}"
    );
    let all = queue
        .push_all(&[
            Oversized {
                text: "small".into(),
            },
            job,
        ])
        .await;
    assert!(matches!(all, Err(JobError::TooLarge { .. })), "{all:?}");

    refused_by_both_routes::<Oversized>(
        &queue,
        StatusCode::PAYLOAD_TOO_LARGE,
        "job-too-large",
        &["1001 bytes", "limit of 1000"],
    )
    .await;
    assert_eq!(db.stored_jobs().await, 0, "nothing of the batch stored");

    // One byte less is a job like any other.
    let fits = Oversized {
        text: "x".repeat(LIMIT - 11),
    };
    queue
        .push(&fits)
        .await
        .expect("a job at the limit is stored");
    assert_eq!(db.stored_jobs().await, 1);
}

async fn undecodable_job_is_an_error_at_the_call(db: Db) {
    let queue = db.queue().await;
    let pushed = queue.push(&Undecodable::default()).await;
    assert!(
        matches!(pushed, Err(JobError::Undecodable(_))),
        "{pushed:?}"
    );

    refused_by_both_routes::<Undecodable>(
        &queue,
        StatusCode::INTERNAL_SERVER_ERROR,
        "job-undecodable",
        &["missing field `needed`"],
    )
    .await;
    assert_eq!(db.stored_jobs().await, 0);
}
