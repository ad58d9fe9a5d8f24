//! Bad input, the core part: a route whose handler takes the
//! `BackgroundTasks` extractor but that the layer was not put around (a
//! programming error) answers every request with a `500` and a JSON body
//! naming the layer to add; nothing panics, the server keeps serving on the
//! same keep-alive connections, and the tasks of the properly layered route
//! next to it are all accepted and run. (Tracked-task routes will add
//! malformed ids, oversized JSON and floods when tracked tasks land.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;
use tower_background::{BackgroundTasks, Supervisor};

use crate::harness::{
    accounted, scaled, settled, shut_down_as_settled, summary, Client, Clients, Ledger, Server,
};
use crate::support::{stats, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_missing_the_layer_answers_500_json_and_the_server_keeps_serving() {
    let clients = scaled(10, 50) as u64;
    let requests = scaled(40, 200) as u64;
    let total = clients * requests;

    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let ledger = Ledger::new(total as usize);
    let next = Arc::new(AtomicU64::new(0));
    let visit = {
        let (ledger, next) = (ledger.clone(), next);
        move |tasks: BackgroundTasks| async move {
            let id = next.fetch_add(1, Ordering::SeqCst);
            tasks.add(async move { ledger.record(id) });
            StatusCode::CREATED
        }
    };
    // The same handler twice: once with the layer around it, once without.
    let router = Router::new()
        .route("/with", post(visit.clone()).layer(supervisor.layer()))
        .route("/without", post(visit));
    let server = Server::start(router).await;

    let started = Instant::now();
    let load = Clients::spawn(clients, |client| {
        let addr = server.addr();
        async move {
            let mut connection = Client::connect(addr).await.expect("connect");
            let (mut with, mut without) = (0, 0);
            for i in 0..requests {
                let layered = (client + i) % 2 == 0;
                let path = if layered { "/with" } else { "/without" };
                let request = Request::post(path)
                    .header(HOST, "localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = connection.send(request).await.expect("served");
                let status = response.status();
                let json = response
                    .headers()
                    .get(CONTENT_TYPE)
                    .is_some_and(|value| value == "application/json");
                let body = within("the body", response.into_body().collect())
                    .await
                    .unwrap()
                    .to_bytes();
                if layered {
                    assert_eq!(status, StatusCode::CREATED);
                    with += 1;
                } else {
                    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                    assert!(json, "a JSON error");
                    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(error["error"], "missing-background-task-layer");
                    let message = error["message"].as_str().unwrap();
                    assert!(message.contains("BackgroundTaskLayer"), "{message}");
                    without += 1;
                }
            }
            (with, without)
        }
    });
    let (mut with, mut without) = (0, 0);
    for (w, wo) in load.finish("the clients").await {
        with += w;
        without += wo;
    }
    let settled_stats = settled(&monitor).await;
    let elapsed = started.elapsed();
    server.assert_one_connection_per_client(clients);
    drop(server);

    // Only the layered route's handler ran to the end: the other one was
    // rejected before it was called.
    let expected = stats(|s| {
        s.submitted = with;
        s.completed = with;
    });
    let report = shut_down_as_settled(supervisor, &settled_stats, &expected, "bad input").await;
    let ran = ledger.assert_each(|id| u32::from(id < with));
    assert_eq!(ran, with);

    summary(
        "bad input: extractor without the layer",
        &format!(
            "{clients} keep-alive connections × {requests} requests: {without} to the route \
             without the layer, all 500 + JSON naming BackgroundTaskLayer; {with} to the \
             layered route, all 201; connections kept {clients}/{clients}; {}; tasks run \
             exactly once: {ran}; {elapsed:.1?}",
            accounted(&report.stats),
        ),
    );
}
