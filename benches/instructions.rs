//! Instruction counts: what the layer, `add` and the hand-off cost, each next
//! to its baseline, counted by callgrind rather than timed.
//!
//! The wall clock on the shared two-vCPU machine these figures come from
//! swings by up to 2× from one run to the next while others build, and
//! `perf stat -e instructions` is not supported in its VM. Callgrind counts
//! the instructions executed (Ir), which do not depend on the load: the same
//! binary gives the same count (but for the two sleep scenarios, whose timers
//! follow the clock: a few Ir per unit). It does not see cache misses or
//! waits, so it measures work, not time; the wall-clock benches (`handoff`,
//! `load`) say what the work costs in time.
//!
//! This binary runs one scenario of `n` units (tasks or requests) on a
//! current-thread runtime, with no tracing subscriber (`tracing`'s `log`
//! feature is on, as axum's default `tower-log` feature turns it on), and
//! returns once every task it started has run. A figure is
//!
//! > Ir per unit = (Ir for n = 22 000 − Ir for n = 2 000) ÷ 20 000,
//!
//! so that what a run costs whatever its `n` (start-up, building the
//! runtime and the services, the shutdown) cancels out. Count them all, or
//! some, with
//!
//! ```text
//! bash benches/instructions.sh [scenario ...]
//! ```
//!
//! which builds this bench, runs each scenario under
//! `valgrind --tool=callgrind` at both sizes and prints the table. By hand:
//! `cargo bench -p benches --bench instructions --no-run` prints the binary's path, then
//! `valgrind --tool=callgrind <binary> nreq 2000` (and 22000).
//!
//! Run without a scenario, as `cargo test --all-features` and a bare
//! `cargo bench -p benches --bench instructions` run it, it is a check, not a
//! measurement: every scenario once with `n` = 1 000, one line each (a
//! single word instead: only the scenarios whose name contains it).
//! `--list` prints the scenario names.
//!
//! The scenarios. Each trivial task ticks a countdown, and the scenario waits
//! until it reaches zero, then, with a supervisor, for `wait_idle`, and checks
//! the shutdown report. A request is a `POST` to `/signup?plan=free` with an
//! empty body, served in process by `support::requests::serve_one`, which
//! reads the response body frame by frame as hyper does.
//!
//! - `spawn` (baseline): `n` × `tokio::spawn` of a trivial task; per task.
//! - `batch`: requests through the layer of 1 000 trivial tasks each, each
//!   request's tasks waited for before the next (as `handoff`'s
//!   `one_request_n_tasks` does); per task. `n` is a multiple of 1 000.
//! - `nreq`: `n` requests through the layer, each adding one trivial task;
//!   per request.
//! - `nreq_sleep`: the same with a task that sleeps 8 s (all `n` asleep at
//!   once; the requests yield every 64 so that the tasks start meanwhile).
//! - `spawn_sleep` (baseline): `n` requests without the layer whose handler
//!   `tokio::spawn`s the same 8 s sleep, yielding the same way.
//! - `empty`: `n` requests through the layer whose handler looks the
//!   handle up and adds no task.
//! - `bare` (baseline): `n` requests to the same handler without the layer.
//! - `ext` (baseline): `n` requests through a layer that only inserts one
//!   extension (a clone of an `Arc`), which the handler reads: the floor
//!   under any layer that hands the handler something.
//! - `nreq_spawn` (baseline): `n` requests, no layer, each handler
//!   `tokio::spawn`s one trivial task.
//! - `nreq_tracker` (baseline): the same with `TaskTracker::spawn`.
//!
//! And through an axum `Router`: the same URI, but `GET` to a `get` route as
//! the `load` bench serves, each request on a clone of the service, as
//! `axum::serve` (through hyper-util) calls it; per request:
//!
//! - `ax_bare` (baseline): a handler returning `"ok"`, no layer.
//! - `ax_ext` (baseline): the same with `Router::layer` of a layer that only
//!   inserts one extension (as `ext`).
//! - `ax_layer`: the same handler, `Router::layer(supervisor.layer())`.
//! - `ax_add`: `Router::layer(supervisor.layer())`, the handler extracts
//!   `BackgroundTasks` and adds one trivial task.
//! - `ax_spawn` (baseline): no layer, the handler `tokio::spawn`s it.
//! - `ax_tracker` (baseline): no layer, `TaskTracker::spawn` from the
//!   router's state.
//! - `ax_layer_around`: `ax_layer` with the layer around the whole router
//!   instead, mapping the body back to axum's `Body` as `axum::serve` needs
//!   (the stack `BackgroundTaskLayer`'s docs show).
//! - `ax_add_around`: `ax_add` with the layer around the router.
//!
//! Every router gets `.with_state(())` once before it serves, as
//! `axum::serve` does with a `Router` (`into_make_service`): without it axum
//! would turn each handler into a route again on every request.

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request as AxumRequest, State};
use axum::response::Response as AxumResponse;
use axum::routing::get;
use axum::Router;
use http::{Request, Uri};
use tokio_util::task::TaskTracker;
use tower::util::MapRequestLayer;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_background::{BackgroundTasks, Supervisor};

mod support;
use support::requests::{current_thread_runtime, ok, read_to_end, serve_one, tasks_of, URI};

/// Tasks per request in `batch`.
const BATCH: usize = 1000;
/// Units per scenario in the check pass: one batch.
const SMOKE_N: usize = BATCH;
/// How long the tasks of `nreq_sleep` and `spawn_sleep` sleep when measured:
/// longer than 22 000 requests take under callgrind, so that all of them
/// are asleep at once.
const SLEEP: Duration = Duration::from_secs(8);
/// The same in the check pass, which should not wait for seconds.
const SMOKE_SLEEP: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Spawn,
    Batch,
    Nreq,
    NreqSleep,
    SpawnSleep,
    Empty,
    Bare,
    Ext,
    NreqSpawn,
    NreqTracker,
    AxBare,
    AxExt,
    AxLayer,
    AxAdd,
    AxSpawn,
    AxTracker,
    AxLayerAround,
    AxAddAround,
}

/// Every scenario by name, in the order the check pass and
/// `instructions.sh` run them.
const SCENARIOS: [(&str, Scenario); 18] = [
    ("spawn", Scenario::Spawn),
    ("batch", Scenario::Batch),
    ("nreq", Scenario::Nreq),
    ("nreq_sleep", Scenario::NreqSleep),
    ("spawn_sleep", Scenario::SpawnSleep),
    ("empty", Scenario::Empty),
    ("bare", Scenario::Bare),
    ("ext", Scenario::Ext),
    ("nreq_spawn", Scenario::NreqSpawn),
    ("nreq_tracker", Scenario::NreqTracker),
    ("ax_bare", Scenario::AxBare),
    ("ax_ext", Scenario::AxExt),
    ("ax_layer", Scenario::AxLayer),
    ("ax_add", Scenario::AxAdd),
    ("ax_spawn", Scenario::AxSpawn),
    ("ax_tracker", Scenario::AxTracker),
    ("ax_layer_around", Scenario::AxLayerAround),
    ("ax_add_around", Scenario::AxAddAround),
];

// ---------------------------------------------------------------------------
// The countdown

/// Trivial tasks still to run: armed with a scenario's task count, ticked
/// by each task, waited for by yielding until it is low enough.
static LEFT: AtomicUsize = AtomicUsize::new(0);

fn arm(tasks: usize) {
    LEFT.store(tasks, Ordering::Relaxed);
}

/// The trivial task's whole body.
fn tick() {
    LEFT.fetch_sub(1, Ordering::Relaxed);
}

/// Yields to the scheduler until no more than `left` trivial tasks are
/// still to run.
async fn settle_to(left: usize) {
    while LEFT.load(Ordering::Relaxed) > left {
        tokio::task::yield_now().await;
    }
}

/// Yields until every trivial task has run.
async fn settle() {
    settle_to(0).await;
}

// ---------------------------------------------------------------------------
// Supervisors and requests

/// The supervisor of every scenario: limits high enough that no task ever
/// waits for a slot or is refused.
fn supervisor() -> Supervisor {
    Supervisor::builder()
        .max_running(1 << 20)
        .max_queued(1 << 20)
        .grace_period(Duration::from_millis(20))
        .cleanup_period(Duration::from_millis(10))
        .build()
}

/// Waits until `supervisor` is idle, shuts it down and checks that exactly
/// `tasks` tasks ran, all to their end.
async fn finish(supervisor: Supervisor, tasks: usize) {
    supervisor.wait_idle().await;
    let report = supervisor.shutdown().await;
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.stats.completed, tasks as u64, "{report}");
}

fn uri() -> Uri {
    URI.parse().expect("a URI")
}

/// Serves `n` requests to `service`, one after another.
async fn serve<S, B>(service: &mut S, n: usize)
where
    S: Service<Request<()>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let uri = uri();
    for _ in 0..n {
        serve_one(service, &uri).await;
    }
}

/// Serves `n` requests to `service`, yielding to the scheduler after every
/// 64, so that the tasks they spawn start (and their timers are set) while
/// the requests go on, as they would in a server.
async fn serve_yielding<S, B>(service: &mut S, n: usize)
where
    S: Service<Request<()>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let uri = uri();
    for i in 0..n {
        serve_one(service, &uri).await;
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
}

/// Serves `n` `GET` requests with empty bodies the way `axum::serve` does:
/// each on a clone of `app`, driven by `oneshot`, the response body read
/// frame by frame to its end.
async fn serve_axum<S>(app: S, n: usize)
where
    S: Service<AxumRequest, Response = AxumResponse, Error = Infallible> + Clone,
{
    let uri = uri();
    for _ in 0..n {
        let mut request = AxumRequest::new(Body::empty());
        *request.uri_mut() = uri.clone();
        let body = app
            .clone()
            .oneshot(request)
            .await
            .expect("infallible")
            .into_body();
        read_to_end(body).await;
    }
}

/// Inserted by the `ext` scenarios' layer: one clone of an `Arc` per
/// request.
#[derive(Clone, Debug)]
struct Marker {
    _shared: Arc<()>,
}

impl Marker {
    fn new() -> Self {
        Self {
            _shared: Arc::new(()),
        }
    }
}

// ---------------------------------------------------------------------------
// The scenarios

/// Runs `scenario` with `n` units on a fresh current-thread runtime, the
/// sleeping tasks sleeping for `sleep`, and returns once all its tasks have
/// run.
fn run(scenario: Scenario, n: usize, sleep: Duration) {
    current_thread_runtime().block_on(async move {
        match scenario {
            Scenario::Spawn => {
                arm(n);
                for _ in 0..n {
                    drop(tokio::spawn(async { tick() }));
                }
                settle().await;
            }
            Scenario::Batch => batch(n).await,
            Scenario::Nreq => one_task_requests(n, || async { tick() }).await,
            Scenario::NreqSleep => nreq_sleep(n, sleep).await,
            Scenario::SpawnSleep => spawn_sleep(n, sleep).await,
            Scenario::Empty => {
                let supervisor = supervisor();
                let mut service =
                    supervisor
                        .layer()
                        .layer(service_fn(|request: Request<()>| async move {
                            let _ = tasks_of(&request);
                            Ok::<_, Infallible>(ok())
                        }));
                serve(&mut service, n).await;
                finish(supervisor, 0).await;
            }
            Scenario::Bare => {
                let mut service = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(ok()) });
                serve(&mut service, n).await;
            }
            Scenario::Ext => {
                let marker = Marker::new();
                let mut service = ServiceBuilder::new()
                    .map_request(move |mut request: Request<()>| {
                        request.extensions_mut().insert(marker.clone());
                        request
                    })
                    .service(service_fn(|request: Request<()>| async move {
                        let _ = request.extensions().get::<Marker>().expect("the marker");
                        Ok::<_, Infallible>(ok())
                    }));
                serve(&mut service, n).await;
            }
            Scenario::NreqSpawn => {
                arm(n);
                let mut service = service_fn(|_: Request<()>| async {
                    drop(tokio::spawn(async { tick() }));
                    Ok::<_, Infallible>(ok())
                });
                serve(&mut service, n).await;
                settle().await;
            }
            Scenario::NreqTracker => {
                arm(n);
                let tracker = TaskTracker::new();
                let mut service = service_fn(move |_: Request<()>| {
                    let tracker = tracker.clone();
                    async move {
                        drop(tracker.spawn(async { tick() }));
                        Ok::<_, Infallible>(ok())
                    }
                });
                serve(&mut service, n).await;
                settle().await;
            }
            Scenario::AxBare
            | Scenario::AxExt
            | Scenario::AxLayer
            | Scenario::AxAdd
            | Scenario::AxSpawn
            | Scenario::AxTracker
            | Scenario::AxLayerAround
            | Scenario::AxAddAround => through_axum(scenario, n).await,
        }
    });
}

/// `batch`: requests of [`BATCH`] tasks, each request's tasks waited for
/// before the next request.
async fn batch(n: usize) {
    let supervisor = supervisor();
    let mut service = supervisor
        .layer()
        .layer(service_fn(|request: Request<()>| async move {
            let tasks = tasks_of(&request);
            for _ in 0..BATCH {
                tasks.add(async { tick() });
            }
            Ok::<_, Infallible>(ok())
        }));
    let uri = uri();
    arm(n);
    for request in 1..=n / BATCH {
        serve_one(&mut service, &uri).await;
        settle_to(n - request * BATCH).await;
    }
    finish(supervisor, n).await;
}

/// `nreq`: `n` requests through the layer, each adding one task made by
/// `task`, which ticks.
async fn one_task_requests<T, F>(n: usize, task: T)
where
    T: Fn() -> F + Copy + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let supervisor = supervisor();
    let mut service =
        supervisor
            .layer()
            .layer(service_fn(move |request: Request<()>| async move {
                tasks_of(&request).add(task());
                Ok::<_, Infallible>(ok())
            }));
    arm(n);
    serve(&mut service, n).await;
    settle().await;
    finish(supervisor, n).await;
}

/// `nreq_sleep`: `n` requests through the layer, each adding a task that
/// sleeps for `sleep`.
async fn nreq_sleep(n: usize, sleep: Duration) {
    let supervisor = supervisor();
    let mut service =
        supervisor
            .layer()
            .layer(service_fn(move |request: Request<()>| async move {
                tasks_of(&request).add(tokio::time::sleep(sleep));
                Ok::<_, Infallible>(ok())
            }));
    serve_yielding(&mut service, n).await;
    finish(supervisor, n).await;
}

/// `spawn_sleep`: `n` requests without the layer, each handler spawning a
/// task that sleeps for `sleep`.
async fn spawn_sleep(n: usize, sleep: Duration) {
    let mut service = service_fn(move |_: Request<()>| async move {
        drop(tokio::spawn(tokio::time::sleep(sleep)));
        Ok::<_, Infallible>(ok())
    });
    serve_yielding(&mut service, n).await;
    // The last task's sleep ends before this one does; then wait, should
    // any still be about to run, until none is left.
    tokio::time::sleep(sleep).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    while metrics.num_alive_tasks() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn bare() -> &'static str {
    "ok"
}

async fn spawn() -> &'static str {
    drop(tokio::spawn(async { tick() }));
    "ok"
}

async fn add(tasks: BackgroundTasks) -> &'static str {
    tasks.add(async { tick() });
    "ok"
}

async fn track(State(tracker): State<TaskTracker>) -> &'static str {
    drop(tracker.spawn(async { tick() }));
    "ok"
}

/// The `ax_*` scenarios.
async fn through_axum(scenario: Scenario, n: usize) {
    let supervisor = supervisor();
    let route = |handler| Router::new().route("/signup", handler);
    let router: Router = match scenario {
        Scenario::AxBare | Scenario::AxLayerAround => route(get(bare)),
        Scenario::AxExt => {
            let marker = Marker::new();
            route(get(bare)).layer(MapRequestLayer::new(move |mut request: AxumRequest| {
                request.extensions_mut().insert(marker.clone());
                request
            }))
        }
        Scenario::AxLayer => route(get(bare)).layer(supervisor.layer()),
        Scenario::AxAdd => route(get(add)).layer(supervisor.layer()),
        Scenario::AxAddAround => route(get(add)),
        Scenario::AxSpawn => route(get(spawn)),
        Scenario::AxTracker => Router::new()
            .route("/signup", get(track))
            .with_state(TaskTracker::new()),
        other => unreachable!("{other:?} is not served through axum"),
    };
    // What `axum::serve` (`into_make_service`) does: every handler becomes a
    // route once, not on each request.
    let router: Router = router.with_state(());
    let tasks = match scenario {
        Scenario::AxAdd | Scenario::AxSpawn | Scenario::AxTracker | Scenario::AxAddAround => n,
        _ => 0,
    };
    arm(tasks);
    if matches!(scenario, Scenario::AxLayerAround | Scenario::AxAddAround) {
        // `axum::serve` takes axum's own body type.
        let app = ServiceBuilder::new()
            .map_response(|response: http::Response<_>| response.map(Body::new))
            .layer(supervisor.layer())
            .service(router);
        serve_axum(app, n).await;
    } else {
        serve_axum(router, n).await;
    }
    settle().await;
    let added = match scenario {
        Scenario::AxAdd | Scenario::AxAddAround => n,
        _ => 0,
    };
    finish(supervisor, added).await;
}

// ---------------------------------------------------------------------------
// The command line

/// The check pass: every scenario whose name contains `filter` (all without
/// one), with [`SMOKE_N`] units, one line each.
fn smoke(filter: Option<&str>) {
    println!(
        "(run without a scenario: a small check pass, not a measurement; \
         `bash benches/instructions.sh` counts instructions)"
    );
    let mut ran = 0;
    for (name, scenario) in SCENARIOS {
        if filter.is_some_and(|filter| !name.contains(filter)) {
            continue;
        }
        let started = Instant::now();
        run(scenario, SMOKE_N, SMOKE_SLEEP);
        println!(
            "  {:<16} ok: n = {SMOKE_N} in {:.1?}",
            name,
            started.elapsed()
        );
        ran += 1;
    }
    if ran == 0 {
        println!("  no scenario's name contains {:?}", filter.unwrap_or(""));
    }
}

/// Says what went wrong and how to call this binary, on stderr; exit
/// status 2.
fn usage(problem: &str) -> ExitCode {
    eprintln!("instructions: {problem}");
    eprintln!();
    eprintln!(
        "usage: instructions <scenario> <n>  run one scenario with n units (under callgrind)"
    );
    eprintln!("       instructions [filter]        check pass: each scenario (whose name contains");
    eprintln!("                                    filter) with n = {SMOKE_N}");
    eprintln!("       instructions --list          the scenario names, one a line");
    eprintln!();
    let names: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
    eprintln!(
        "scenarios (see benches/instructions.rs): {}",
        names.join(" ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        for (name, _) in SCENARIOS {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    // `cargo bench` adds `--bench`, and `cargo test` may pass libtest's
    // flags: none of them means anything here.
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    match words[..] {
        [] => smoke(None),
        [filter] => smoke(Some(filter)),
        [name, n] => {
            let Some(&(_, scenario)) = SCENARIOS.iter().find(|(known, _)| *known == name) else {
                return usage(&format!("no scenario named {name:?}"));
            };
            let Ok(n) = n.parse::<usize>() else {
                return usage(&format!("not a number of units: {n:?}"));
            };
            if scenario == Scenario::Batch && n % BATCH != 0 {
                return usage(&format!("{name} needs a multiple of {BATCH}, not {n}"));
            }
            run(scenario, n, SLEEP);
        }
        _ => return usage("too many arguments"),
    }
    ExitCode::SUCCESS
}
