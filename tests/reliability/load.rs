//! Load: many concurrent keep-alive clients, each request queuing one to
//! three tasks of mixed kinds (async, some yielding; blocking), a sixteenth
//! of them returning `Err`. At the end, accepted == the sum of the outcomes,
//! each outcome counter is exactly what the plan says, and every task's
//! side effect happened exactly once.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_background::{BackgroundTasks, Supervisor};

use crate::harness::{
    accounted, id_of, mix, scaled, settled, summary, within, Client, Ledger, Peaks, Server,
};
use crate::support::{counts, stats};

/// At most this many tasks per request; task `k` of request `id` is task id
/// `id * MAX_TASKS + k` in the ledger.
const MAX_TASKS: u64 = 3;

/// What task `k` of request `id` is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Async,
    /// Async, and yields to the scheduler a few times first.
    Yielding,
    Blocking,
}

fn tasks_of(id: u64) -> u64 {
    1 + mix(id, 1) % MAX_TASKS
}

fn kind(id: u64, k: u64) -> Kind {
    match mix(id, 10 + k) % 3 {
        0 => Kind::Async,
        1 => Kind::Yielding,
        _ => Kind::Blocking,
    }
}

/// One task in sixteen returns `Err` (after doing its work).
fn fails(id: u64, k: u64) -> bool {
    mix(id, 20 + k) % 16 == 0
}

fn outcome(id: u64, k: u64) -> Result<(), String> {
    if fails(id, k) {
        Err(format!("task {k} of request {id}: injected error"))
    } else {
        Ok(())
    }
}

async fn handle(
    request: Request<Incoming>,
    ledger: Ledger,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = id_of(&request);
    let tasks = request
        .extensions()
        .get::<BackgroundTasks>()
        .expect("the layer is installed");
    for k in 0..tasks_of(id) {
        let ledger = ledger.clone();
        let task = id * MAX_TASKS + k;
        match kind(id, k) {
            Kind::Async => tasks.add(async move {
                ledger.record(task);
                outcome(id, k)
            }),
            Kind::Yielding => tasks.add(async move {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                ledger.record(task);
                outcome(id, k)
            }),
            Kind::Blocking => tasks.add_blocking(move || {
                ledger.record(task);
                outcome(id, k)
            }),
        }
    }
    // The body echoes the id, so each client checks it got its own answer.
    Ok(Response::new(Full::new(Bytes::from(id.to_string()))))
}

/// 200 connections × 50 requests by default; × 500 (the figure)
/// under `RELIABILITY_SCALE=full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_task_is_accounted_for_and_runs_exactly_once() {
    let clients = scaled(200, 200) as u64;
    let requests = scaled(50, 500) as u64;
    let total = clients * requests;

    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let ledger = Ledger::new((total * MAX_TASKS) as usize);
    let service = ServiceBuilder::new().layer(supervisor.layer()).service_fn({
        let ledger = ledger.clone();
        move |request| handle(request, ledger.clone())
    });
    let server = Server::start(service).await;
    let peaks = Peaks::watch(&monitor);

    let started = Instant::now();
    let answered = Arc::new(AtomicU64::new(0));
    let mut load = JoinSet::new();
    for client in 0..clients {
        let (addr, answered) = (server.addr(), Arc::clone(&answered));
        load.spawn(async move {
            let mut connection = Client::connect(addr).await.expect("connect");
            for i in 0..requests {
                let id = client * requests + i;
                let (status, body) = connection
                    .fetch(&format!("/load/{id}"))
                    .await
                    .unwrap_or_else(|error| panic!("request {id}: {error}"));
                assert_eq!(status, StatusCode::OK, "request {id}");
                assert_eq!(body, id.to_string(), "request {id} got another's answer");
                answered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(client) = within("the clients", load.join_next()).await {
        client.expect("a client failed");
    }
    let load_time = started.elapsed();
    let settled_stats = settled(&monitor).await;
    let (max_waiting, max_running) = peaks.stop().await;
    let connections = server.connections() as u64;
    let drained = server.shutdown(Duration::from_secs(5)).await;
    assert!(
        drained.complete,
        "idle keep-alive connections close at once"
    );

    // What the plan says each counter must be.
    let (mut submitted, mut failed, mut blocking) = (0, 0, 0);
    for id in 0..total {
        for k in 0..tasks_of(id) {
            submitted += 1;
            failed += u64::from(fails(id, k));
            blocking += u64::from(kind(id, k) == Kind::Blocking);
        }
    }
    let expected = stats(|s| {
        s.submitted = submitted;
        s.completed = submitted - failed;
        s.failed = failed;
    });
    assert_eq!(answered.load(Ordering::SeqCst), total);
    assert_eq!(counts(settled_stats.clone()), expected);
    let report = within("shutdown", supervisor.shutdown()).await;
    assert_eq!(
        counts(report.stats.clone()),
        expected,
        "nothing moved after the load"
    );
    assert!(report.is_complete() && !report.aborted);

    // Every task of every request did its work exactly once; no other slot
    // was touched.
    let once = ledger.assert_each(|task| {
        let (id, k) = (task / MAX_TASKS, task % MAX_TASKS);
        u32::from(k < tasks_of(id))
    });
    assert_eq!(once, submitted);
    assert_eq!(
        connections, clients,
        "every client kept its one connection alive"
    );

    summary(
        "load",
        &format!(
            "{clients} keep-alive connections × {requests} requests = {total} requests, \
             {submitted} tasks ({blocking} blocking, {failed} failing by design) in {load_time:.1?}; \
             {}; side effects exactly once: {once}/{submitted}; \
             peak waiting {max_waiting}, peak running {max_running}",
            accounted(&report.stats),
        ),
    );
}
