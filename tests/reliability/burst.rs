//! A burst of slow tasks: with the default settings every task a handler adds
//! is accepted and runs, and shutdown right after the burst waits only for
//! the tasks' own work; with a configured limit, every task refused reaches
//! its client as a `503`, is counted, and is in the shutdown report's text.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_background::{Supervisor, DEFAULT_GRACE_PERIOD};

use crate::harness::{accounted, summary, Client, Clients, Peaks, Server};
use crate::support::{background_tasks, stats};

/// How long each task sleeps: an e-mail or a webhook call.
const TASK_TIME: Duration = Duration::from_secs(1);
/// How long the clients keep the server saturated.
const LOAD_TIME: Duration = Duration::from_secs(5);
/// Keep-alive connections, each sending its next request as soon as the
/// last one's body has arrived.
const CONNECTIONS: u64 = 64;

/// 64 keep-alive connections keep the server busy for 5 s, each request
/// adding one task that sleeps 1 s, on a supervisor with nothing but the
/// defaults. Every task is accepted (`rejected == 0`), every request is
/// answered `200`, every task completes, and the shutdown that follows the
/// load ends with the tasks' own work: nothing is cancelled, nothing had to
/// wait for the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sleeping_tasks_is_absorbed_with_the_default_settings() {
    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let slept = Arc::new(AtomicU64::new(0));
    let service = ServiceBuilder::new().layer(supervisor.layer()).service_fn({
        let slept = Arc::clone(&slept);
        move |request: Request<Incoming>| {
            let slept = Arc::clone(&slept);
            background_tasks(&request).add(async move {
                tokio::time::sleep(TASK_TIME).await;
                slept.fetch_add(1, Ordering::Relaxed);
            });
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        }
    });
    let server = Server::start(service).await;
    let peaks = Peaks::watch(&monitor);

    let load_ends = Instant::now() + LOAD_TIME;
    let answered: u64 = Clients::spawn(CONNECTIONS, |_| {
        let addr = server.addr();
        async move {
            let mut connection = Client::connect(addr).await.expect("connect");
            let mut answered = 0;
            while Instant::now() < load_ends {
                let (status, _) = connection.fetch("/signup").await.expect("a response");
                assert_eq!(status, StatusCode::OK, "a task was refused");
                answered += 1;
            }
            answered
        }
    })
    .finish("the clients")
    .await
    .into_iter()
    .sum();
    // No task waits for a slot: each started as its response ended, so
    // shutdown has only the last second's sleeps to wait for.
    let at_load_end = monitor.stats();
    assert_eq!(at_load_end.queued, 0, "{at_load_end:?}");
    server.shut_down_idle().await;
    let (_, peak_running) = peaks.stop().await;

    let report = supervisor.shutdown().await;
    assert_eq!(report.stats.rejected, 0, "{report}");
    assert!(!report.aborted, "{report}");
    assert!(report.elapsed < DEFAULT_GRACE_PERIOD, "{report}");
    assert_eq!(
        crate::support::counts(report.stats.clone()),
        stats(|s| {
            s.submitted = answered;
            s.completed = answered;
        }),
        "{report}"
    );
    assert_eq!(slept.load(Ordering::SeqCst), answered);
    summary(
        "burst",
        &format!(
            "{CONNECTIONS} keep-alive connections for {LOAD_TIME:?}: {answered} requests, \
             each adding a task sleeping {TASK_TIME:?}; peak running {peak_running}; \
             shutdown right after: {report}"
        ),
    );
}

/// Past a configured limit (`max_running(4)`, `max_queued(16)`, tasks held
/// on a gate), every request whose plain `add` is rejected is answered `503`
/// with `Retry-After` and a JSON error, a request that had queued another
/// task first has that task discarded with it, and the counts and the
/// report's text name every rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reaches_the_client_as_a_503_and_the_report() {
    const RUNNING: u64 = 4;
    const QUEUED: u64 = 16;
    let supervisor = Supervisor::builder()
        .max_running(RUNNING as usize)
        .max_queued(QUEUED as usize)
        .build();
    let monitor = supervisor.monitor();
    let (open, gate) = watch::channel(false);
    let ran = Arc::new(AtomicU64::new(0));
    let service = ServiceBuilder::new().layer(supervisor.layer()).service_fn({
        let ran = Arc::clone(&ran);
        move |request: Request<Incoming>| {
            let tasks = background_tasks(&request);
            // `/two` adds two tasks, the others one.
            let count = if request.uri().path() == "/two" { 2 } else { 1 };
            for _ in 0..count {
                let (ran, mut gate) = (Arc::clone(&ran), gate.clone());
                tasks.add(async move {
                    let _ = gate.wait_for(|open| *open).await;
                    ran.fetch_add(1, Ordering::SeqCst);
                });
            }
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        }
    });
    let server = Server::start(service).await;
    let mut client = Client::connect(server.addr()).await.expect("connect");

    // One request at a time, so which one is refused is certain: RUNNING
    // tasks start and hold their slots, QUEUED - 1 wait behind them.
    let mut statuses = Vec::new();
    for _ in 0..RUNNING + QUEUED - 1 {
        statuses.push(client.fetch("/one").await.expect("a response").0);
    }
    assert!(statuses.iter().all(|status| *status == StatusCode::OK));
    // One place is left: `/two`'s first task takes it and its second is
    // rejected, so the request is answered 503 and its first task dropped.
    let response = client.get("/two").await.expect("a response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    // The place `/two` took is free again: the next `/one` is accepted,
    // and the nine after it are refused.
    let mut refused = 1;
    for n in 0..10 {
        let response = client.get("/one").await.expect("a response");
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("the body")
            .to_bytes();
        if n == 0 {
            assert_eq!(status, StatusCode::OK);
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                body,
                format!(
                    r#"{{"error":"background-queue-full","message":"the background task queue is full ({QUEUED} tasks waiting)"}}"#
                ),
            );
            refused += 1;
        }
    }
    drop(client);
    server.shut_down_idle().await;

    let accepted = RUNNING + QUEUED;
    let stats_now = monitor.stats();
    assert_eq!(stats_now.rejected, refused);
    open.send_replace(true);
    let report = supervisor.shutdown().await;
    assert_eq!(
        crate::support::counts(report.stats.clone()),
        stats(|s| {
            s.submitted = accepted + 1;
            s.completed = accepted;
            s.discarded = 1;
            s.discard_reasons.server_error = 1;
            s.rejected = refused;
        }),
        "{report}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), accepted);
    let text = report.to_string();
    assert!(
        text.contains(&format!("{refused} rejected (queue full)")),
        "{text}"
    );
    assert!(text.contains("1 discarded"), "{text}");
    summary(
        "burst (limited)",
        &format!(
            "max_running {RUNNING}, max_queued {QUEUED}: {refused} requests answered 503; {}; {report}",
            accounted(&report.stats)
        ),
    );
}
