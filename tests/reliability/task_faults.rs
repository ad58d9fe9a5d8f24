//! Task faults: over real connections, requests queue tasks that complete,
//! return `Err`, panic (async and blocking alike), hang forever, ignore the
//! cancellation token in a loop, watch the token and stop cleanly (returning
//! `Ok` or `Err`), or block their thread ignoring the token. Then the
//! server drains and the supervisor shuts down with a 1 s grace period:
//! each task is counted exactly once, by what it did — failed, panicked,
//! completed, or cancelled when it had to be aborted — the `on_failure`
//! hook sees every failure once, and shutdown returns within grace + 2 s.

use std::convert::Infallible;
use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_background::{BackgroundTasks, Supervisor};

use crate::harness::{
    accounted, fetch_on_keep_alive_connections, id_of, inject_panic, mix, quiet_injected_panics,
    scaled, summary, Ledger, Server,
};
use crate::support::{background_tasks, counts, eventually, stats, within, Gate};

const MAX_TASKS: u64 = 3;
const GRACE: Duration = Duration::from_secs(1);
const CLEANUP: Duration = Duration::from_millis(400);

/// What a task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Completes,
    CompletesBlocking,
    Fails,
    FailsBlocking,
    Panics,
    PanicsBlocking,
    /// Never returns and never looks at the token: aborted.
    Hangs,
    /// Wakes every 10 ms forever, ignoring the token: aborted.
    IgnoresToken,
    /// Waits for the token, then returns `Ok`: completed.
    StopsCleanly,
    /// Waits for the token, then returns `Err`: failed.
    StopsWithError,
    /// A blocking closure that polls the token, then returns `Ok`: completed.
    StopsCleanlyBlocking,
    /// A blocking closure stuck on a gate the test opens only after the
    /// report: counted cancelled, left to finish, never counted again.
    BlocksPastShutdown,
}

const KINDS: [Kind; 12] = [
    Kind::Completes,
    Kind::CompletesBlocking,
    Kind::Fails,
    Kind::FailsBlocking,
    Kind::Panics,
    Kind::PanicsBlocking,
    Kind::Hangs,
    Kind::IgnoresToken,
    Kind::StopsCleanly,
    Kind::StopsWithError,
    Kind::StopsCleanlyBlocking,
    Kind::BlocksPastShutdown,
];

fn tasks_of(id: u64) -> u64 {
    1 + mix(id, 1) % MAX_TASKS
}

/// Mostly short tasks; about one in five outlives the requests.
fn kind(id: u64, k: u64) -> Kind {
    match mix(id, 10 + k) % 40 {
        0..=11 => Kind::Completes,
        12..=17 => Kind::CompletesBlocking,
        18..=21 => Kind::Fails,
        22..=24 => Kind::FailsBlocking,
        25..=27 => Kind::Panics,
        28..=29 => Kind::PanicsBlocking,
        30..=31 => Kind::Hangs,
        32..=33 => Kind::IgnoresToken,
        34..=35 => Kind::StopsCleanly,
        36 => Kind::StopsWithError,
        37..=38 => Kind::StopsCleanlyBlocking,
        _ => Kind::BlocksPastShutdown,
    }
}

impl Kind {
    /// Ends by itself, before shutdown.
    fn is_short(self) -> bool {
        matches!(
            self,
            Kind::Completes
                | Kind::CompletesBlocking
                | Kind::Fails
                | Kind::FailsBlocking
                | Kind::Panics
                | Kind::PanicsBlocking
        )
    }

    /// Whether its side effect happens (by the end of the test).
    fn records(self) -> bool {
        !matches!(self, Kind::Hangs | Kind::IgnoresToken)
    }
}

/// Wakes every 10 ms, forever, never looking at the cancellation token.
async fn ticks_forever() {
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn queue(tasks: &BackgroundTasks, kind: Kind, ledger: Ledger, task: u64, gate: &Gate) {
    let token = tasks.cancellation_token();
    let record = move || ledger.record(task);
    match kind {
        Kind::Completes => tasks.add(async move { record() }),
        Kind::CompletesBlocking => tasks.add_blocking(record),
        Kind::Fails => tasks.add(async move {
            record();
            Err::<(), _>("injected task error")
        }),
        Kind::FailsBlocking => tasks.add_blocking(move || {
            record();
            Err::<(), _>("injected blocking task error")
        }),
        Kind::Panics => tasks.add(async move {
            record();
            inject_panic("async task");
        }),
        Kind::PanicsBlocking => tasks.add_blocking(move || {
            record();
            inject_panic("blocking task");
        }),
        Kind::Hangs => tasks.add(async move {
            pending::<()>().await;
            record();
        }),
        Kind::IgnoresToken => tasks.add(async move {
            ticks_forever().await;
            record();
        }),
        Kind::StopsCleanly => tasks.add(async move {
            token.cancelled().await;
            record();
        }),
        Kind::StopsWithError => tasks.add(async move {
            token.cancelled().await;
            record();
            Err::<(), _>("stopped before finishing")
        }),
        Kind::StopsCleanlyBlocking => tasks.add_blocking(move || {
            while !token.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            record();
        }),
        Kind::BlocksPastShutdown => {
            let gate = gate.clone();
            tasks.add_blocking(move || {
                gate.wait();
                record();
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_fault_is_counted_exactly_and_shutdown_is_bounded() {
    quiet_injected_panics();
    let clients = scaled(10, 50) as u64;
    let requests = scaled(20, 40) as u64;
    let total = clients * requests;

    let failures = Arc::new(AtomicU64::new(0));
    let supervisor = Supervisor::builder()
        .grace_period(GRACE)
        .cleanup_period(CLEANUP)
        // Every blocking fault must be running when shutdown comes (stuck
        // closures would otherwise fill the default 16 blocking slots and
        // keep the short ones queued); the lane's limit itself is tested in
        // tests/admission.rs.
        .blocking_limit(1024)
        .on_failure({
            let failures = Arc::clone(&failures);
            move |_| {
                failures.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    let monitor = supervisor.monitor();
    let ledger = Ledger::new((total * MAX_TASKS) as usize);
    let gate = Gate::default();
    let service = ServiceBuilder::new().layer(supervisor.layer()).service_fn({
        let (ledger, gate) = (ledger.clone(), gate.clone());
        move |request: Request<Incoming>| {
            let id = id_of(&request);
            let tasks = background_tasks(&request);
            for k in 0..tasks_of(id) {
                queue(
                    tasks,
                    kind(id, k),
                    ledger.clone(),
                    id * MAX_TASKS + k,
                    &gate,
                );
            }
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        }
    });
    let server = Server::start(service).await;

    fetch_on_keep_alive_connections(
        server.addr(),
        clients,
        requests,
        "/tasks",
        |_, status, _| {
            assert_eq!(status, StatusCode::OK, "the server keeps serving");
        },
    )
    .await;

    let mut per_kind = [0_u64; KINDS.len()];
    for id in 0..total {
        for k in 0..tasks_of(id) {
            per_kind[kind(id, k) as usize] += 1;
        }
    }
    let count = |kinds: &[Kind]| kinds.iter().map(|&k| per_kind[k as usize]).sum::<u64>();
    let short = KINDS
        .iter()
        .filter(|k| k.is_short())
        .map(|&k| per_kind[k as usize])
        .sum::<u64>();
    let long = count(&KINDS) - short;

    // The short tasks end by themselves; the long ones are all still running.
    // A task whose work has returned stays in `running` until the runtime
    // next polls it (see `Stats::running`), so that count is waited for too,
    // not read at the moment the last outcome is.
    eventually("the short tasks to end", || {
        let s = monitor.stats();
        s.completed + s.failed + s.panicked == short
    })
    .await;
    eventually("only the long tasks to be running", || {
        monitor.stats().running == long
    })
    .await;
    let lanes_running: u64 = monitor.stats().lanes.iter().map(|lane| lane.running).sum();
    assert_eq!(lanes_running, long, "{:?}", monitor.stats());
    server.shut_down_idle().await;

    let began = Instant::now();
    let report = within("shutdown", supervisor.shutdown()).await;
    let took = began.elapsed();

    let expected = stats(|s| {
        s.submitted = count(&KINDS);
        s.completed = count(&[
            Kind::Completes,
            Kind::CompletesBlocking,
            Kind::StopsCleanly,
            Kind::StopsCleanlyBlocking,
        ]);
        s.failed = count(&[Kind::Fails, Kind::FailsBlocking, Kind::StopsWithError]);
        s.panicked = count(&[Kind::Panics, Kind::PanicsBlocking]);
        s.cancelled = count(&[Kind::Hangs, Kind::IgnoresToken, Kind::BlocksPastShutdown]);
    });
    assert_eq!(counts(report.stats.clone()), expected);
    assert!(report.aborted, "some tasks had to be aborted");
    assert!(
        took <= GRACE + Duration::from_secs(2),
        "shutdown took {took:?} with a {GRACE:?} grace period"
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        expected.failed + expected.panicked,
        "the hook saw each failure once"
    );

    // The stuck blocking closures finish once let go, and are not counted
    // again.
    gate.open();
    let stuck = count(&[Kind::BlocksPastShutdown]);
    eventually("the stuck blocking closures to finish", || {
        (0..total * MAX_TASKS)
            .filter(|&task| {
                let (id, k) = (task / MAX_TASKS, task % MAX_TASKS);
                k < tasks_of(id) && kind(id, k) == Kind::BlocksPastShutdown
            })
            .all(|task| ledger.get(task) == 1)
    })
    .await;
    assert_eq!(
        counts(monitor.stats()),
        counts(report.stats.clone()),
        "counted once, as cancelled"
    );
    let recorded =
        ledger.assert_each_task(MAX_TASKS, |id, k| k < tasks_of(id) && kind(id, k).records());

    summary(
        "task faults",
        &format!(
            "{clients} connections × {requests} requests = {total} requests, {} tasks: \
             {} complete, {} return Err, {} panic, {} hang, {} ignore the token, \
             {} stop cleanly on it (Ok), {} stop on it with Err, {} block past shutdown; \
             {}; side effects {recorded} (each once); on_failure calls {}; \
             shutdown with a {GRACE:?} grace period took {took:.2?}",
            expected.submitted,
            count(&[Kind::Completes, Kind::CompletesBlocking]),
            count(&[Kind::Fails, Kind::FailsBlocking]),
            count(&[Kind::Panics, Kind::PanicsBlocking]),
            count(&[Kind::Hangs]),
            count(&[Kind::IgnoresToken]),
            count(&[Kind::StopsCleanly, Kind::StopsCleanlyBlocking]),
            count(&[Kind::StopsWithError]),
            stuck,
            accounted(&report.stats),
            failures.load(Ordering::SeqCst),
        ),
    );
}
