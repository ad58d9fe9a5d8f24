//! Load: many concurrent keep-alive clients, each request queuing one to
//! three tasks of mixed kinds (async, some yielding; blocking), a sixteenth
//! of them returning `Err`. At the end, accepted == the sum of the outcomes,
//! each outcome counter is exactly what the plan says, and every task's
//! side effect happened exactly once.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_background::Supervisor;

use crate::harness::{
    accounted, fetch_on_keep_alive_connections, id_of, mix, scaled, settled, shut_down_as_settled,
    summary, Ledger, Peaks, Server,
};
use crate::support::{background_tasks, stats};

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
    let tasks = background_tasks(&request);
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
    fetch_on_keep_alive_connections(server.addr(), clients, requests, "/load", {
        let answered = Arc::clone(&answered);
        move |id, status, body| {
            assert_eq!(status, StatusCode::OK, "request {id}");
            assert_eq!(body, id.to_string(), "request {id} got another's answer");
            answered.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await;
    let load_time = started.elapsed();
    let settled_stats = settled(&monitor).await;
    let (max_waiting, max_running) = peaks.stop().await;
    server.assert_one_connection_per_client(clients);
    server.shut_down_idle().await;

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
    let report = shut_down_as_settled(supervisor, &settled_stats, &expected, "load").await;
    assert!(report.is_complete() && !report.aborted);

    // Every task of every request did its work exactly once; no other slot
    // was touched.
    let once = ledger.assert_each_task(MAX_TASKS, |id, k| k < tasks_of(id));
    assert_eq!(once, submitted);

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
