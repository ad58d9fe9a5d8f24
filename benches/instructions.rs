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
//! runtime and the services, the shutdown) cancels out. The figures are in
//! `BENCHMARKS.md`; the earlier ones there came from a scratch driver outside
//! the repository, which this bench replaces with the same scenarios under
//! the same names (its `ax_layer_outerb` and `ax_add_outerb` are
//! `ax_layer_around` and `ax_add_around` here). Count them all, or some, with
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
//!
//! - `spawn` (baseline): `n` × `tokio::spawn` of a trivial task; per task.
//! - `spawn_yield` (baseline): the same with a task that yields once.
//! - `spawn_batch` (baseline): `tokio::spawn` in batches of 1 000, waiting
//!   for each batch to run before the next; per task.
//! - `batch`: requests through the layer of 1 000 trivial tasks each, each
//!   request's tasks waited for before the next (as `handoff`'s
//!   `one_request_n_tasks` does); per task. `n` is a multiple of 1 000.
//! - `one`: one request through the layer that adds all `n` tasks; per task.
//! - `lane`: the same through the default lane limited to
//!   `max_running(1024)` (1 024 run, the rest queue); per task.
//!   `BENCHMARKS.md` quotes it at n = 10 000 and 110 000.
//! - `nreq`: `n` requests through the layer, each adding one trivial task;
//!   per request.
//! - `nreq_yield`: the same with a task that yields once.
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
//! turns each handler into a route again on every request (about 170 Ir more
//! per request, and 600–700 with `Router::layer`).

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
use support::requests::{ok, read_to_end, serve_one, tasks_of, URI};

/// Tasks per request in `batch`, and per batch in `spawn_batch`.
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
    SpawnYield,
    SpawnBatch,
    Batch,
    One,
    Lane,
    Nreq,
    NreqYield,
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

impl Scenario {
    const ALL: [Self; 23] = [
        Self::Spawn,
        Self::SpawnYield,
        Self::SpawnBatch,
        Self::Batch,
        Self::One,
        Self::Lane,
        Self::Nreq,
        Self::NreqYield,
        Self::NreqSleep,
        Self::SpawnSleep,
        Self::Empty,
        Self::Bare,
        Self::Ext,
        Self::NreqSpawn,
        Self::NreqTracker,
        Self::AxBare,
        Self::AxExt,
        Self::AxLayer,
        Self::AxAdd,
        Self::AxSpawn,
        Self::AxTracker,
        Self::AxLayerAround,
        Self::AxAddAround,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Spawn => "spawn",
            Self::SpawnYield => "spawn_yield",
            Self::SpawnBatch => "spawn_batch",
            Self::Batch => "batch",
            Self::One => "one",
            Self::Lane => "lane",
            Self::Nreq => "nreq",
            Self::NreqYield => "nreq_yield",
            Self::NreqSleep => "nreq_sleep",
            Self::SpawnSleep => "spawn_sleep",
            Self::Empty => "empty",
            Self::Bare => "bare",
            Self::Ext => "ext",
            Self::NreqSpawn => "nreq_spawn",
            Self::NreqTracker => "nreq_tracker",
            Self::AxBare => "ax_bare",
            Self::AxExt => "ax_ext",
            Self::AxLayer => "ax_layer",
            Self::AxAdd => "ax_add",
            Self::AxSpawn => "ax_spawn",
            Self::AxTracker => "ax_tracker",
            Self::AxLayerAround => "ax_layer_around",
            Self::AxAddAround => "ax_add_around",
        }
    }

    /// What one unit is, for the usage text (the `//!` comment says more).
    fn what(self) -> &'static str {
        match self {
            Self::Spawn => "tokio::spawn of a trivial task",
            Self::SpawnYield => "tokio::spawn of a task that yields once",
            Self::SpawnBatch => "tokio::spawn, in batches of 1000 each waited for",
            Self::Batch => "a task added, by requests of 1000 each waited for",
            Self::One => "a task added, all in one request",
            Self::Lane => "a task added, all in one request, through the default lane",
            Self::Nreq => "a request through the layer adding one trivial task",
            Self::NreqYield => "a request through the layer adding a task that yields once",
            Self::NreqSleep => "a request through the layer adding a task that sleeps",
            Self::SpawnSleep => "a request, no layer, tokio::spawn of a task that sleeps",
            Self::Empty => "a request through the layer, the handle looked up, no task added",
            Self::Bare => "a request, no layer",
            Self::Ext => "a request through a layer inserting one extension",
            Self::NreqSpawn => "a request, no layer, tokio::spawn of a trivial task",
            Self::NreqTracker => "a request, no layer, TaskTracker::spawn of a trivial task",
            Self::AxBare => "an axum request, no layer",
            Self::AxExt => "an axum request, Router::layer inserting one extension",
            Self::AxLayer => "an axum request, Router::layer(supervisor.layer())",
            Self::AxAdd => "an axum request, Router::layer, one task added",
            Self::AxSpawn => "an axum request, no layer, tokio::spawn",
            Self::AxTracker => "an axum request, no layer, TaskTracker::spawn",
            Self::AxLayerAround => "an axum request, the layer around the router",
            Self::AxAddAround => "an axum request, the layer around the router, one task added",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|scenario| scenario.name() == name)
    }

    /// Whether `n` counts tasks handed out in batches of [`BATCH`].
    fn batched(self) -> bool {
        matches!(self, Self::Batch | Self::SpawnBatch)
    }
}

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

/// A task that is pending once before it ticks.
async fn yield_then_tick() {
    tokio::task::yield_now().await;
    tick();
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

/// The supervisor of every scenario but `lane`: limits high enough that no
/// task ever waits for a slot or is refused.
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        match scenario {
            Scenario::Spawn => {
                arm(n);
                for _ in 0..n {
                    drop(tokio::spawn(async { tick() }));
                }
                settle().await;
            }
            Scenario::SpawnYield => {
                arm(n);
                for _ in 0..n {
                    drop(tokio::spawn(yield_then_tick()));
                }
                settle().await;
            }
            Scenario::SpawnBatch => {
                arm(n);
                for batch in 1..=n / BATCH {
                    for _ in 0..BATCH {
                        drop(tokio::spawn(async { tick() }));
                    }
                    settle_to(n - batch * BATCH).await;
                }
            }
            Scenario::Batch => batch(n).await,
            Scenario::One => one_request(supervisor(), n).await,
            Scenario::Lane => {
                one_request(
                    Supervisor::builder()
                        .max_running(1024)
                        .max_queued(1 << 20)
                        .build(),
                    n,
                )
                .await;
            }
            Scenario::Nreq => one_task_requests(n, || async { tick() }).await,
            Scenario::NreqYield => one_task_requests(n, yield_then_tick).await,
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

/// `one` and `lane`: one request through `supervisor`'s layer that adds
/// `n` trivial tasks.
async fn one_request(supervisor: Supervisor, n: usize) {
    let mut service =
        supervisor
            .layer()
            .layer(service_fn(move |request: Request<()>| async move {
                let tasks = tasks_of(&request);
                for _ in 0..n {
                    tasks.add(async { tick() });
                }
                Ok::<_, Infallible>(ok())
            }));
    arm(n);
    serve_one(&mut service, &uri()).await;
    settle().await;
    finish(supervisor, n).await;
}

/// `nreq` and `nreq_yield`: `n` requests through the layer, each adding one
/// task made by `task`, which ticks.
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
    for scenario in Scenario::ALL {
        if filter.is_some_and(|filter| !scenario.name().contains(filter)) {
            continue;
        }
        let started = Instant::now();
        run(scenario, SMOKE_N, SMOKE_SLEEP);
        println!(
            "  {:<16} ok: n = {SMOKE_N} in {:.1?}",
            scenario.name(),
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
    eprintln!("scenarios, and what one unit is:");
    for scenario in Scenario::ALL {
        eprintln!("  {:<16} {}", scenario.name(), scenario.what());
    }
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        for scenario in Scenario::ALL {
            println!("{}", scenario.name());
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
            let Some(scenario) = Scenario::from_name(name) else {
                return usage(&format!("no scenario named {name:?}"));
            };
            let Ok(n) = n.parse::<usize>() else {
                return usage(&format!("not a number of units: {n:?}"));
            };
            if scenario.batched() && n % BATCH != 0 {
                return usage(&format!("{name} needs a multiple of {BATCH}, not {n}"));
            }
            run(scenario, n, SLEEP);
        }
        _ => return usage("too many arguments"),
    }
    ExitCode::SUCCESS
}
