//! Mixed load through the admission machinery: a supervisor with
//! `max_running(16)`, `blocking_limit(4)` and a named lane `("email", 2)`,
//! and many keep-alive clients whose requests each queue one to three tasks
//! of mixed kinds — plain async tasks (some returning `Err`), blocking tasks,
//! e-mail-lane tasks, tasks with a short timeout (some hanging past it), and
//! sequential and concurrent groups of three steps (async, blocking, async),
//! some with a failing step.
//!
//! At the end `submitted == accounted()`, and each outcome counter
//! (completed, failed, timed out, skipped) is exactly what the plan
//! injected; every lane's high-water mark is within its limit, as is the
//! concurrency seen from inside the tasks; and every task (or group step)
//! that ran did its side effect exactly once, and no other did.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_background::{Group, Stats, Supervisor, Task};

use crate::harness::{
    accounted, fetch_on_keep_alive_connections, id_of, mix, scaled, settled, shut_down_as_settled,
    summary, Ledger, Server,
};
use crate::support::{background_tasks, stats, Peak};

const MAX_RUNNING: usize = 16;
const BLOCKING_LIMIT: usize = 4;
const EMAIL_LIMIT: usize = 2;

/// At most this many tasks per request, and this many steps per task: step
/// `s` of task `k` of request `id` is ledger slot
/// `(id * MAX_TASKS + k) * STEPS + s` (plain tasks use step 0).
const MAX_TASKS: u64 = 3;
const STEPS: u64 = 3;

/// The timeout of the `Timeout` tasks; those that exceed it hang for far
/// longer.
const TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Async,
    Blocking,
    Email,
    Timeout,
    Sequential,
    Concurrent,
}

fn tasks_of(id: u64) -> u64 {
    1 + mix(id, 1) % MAX_TASKS
}

fn kind(id: u64, k: u64) -> Kind {
    match mix(id, 10 + k) % 8 {
        0 | 1 => Kind::Async,
        2 | 3 => Kind::Blocking,
        4 => Kind::Email,
        5 => Kind::Timeout,
        6 => Kind::Sequential,
        _ => Kind::Concurrent,
    }
}

/// A plain async task that returns `Err` (after its work): one in eight.
fn fails(id: u64, k: u64) -> bool {
    mix(id, 20 + k) % 8 == 0
}

/// A timeout task that hangs past its timeout: one in four of them.
fn exceeds(id: u64, k: u64) -> bool {
    mix(id, 30 + k) % 4 == 0
}

/// The group step that fails (after its work), if any: half the groups.
fn failing_step(id: u64, k: u64) -> Option<u64> {
    let step = mix(id, 40 + k) % (2 * STEPS);
    (step < STEPS).then_some(step)
}

fn slot(id: u64, k: u64, step: u64) -> u64 {
    (id * MAX_TASKS + k) * STEPS + step
}

/// What a step or task returns: `Err` if it is the one that fails.
fn result(fail: bool, what: &str) -> Result<(), String> {
    if fail {
        Err(format!("{what}: injected error"))
    } else {
        Ok(())
    }
}

/// Concurrency seen from inside the tasks, per lane.
#[derive(Clone, Default)]
struct Inside {
    default: Peak,
    blocking: Peak,
    email: Peak,
}

fn group(
    group: Group,
    ledger: &Ledger,
    inside: &Inside,
    id: u64,
    k: u64,
    fail: Option<u64>,
) -> Group {
    let step = |s: u64| (slot(id, k, s), fail == Some(s));
    let ((a, fail_a), (b, fail_b), (c, fail_c)) = (step(0), step(1), step(2));
    let (la, lb, lc) = (ledger.clone(), ledger.clone(), ledger.clone());
    let blocking = inside.blocking.clone();
    group
        .step(async move {
            la.record(a);
            tokio::task::yield_now().await;
            result(fail_a, "step 0")
        })
        .blocking_step(move || {
            let _inside = blocking.enter();
            lb.record(b);
            result(fail_b, "step 1")
        })
        .step(async move {
            lc.record(c);
            result(fail_c, "step 2")
        })
}

async fn handle(
    request: Request<Incoming>,
    ledger: Ledger,
    inside: Inside,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = id_of(&request);
    let tasks = background_tasks(&request);
    for k in 0..tasks_of(id) {
        let (ledger, inside) = (ledger.clone(), inside.clone());
        let task = slot(id, k, 0);
        match kind(id, k) {
            Kind::Async => tasks.add(async move {
                let _inside = inside.default.enter();
                ledger.record(task);
                tokio::task::yield_now().await;
                result(fails(id, k), "async task")
            }),
            Kind::Blocking => tasks.add_blocking(move || {
                let _inside = inside.blocking.enter();
                ledger.record(task);
                std::thread::sleep(Duration::from_micros(200));
            }),
            Kind::Email => tasks.add(
                Task::new(async move {
                    let _inside = inside.email.enter();
                    ledger.record(task);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                })
                .lane("email"),
            ),
            Kind::Timeout => tasks.add(
                Task::new(async move {
                    let _inside = inside.default.enter();
                    ledger.record(task);
                    if exceeds(id, k) {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                })
                .timeout(TIMEOUT),
            ),
            Kind::Sequential => tasks.add(group(
                Group::sequential(),
                &ledger,
                &inside,
                id,
                k,
                failing_step(id, k),
            )),
            Kind::Concurrent => tasks.add(group(
                Group::concurrent(),
                &ledger,
                &inside,
                id,
                k,
                failing_step(id, k),
            )),
        }
    }
    Ok(Response::new(Full::new(Bytes::from(id.to_string()))))
}

/// How many times slot `(id, k, step)` is expected to have run.
fn expected_runs(id: u64, k: u64, step: u64) -> u32 {
    if k >= tasks_of(id) {
        return 0;
    }
    let ran = match kind(id, k) {
        Kind::Async | Kind::Blocking | Kind::Email | Kind::Timeout => step == 0,
        Kind::Sequential => failing_step(id, k).map_or(true, |fail| step <= fail),
        Kind::Concurrent => true,
    };
    u32::from(ran)
}

fn lane<'a>(stats: &'a Stats, name: &str) -> &'a tower_background::LaneStats {
    stats
        .lanes
        .iter()
        .find(|lane| lane.name == name)
        .unwrap_or_else(|| panic!("no lane {name:?} in {:?}", stats.lanes))
}

/// 40 connections × 25 requests by default; 200 × 100 under
/// `RELIABILITY_SCALE=full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_lanes_and_timeouts_under_load_add_up() {
    let clients = scaled(40, 200) as u64;
    let requests = scaled(25, 100) as u64;
    let total = clients * requests;

    let supervisor = Supervisor::builder()
        .max_running(MAX_RUNNING)
        .blocking_limit(BLOCKING_LIMIT)
        .lane("email", EMAIL_LIMIT)
        .max_queued(100_000)
        .build();
    let monitor = supervisor.monitor();
    let ledger = Ledger::new((total * MAX_TASKS * STEPS) as usize);
    let inside = Inside::default();
    let service = ServiceBuilder::new().layer(supervisor.layer()).service_fn({
        let (ledger, inside) = (ledger.clone(), inside.clone());
        move |request| handle(request, ledger.clone(), inside.clone())
    });
    let server = Server::start(service).await;

    let started = Instant::now();
    fetch_on_keep_alive_connections(
        server.addr(),
        clients,
        requests,
        "/mixed",
        |id, status, body| {
            assert_eq!(status, StatusCode::OK, "request {id}");
            assert_eq!(body, id.to_string(), "request {id} got another's answer");
        },
    )
    .await;
    let load_time = started.elapsed();
    let settled_stats = settled(&monitor).await;
    let drain_time = started.elapsed();
    server.assert_one_connection_per_client(clients);
    server.shut_down_idle().await;

    // What the plan says each counter must be.
    let (mut submitted, mut completed, mut failed, mut timed_out, mut skipped) = (0, 0, 0, 0, 0);
    let (mut failing_tasks, mut failing_groups) = (0, 0);
    let mut by_kind = [0u64; 6];
    for id in 0..total {
        for k in 0..tasks_of(id) {
            submitted += 1;
            let kind = kind(id, k);
            by_kind[kind as usize] += 1;
            match kind {
                Kind::Async if fails(id, k) => {
                    failed += 1;
                    failing_tasks += 1;
                }
                Kind::Timeout if exceeds(id, k) => timed_out += 1,
                Kind::Sequential | Kind::Concurrent => match failing_step(id, k) {
                    Some(step) => {
                        failed += 1;
                        failing_groups += 1;
                        if kind == Kind::Sequential {
                            skipped += STEPS - 1 - step;
                        }
                    }
                    None => completed += 1,
                },
                _ => completed += 1,
            }
        }
    }
    let expected = stats(|s| {
        s.submitted = submitted;
        s.completed = completed;
        s.failed = failed;
        s.timed_out = timed_out;
        s.skipped = skipped;
    });
    let report =
        shut_down_as_settled(supervisor, &settled_stats, &expected, "admission load").await;
    assert!(report.is_complete() && !report.aborted);

    // The lanes' limits held, in the stats and as the tasks saw them.
    let limits = [
        ("default", MAX_RUNNING),
        ("blocking", BLOCKING_LIMIT),
        ("email", EMAIL_LIMIT),
    ];
    for (name, limit) in limits {
        let lane = lane(&settled_stats, name);
        assert_eq!(lane.limit, Some(limit as u64), "{lane:?}");
        assert!(lane.high_water <= limit as u64, "{lane:?}");
        assert_eq!((lane.running, lane.queued), (0, 0), "{lane:?}");
    }
    assert!(inside.default.most() <= MAX_RUNNING);
    assert!(inside.blocking.most() <= BLOCKING_LIMIT);
    assert!(inside.email.most() <= EMAIL_LIMIT);
    let high_water: Vec<String> = limits
        .iter()
        .map(|(name, limit)| format!("{name} {}/{limit}", lane(&settled_stats, name).high_water))
        .collect();

    // Every task and step that ran did its work exactly once; nothing that
    // was skipped ran.
    let once = ledger.assert_each(|slot| {
        let (task, step) = (slot / STEPS, slot % STEPS);
        expected_runs(task / MAX_TASKS, task % MAX_TASKS, step)
    });

    let [asynchronous, blocking, email, timeout, sequential, concurrent] = by_kind;
    summary(
        "admission load",
        &format!(
            "{clients} keep-alive connections × {requests} requests = {total} requests, \
             {submitted} tasks (async {asynchronous}, blocking {blocking}, email lane {email}, \
             timeout {timeout}, sequential groups {sequential}, concurrent groups {concurrent}) \
             in {load_time:.1?}, settled at {drain_time:.1?}; {} (timed out {timed_out}); injected: {failing_tasks} async tasks returning Err, \
             {timed_out} timeout tasks hanging past it, {failing_groups} groups with a failing \
             step; skipped steps {skipped}; \
             side effects exactly once {once}; lane high-water {}; seen inside: default {}, \
             blocking {}, email {}",
            accounted(&report.stats),
            high_water.join(", "),
            inside.default.most(),
            inside.blocking.most(),
            inside.email.most(),
        ),
    );
}
