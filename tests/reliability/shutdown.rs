//! Shutdown under load: clients hammer the server on keep-alive
//! connections; mid-load a SIGTERM-equivalent (a oneshot) makes the server
//! stop accepting and drain gracefully (hyper-util's `GracefulShutdown`:
//! each connection finishes the request it is serving, then closes), and
//! then the supervisor shuts down with a 1 s grace period. Some tasks are
//! quick, some sleep up to 1.5 s, some never end.
//!
//! Every request a client got an answer to had its tasks accepted (none
//! refused, none left waiting), no task of an unanswered request exists,
//! the report adds up, each task that completed did its work exactly once
//! and each one cancelled did not, and the supervisor's shutdown returned
//! within grace + 2 s (a bound on a hang, not a speed claim).

use std::convert::Infallible;
use std::future::pending;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_background::{BackgroundTasks, Supervisor};

use crate::harness::{accounted, id_of, mix, scaled, summary, Client, Clients, Ledger, Server};
use crate::support::{background_tasks, eventually, within};

const MAX_TASKS: u64 = 3;
const GRACE: Duration = Duration::from_secs(1);
const CLEANUP: Duration = Duration::from_millis(300);
/// How long the HTTP drain may take before the server gives up on it.
const DRAIN: Duration = Duration::from_secs(5);
/// Requests a client sends at most; the signal comes long before.
const PER_CLIENT: u64 = 1000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Quick,
    QuickBlocking,
    /// Sleeps 50 ms to 1.5 s: may finish within the grace period or not.
    Slow,
    /// Never ends: aborted when the grace period is over.
    Hangs,
}

fn tasks_of(id: u64) -> u64 {
    1 + mix(id, 1) % MAX_TASKS
}

fn kind(id: u64, k: u64) -> Kind {
    match mix(id, 10 + k) % 20 {
        0..=9 => Kind::Quick,
        10..=14 => Kind::QuickBlocking,
        15..=18 => Kind::Slow,
        _ => Kind::Hangs,
    }
}

fn queue(tasks: &BackgroundTasks, id: u64, ledger: &Ledger) {
    for k in 0..tasks_of(id) {
        let (ledger, task) = (ledger.clone(), id * MAX_TASKS + k);
        // `record` is each task's last step, with no `.await` after it: a
        // task aborted at an `.await` has not recorded, one that recorded
        // is not aborted.
        match kind(id, k) {
            Kind::Quick => tasks.add(async move { ledger.record(task) }),
            Kind::QuickBlocking => tasks.add_blocking(move || ledger.record(task)),
            Kind::Slow => tasks.add(async move {
                let nap = 50 + mix(id, 20 + k) % 1450;
                tokio::time::sleep(Duration::from_millis(nap)).await;
                ledger.record(task);
            }),
            Kind::Hangs => tasks.add(async move {
                pending::<()>().await;
                ledger.record(task);
            }),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_drains_requests_then_tasks_and_counts_everything() {
    let clients = scaled(100, 200) as u64;
    // The signal comes once this many requests have been answered.
    let signal_after = scaled(3000, 20_000) as u64;
    let ids = clients * PER_CLIENT;

    let supervisor = Supervisor::builder()
        .grace_period(GRACE)
        .cleanup_period(CLEANUP)
        .build();
    let monitor = supervisor.monitor();
    let ledger = Ledger::new((ids * MAX_TASKS) as usize);
    let handled = Arc::new(AtomicU64::new(0));
    let service = ServiceBuilder::new().layer(supervisor.layer()).service_fn({
        let (ledger, handled) = (ledger.clone(), Arc::clone(&handled));
        move |request: Request<Incoming>| {
            let id = id_of(&request);
            queue(background_tasks(&request), id, &ledger);
            handled.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(id.to_string())))) }
        }
    });
    let server = Server::start(service).await;
    let addr = server.addr();

    // The application's `main` after start-up: wait for SIGTERM, drain
    // HTTP, then shut the supervisor down.
    let (sigterm, signal) = oneshot::channel::<()>();
    let app = tokio::spawn(async move {
        let _ = signal.await;
        let signalled = Instant::now();
        let drained = server.shutdown(DRAIN).await;
        let began = Instant::now();
        let report = supervisor.shutdown().await;
        (drained, report, began.elapsed(), signalled.elapsed())
    });

    let answered: Arc<[AtomicBool]> = (0..ids).map(|_| AtomicBool::new(false)).collect();
    let answers = Arc::new(AtomicU64::new(0));
    let signalled = Arc::new(AtomicBool::new(false));
    let load = Clients::spawn(clients, |client| {
        let (answered, answers, signalled) = (
            Arc::clone(&answered),
            Arc::clone(&answers),
            Arc::clone(&signalled),
        );
        async move {
            let mut connection = Client::connect(addr).await.expect("connect");
            for i in 0..PER_CLIENT {
                let id = client * PER_CLIENT + i;
                // After the signal the server closes this connection: the
                // request fails, and this client is done.
                let (status, body) = match connection.fetch(&format!("/work/{id}")).await {
                    Ok(answer) => answer,
                    Err(_) if signalled.load(Ordering::SeqCst) => return,
                    Err(error) => panic!("request {id} failed before the signal: {error}"),
                };
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body, id.to_string());
                answered[id as usize].store(true, Ordering::SeqCst);
                answers.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    // SIGTERM, mid-load.
    eventually("the load to reach the signal point", || {
        answers.load(Ordering::SeqCst) >= signal_after
    })
    .await;
    let at_signal = answers.load(Ordering::SeqCst);
    signalled.store(true, Ordering::SeqCst);
    sigterm.send(()).expect("the app is running");
    let (drained, report, took, total_time) = within("the app to exit", app)
        .await
        .expect("the app does not panic");

    load.finish("the clients to stop").await;
    assert!(drained.complete, "every connection closed within {DRAIN:?}");
    assert!(
        took <= GRACE + Duration::from_secs(2),
        "shutdown took {took:?} with a {GRACE:?} grace period"
    );
    assert!(
        total_time <= DRAIN + GRACE + Duration::from_secs(2),
        "{total_time:?} from the signal to the report"
    );

    // In-flight requests finished: every request the handler saw was
    // answered, and every answered request's tasks, and only those, were
    // accepted.
    let answered_ids: Vec<u64> = (0..ids)
        .filter(|&id| answered[id as usize].load(Ordering::SeqCst))
        .collect();
    let total = answered_ids.len() as u64;
    assert_eq!(handled.load(Ordering::SeqCst), total, "handled == answered");
    assert!(total < ids, "the signal came mid-load");
    let planned: u64 = answered_ids.iter().map(|&id| tasks_of(id)).sum();
    let s = report.stats;
    assert_eq!(s.submitted, planned, "{s:?}");
    assert_eq!(s.submitted, s.accounted(), "{s:?}");
    assert_eq!(
        (s.refused, s.waiting, s.running, s.discarded),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!((s.failed, s.panicked), (0, 0), "{s:?}");
    let hanging = answered_ids
        .iter()
        .map(|&id| {
            (0..tasks_of(id))
                .filter(|&k| kind(id, k) == Kind::Hangs)
                .count() as u64
        })
        .sum::<u64>();
    assert!(s.cancelled >= hanging, "{s:?}, {hanging} hanging tasks");
    assert!(report.aborted);

    // Completed tasks did their work exactly once, cancelled ones not at
    // all; unanswered requests have no tasks to do any.
    let (mut done, mut slow_done) = (0, 0);
    for task in 0..ids * MAX_TASKS {
        let (id, k) = (task / MAX_TASKS, task % MAX_TASKS);
        let runs = ledger.get(task);
        let exists = answered[id as usize].load(Ordering::SeqCst) && k < tasks_of(id);
        assert!(runs <= u32::from(exists), "task {task} ran {runs} times");
        if kind(id, k) == Kind::Hangs {
            assert_eq!(runs, 0, "a hanging task finished");
        }
        done += u64::from(runs);
        slow_done += u64::from(runs == 1 && kind(id, k) == Kind::Slow);
    }
    assert_eq!(done, s.completed, "completed == side effects");
    assert_eq!(
        s.cancelled,
        s.submitted - done,
        "cancelled == no side effect"
    );
    eventually("nothing to move after the report", || monitor.stats() == s).await;

    summary(
        "shutdown under load",
        &format!(
            "{clients} keep-alive connections; SIGTERM after {at_signal} answers; \
             {total} requests answered in all, {planned} tasks accepted; HTTP drain {:.2?}, \
             supervisor shutdown {took:.2?} (grace {GRACE:?}), signal to report {total_time:.2?}; \
             {}; {hanging} hung and {} slow ones cut short, {slow_done} slow ones finished",
            drained.elapsed,
            accounted(&s),
            s.cancelled - hanging,
        ),
    );
}
