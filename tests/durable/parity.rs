//! Parity: a job's result is the same whether its `run` is called directly
//! or a worker runs it from the queue — for the four shared jobs, for an
//! overflow that fails (after every attempt), and for jobs enqueued by an
//! axum handler, which are pushed only after the response has been sent.

use std::fmt::Debug;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::ServiceExt;
use tower_background::durable::{Job, JobError, JobFailure, JobId, JobQueue, Workers};
use tower_background::{BackgroundTasks, Supervisor};

use crate::jobs::{self, Add, Fibonacci, Join, Power};
use crate::support::{on_each_engine, Db, HEARTBEAT, POLL};

on_each_engine!(
    direct_and_worker_results_agree,
    enqueued_by_handler_runs_after_response
);

/// The failing case: 2^64 does not fit in an `i64`.
const POWER_OVERFLOW: Power = Power { a: 2, b: 64 };

/// `Power` tried once only: its failure is stored after one attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PowerOnce(Power);

impl Job for PowerOnce {
    const NAME: &'static str = "power-once";
    const MAX_ATTEMPTS: u32 = 1;
    type Output = i64;

    async fn run(self) -> Result<i64, JobFailure> {
        self.0.run().await
    }
}

fn join_case() -> Join {
    Join {
        ls: vec![json!(2021), json!(2), json!(20)],
        delimiter: ",".to_owned(),
    }
}

/// Pushes `job`, waits for a worker's stored result, and checks that it is
/// what `job.run()` gives; returns it (a failure as the direct error's text).
async fn assert_same<J>(queue: &JobQueue, job: J) -> Result<J::Output, String>
where
    J: Job + Clone + Debug,
    J::Output: PartialEq + Debug,
{
    let id = queue.push(&job).await.expect("push");
    let stored = queue.wait_for::<J>(id, POLL).await;
    compare(&job, job.clone().run().await, stored)
}

fn compare<J>(
    job: &J,
    direct: Result<J::Output, JobFailure>,
    stored: Result<J::Output, JobError>,
) -> Result<J::Output, String>
where
    J: Job + Debug,
    J::Output: PartialEq + Debug,
{
    match (direct, stored) {
        (Ok(direct), Ok(stored)) => {
            assert_eq!(direct, stored, "{job:?}: direct and stored results differ");
            Ok(stored)
        }
        (Err(direct), Err(JobError::Failed(stored))) => {
            let direct = direct.to_string();
            assert!(
                stored.contains(&direct),
                "{job:?}: failed with {stored:?} from the queue, {direct:?} directly"
            );
            Err(direct)
        }
        (direct, stored) => panic!("{job:?}: {direct:?} directly, {stored:?} from the queue"),
    }
}

async fn direct_and_worker_results_agree(db: Db) {
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    jobs::register(Workers::new(&queue))
        .register::<PowerOnce>()
        .heartbeat(HEARTBEAT)
        .spawn(&supervisor);

    assert_eq!(assert_same(&queue, Add { x: 41, y: 1 }).await, Ok(42));
    assert_eq!(
        assert_same(&queue, Power { a: 2, b: 62 }).await,
        Ok(1 << 62)
    );
    assert_eq!(
        assert_same(&queue, join_case()).await,
        Ok("2021,2,20".to_owned())
    );
    assert_eq!(assert_same(&queue, Fibonacci { n: 21 }).await, Ok(10946));

    // 2^64 does not fit: the same error directly and from the queue, where
    // it is stored only after every attempt has failed.
    let error = assert_same(&queue, POWER_OVERFLOW).await.unwrap_err();
    assert_eq!(error, "2^64 does not fit in an i64");
    let stats = queue.stats();
    assert_eq!(stats.failed, u64::from(Power::MAX_ATTEMPTS), "{stats:?}");
    assert_eq!((stats.pushed, stats.succeeded), (5, 4), "{stats:?}");

    // The same with a single attempt.
    let error = assert_same(&queue, PowerOnce(POWER_OVERFLOW))
        .await
        .unwrap_err();
    assert_eq!(error, "2^64 does not fit in an i64");
    let stats = queue.stats();
    assert_eq!(
        stats.failed,
        u64::from(Power::MAX_ATTEMPTS + 1),
        "{stats:?}"
    );

    supervisor.shutdown().await;
}

/// `POST /{job}` with the job as JSON: enqueued (deferred) by the handler,
/// which answers with the job's id at once.
async fn enqueue<J: Job>(
    State(queue): State<JobQueue>,
    tasks: BackgroundTasks,
    Json(job): Json<J>,
) -> Result<Json<JobId>, JobError> {
    Ok(Json(queue.enqueue(&tasks, job)?))
}

fn routes(supervisor: &Supervisor, queue: &JobQueue) -> Router {
    Router::new()
        .route("/add", post(enqueue::<Add>))
        .route("/power", post(enqueue::<Power>))
        .route("/join", post(enqueue::<Join>))
        .route("/fibonacci", post(enqueue::<Fibonacci>))
        .with_state(queue.clone())
        .layer(supervisor.layer())
}

/// Sends `job` to `/{path}` and checks that the handler's deferred job is
/// pushed only once the response body has ended, then runs to the same
/// result as a direct call.
async fn through_http<J>(
    app: &Router,
    queue: &JobQueue,
    path: &str,
    job: J,
) -> Result<J::Output, String>
where
    J: Job + Clone + Debug,
    J::Output: PartialEq + Debug,
{
    let before = queue.stats();
    let request = Request::post(format!("/{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&job).expect("encode")))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    // The response is out, its body not yet read: the job is accepted but
    // not pushed (a deferred job never holds up its response).
    let accepted = queue.stats();
    assert_eq!(accepted.deferred, before.deferred + 1, "{accepted:?}");
    assert_eq!(
        accepted.pushed_deferred, before.pushed_deferred,
        "{accepted:?}"
    );

    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let id: JobId = serde_json::from_slice(&body).expect("the job's id");
    let stored = queue.wait_for::<J>(id, POLL).await;
    assert_eq!(queue.stats().pushed_deferred, before.pushed_deferred + 1);
    compare(&job, job.clone().run().await, stored)
}

async fn enqueued_by_handler_runs_after_response(db: Db) {
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    jobs::register(Workers::new(&queue))
        .heartbeat(HEARTBEAT)
        .spawn(&supervisor);
    let app = routes(&supervisor, &queue);

    assert_eq!(
        through_http(&app, &queue, "add", Add { x: 41, y: 1 }).await,
        Ok(42)
    );
    assert_eq!(
        through_http(&app, &queue, "power", Power { a: 2, b: 62 }).await,
        Ok(1 << 62)
    );
    assert_eq!(
        through_http(&app, &queue, "join", join_case()).await,
        Ok("2021,2,20".to_owned())
    );
    assert_eq!(
        through_http(&app, &queue, "fibonacci", Fibonacci { n: 21 }).await,
        Ok(10946)
    );
    assert_eq!(
        through_http(&app, &queue, "power", POWER_OVERFLOW).await,
        Err("2^64 does not fit in an i64".to_owned())
    );

    let stats = queue.stats();
    assert_eq!(
        (
            stats.deferred,
            stats.pushed_deferred,
            stats.push_retries,
            stats.abandoned
        ),
        (5, 5, 0, 0)
    );
    let report = supervisor.shutdown().await;
    assert!(report.is_complete(), "{report}");
}
