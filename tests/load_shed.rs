//! `LoadShedLayer`: `503` with `Retry-After` and a JSON body while the
//! backlog is above the mark, and back to normal below it.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::within;
use tokio::sync::Semaphore;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_background::{BackgroundTasks, LoadShedLayer, Supervisor};

/// Every request queues one task that waits for `gate`.
fn app(
    background: &Supervisor,
    high_water: u64,
    gate: Arc<Semaphore>,
) -> impl Service<
    Request<()>,
    Response = Response<
        tower_background::load_shed::ResponseBody<
            tower_background::layer::ResponseBody<Full<Bytes>>,
        >,
    >,
    Error = Infallible,
> + Clone {
    let handler = service_fn(move |request: Request<()>| {
        let gate = Arc::clone(&gate);
        async move {
            let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
            tasks.add(async move {
                let _ = gate.acquire().await;
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }
    });
    let service = background.layer().layer(handler);
    LoadShedLayer::new(&background.monitor(), high_water)
        .retry_after(Duration::from_secs(3))
        .layer(service)
}

#[tokio::test]
async fn sheds_above_the_mark_and_recovers_below_it() {
    let background = Supervisor::new();
    let gate = Arc::new(Semaphore::new(0));
    let app = app(&background, 2, Arc::clone(&gate));

    // Three requests fill the backlog past the mark of 2 (their bodies are
    // read, so their tasks are handed off and wait on the gate).
    for _ in 0..3 {
        let response = app.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(background.stats().backlog(), 3);

    // The fourth is shed: 503, Retry-After, JSON, and the handler never ran.
    let response = app.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "overloaded");
    let stats = background.stats();
    assert_eq!((stats.shed, stats.submitted), (1, 3), "{stats:?}");

    // The backlog drains: requests pass again.
    gate.add_permits(100);
    within("the tasks to finish", background.wait_idle()).await;
    let response = app.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    gate.add_permits(100);
    let report = within("shutdown", background.shutdown()).await;
    assert_eq!(report.stats.submitted, report.stats.accounted());
}

/// A group waiting for a blocking slot is one queued-or-running task, not
/// two: its waiting step must not be subtracted from the task counts.
#[tokio::test]
async fn group_steps_waiting_for_a_slot_do_not_skew_the_counts() {
    use tower_background::Group;

    let background = Supervisor::builder().blocking_limit(1).build();
    let gate = Arc::new(Semaphore::new(0));
    let handler = {
        let gate = Arc::clone(&gate);
        service_fn(move |request: Request<()>| {
            let gate = Arc::clone(&gate);
            async move {
                let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
                for _ in 0..3 {
                    let gate = Arc::clone(&gate);
                    let handle = tokio::runtime::Handle::current();
                    tasks.add(Group::sequential().blocking_step(move || {
                        let _ = handle.block_on(gate.acquire());
                    }));
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
            }
        })
    };
    let app = background.layer().layer(handler);
    let response = app.oneshot(Request::new(())).await.unwrap();
    response.into_body().collect().await.unwrap();

    // One group runs its step; the other two wait for the blocking slot.
    within("two steps to queue", async {
        while background.stats().lanes[1].queued < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let stats = background.stats();
    assert_eq!(stats.running, 3, "{stats:?}");
    assert_eq!(stats.backlog(), 3, "{stats:?}");
    assert_eq!(background.monitor().backlog(), 3);
    assert_eq!(stats.submitted, stats.accounted(), "{stats:?}");

    gate.add_permits(3);
    within("the groups", background.wait_idle()).await;
    assert_eq!(background.stats().completed, 3);
}
