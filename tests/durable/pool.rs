//! The queue's pool exhausted: every connection is held by a push that
//! waits on the database (here, deferred batches blocked by a lock on the
//! job table — what a long migration, a backup or a runaway transaction
//! does), and more work arrives:
//!
//! - `push` from a handler waits for a connection at most
//!   [`ACQUIRE_TIMEOUT`] and ends in a `503` (`job-database-unavailable`):
//!   it does not hang with the connections it waits for. A second push,
//!   made while the group commit is already waiting for a connection,
//!   joins that wait rather than starting one of its own after it: it
//!   fails with the first, sooner than [`ACQUIRE_TIMEOUT`].
//! - The deferred batches that found no connection are retried: each
//!   fails after [`ACQUIRE_TIMEOUT`], not twice that (a push that sent
//!   nothing is not checked for a lost commit, which would wait for a
//!   connection again). Once the connections are released every deferred
//!   job is stored, once.
//!
//! The lock is held for about [`ACQUIRE_TIMEOUT`], well under
//! [`LOCK_TIMEOUT`](tower_background::durable::LOCK_TIMEOUT), after which
//! the blocked inserts would fail of themselves ([`crate::locked`]).
//!
//! PostgreSQL only. A SQLite queue's connections can only be held by
//! writers waiting on the file lock, and each gives its connection back
//! when its busy timeout expires: an exhausted SQLite pool is the locked
//! file of [`crate::db_down`], where a push may wait [`ACQUIRE_TIMEOUT`]
//! for a connection and then the busy timeout for the lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, Response, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use sqlx::Connection;
use tower::ServiceExt;
use tower_background::durable::{JobError, JobId, JobQueue, ACQUIRE_TIMEOUT};
use tower_background::{BackgroundTasks, Supervisor};

use crate::jobs::Add;
use crate::support::{wait_until, Db, BOUND, POLL};

/// Connections in a PostgreSQL queue's pool: sqlx's default, which
/// `JobQueue::postgres` keeps.
const POOL: i64 = 10;

/// Deferred batches sent at once: more than the pool holds, so that some
/// find no connection and are retried.
const BATCHES: i64 = 16;

/// What a `503` may take beyond [`ACQUIRE_TIMEOUT`]: the hop to the group
/// commit's flusher and back, and the response, on a loaded machine.
const RESPONSE_MARGIN: Duration = Duration::from_secs(2);

/// How long after the first push the second one is made.
const SECOND_PUSH_AFTER: Duration = Duration::from_secs(3);

mod an_exhausted_pool_is_a_503_and_deferred_pushes_wait {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(db) = crate::support::Db::postgres().await {
            crate::support::bounded(super::an_exhausted_pool_is_a_503_and_deferred_pushes_wait(
                db,
            ))
            .await;
        }
    }
}

async fn push_now(State(queue): State<JobQueue>) -> Result<Json<JobId>, JobError> {
    Ok(Json(queue.push(&Add { x: -1, y: 0 }).await?))
}

/// Two jobs, `(x, 0)` and `(x, 1)`, pushed together after the response:
/// one connection each batch.
async fn enqueue_batch(
    State(queue): State<JobQueue>,
    Path(x): Path<i64>,
    tasks: BackgroundTasks,
) -> Result<Json<Vec<JobId>>, JobError> {
    let jobs = [Add { x, y: 0 }, Add { x, y: 1 }];
    Ok(Json(queue.enqueue_all(&tasks, jobs)?))
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

/// Connections to this test's database waiting for a lock.
async fn waiting_on_a_lock(db: &Db) -> i64 {
    let mut conn = db.postgres_connection().await;
    let waiting = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count the waiting connections");
    let _ = conn.close().await;
    waiting
}

async fn an_exhausted_pool_is_a_503_and_deferred_pushes_wait(db: Db) {
    let queue = db.queue().await;
    let supervisor = Supervisor::new();
    let app = Router::new()
        .route("/now", post(push_now))
        .route("/batch/{x}", post(enqueue_batch))
        .with_state(queue.clone())
        .layer(supervisor.layer());

    // Inserts wait for this transaction; reads do not.
    let mut lock = db.postgres_connection().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE apalis.jobs IN SHARE MODE")
        .execute(&mut lock)
        .await
        .expect("lock the job table");
    let mut ids: HashMap<(i64, i64), JobId> = HashMap::new();
    for x in 0..BATCHES {
        let (status, body) = status_and_json(post_to(&app, &format!("/batch/{x}")).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let batch: Vec<JobId> = serde_json::from_value(body).expect("the jobs' ids");
        ids.insert((x, 0), batch[0]);
        ids.insert((x, 1), batch[1]);
    }
    // Every connection is in an insert waiting for the lock; the batches
    // that came after wait for a connection.
    let pool_held = async {
        while waiting_on_a_lock(&db).await < POOL {
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(BOUND, pool_held)
        .await
        .expect("timed out waiting until every connection of the pool is held");

    let started = Instant::now();
    let first = async {
        let response = post_to(&app, "/now").await;
        (response, started.elapsed())
    };
    let second = async {
        tokio::time::sleep(SECOND_PUSH_AFTER).await;
        let made = Instant::now();
        let response = post_to(&app, "/now").await;
        (response, made.elapsed())
    };
    let ((first, waited), (second, second_waited)) =
        tokio::time::timeout(ACQUIRE_TIMEOUT + RESPONSE_MARGIN, async {
            tokio::join!(first, second)
        })
        .await
        .expect("pushes with no connection to be had end within ACQUIRE_TIMEOUT of the first");
    assert!(
        second_waited < ACQUIRE_TIMEOUT + RESPONSE_MARGIN - SECOND_PUSH_AFTER,
        "the second push waited {second_waited:?}: for a connection wait of its own"
    );
    for response in [first, second] {
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "job-database-unavailable", "{body}");
        // From the pool, not from a connection the database dropped.
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains("pool timed out"), "{message}");
    }
    assert_eq!(queue.stats().pushed_deferred, 0);
    // The batches that found no connection waited for one from before the
    // pushes did, so their waits have ended too: each has failed and is
    // waiting to retry. None waits for a connection a second time, to
    // check whether a push that sent nothing was stored.
    let retried = async {
        while queue.stats().push_retries < (BATCHES - POOL) as u64 {
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(RESPONSE_MARGIN, retried)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "deferred batches with no connection were not retried within ACQUIRE_TIMEOUT: {:?}",
                queue.stats()
            )
        });
    assert_eq!(
        waiting_on_a_lock(&db).await,
        POOL,
        "the pool is still held, by the same inserts"
    );

    sqlx::raw_sql("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("release the lock");
    wait_until("every deferred job is stored", || {
        queue.stats().pushed_deferred == 2 * BATCHES as u64
    })
    .await;
    let stats = queue.stats();
    assert_eq!(
        (
            stats.deferred,
            stats.abandoned,
            stats.pushed - stats.pushed_deferred
        ),
        (2 * BATCHES as u64, 0, 0),
        "{stats:?}"
    );
    let stored = db.stored_args().await;
    let mut found: HashMap<(i64, i64), Vec<JobId>> = HashMap::new();
    for (id, args) in stored {
        let key = (
            args["x"].as_i64().expect("an Add job"),
            args["y"].as_i64().expect("an Add job"),
        );
        found.entry(key).or_default().push(id);
    }
    assert_eq!(found.len(), ids.len(), "the jobs stored: {found:?}");
    for (key, id) in &ids {
        assert_eq!(found.get(key), Some(&vec![*id]), "job {key:?} stored once");
    }
    println!(
        "the pushes waited {waited:?} and {second_waited:?} for a connection, then 503; \
         {} deferred pushes retried; {stats:?}",
        stats.push_retries
    );

    // The connections are back: a push is stored again.
    let (status, body) = status_and_json(post_to(&app, "/now").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(supervisor.shutdown().await.is_complete());
}
