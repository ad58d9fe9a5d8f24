//! Load benchmark: a real axum server on `127.0.0.1:0`, driven by a real
//! HTTP/1.1 keep-alive client, comparing the layer with what users do today.
//!
//! Eight variants, all answering `GET /` with the same two-byte body `ok`:
//!
//! 1. `bare`: the handler alone, no layer;
//! 2. `layer_no_task`: the layer installed, nothing queued;
//! 3. `layer_task`: the layer, one trivial async task per request
//!    (`tasks.add`);
//! 4. `tokio_spawn`: no layer, the handler calls `tokio::spawn` with the same
//!    trivial task;
//! 5. `task_tracker`: no layer, `tokio_util::task::TaskTracker::spawn` of the
//!    same task (the tracker reaches the handler as axum `State`);
//! 6. `layer_sleep_1s`: the layer, one task per request that sleeps 1 s and
//!    ignores the cancellation token, so tens of thousands of sleeping tasks
//!    are alive while the server answers;
//!
//!    6b. `tokio_spawn_sleep_1s`: no layer, the handler calls `tokio::spawn`
//!    with the same 1 s sleep: what that many sleeping tasks cost without
//!    us (tokio's timer, a second poll), so that variant 6's excess over
//!    variant 3 can be split between tokio and the layer;
//! 7. `layer_blocking_2ms`: the layer, one `tasks.add_blocking` closure per
//!    request that burns about 2 ms of CPU (a loop calibrated at start-up).
//!    It runs in the supervisor's blocking lane (16 at a time by default,
//!    `--blocking-limit`); the rest wait in the lane's queue. The closure
//!    returns at once once the cancellation token is cancelled, so the
//!    backlog drains at shutdown.
//!
//! Each variant runs on a fresh server: its own tokio runtime
//! (`--server-threads` workers, 1 by default), its own listener and, for the
//! layer variants, its own supervisor (grace 200 ms, cleanup 150 ms, and
//! `max_running` raised to 262 144 so that variant 6's tasks all run instead
//! of queueing behind the default 1024). The client is another tokio runtime
//! (`--client-threads` workers, 1 by default) in the same process: 64
//! connections (`--connections`), one task each, sending requests one after
//! the other on its keep-alive connection with `hyper::client::conn::http1`.
//! A closed loop: a slow response holds back its connection's next request.
//! One worker each means the two sides never compete with each other for a
//! core on a two-core machine, and the server's cost per request is not
//! blurred by work stealing.
//!
//! A variant warms up (`--warm-up`; variants 6 and 6b at least 1.2 s, until their
//! population of sleeping tasks is steady), then is measured (`--secs`):
//! throughput is the responses completed inside the window, latency the time
//! from sending a request started inside the window to its body's end. The
//! CPU time of the server's threads (workers and blocking pool) and of the
//! client's is read from `/proc/self/task/*/schedstat` at the window's start
//! and end (Linux only), and reported per request: unlike throughput, it
//! hardly moves when other processes take the cores.
//!
//! Variants are interleaved over rounds (round 1: 1..7 with 6b after 6,
//! round 2: the same, ...) so drift on the machine hits all of them alike; the tables show medians
//! over rounds, and each ratio is taken within a round, then its median.
//! After each variant the server stops, `Supervisor::shutdown` runs (and the
//! tracker is closed and waited for) and the runtime is shut down.
//!
//! **The paced window.** A saturated closed loop keeps about 64 requests
//! queued, so its latency is about connections ÷ throughput (Little's law):
//! its p99 mostly measures the server's CPU per request, and a variant that
//! costs more per request (6 against 3, 6b against 4: a task that sleeps
//! costs a timer and a second poll) has the higher p99 whether or not a
//! response ever waits on a task. So variants 3, 4, 6 and 6b
//! (`PACED_VARIANTS`) are measured a second time at the same offered rate R
//! for all of them, below saturation: right after the saturated window, on
//! the same server and the same 64 connections, an open loop. Connection i
//! has its k-th request due at `end + i/R + k·64/R`; a request due while its
//! connection is still busy goes as soon as the connection is free
//! (`MissedTickBehavior::Burst`), so every request of the schedule is sent.
//! Latency counts from the due time, so waiting behind a slow response counts
//! (no coordinated omission), less the client's own lateness in sending once
//! the request was due and its connection free: tokio's timer has a 1 ms
//! resolution and fires about 1 ms late, more than the server's whole share
//! at this load. (The time
//! from the due time alone, and that lateness, are reported too. The same
//! resolution means the requests due within one millisecond leave together,
//! about R/1000 at a time.) The schedule's first 50 ms are not measured
//! (1.05 s for 6 and 6b, until the tasks started at the saturated rate have
//! ended and the population of sleeping tasks is the paced rate's, R × 1 s),
//! then `--paced-secs` are. R is `--rate` if given; otherwise a quarter of the
//! throughput of variant 3 in a run of its own before round 1, which also
//! warms the process up, so that every round keeps its order and every
//! paced window of a run has the same R. The paced table reports the rate
//! achieved, p50 / p99 / p99.9, server CPU per request, and the ratios v6 ÷
//! v3 (the issue's target), v6b ÷ v4 and v6 ÷ v6b of the paced p99.
//!
//! ```text
//! cargo bench --bench load               # 6 rounds × ((0.5 s + 2 s) × 8 + paced 2 s × 4), about 3.5 minutes
//! cargo bench --bench load -- --quick    # 3 rounds × ((0.2 s + 0.7 s) × 8 + paced 0.3 s × 4), about 45 s
//! ```
//!
//! Other options (after `--`): `--rounds N`, `--secs S`, `--warm-up S`,
//! `--paced-secs S` (0: no paced windows), `--rate N` (requests/s),
//! `--connections N`, `--server-threads N`, `--client-threads N`,
//! `--blocking-limit N`, `--variants 1,3,4` and `--json PATH`.
//!
//! Prints Markdown tables to stdout (progress goes to stderr) and writes
//! JSON to `$CARGO_TARGET_DIR/load-bench.json` (default
//! `target/load-bench.json`), the paced windows under `paced`. Run without
//! `--bench` (as `cargo test --benches` does) it makes one short smoke pass,
//! paced windows included, and writes no JSON. The
//! server listens on loopback only; every loop and wait is bounded, and
//! everything stops by itself.

use std::future::IntoFuture;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{interval_at, sleep, timeout, timeout_at, MissedTickBehavior};
use tokio_util::task::TaskTracker;
use tower_background::{BackgroundTasks, Monitor, ShutdownReport, Supervisor};

mod support;
use support::{median, parse, percentile, threads_cpu_ns, Mode};

/// Every variant's response body.
const BODY: &str = "ok";
/// How long variant 6's task sleeps.
const SLEEP_TASK: Duration = Duration::from_secs(1);
/// About how much CPU variant 7's closure burns.
const BURN: Duration = Duration::from_millis(2);
/// The supervisor's grace period: short, so that shutting down after
/// variant 6 aborts its sleeping tasks instead of waiting for them.
const GRACE: Duration = Duration::from_millis(200);
/// The last part of the grace period, when the cancellation token fires
/// (variant 7's queued closures then return at once).
const CLEANUP: Duration = Duration::from_millis(150);
/// Every supervisor's limit on tasks running at once, far above the
/// default (1024), so that variant 6's sleeping tasks all run, as the issue
/// asks (with the default they would queue behind the first 1024, and the
/// queue, 65 536 by default, would fill in about two seconds).
const MAX_RUNNING: usize = 1 << 18;
/// How often the running-task count is sampled during a variant.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Bounds on the steps of stopping a server.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// A pause between two variants, for the last one's threads to go quiet.
const SETTLE: Duration = Duration::from_millis(200);
/// Thread names (a thread's `comm` keeps 15 bytes): the server runtime's
/// workers and blocking pool, and the client runtime's.
const SERVER_THREADS: &str = "load-server";
const CLIENT_THREADS: &str = "load-client";
/// The variants measured again at a paced rate after their saturated
/// window: those whose latencies the issue compares (6 against 3, and their
/// `tokio::spawn` baselines 6b and 4).
const PACED_VARIANTS: [Variant; 4] = [
    Variant::LayerTask,
    Variant::TokioSpawn,
    Variant::LayerSleep,
    Variant::SpawnSleep,
];
/// The start of the paced schedule, left out of the measurement: the
/// saturated window's last requests end and its queue drains (variants 6
/// and 6b wait longer: [`Variant::paced_lead_in`]).
const PACED_LEAD_IN: Duration = Duration::from_millis(50);
/// The paced rate, unless `--rate` sets it, as a share of variant 3's
/// saturated throughput: well below saturation for every paced variant.
/// Half was tried first: measured at a quiet moment, half of variant 3's
/// rate came within a third of variant 6's saturation once the machine got
/// busy, and variant 6 fell behind its schedule (p50 8–11 ms).
const PACED_SHARE: f64 = 0.25;
/// Bounds on the paced rate (requests/s), so that a connection's period is
/// never zero.
const RATE_BOUNDS: (f64, f64) = (1.0, 10_000_000.0);

/// Trivial tasks run (variants 3–5); checked after each variant.
static TRIVIAL_RAN: AtomicU64 = AtomicU64::new(0);
/// Loop iterations that take about [`BURN`] on one core (calibrated).
static BURN_ITERATIONS: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Bare,
    LayerNoTask,
    LayerTask,
    TokioSpawn,
    TaskTracker,
    LayerSleep,
    SpawnSleep,
    LayerBlocking,
}

impl Variant {
    const ALL: [Self; 8] = [
        Self::Bare,
        Self::LayerNoTask,
        Self::LayerTask,
        Self::TokioSpawn,
        Self::TaskTracker,
        Self::LayerSleep,
        Self::SpawnSleep,
        Self::LayerBlocking,
    ];

    /// `"1"` to `"7"`, and `"6b"` for the baseline of variant 6 (added after
    /// the others were numbered).
    fn number(self) -> &'static str {
        match self {
            Self::Bare => "1",
            Self::LayerNoTask => "2",
            Self::LayerTask => "3",
            Self::TokioSpawn => "4",
            Self::TaskTracker => "5",
            Self::LayerSleep => "6",
            Self::SpawnSleep => "6b",
            Self::LayerBlocking => "7",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::LayerNoTask => "layer_no_task",
            Self::LayerTask => "layer_task",
            Self::TokioSpawn => "tokio_spawn",
            Self::TaskTracker => "task_tracker",
            Self::LayerSleep => "layer_sleep_1s",
            Self::SpawnSleep => "tokio_spawn_sleep_1s",
            Self::LayerBlocking => "layer_blocking_2ms",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare handler, no layer",
            Self::LayerNoTask => "layer, no task",
            Self::LayerTask => "layer, 1 trivial task (`add`)",
            Self::TokioSpawn => "no layer, `tokio::spawn`",
            Self::TaskTracker => "no layer, `TaskTracker::spawn`",
            Self::LayerSleep => "layer, 1 task sleeping 1 s",
            Self::SpawnSleep => "no layer, `tokio::spawn` of a 1 s sleep",
            Self::LayerBlocking => "layer, 1 blocking task, 2 ms CPU",
        }
    }

    /// Variant 6's (and 6b's) population of sleeping tasks is steady only
    /// once its first tasks end: it warms up for at least [`SLEEP_TASK`] +
    /// 200 ms.
    fn warm_up(self, config: &Config) -> Duration {
        match self {
            Self::LayerSleep | Self::SpawnSleep if config.mode.measures() => {
                config.warm_up.max(SLEEP_TASK + Duration::from_millis(200))
            }
            _ => config.warm_up,
        }
    }

    /// The paced schedule's unmeasured start: [`PACED_LEAD_IN`], and for
    /// variants 6 and 6b [`SLEEP_TASK`] more, so that the tasks started at
    /// the saturated window's higher rate have ended: the population of
    /// sleeping tasks, and the work of ending them, is the paced rate's.
    fn paced_lead_in(self, config: &Config) -> Duration {
        match self {
            Self::LayerSleep | Self::SpawnSleep if config.mode.measures() => {
                SLEEP_TASK + PACED_LEAD_IN
            }
            _ => PACED_LEAD_IN,
        }
    }

    fn uses_layer(self) -> bool {
        matches!(
            self,
            Self::LayerNoTask | Self::LayerTask | Self::LayerSleep | Self::LayerBlocking
        )
    }
}

#[derive(Clone, Debug)]
struct Config {
    mode: Mode,
    rounds: usize,
    warm_up: Duration,
    measure: Duration,
    /// How long to wait, after the window, for requests sent inside it.
    drain: Duration,
    /// The paced window of the variants in [`PACED_VARIANTS`] (after
    /// [`PACED_LEAD_IN`]); `None` with `--paced-secs 0`.
    paced: Option<Duration>,
    /// The paced rate, requests/s (`--rate`); `None`: [`PACED_SHARE`] of
    /// variant 3's throughput before round 1.
    rate: Option<f64>,
    connections: usize,
    server_threads: usize,
    client_threads: usize,
    blocking_limit: Option<usize>,
    variants: Vec<Variant>,
    json: Option<PathBuf>,
}

impl Config {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mode = Mode::from_args(&args);
        let mut config = match mode {
            Mode::Smoke => Self::preset(mode, 1, 0.1, 0.2, 0.1, 4),
            Mode::Quick => Self::preset(mode, 3, 0.2, 0.7, 0.3, 64),
            Mode::Full => Self::preset(mode, 6, 0.5, 2.0, 2.0, 64),
        };
        if mode.measures() {
            config.json = Some(support::default_json_path("load-bench.json"));
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .unwrap_or_else(|| panic!("{name} needs a value"))
            };
            match arg.as_str() {
                "--bench" | "--quick" => {}
                "--rounds" => config.rounds = parse::<usize>(&value("--rounds")).max(1),
                "--secs" => config.measure = seconds(&value("--secs")),
                "--warm-up" => config.warm_up = seconds(&value("--warm-up")),
                "--paced-secs" => {
                    let secs = value("--paced-secs");
                    config.paced = (parse::<f64>(&secs) > 0.0).then(|| seconds(&secs));
                }
                "--rate" => {
                    let rate = parse::<f64>(&value("--rate"));
                    assert!(rate.is_finite(), "not a rate: {rate}");
                    config.rate = Some(rate.clamp(RATE_BOUNDS.0, RATE_BOUNDS.1));
                }
                "--connections" => {
                    config.connections = parse::<usize>(&value("--connections")).max(1)
                }
                "--server-threads" => {
                    config.server_threads = parse::<usize>(&value("--server-threads")).max(1);
                }
                "--client-threads" => {
                    config.client_threads = parse::<usize>(&value("--client-threads")).max(1);
                }
                "--blocking-limit" => {
                    config.blocking_limit = Some(parse::<usize>(&value("--blocking-limit")).max(1));
                }
                "--variants" => {
                    config.variants = value("--variants")
                        .split(',')
                        .map(|n| {
                            let n = n.trim();
                            *Variant::ALL
                                .iter()
                                .find(|variant| variant.number() == n)
                                .unwrap_or_else(|| panic!("no variant {n} (1–7 or 6b)"))
                        })
                        .collect();
                }
                "--json" => config.json = Some(PathBuf::from(value("--json"))),
                // Flags cargo or criterion-minded habits may pass; nothing to do.
                other if other.starts_with("--") => eprintln!("load: ignoring {other}"),
                _ => {}
            }
        }
        // Keep every run bounded, whatever the flags say.
        config.measure = config.measure.min(Duration::from_secs(60));
        config.paced = config.paced.map(|paced| paced.min(Duration::from_secs(60)));
        config.warm_up = config.warm_up.min(Duration::from_secs(30));
        config.rounds = config.rounds.min(50);
        config.connections = config.connections.min(1024);
        config
    }

    fn preset(
        mode: Mode,
        rounds: usize,
        warm_up: f64,
        measure: f64,
        paced: f64,
        connections: usize,
    ) -> Self {
        Self {
            mode,
            rounds,
            warm_up: Duration::from_secs_f64(warm_up),
            measure: Duration::from_secs_f64(measure),
            drain: Duration::from_secs(2),
            paced: Some(Duration::from_secs_f64(paced)),
            rate: None,
            connections,
            server_threads: 1,
            client_threads: 1,
            blocking_limit: None,
            variants: Variant::ALL.to_vec(),
            json: None,
        }
    }
}

fn seconds(value: &str) -> Duration {
    Duration::from_secs_f64(parse::<f64>(value).clamp(0.01, 600.0))
}

// ---------------------------------------------------------------------------
// The server.

async fn trivial() {
    TRIVIAL_RAN.fetch_add(1, Ordering::Relaxed);
}

async fn bare() -> &'static str {
    BODY
}

async fn add_trivial(tasks: BackgroundTasks) -> &'static str {
    tasks.add(trivial());
    BODY
}

async fn spawn_trivial() -> &'static str {
    drop(tokio::spawn(trivial()));
    BODY
}

async fn track_trivial(State(tracker): State<TaskTracker>) -> &'static str {
    drop(tracker.spawn(trivial()));
    BODY
}

async fn add_sleep(tasks: BackgroundTasks) -> &'static str {
    tasks.add(sleep(SLEEP_TASK));
    BODY
}

async fn spawn_sleep() -> &'static str {
    drop(tokio::spawn(sleep(SLEEP_TASK)));
    BODY
}

async fn add_burn(tasks: BackgroundTasks) -> &'static str {
    let token = tasks.cancellation_token();
    tasks.add_blocking(move || {
        if !token.is_cancelled() {
            burn(BURN_ITERATIONS.load(Ordering::Relaxed));
        }
    });
    BODY
}

/// A loop the optimiser cannot shorten: `iterations` steps of an LCG.
fn burn(iterations: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    for _ in 0..iterations {
        x = black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
    x
}

/// Iterations of [`burn`] that take about [`BURN`]: the fastest of a few
/// timed runs, so a busy moment during calibration does not shorten it.
fn calibrate_burn() -> u64 {
    const PROBE: u64 = 1 << 20;
    let fastest = (0..7)
        .map(|_| {
            let started = Instant::now();
            black_box(burn(PROBE));
            started.elapsed()
        })
        .min()
        .expect("seven runs");
    let per_iteration = fastest.as_secs_f64() / PROBE as f64;
    (BURN.as_secs_f64() / per_iteration).round() as u64
}

fn router(
    variant: Variant,
    supervisor: Option<&Supervisor>,
    tracker: Option<TaskTracker>,
) -> Router {
    let layer = || {
        supervisor
            .expect("a supervisor for a layer variant")
            .layer()
    };
    match variant {
        Variant::Bare => Router::new().route("/", get(bare)),
        Variant::LayerNoTask => Router::new().route("/", get(bare)).layer(layer()),
        Variant::LayerTask => Router::new().route("/", get(add_trivial)).layer(layer()),
        Variant::TokioSpawn => Router::new().route("/", get(spawn_trivial)),
        Variant::TaskTracker => Router::new()
            .route("/", get(track_trivial))
            .with_state(tracker.expect("a tracker")),
        Variant::LayerSleep => Router::new().route("/", get(add_sleep)).layer(layer()),
        Variant::SpawnSleep => Router::new().route("/", get(spawn_sleep)),
        Variant::LayerBlocking => Router::new().route("/", get(add_burn)).layer(layer()),
    }
}

/// One variant's server: its own runtime, listener and supervisor.
struct Server {
    runtime: Runtime,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    supervisor: Option<Supervisor>,
    tracker: Option<TaskTracker>,
}

/// What stopping a server saw.
#[derive(Debug, Default)]
struct Teardown {
    server_stopped: bool,
    /// Tasks running when `shutdown` was called.
    running_at_shutdown: u64,
    /// Tasks handed off and waiting for a slot when `shutdown` was called.
    queued_at_shutdown: u64,
    shutdown: Option<ShutdownReport>,
    /// `TaskTracker::close` + `wait`: `None` if it did not end in time.
    tracker_wait: Option<Duration>,
}

impl Server {
    fn start(variant: Variant, config: &Config) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.server_threads)
            .thread_name(SERVER_THREADS)
            .enable_all()
            .build()
            .expect("the server runtime");
        let (supervisor, tracker, listener) = {
            let _entered = runtime.enter();
            let supervisor = variant.uses_layer().then(|| {
                let builder = Supervisor::builder()
                    .grace_period(GRACE)
                    .cleanup_period(CLEANUP)
                    .max_running(MAX_RUNNING);
                match config.blocking_limit {
                    Some(limit) => builder.blocking_limit(limit).build(),
                    None => builder.build(),
                }
            });
            let tracker = (variant == Variant::TaskTracker).then(TaskTracker::new);
            let listener = runtime
                .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
                .expect("a loopback port");
            (supervisor, tracker, listener)
        };
        let addr = listener.local_addr().expect("the bound address");
        let app = router(variant, supervisor.as_ref(), tracker.clone());
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future();
        let serving = runtime.spawn(serving);
        Self {
            runtime,
            addr,
            stop,
            serving,
            supervisor,
            tracker,
        }
    }

    fn monitor(&self) -> Option<Monitor> {
        self.supervisor.as_ref().map(Supervisor::monitor)
    }

    /// Stops serving, shuts the supervisor down (or closes and waits for the
    /// tracker), then the runtime; every step bounded.
    fn stop(self) -> Teardown {
        let Self {
            runtime,
            stop,
            serving,
            supervisor,
            tracker,
            ..
        } = self;
        let mut teardown = Teardown::default();
        let _ = stop.send(());
        teardown.server_stopped = runtime
            .block_on(async { timeout(STOP_TIMEOUT, serving).await })
            .is_ok_and(|served| matches!(served, Ok(Ok(()))));
        if let Some(supervisor) = supervisor {
            let stats = supervisor.stats();
            teardown.running_at_shutdown = stats.running;
            teardown.queued_at_shutdown = stats.queued;
            teardown.shutdown = Some(runtime.block_on(supervisor.shutdown()));
        }
        if let Some(tracker) = tracker {
            tracker.close();
            let started = Instant::now();
            teardown.tracker_wait = runtime
                .block_on(async { timeout(STOP_TIMEOUT, tracker.wait()).await })
                .ok()
                .map(|()| started.elapsed());
        }
        runtime.shutdown_timeout(STOP_TIMEOUT);
        teardown
    }
}

// ---------------------------------------------------------------------------
// The client.

#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    end: Instant,
    /// Requests sent inside the window are waited for until then.
    drain_until: Instant,
}

impl Window {
    /// Until when a request is waited for: one measured (sent, or for a
    /// paced window due, inside the window) until `drain_until`; one of the
    /// warm-up or lead-in no later than the window's end.
    fn deadline(&self, measured: bool) -> Instant {
        if measured {
            self.drain_until
        } else {
            self.end
        }
    }
}

/// When a connection's paced requests are due: the first at `first`, then
/// one every `period`, whatever the responses take (an open loop).
#[derive(Clone, Copy, Debug)]
struct Pacing {
    first: Instant,
    /// `connections ÷ rate`: every connection sends at the same rate, and
    /// the connections' first requests are `1 ÷ rate` apart.
    period: Duration,
    /// Requests due inside it are measured.
    window: Window,
}

impl Pacing {
    /// How many of this connection's requests are due after `scheduled` and
    /// inside the window: the ones a failed exchange leaves unsent.
    fn due_after(&self, scheduled: Instant) -> u64 {
        let period = self.period.as_secs_f64();
        let since = |instant: Instant| {
            instant
                .checked_duration_since(scheduled)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        // Requests `scheduled + j × period`, j ≥ 1, inside [start, end).
        let first = (since(self.window.start) / period).ceil().max(1.0);
        let past_last = (since(self.window.end) / period).ceil();
        (past_last - first).max(0.0) as u64
    }
}

/// What one connection saw in one window.
#[derive(Debug, Default)]
struct ClientRun {
    /// Responses completed inside the window.
    completed: u64,
    /// Responses completed, warm-up and drain included.
    total: u64,
    /// Latencies (ns) of the requests sent inside the window; for a paced
    /// window, see [`open_loop`].
    latencies: Vec<u64>,
    /// Paced windows only: the time (ns) from when each measured request was
    /// due to its body's end, the client's own lateness included.
    from_schedule: Vec<u64>,
    /// Paced windows only: how late (ns) the client sent each measured
    /// request after it was due and its connection free.
    send_lags: Vec<u64>,
    /// Requests sent (or, paced, due) inside the window and not answered by
    /// `drain_until`.
    unanswered: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ClientRun {
    fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    /// Every connection's run as one, its latencies sorted.
    fn merge(runs: Vec<Self>) -> Self {
        let mut all = Self::default();
        for run in runs {
            all.completed += run.completed;
            all.total += run.total;
            all.unanswered += run.unanswered;
            all.errors += run.errors;
            all.latencies.extend(run.latencies);
            all.from_schedule.extend(run.from_schedule);
            all.send_lags.extend(run.send_lags);
            if all.first_error.is_none() {
                all.first_error = run.first_error;
            }
        }
        all.latencies.sort_unstable();
        all.from_schedule.sort_unstable();
        all.send_lags.sort_unstable();
        all
    }
}

/// One keep-alive connection: `GET /` requests one after the other until
/// the window ends, then, with `pacing`, at the paced times on the same
/// connection.
async fn client(
    addr: SocketAddr,
    window: Window,
    pacing: Option<Pacing>,
) -> (ClientRun, Option<ClientRun>) {
    let mut run = ClientRun::default();
    let mut paced_run = pacing.map(|_| ClientRun::default());
    let (mut sender, connection) = match connect(addr).await {
        Ok(connected) => connected,
        Err(error) => {
            if let Some(paced_run) = &mut paced_run {
                paced_run.error(format_args!("no connection: {error}"));
            }
            run.error(error);
            return (run, paced_run);
        }
    };
    let still_open = closed_loop(&mut sender, window, &mut run).await;
    if let (Some(pacing), Some(paced_run)) = (pacing, &mut paced_run) {
        if still_open {
            open_loop(&mut sender, pacing, paced_run).await;
        } else {
            paced_run.error("the connection failed in the saturated window");
        }
    }
    connection.abort();
    (run, paced_run)
}

/// A keep-alive connection to `addr`, its connection task spawned.
async fn connect(
    addr: SocketAddr,
) -> Result<(SendRequest<Empty<Bytes>>, JoinHandle<hyper::Result<()>>), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    Ok((sender, tokio::spawn(connection)))
}

/// One `GET /` and its whole body.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    let request = Request::get("/")
        .header(HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// How one request of a loop ended.
enum Exchanged {
    /// Answered `200 ok`, its body ended at this instant (counted in `run`).
    Answered(Instant),
    /// An error or an unexpected answer (counted in `run`): the connection
    /// is no longer usable.
    Failed,
    /// Not answered by the deadline (for the caller to count).
    TimedOut,
}

/// Sends one request on `sender` and waits for its answer until `deadline`,
/// counting in `run` an answer (and whether it ended inside `window`) or
/// what went wrong.
async fn exchange_until(
    sender: &mut SendRequest<Empty<Bytes>>,
    deadline: Instant,
    window: Window,
    run: &mut ClientRun,
) -> Exchanged {
    match timeout_at(deadline.into(), exchange(sender)).await {
        Ok(Ok((status, body))) if status == StatusCode::OK && body == BODY => {
            let done = Instant::now();
            run.total += 1;
            if done >= window.start && done < window.end {
                run.completed += 1;
            }
            Exchanged::Answered(done)
        }
        Ok(Ok((status, body))) => {
            run.error(format_args!("unexpected response: {status} {body:?}"));
            Exchanged::Failed
        }
        Ok(Err(error)) => {
            run.error(format_args!("request: {error}"));
            Exchanged::Failed
        }
        Err(_) => Exchanged::TimedOut,
    }
}

/// Sends requests one after the other until the window ends: a closed
/// loop. Returns whether the connection is still usable.
async fn closed_loop(
    sender: &mut SendRequest<Empty<Bytes>>,
    window: Window,
    run: &mut ClientRun,
) -> bool {
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            return true;
        }
        let measured = sent >= window.start;
        match exchange_until(sender, window.deadline(measured), window, run).await {
            Exchanged::Answered(done) => {
                if measured {
                    run.latencies.push((done - sent).as_nanos() as u64);
                }
            }
            Exchanged::Failed => return false,
            Exchanged::TimedOut => {
                if measured {
                    run.unanswered += 1;
                }
                return false;
            }
        }
    }
}

/// Sends a request at each time `pacing` sets, or as soon as the connection
/// is free if it is still busy then, until the window ends: an open loop.
///
/// A request's latency is counted from when it was due, so time spent
/// waiting behind a slow response counts (no coordinated omission), less
/// the client's own lateness in sending it once it was due and its
/// connection free: tokio's timer has a resolution of 1 ms and fires about
/// that much late, which at these latencies (hundreds of µs) would
/// otherwise swamp the server's share. That is, latency = (the end of the
/// connection's previous exchange − the due time, if positive) + (body's
/// end − sent). The time from the due time alone is kept too
/// (`from_schedule`), and the lateness (`send_lags`).
async fn open_loop(sender: &mut SendRequest<Empty<Bytes>>, pacing: Pacing, run: &mut ClientRun) {
    let window = pacing.window;
    let mut due = interval_at(pacing.first.into(), pacing.period);
    // `Burst`: a request due while the connection is busy is sent as soon as
    // it is free, and `tick` still returns the time it was due, so every
    // request of the schedule is sent and timed from its due time. `Delay`
    // would push the rest of the schedule back and `Skip` would drop the
    // missed requests: both would offer less load exactly when the server is
    // slow, and hide that slowness.
    due.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // When the connection could last send: the end of its previous exchange.
    let mut free_since = Instant::now();
    loop {
        let scheduled = due.tick().await.into_std();
        if scheduled >= window.end {
            return;
        }
        let sent = Instant::now();
        let measured = scheduled >= window.start;
        match exchange_until(sender, window.deadline(measured), window, run).await {
            Exchanged::Answered(done) => {
                if measured {
                    let held_back = free_since.saturating_duration_since(scheduled);
                    run.latencies
                        .push((held_back + (done - sent)).as_nanos() as u64);
                    run.from_schedule.push((done - scheduled).as_nanos() as u64);
                    run.send_lags.push(
                        sent.saturating_duration_since(scheduled.max(free_since))
                            .as_nanos() as u64,
                    );
                }
                free_since = done;
            }
            Exchanged::Failed => return,
            Exchanged::TimedOut => {
                // This request and every later one due inside the window.
                run.unanswered += u64::from(measured) + pacing.due_after(scheduled);
                return;
            }
        }
    }
}

/// What was sampled during the window.
#[derive(Debug, Default)]
struct Sampled {
    /// The largest running-task count seen (layer variants).
    peak_running: Option<u64>,
    /// The smallest.
    least_running: Option<u64>,
    /// The largest count of tasks waiting for a slot in their lane.
    peak_queued: Option<u64>,
    /// Tasks submitted by the end of the window (layer variants).
    submitted: Option<u64>,
    /// CPU time of the server's threads (workers and blocking pool) and of
    /// the client's, inside the window.
    server_cpu: Option<Duration>,
    client_cpu: Option<Duration>,
}

/// Samples the running-task count every [`SAMPLE_EVERY`] and the threads'
/// CPU time at the window's start and end.
async fn sample(monitor: Option<Monitor>, window: Window) -> Sampled {
    tokio::time::sleep_until(window.start.into()).await;
    let server_start = threads_cpu_ns(SERVER_THREADS);
    let client_start = threads_cpu_ns(CLIENT_THREADS);
    let (mut peak_running, mut least_running, mut peak_queued) = (0, u64::MAX, 0);
    loop {
        if let Some(monitor) = &monitor {
            let stats = monitor.stats();
            peak_running = peak_running.max(stats.running);
            least_running = least_running.min(stats.running);
            peak_queued = peak_queued.max(stats.queued);
        }
        let now = Instant::now();
        if now >= window.end {
            break;
        }
        tokio::time::sleep_until((now + SAMPLE_EVERY).min(window.end).into()).await;
    }
    let used = |start: Option<u64>, prefix| {
        Some(Duration::from_nanos(
            threads_cpu_ns(prefix)?.saturating_sub(start?),
        ))
    };
    Sampled {
        peak_running: monitor.as_ref().map(|_| peak_running),
        least_running: monitor.as_ref().map(|_| least_running),
        peak_queued: monitor.as_ref().map(|_| peak_queued),
        submitted: monitor.as_ref().map(|monitor| monitor.stats().submitted),
        server_cpu: used(server_start, SERVER_THREADS),
        client_cpu: used(client_start, CLIENT_THREADS),
    }
}

/// One window's results: every connection's run and what was sampled.
struct Phase {
    window: Window,
    runs: Vec<ClientRun>,
    sampled: Sampled,
}

/// Drives `config.connections` clients against `addr` on the client runtime:
/// the saturated window, then, given a rate (requests/s) and a lead-in, the
/// paced window on the same connections.
async fn drive(
    addr: SocketAddr,
    config: &Config,
    warm_up: Duration,
    monitor: Option<Monitor>,
    paced: Option<(f64, Duration)>,
) -> (Phase, Option<Phase>) {
    let start = Instant::now() + warm_up;
    let end = start + config.measure;
    let window = Window {
        start,
        end,
        drain_until: end + config.drain,
    };
    // The paced schedule starts as the saturated window ends; its lead-in is
    // not measured.
    let paced = paced.zip(config.paced).map(|((rate, lead_in), paced)| {
        let start = end + lead_in;
        let window = Window {
            start,
            end: start + paced,
            drain_until: start + paced + config.drain,
        };
        (rate, window)
    });
    let pacing = |connection: usize| {
        paced.map(|(rate, window)| Pacing {
            first: end + Duration::from_secs_f64(connection as f64 / rate),
            period: Duration::from_secs_f64(config.connections as f64 / rate),
            window,
        })
    };
    let clients: Vec<_> = (0..config.connections)
        .map(|connection| tokio::spawn(client(addr, window, pacing(connection))))
        .collect();
    let sampler = tokio::spawn(sample(monitor.clone(), window));
    let paced_sampler = paced.map(|(_, window)| (window, tokio::spawn(sample(monitor, window))));
    let mut runs = Vec::with_capacity(clients.len());
    let mut paced_runs = Vec::new();
    for client in clients {
        let (run, paced_run) = client.await.expect("a client task panicked");
        runs.push(run);
        paced_runs.extend(paced_run);
    }
    let sampled = sampler.await.expect("the sampler panicked");
    let paced = match paced_sampler {
        Some((window, sampler)) => Some(Phase {
            window,
            runs: paced_runs,
            sampled: sampler.await.expect("the sampler panicked"),
        }),
        None => None,
    };
    (
        Phase {
            window,
            runs,
            sampled,
        },
        paced,
    )
}

// ---------------------------------------------------------------------------
// Measuring and summarising.

/// What any window measured, the saturated one ([`Measured`]) or the
/// paced one ([`Paced`]): throughput, latency, failures and CPU.
#[derive(Debug)]
struct WindowStats {
    /// Responses completed inside the window ÷ its length (for a paced
    /// window: the paced rate, unless the server or the client fell
    /// behind).
    rps: f64,
    requests: u64,
    /// Responses over the whole loop that held the window, its warm-up (or
    /// lead-in) and drain included.
    requests_total: u64,
    /// Latency, ns (for a paced window, as [`open_loop`] counts it).
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    errors: u64,
    unanswered: u64,
    first_error: Option<String>,
    /// Server threads' CPU time per completed request, ns.
    server_cpu_per_request: Option<f64>,
    /// Client threads' CPU time per completed request, ns.
    client_cpu_per_request: Option<f64>,
    /// Server threads' CPU time ÷ the window: cores kept busy.
    server_cores: Option<f64>,
}

impl WindowStats {
    /// The figures of `run` (every connection's, merged) and of what was
    /// `sampled` over `window`.
    fn new(window: Window, run: &ClientRun, sampled: &Sampled) -> Self {
        let requests = run.completed;
        let seconds = (window.end - window.start).as_secs_f64();
        Self {
            rps: requests as f64 / seconds,
            requests,
            requests_total: run.total,
            p50: latency_at(&run.latencies, 0.50),
            p99: latency_at(&run.latencies, 0.99),
            p999: latency_at(&run.latencies, 0.999),
            max: run.latencies.last().copied().unwrap_or(0),
            errors: run.errors,
            unanswered: run.unanswered,
            first_error: run.first_error.clone(),
            server_cpu_per_request: per_request(sampled.server_cpu, requests),
            client_cpu_per_request: per_request(sampled.client_cpu, requests),
            server_cores: sampled.server_cpu.map(|cpu| cpu.as_secs_f64() / seconds),
        }
    }

    /// Requests that failed or went unanswered.
    fn failures(&self) -> u64 {
        self.errors + self.unanswered
    }
}

/// One variant in one round.
#[derive(Debug)]
struct Measured {
    variant: Variant,
    /// The saturated window.
    stats: WindowStats,
    peak_running: Option<u64>,
    peak_queued: Option<u64>,
    submitted: Option<u64>,
    /// Trivial tasks run over the variant's life: its paced window's
    /// included.
    trivial_ran: u64,
    teardown: Teardown,
    /// The paced window, for the variants in [`PACED_VARIANTS`].
    paced: Option<Paced>,
}

/// One variant's paced window in one round.
#[derive(Debug)]
struct Paced {
    stats: WindowStats,
    /// From when a request was due to its body's end, the client's lateness
    /// included, ns.
    from_schedule_p50: u64,
    from_schedule_p99: u64,
    /// The client's lateness in sending, ns.
    send_lag_p50: u64,
    send_lag_p99: u64,
    /// The running-task count over the window (layer variants): for
    /// variant 6, about the paced rate × 1 s of sleeping tasks.
    least_running: Option<u64>,
    peak_running: Option<u64>,
}

/// The rate of every paced window in a run.
#[derive(Clone, Copy, Debug)]
struct PacedRate {
    /// Requests/s, over all connections.
    per_second: f64,
    /// Variant 3's throughput in the run before round 1.
    variant3_rps: f64,
    /// Set by `--rate` rather than from `variant3_rps`.
    from_flag: bool,
}

impl PacedRate {
    fn source(&self) -> String {
        if self.from_flag {
            "set by `--rate`".to_owned()
        } else {
            format!(
                "{PACED_SHARE} × variant 3's {:.0} req/s, measured before round 1",
                self.variant3_rps
            )
        }
    }
}

/// Runs `variant` on a fresh server: its saturated window, then, if it is
/// one of [`PACED_VARIANTS`], its paced window at `paced_rate` requests/s.
fn run_variant(
    variant: Variant,
    config: &Config,
    client_runtime: &Runtime,
    paced_rate: Option<f64>,
) -> Measured {
    TRIVIAL_RAN.store(0, Ordering::Relaxed);
    let server = Server::start(variant, config);
    let warm_up = variant.warm_up(config);
    let paced = paced_rate
        .filter(|_| PACED_VARIANTS.contains(&variant))
        .map(|rate| (rate, variant.paced_lead_in(config)));
    let (saturated, paced) =
        client_runtime.block_on(drive(server.addr, config, warm_up, server.monitor(), paced));
    let teardown = server.stop();
    std::thread::sleep(SETTLE);

    let Phase {
        window,
        runs,
        sampled,
    } = saturated;
    Measured {
        variant,
        stats: WindowStats::new(window, &ClientRun::merge(runs), &sampled),
        peak_running: sampled.peak_running,
        peak_queued: sampled.peak_queued,
        submitted: sampled.submitted,
        trivial_ran: TRIVIAL_RAN.load(Ordering::Relaxed),
        teardown,
        paced: paced.map(Paced::from),
    }
}

impl From<Phase> for Paced {
    fn from(phase: Phase) -> Self {
        let Phase {
            window,
            runs,
            sampled,
        } = phase;
        let run = ClientRun::merge(runs);
        Self {
            stats: WindowStats::new(window, &run, &sampled),
            from_schedule_p50: latency_at(&run.from_schedule, 0.50),
            from_schedule_p99: latency_at(&run.from_schedule, 0.99),
            send_lag_p50: latency_at(&run.send_lags, 0.50),
            send_lag_p99: latency_at(&run.send_lags, 0.99),
            least_running: sampled.least_running,
            peak_running: sampled.peak_running,
        }
    }
}

/// The `q`-quantile of sorted latencies (ns); 0 when there are none.
fn latency_at(sorted: &[u64], q: f64) -> u64 {
    percentile(sorted, q).unwrap_or(0)
}

/// CPU time per completed request, ns.
fn per_request(cpu: Option<Duration>, requests: u64) -> Option<f64> {
    cpu.map(|cpu| cpu.as_nanos() as f64 / requests.max(1) as f64)
}

/// A ratio the issue sets a target for (or asks to report).
struct Ratio {
    name: &'static str,
    what: &'static str,
    numerator: Variant,
    denominator: Variant,
    metric: fn(&Measured) -> f64,
    /// `Some((bound, true))`: at least `bound`; `(bound, false)`: at most.
    target: Option<(f64, bool)>,
}

fn ratios() -> Vec<Ratio> {
    let rps: fn(&Measured) -> f64 = |m| m.stats.rps;
    let p99: fn(&Measured) -> f64 = |m| m.stats.p99 as f64;
    let cpu: fn(&Measured) -> f64 = |m| m.stats.server_cpu_per_request.unwrap_or(f64::NAN);
    vec![
        Ratio {
            name: "v2_over_v1_rps",
            what: "throughput, layer with no task ÷ bare (the layer alone is free)",
            numerator: Variant::LayerNoTask,
            denominator: Variant::Bare,
            metric: rps,
            target: Some((0.99, true)),
        },
        Ratio {
            name: "v3_over_v4_rps",
            what: "throughput, `add` ÷ `tokio::spawn`",
            numerator: Variant::LayerTask,
            denominator: Variant::TokioSpawn,
            metric: rps,
            target: Some((0.95, true)),
        },
        Ratio {
            name: "v3_over_v5_rps",
            what: "throughput, `add` ÷ `TaskTracker::spawn`",
            numerator: Variant::LayerTask,
            denominator: Variant::TaskTracker,
            metric: rps,
            target: Some((1.0, true)),
        },
        Ratio {
            name: "v6_over_v3_p99",
            what: "p99, sleeping tasks alive ÷ trivial task",
            numerator: Variant::LayerSleep,
            denominator: Variant::LayerTask,
            metric: p99,
            target: Some((1.05, false)),
        },
        Ratio {
            name: "v6_over_v6b_p99",
            what: "p99, sleeping tasks through the layer ÷ through `tokio::spawn` (reported: our share of v6's excess)",
            numerator: Variant::LayerSleep,
            denominator: Variant::SpawnSleep,
            metric: p99,
            target: None,
        },
        Ratio {
            name: "v6b_over_v4_p99",
            what: "p99, `tokio::spawn` of a 1 s sleep ÷ of a trivial task (reported: tokio's share)",
            numerator: Variant::SpawnSleep,
            denominator: Variant::TokioSpawn,
            metric: p99,
            target: None,
        },
        Ratio {
            name: "v6_over_v6b_server_cpu",
            what: "server CPU per request, sleeping task through the layer ÷ through `tokio::spawn` (reported)",
            numerator: Variant::LayerSleep,
            denominator: Variant::SpawnSleep,
            metric: cpu,
            target: None,
        },
        Ratio {
            name: "v7_over_v3_p99",
            what: "p99, 2 ms blocking task ÷ trivial task (reported)",
            numerator: Variant::LayerBlocking,
            denominator: Variant::LayerTask,
            metric: p99,
            target: None,
        },
        Ratio {
            name: "v2_over_v1_server_cpu",
            what: "server CPU per request, layer with no task ÷ bare (reported)",
            numerator: Variant::LayerNoTask,
            denominator: Variant::Bare,
            metric: cpu,
            target: None,
        },
        Ratio {
            name: "v3_over_v4_server_cpu",
            what: "server CPU per request, `add` ÷ `tokio::spawn` (reported)",
            numerator: Variant::LayerTask,
            denominator: Variant::TokioSpawn,
            metric: cpu,
            target: None,
        },
        Ratio {
            name: "v3_over_v5_server_cpu",
            what: "server CPU per request, `add` ÷ `TaskTracker::spawn` (reported)",
            numerator: Variant::LayerTask,
            denominator: Variant::TaskTracker,
            metric: cpu,
            target: None,
        },
        Ratio {
            name: "v4_over_v1_rps",
            what: "throughput, `tokio::spawn` ÷ bare (reported: what any task costs)",
            numerator: Variant::TokioSpawn,
            denominator: Variant::Bare,
            metric: rps,
            target: None,
        },
    ]
}

/// The ratios of the paced windows: the same offered rate for every
/// variant, below saturation.
fn paced_ratios() -> Vec<Ratio> {
    let p99: fn(&Measured) -> f64 = |m| m.paced.as_ref().map_or(f64::NAN, |p| p.stats.p99 as f64);
    let cpu: fn(&Measured) -> f64 = |m| {
        m.paced
            .as_ref()
            .and_then(|p| p.stats.server_cpu_per_request)
            .unwrap_or(f64::NAN)
    };
    vec![
        Ratio {
            name: "paced_v6_over_v3_p99",
            what: "paced p99, sleeping tasks alive ÷ trivial task",
            numerator: Variant::LayerSleep,
            denominator: Variant::LayerTask,
            metric: p99,
            target: Some((1.05, false)),
        },
        Ratio {
            name: "paced_v6b_over_v4_p99",
            what: "paced p99, `tokio::spawn` of a 1 s sleep ÷ of a trivial task (reported: tokio's share)",
            numerator: Variant::SpawnSleep,
            denominator: Variant::TokioSpawn,
            metric: p99,
            target: None,
        },
        Ratio {
            name: "paced_v6_over_v6b_p99",
            what: "paced p99, sleeping tasks through the layer ÷ through `tokio::spawn` (reported: our share)",
            numerator: Variant::LayerSleep,
            denominator: Variant::SpawnSleep,
            metric: p99,
            target: None,
        },
        Ratio {
            name: "paced_v6_over_v3_p99_from_due_time",
            what: "paced p99 from the due time (the client's lateness included), sleeping tasks alive ÷ trivial task (reported)",
            numerator: Variant::LayerSleep,
            denominator: Variant::LayerTask,
            metric: |m| {
                m.paced
                    .as_ref()
                    .map_or(f64::NAN, |p| p.from_schedule_p99 as f64)
            },
            target: None,
        },
        Ratio {
            name: "paced_v6_over_v3_server_cpu",
            what: "paced server CPU per request, sleeping task ÷ trivial task (reported)",
            numerator: Variant::LayerSleep,
            denominator: Variant::LayerTask,
            metric: cpu,
            target: None,
        },
    ]
}

fn micros(ns: f64) -> String {
    let us = ns / 1000.0;
    if us >= 100.0 {
        format!("{:.0}", us)
    } else {
        format!("{:.1}", us)
    }
}

fn main() {
    let config = Config::from_args();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    if config.variants.contains(&Variant::LayerBlocking) {
        BURN_ITERATIONS.store(calibrate_burn(), Ordering::Relaxed);
    }
    eprintln!(
        "load ({} mode): {} connections, {} round(s) × {} variant(s) × ({:?} warm-up + {:?}); \
         server runtime {} worker(s), client runtime {} worker(s), {} cores; \
         blocking burn = {} iterations",
        config.mode,
        config.connections,
        config.rounds,
        config.variants.len(),
        config.warm_up,
        config.measure,
        config.server_threads,
        config.client_threads,
        cores,
        BURN_ITERATIONS.load(Ordering::Relaxed),
    );
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.client_threads)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("the client runtime");

    // Before the first round, variant 3 runs once, unrecorded: it warms the
    // process up (the allocator, page tables, caches) and, unless `--rate`
    // sets it, fixes the paced rate at a share of its throughput. A run of
    // its own rather than round 1's variant 3, so that the rounds keep their
    // order and every paced window of the run has the same rate.
    let warm_up = Config {
        measure: config.warm_up,
        ..config.clone()
    };
    let variant3_rps = run_variant(Variant::LayerTask, &warm_up, &client_runtime, None)
        .stats
        .rps;
    let rate = PacedRate {
        per_second: config
            .rate
            .unwrap_or_else(|| (variant3_rps * PACED_SHARE).clamp(RATE_BOUNDS.0, RATE_BOUNDS.1)),
        variant3_rps,
        from_flag: config.rate.is_some(),
    };
    eprintln!(
        "warm-up (variant 3): {:.0} req/s (not recorded); paced rate {:.0} req/s",
        variant3_rps, rate.per_second,
    );

    let started = Instant::now();
    let mut rounds: Vec<Vec<Measured>> = Vec::new();
    for round in 1..=config.rounds {
        let mut this_round = Vec::new();
        for &variant in &config.variants {
            let m = run_variant(variant, &config, &client_runtime, Some(rate.per_second));
            eprintln!(
                "round {round} v{} {:<20} {:>9.0} req/s  p50 {:>7} µs  p99 {:>7} µs  \
                 p99.9 {:>7} µs  server CPU {} µs/req ({:.2} cores)  errors {} unanswered {}{}",
                variant.number(),
                variant.key(),
                m.stats.rps,
                micros(m.stats.p50 as f64),
                micros(m.stats.p99 as f64),
                micros(m.stats.p999 as f64),
                micros(m.stats.server_cpu_per_request.unwrap_or(f64::NAN)),
                m.stats.server_cores.unwrap_or(f64::NAN),
                m.stats.errors,
                m.stats.unanswered,
                extra(&m),
            );
            if let Some(error) = &m.stats.first_error {
                eprintln!("    first error: {error}");
            }
            if let Some(paced) = &m.paced {
                eprintln!(
                    "    paced at {:.0} req/s: {:>9.0} req/s  p50 {:>7} µs  p99 {:>7} µs  \
                     p99.9 {:>7} µs  (from the due time: p99 {} µs; client lateness p50 {} \
                     p99 {} µs)  server CPU {} µs/req ({:.2} cores)  errors {} unanswered {}{}",
                    rate.per_second,
                    paced.stats.rps,
                    micros(paced.stats.p50 as f64),
                    micros(paced.stats.p99 as f64),
                    micros(paced.stats.p999 as f64),
                    micros(paced.from_schedule_p99 as f64),
                    micros(paced.send_lag_p50 as f64),
                    micros(paced.send_lag_p99 as f64),
                    micros(paced.stats.server_cpu_per_request.unwrap_or(f64::NAN)),
                    paced.stats.server_cores.unwrap_or(f64::NAN),
                    paced.stats.errors,
                    paced.stats.unanswered,
                    match (paced.least_running, paced.peak_running) {
                        (Some(least), Some(peak)) => format!("  running {least}–{peak}"),
                        _ => String::new(),
                    },
                );
                if let Some(error) = &paced.stats.first_error {
                    eprintln!("    first error (paced): {error}");
                }
            }
            this_round.push(m);
        }
        rounds.push(this_round);
    }
    drop(client_runtime);
    let elapsed = started.elapsed();

    let summary = summarise(&config, &rounds);
    print_markdown(&config, &rounds, &summary, cores, elapsed);
    print_paced_markdown(&config, &rate, &rounds, &summary);
    let failures: u64 = rounds
        .iter()
        .flatten()
        .map(|m| m.stats.failures() + m.paced.as_ref().map_or(0, |paced| paced.stats.failures()))
        .sum();

    if let Some(path) = &config.json {
        let document = json!({
            "benchmark": "load",
            "mode": config.mode.name(),
            "unix_time": support::unix_time(),
            "cores": cores,
            "config": {
                "rounds": config.rounds,
                "warm_up_s": config.warm_up.as_secs_f64(),
                "measure_s": config.measure.as_secs_f64(),
                "connections": config.connections,
                "server_worker_threads": config.server_threads,
                "client_worker_threads": config.client_threads,
                "blocking_limit": config.blocking_limit,
                "max_running": MAX_RUNNING,
                "burn_iterations": BURN_ITERATIONS.load(Ordering::Relaxed),
            },
            "elapsed_s": elapsed.as_secs_f64(),
            "medians": summary.medians,
            "ratios": summary.ratios,
            "rounds": rounds.iter().map(|round| round.iter().map(measured_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "paced": paced_json(&config, &rate, &rounds, &summary),
        });
        support::write_json(path, &document);
    }

    if config.mode == Mode::Smoke {
        assert_eq!(failures, 0, "requests failed in the smoke pass");
        eprintln!("load: smoke pass ok (run with `cargo bench --bench load` to measure)");
    } else if failures > 0 {
        eprintln!("load: {failures} request(s) failed or went unanswered; see above");
    }
}

/// Per-variant notes for the progress line.
fn extra(m: &Measured) -> String {
    let mut notes = String::new();
    if let Some(peak) = m.peak_running {
        notes += &format!(
            "  peak running {peak} queued {}",
            m.peak_queued.unwrap_or(0)
        );
    }
    if let Some(report) = &m.teardown.shutdown {
        notes += &format!(
            "  shutdown: {} running + {} queued, {:.1?}, {} cancelled, {} rejected{}",
            m.teardown.running_at_shutdown,
            m.teardown.queued_at_shutdown,
            report.elapsed,
            report.stats.cancelled,
            report.stats.rejected,
            if report.aborted { ", aborted" } else { "" },
        );
    }
    if let Some(wait) = m.teardown.tracker_wait {
        notes += &format!("  tracker wait {wait:.1?}");
    }
    if !m.teardown.server_stopped {
        notes += "  (server did not stop cleanly)";
    }
    notes
}

/// A JSON object: `fields` (another, from `json!`) added to `object`.
fn extended(mut object: Map<String, Value>, fields: Value) -> Value {
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object)
}

/// The fields of a round's JSON object that any window has; the saturated
/// and the paced window each add their own.
fn window_json(variant: Variant, w: &WindowStats) -> Map<String, Value> {
    let Value::Object(object) = json!({
        "variant": variant.number(),
        "key": variant.key(),
        "rps": w.rps,
        "requests": w.requests,
        "requests_total": w.requests_total,
        "latency_ns": { "p50": w.p50, "p99": w.p99, "p999": w.p999, "max": w.max },
        "errors": w.errors,
        "unanswered": w.unanswered,
        "server_cpu_ns_per_request": w.server_cpu_per_request,
        "client_cpu_ns_per_request": w.client_cpu_per_request,
        "server_cores_busy": w.server_cores,
    }) else {
        unreachable!("json! of braces is an object")
    };
    object
}

/// The medians over rounds of one variant's windows (one a round), with
/// the fields every window has, and `p99_ns_per_round`; the saturated and
/// the paced medians each add their own.
fn medians_json(variant: Variant, windows: &[&WindowStats]) -> Map<String, Value> {
    let med = |f: fn(&WindowStats) -> f64| median(windows.iter().map(|w| f(w)).collect());
    let Value::Object(object) = json!({
        "variant": variant.number(),
        "key": variant.key(),
        "label": variant.label(),
        "rps": med(|w| w.rps),
        "p50_ns": med(|w| w.p50 as f64),
        "p99_ns": med(|w| w.p99 as f64),
        "p999_ns": med(|w| w.p999 as f64),
        "server_cpu_ns_per_request": med(|w| w.server_cpu_per_request.unwrap_or(f64::NAN)),
        "client_cpu_ns_per_request": med(|w| w.client_cpu_per_request.unwrap_or(f64::NAN)),
        "server_cores_busy": med(|w| w.server_cores.unwrap_or(f64::NAN)),
        "p99_ns_per_round": windows.iter().map(|w| w.p99).collect::<Vec<_>>(),
    }) else {
        unreachable!("json! of braces is an object")
    };
    object
}

fn measured_json(m: &Measured) -> Value {
    extended(
        window_json(m.variant, &m.stats),
        json!({
            "peak_running_tasks": m.peak_running,
            "peak_queued_tasks": m.peak_queued,
            "submitted_tasks": m.submitted,
            "trivial_tasks_ran": m.trivial_ran,
            "server_stopped": m.teardown.server_stopped,
            "running_at_shutdown": m.teardown.running_at_shutdown,
            "queued_at_shutdown": m.teardown.queued_at_shutdown,
            "shutdown": m.teardown.shutdown.as_ref().map(|r| json!({
                "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
                "aborted": r.aborted,
                "completed": r.stats.completed,
                "cancelled": r.stats.cancelled,
                "refused": r.stats.refused,
                "rejected": r.stats.rejected,
                "discarded": r.stats.discarded,
                "still_running": r.stats.running,
            })),
            "tracker_wait_ms": m.teardown.tracker_wait.map(|d| d.as_secs_f64() * 1e3),
        }),
    )
}

/// The `paced` object of the JSON: the rate, medians, ratios and every
/// round's paced windows; `null` when no variant had one.
fn paced_json(
    config: &Config,
    rate: &PacedRate,
    rounds: &[Vec<Measured>],
    summary: &Summary,
) -> Value {
    if summary.paced_medians.is_empty() {
        return Value::Null;
    }
    let window = |m: &Measured| {
        let p = m.paced.as_ref()?;
        Some(extended(
            window_json(m.variant, &p.stats),
            json!({
                "from_schedule_ns": { "p50": p.from_schedule_p50, "p99": p.from_schedule_p99 },
                "send_lag_ns": { "p50": p.send_lag_p50, "p99": p.send_lag_p99 },
                "least_running_tasks": p.least_running,
                "peak_running_tasks": p.peak_running,
            }),
        ))
    };
    json!({
        "rate_rps": rate.per_second,
        "rate_source": if rate.from_flag { "--rate" } else { "variant 3 before round 1" },
        "variant3_rps_before_round_1": rate.variant3_rps,
        "share_of_variant3": (!rate.from_flag).then_some(PACED_SHARE),
        "connections": config.connections,
        "lead_in_s": PACED_LEAD_IN.as_secs_f64(),
        "lead_in_s_v6_v6b": Variant::LayerSleep.paced_lead_in(config).as_secs_f64(),
        "window_s": config.paced.map(|paced| paced.as_secs_f64()),
        "latency": "from the due time, less the client's lateness on an idle connection",
        "missed_tick_behavior": "Burst",
        "medians": summary.paced_medians,
        "ratios": summary.paced_ratios,
        "rounds": rounds
            .iter()
            .map(|round| round.iter().filter_map(window).collect::<Vec<_>>())
            .collect::<Vec<_>>(),
    })
}

struct Summary {
    medians: Vec<Value>,
    ratios: Vec<Value>,
    /// The paced windows' medians, for the variants that have one.
    paced_medians: Vec<Value>,
    paced_ratios: Vec<Value>,
}

fn summarise(config: &Config, rounds: &[Vec<Measured>]) -> Summary {
    let of = |variant: Variant| -> Vec<&Measured> {
        rounds
            .iter()
            .filter_map(|round| round.iter().find(|m| m.variant == variant))
            .collect()
    };
    let medians = config
        .variants
        .iter()
        .map(|&variant| {
            let windows: Vec<&WindowStats> = of(variant).into_iter().map(|m| &m.stats).collect();
            let rps_per_round: Vec<f64> = windows.iter().map(|w| w.rps).collect();
            extended(
                medians_json(variant, &windows),
                json!({ "rps_per_round": rps_per_round }),
            )
        })
        .collect();
    let paced_medians = config
        .variants
        .iter()
        .filter_map(|&variant| {
            let runs: Vec<&Paced> = of(variant)
                .iter()
                .filter_map(|m| m.paced.as_ref())
                .collect();
            if runs.is_empty() {
                return None;
            }
            let windows: Vec<&WindowStats> = runs.iter().map(|p| &p.stats).collect();
            let med = |f: fn(&Paced) -> f64| median(runs.iter().map(|p| f(p)).collect());
            Some(extended(
                medians_json(variant, &windows),
                json!({
                    "from_schedule_p99_ns": med(|p| p.from_schedule_p99 as f64),
                    "send_lag_p99_ns": med(|p| p.send_lag_p99 as f64),
                }),
            ))
        })
        .collect();
    Summary {
        medians,
        ratios: summarise_ratios(rounds, ratios()),
        paced_medians,
        paced_ratios: summarise_ratios(rounds, paced_ratios()),
    }
}

/// Each ratio within each round that has both variants, and its median;
/// none for a ratio no round has.
fn summarise_ratios(rounds: &[Vec<Measured>], ratios: Vec<Ratio>) -> Vec<Value> {
    ratios
        .into_iter()
        .filter_map(|ratio| {
            let per_round: Vec<f64> = rounds
                .iter()
                .filter_map(|round| {
                    let n = round.iter().find(|m| m.variant == ratio.numerator)?;
                    let d = round.iter().find(|m| m.variant == ratio.denominator)?;
                    Some((ratio.metric)(n) / (ratio.metric)(d))
                })
                .collect();
            if per_round.is_empty() {
                return None;
            }
            let value = median(per_round.clone());
            let met = ratio.target.map(|(bound, at_least)| {
                if at_least {
                    value >= bound
                } else {
                    value <= bound
                }
            });
            Some(json!({
                "name": ratio.name,
                "what": ratio.what,
                "median": value,
                "per_round": per_round,
                "target": ratio.target.map(|(bound, at_least)| {
                    format!("{} {bound}", if at_least { ">=" } else { "<=" })
                }),
                "met": met,
            }))
        })
        .collect()
}

fn print_markdown(
    config: &Config,
    rounds: &[Vec<Measured>],
    summary: &Summary,
    cores: usize,
    elapsed: Duration,
) {
    println!();
    println!(
        "Load, {} mode: {} connections, {} round(s) of {:.1} s per variant after {:.1} s \
         warm-up; server runtime {} worker(s), client runtime {} worker(s); {} cores; \
         medians over rounds ({:.0} s in all).",
        config.mode,
        config.connections,
        config.rounds,
        config.measure.as_secs_f64(),
        config.warm_up.as_secs_f64(),
        config.server_threads,
        config.client_threads,
        cores,
        elapsed.as_secs_f64(),
    );
    println!();
    println!(
        "| # | variant | req/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | \
         client CPU µs/req | req/s per round |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &summary.medians {
        let per_round = support::per_round_cell(&row["rps_per_round"], |x| format!("{x:.0}"));
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            row["variant"].as_str().unwrap_or(""),
            row["label"].as_str().unwrap_or(""),
            row["rps"].as_f64().unwrap_or(f64::NAN),
            micros(row["p50_ns"].as_f64().unwrap_or(f64::NAN)),
            micros(row["p99_ns"].as_f64().unwrap_or(f64::NAN)),
            micros(row["p999_ns"].as_f64().unwrap_or(f64::NAN)),
            micros(
                row["server_cpu_ns_per_request"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ),
            micros(
                row["client_cpu_ns_per_request"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ),
            per_round,
        );
    }
    print_ratios(&summary.ratios);

    // What the sleeping and blocking variants left behind at shutdown.
    for variant in [Variant::LayerSleep, Variant::LayerBlocking] {
        let runs: Vec<&Measured> = rounds
            .iter()
            .filter_map(|round| round.iter().find(|m| m.variant == variant))
            .collect();
        if runs.is_empty() {
            continue;
        }
        println!();
        println!("v{} ({}), per round:", variant.number(), variant.label());
        for m in runs {
            let report = m.teardown.shutdown.as_ref();
            println!(
                "- peak {} running + {} queued; at shutdown {} running + {} queued; shutdown \
                 took {:.1?}{}: {} completed, {} cancelled, {} rejected (queue full), {} still \
                 running",
                m.peak_running.unwrap_or(0),
                m.peak_queued.unwrap_or(0),
                m.teardown.running_at_shutdown,
                m.teardown.queued_at_shutdown,
                report.map_or(Duration::ZERO, |r| r.elapsed),
                if report.is_some_and(|r| r.aborted) {
                    " (aborted)"
                } else {
                    ""
                },
                report.map_or(0, |r| r.stats.completed),
                report.map_or(0, |r| r.stats.cancelled),
                report.map_or(0, |r| r.stats.rejected),
                report.map_or(0, |r| r.stats.running),
            );
        }
    }
}

/// A ratio table: each ratio's target, median, per-round values and whether
/// it is met.
fn print_ratios(ratios: &[Value]) {
    println!();
    println!("| ratio | target | median | per round | met |");
    println!("|---|---|---|---|---|");
    for ratio in ratios {
        let per_round = support::per_round_cell(&ratio["per_round"], |x| format!("{x:.3}"));
        println!(
            "| {} | {} | **{:.3}** | {} | {} |",
            ratio["what"].as_str().unwrap_or(""),
            ratio["target"].as_str().unwrap_or("—"),
            ratio["median"].as_f64().unwrap_or(f64::NAN),
            per_round,
            match ratio["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            },
        );
    }
}

/// The paced windows' table and ratios, after the saturated ones.
fn print_paced_markdown(
    config: &Config,
    rate: &PacedRate,
    rounds: &[Vec<Measured>],
    summary: &Summary,
) {
    if summary.paced_medians.is_empty() {
        return;
    }
    println!();
    println!(
        "Paced (open loop), the same offered rate for every variant: {:.0} req/s ({}), one \
         request due every {:.2} ms on each of the {} connections, on the same server right \
         after its saturated window; {:.2} s lead-in ({:.2} s for 6 and 6b, until the tasks \
         started at the saturated rate have ended), then {:.1} s measured. Latency from \
         when a request was due, less the client's own lateness on an idle connection \
         (tokio's 1 ms timer); medians over rounds.",
        rate.per_second,
        rate.source(),
        config.connections as f64 / rate.per_second * 1e3,
        config.connections,
        PACED_LEAD_IN.as_secs_f64(),
        Variant::LayerSleep.paced_lead_in(config).as_secs_f64(),
        config.paced.map_or(0.0, |paced| paced.as_secs_f64()),
    );
    println!();
    println!(
        "| # | variant | req/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | \
         p99 µs from the due time | client lateness p99 µs | p99 µs per round |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &summary.paced_medians {
        let per_round = support::per_round_cell(&row["p99_ns_per_round"], micros);
        let ns = |key: &str| micros(row[key].as_f64().unwrap_or(f64::NAN));
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            row["variant"].as_str().unwrap_or(""),
            row["label"].as_str().unwrap_or(""),
            row["rps"].as_f64().unwrap_or(f64::NAN),
            ns("p50_ns"),
            ns("p99_ns"),
            ns("p999_ns"),
            ns("server_cpu_ns_per_request"),
            ns("from_schedule_p99_ns"),
            ns("send_lag_p99_ns"),
            per_round,
        );
    }
    print_ratios(&summary.paced_ratios);

    // How many of variant 6's tasks were alive while it was paced.
    let populations: Vec<String> = rounds
        .iter()
        .filter_map(|round| round.iter().find(|m| m.variant == Variant::LayerSleep))
        .filter_map(|m| {
            let paced = m.paced.as_ref()?;
            Some(format!("{}–{}", paced.least_running?, paced.peak_running?))
        })
        .collect();
    if !populations.is_empty() {
        println!();
        println!(
            "v6 tasks running during the paced window (least–peak), per round: {}",
            populations.join(", ")
        );
    }
}
