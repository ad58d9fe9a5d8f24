//! The database restarted under load (see [`Db::cuttable_queue`] for what
//! "down" is on each engine): the outage begins while pushes are being
//! group-committed and deferred pushes are being flushed, and ends while
//! more keep arriving. Nothing accepted is lost, and every duplicate is
//! counted:
//!
//! - a `push` that returned `Ok(id)` has its job stored, once, under `id`;
//! - a `push` that returned `Err` stored nothing, or (its commit went
//!   through but the answer was lost with the connection) stored its job
//!   once: the caller cannot tell, and a caller that pushed again would
//!   store it twice. Those are counted and printed, the risk of duplicates;
//! - every deferred job (`enqueue`) is stored exactly once, under the id
//!   its response gave, none abandoned.
//!
//! Every job carries its own payload (`x`), so each is found by what it
//! holds, including those whose `push` failed and gave no id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_background::durable::{JobError, JobId, JobQueue};
use tower_background::{BackgroundTasks, Supervisor};

use crate::jobs::Add;
use crate::support::{on_each_engine, wait_until, Db};

on_each_engine!(a_restart_mid_flight_loses_nothing_accepted);

/// Tasks pushing at once, each one push after another: enough that the
/// group commit always has a commit in flight and the next one queued.
const PUSHERS: usize = 64;

/// Requests each wave of deferred pushes sends at once.
const WAVE: usize = 16;

/// Waves of deferred jobs that may wait for the database at a time.
const MAX_PENDING_WAVES: u64 = 4;

/// How long the database stays away: shorter than
/// [`ACQUIRE_TIMEOUT`](tower_background::durable::ACQUIRE_TIMEOUT), so a
/// push that arrives during the outage waits for the database and is
/// stored; the pushes that fail are those the outage cut mid-commit.
const OUTAGE: Duration = Duration::from_secs(1);

/// `y` of a job pushed with `push`; a deferred one has `y = DEFERRED`.
const PUSHED: i64 = 0;
const DEFERRED: i64 = 1;

async fn enqueue(
    State(queue): State<JobQueue>,
    Path(x): Path<i64>,
    tasks: BackgroundTasks,
) -> Result<Json<JobId>, JobError> {
    Ok(Json(queue.enqueue(&tasks, Add { x, y: DEFERRED })?))
}

/// Sends `/later/{x}` and returns the id its response gives, after reading
/// the body to the end (which hands the deferred push off).
async fn enqueue_through(app: &Router, x: i64) -> JobId {
    let request = Request::post(format!("/later/{x}"))
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("the job's id")
}

async fn a_restart_mid_flight_loses_nothing_accepted(db: Db) {
    let (queue, mut outage) = db.cuttable_queue().await;
    let supervisor = Supervisor::new();
    let app = Router::new()
        .route("/later/{x}", post(enqueue))
        .with_state(queue.clone())
        .layer(supervisor.layer());
    // Unique payloads for every job, pushed or deferred.
    let next = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let pushers: Vec<_> = (0..PUSHERS)
        .map(|_| {
            let (queue, next, stop) = (queue.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                let mut pushes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let x = next.fetch_add(1, Ordering::Relaxed);
                    pushes.push((x, queue.push(&Add { x, y: PUSHED }).await));
                }
                pushes
            })
        })
        .collect();
    let deferrer = {
        let (app, queue, next, stop) = (app.clone(), queue.clone(), next.clone(), stop.clone());
        tokio::spawn(async move {
            let mut deferred = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Kept coming, so that every group commit holds deferred
                // jobs too, but no faster than they are stored: the waves
                // span the outage rather than fill the memory bound.
                if queue.stats().pending >= MAX_PENDING_WAVES * WAVE as u64 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let wave = (0..WAVE).map(|_| {
                    let x = next.fetch_add(1, Ordering::Relaxed);
                    let app = &app;
                    async move { (x, enqueue_through(app, x).await) }
                });
                deferred.extend(futures_util::future::join_all(wave).await);
            }
            deferred
        })
    };

    // Mid-flight: pushes and deferred pushes have been stored, and more are
    // on their way.
    wait_until("pushes and deferred pushes are being stored", || {
        let stats = queue.stats();
        stats.pushed - stats.pushed_deferred >= 2 * PUSHERS as u64
            && stats.pushed_deferred >= WAVE as u64
    })
    .await;
    outage.begin().await;
    tokio::time::sleep(OUTAGE).await;
    outage.end().await;
    let pushed_at_end = queue.stats().pushed;
    wait_until("jobs are stored again", || {
        queue.stats().pushed > pushed_at_end
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut pushes = Vec::new();
    for pusher in pushers {
        pushes.extend(pusher.await.expect("a pusher"));
    }
    let deferred = deferrer.await.expect("the deferrer");
    wait_until("every deferred job is stored", || {
        let stats = queue.stats();
        stats.pushed_deferred == stats.deferred
    })
    .await;
    assert!(supervisor.shutdown().await.is_complete());

    let mut stored: HashMap<i64, Vec<JobId>> = HashMap::new();
    for (id, args) in db.stored_args().await {
        let x = args["x"].as_i64().expect("an Add job");
        stored.entry(x).or_default().push(id);
    }
    let mut failed = 0;
    let mut failed_but_stored = 0;
    for (x, pushed) in &pushes {
        let found = stored.get(x).map_or(&[][..], Vec::as_slice);
        match pushed {
            Ok(id) => assert_eq!(found, [*id], "push {x} returned Ok"),
            Err(error) => {
                assert!(matches!(error, JobError::Database(_)), "{error:?}");
                assert!(found.len() <= 1, "push {x} failed, stored {found:?}");
                failed += 1;
                failed_but_stored += found.len();
            }
        }
    }
    for (x, id) in &deferred {
        assert_eq!(
            stored.get(x).map(Vec::as_slice),
            Some(&[*id][..]),
            "deferred job {x}"
        );
    }
    let stats = queue.stats();
    println!(
        "{} pushes: {} Ok, {failed} Err ({failed_but_stored} of them stored all the same: \
         the duplicates a caller pushing again would make); {} deferred, all stored once \
         ({} push retries); {stats:?}",
        pushes.len(),
        pushes.len() - failed,
        deferred.len(),
        stats.push_retries,
    );
    let rows: usize = stored.values().map(Vec::len).sum();
    assert_eq!(
        rows,
        pushes.len() - failed + failed_but_stored + deferred.len(),
        "no job the test did not push"
    );
    assert_eq!(
        (stats.deferred, stats.pushed_deferred, stats.abandoned),
        (deferred.len() as u64, deferred.len() as u64, 0),
        "{stats:?}"
    );
    assert_eq!(
        stats.pushed - stats.pushed_deferred,
        (pushes.len() - failed) as u64,
        "{stats:?}"
    );
}
