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
//! ```text
//! cargo bench --bench load               # 6 rounds × (0.5 s + 2 s) × 8, about 2.5 minutes
//! cargo bench --bench load -- --quick    # 3 rounds × (0.3 s + 1 s) × 8, about 45 s
//! ```
//!
//! Other options (after `--`): `--rounds N`, `--secs S`, `--warm-up S`,
//! `--connections N`, `--server-threads N`, `--client-threads N`,
//! `--blocking-limit N`, `--variants 1,3,4` and `--json PATH`.
//!
//! Prints Markdown tables to stdout (progress goes to stderr) and writes
//! JSON to `$CARGO_TARGET_DIR/load-bench.json` (default
//! `target/load-bench.json`). Run without `--bench` (as `cargo test
//! --benches` does) it makes one short smoke pass and writes no JSON. The
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
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, timeout_at};
use tokio_util::task::TaskTracker;
use tower_background::{BackgroundTasks, Monitor, ShutdownReport, Supervisor};

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
            Self::LayerSleep | Self::SpawnSleep if config.mode != "test" => {
                config.warm_up.max(SLEEP_TASK + Duration::from_millis(200))
            }
            _ => config.warm_up,
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
    mode: &'static str,
    rounds: usize,
    warm_up: Duration,
    measure: Duration,
    /// How long to wait, after the window, for requests sent inside it.
    drain: Duration,
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
        let benching = args.iter().any(|a| a == "--bench");
        let quick = args.iter().any(|a| a == "--quick");
        let mut config = if !benching {
            Self::preset("test", 1, 0.1, 0.2, 4)
        } else if quick {
            Self::preset("quick", 3, 0.3, 1.0, 64)
        } else {
            Self::preset("full", 6, 0.5, 2.0, 64)
        };
        if benching {
            config.json = Some(default_json_path());
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
        config.warm_up = config.warm_up.min(Duration::from_secs(30));
        config.rounds = config.rounds.min(50);
        config.connections = config.connections.min(1024);
        config
    }

    fn preset(
        mode: &'static str,
        rounds: usize,
        warm_up: f64,
        measure: f64,
        connections: usize,
    ) -> Self {
        Self {
            mode,
            rounds,
            warm_up: Duration::from_secs_f64(warm_up),
            measure: Duration::from_secs_f64(measure),
            drain: Duration::from_secs(2),
            connections,
            server_threads: 1,
            client_threads: 1,
            blocking_limit: None,
            variants: Variant::ALL.to_vec(),
            json: None,
        }
    }
}

fn parse<T: std::str::FromStr>(value: &str) -> T {
    value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {value:?}"))
}

fn seconds(value: &str) -> Duration {
    Duration::from_secs_f64(parse::<f64>(value).clamp(0.01, 600.0))
}

fn default_json_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("load-bench.json")
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

/// What one connection saw.
#[derive(Debug, Default)]
struct ClientRun {
    /// Responses completed inside the window.
    completed: u64,
    /// Responses completed, warm-up and drain included.
    total: u64,
    /// Latencies (ns) of the requests sent inside the window.
    latencies: Vec<u64>,
    /// Requests sent inside the window and not answered by `drain_until`.
    unanswered: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ClientRun {
    fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }
}

/// One keep-alive connection sending `GET /` requests one after the other
/// until the window ends.
async fn client(addr: SocketAddr, window: Window) -> ClientRun {
    let mut run = ClientRun::default();
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(error) => {
            run.error(format_args!("connect: {error}"));
            return run;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        TokioIo::new(stream),
    )
    .await
    {
        Ok(handshake) => handshake,
        Err(error) => {
            run.error(format_args!("handshake: {error}"));
            return run;
        }
    };
    let connection = tokio::spawn(connection);
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        let request = Request::get("/")
            .header(HOST, "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        // A request sent during warm-up is not waited for past the window.
        let measured = sent >= window.start;
        let deadline = if measured {
            window.drain_until
        } else {
            window.end
        };
        match timeout_at(deadline.into(), exchange).await {
            Ok(Ok((status, body))) if status == StatusCode::OK && body == BODY => {
                let done = Instant::now();
                run.total += 1;
                if done >= window.start && done < window.end {
                    run.completed += 1;
                }
                if measured {
                    run.latencies.push((done - sent).as_nanos() as u64);
                }
            }
            Ok(Ok((status, body))) => {
                run.error(format_args!("unexpected response: {status} {body:?}"));
                break;
            }
            Ok(Err(error)) => {
                run.error(format_args!("request: {error}"));
                break;
            }
            Err(_) => {
                if measured {
                    run.unanswered += 1;
                }
                break;
            }
        }
    }
    connection.abort();
    run
}

/// CPU time (ns) used so far by this process's threads whose name starts
/// with `prefix`, from `/proc/self/task/*/schedstat` (Linux); `None` where
/// that cannot be read.
fn threads_cpu_ns(prefix: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread has just exited
        };
        if !name.starts_with(prefix) {
            continue;
        }
        if let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) {
            total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// What was sampled during the window.
#[derive(Debug, Default)]
struct Sampled {
    /// The largest running-task count seen (layer variants).
    peak_running: Option<u64>,
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
    let (mut peak_running, mut peak_queued) = (0, 0);
    loop {
        if let Some(monitor) = &monitor {
            let stats = monitor.stats();
            peak_running = peak_running.max(stats.running);
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
        peak_queued: monitor.as_ref().map(|_| peak_queued),
        submitted: monitor.as_ref().map(|monitor| monitor.stats().submitted),
        server_cpu: used(server_start, SERVER_THREADS),
        client_cpu: used(client_start, CLIENT_THREADS),
    }
}

/// Drives `config.connections` clients against `addr` on the client runtime.
async fn drive(
    addr: SocketAddr,
    config: &Config,
    warm_up: Duration,
    monitor: Option<Monitor>,
) -> (Window, Vec<ClientRun>, Sampled) {
    let start = Instant::now() + warm_up;
    let end = start + config.measure;
    let window = Window {
        start,
        end,
        drain_until: end + config.drain,
    };
    let clients: Vec<_> = (0..config.connections)
        .map(|_| tokio::spawn(client(addr, window)))
        .collect();
    let sampler = tokio::spawn(sample(monitor, window));
    let mut runs = Vec::with_capacity(clients.len());
    for client in clients {
        runs.push(client.await.expect("a client task panicked"));
    }
    let sampled = sampler.await.expect("the sampler panicked");
    (window, runs, sampled)
}

// ---------------------------------------------------------------------------
// Measuring and summarising.

/// One variant in one round.
#[derive(Debug)]
struct Measured {
    variant: Variant,
    rps: f64,
    requests: u64,
    /// Responses over the variant's whole life, warm-up and drain included.
    requests_total: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    errors: u64,
    unanswered: u64,
    first_error: Option<String>,
    peak_running: Option<u64>,
    peak_queued: Option<u64>,
    submitted: Option<u64>,
    /// Server threads' CPU time per completed request, ns.
    server_cpu_per_request: Option<f64>,
    /// Client threads' CPU time per completed request, ns.
    client_cpu_per_request: Option<f64>,
    /// Server threads' CPU time ÷ the window: cores kept busy.
    server_cores: Option<f64>,
    trivial_ran: u64,
    teardown: Teardown,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run_variant(variant: Variant, config: &Config, client_runtime: &Runtime) -> Measured {
    TRIVIAL_RAN.store(0, Ordering::Relaxed);
    let server = Server::start(variant, config);
    let warm_up = variant.warm_up(config);
    let (window, runs, sampled) =
        client_runtime.block_on(drive(server.addr, config, warm_up, server.monitor()));
    let teardown = server.stop();
    std::thread::sleep(SETTLE);

    let mut latencies: Vec<u64> = Vec::new();
    let (mut requests, mut requests_total, mut errors, mut unanswered) = (0, 0, 0, 0);
    let mut first_error = None;
    for run in runs {
        requests += run.completed;
        requests_total += run.total;
        errors += run.errors;
        unanswered += run.unanswered;
        latencies.extend(run.latencies);
        if first_error.is_none() {
            first_error = run.first_error;
        }
    }
    latencies.sort_unstable();
    let seconds = (window.end - window.start).as_secs_f64();
    Measured {
        variant,
        rps: requests as f64 / seconds,
        requests,
        requests_total,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        max: latencies.last().copied().unwrap_or(0),
        errors,
        unanswered,
        first_error,
        peak_running: sampled.peak_running,
        peak_queued: sampled.peak_queued,
        submitted: sampled.submitted,
        server_cpu_per_request: sampled
            .server_cpu
            .map(|cpu| cpu.as_nanos() as f64 / requests.max(1) as f64),
        client_cpu_per_request: sampled
            .client_cpu
            .map(|cpu| cpu.as_nanos() as f64 / requests.max(1) as f64),
        server_cores: sampled.server_cpu.map(|cpu| cpu.as_secs_f64() / seconds),
        trivial_ran: TRIVIAL_RAN.load(Ordering::Relaxed),
        teardown,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
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
    let rps: fn(&Measured) -> f64 = |m| m.rps;
    let p99: fn(&Measured) -> f64 = |m| m.p99 as f64;
    let cpu: fn(&Measured) -> f64 = |m| m.server_cpu_per_request.unwrap_or(f64::NAN);
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

    // Warm-up before the first round: the allocator, page tables, caches.
    if config.mode != "test" {
        let warm_up = Config {
            measure: config.warm_up,
            ..config.clone()
        };
        let measured = run_variant(Variant::Bare, &warm_up, &client_runtime);
        eprintln!("warm-up: {:.0} req/s (not recorded)", measured.rps);
    }

    let started = Instant::now();
    let mut rounds: Vec<Vec<Measured>> = Vec::new();
    for round in 1..=config.rounds {
        let mut this_round = Vec::new();
        for &variant in &config.variants {
            let m = run_variant(variant, &config, &client_runtime);
            eprintln!(
                "round {round} v{} {:<20} {:>9.0} req/s  p50 {:>7} µs  p99 {:>7} µs  \
                 p99.9 {:>7} µs  server CPU {} µs/req ({:.2} cores)  errors {} unanswered {}{}",
                variant.number(),
                variant.key(),
                m.rps,
                micros(m.p50 as f64),
                micros(m.p99 as f64),
                micros(m.p999 as f64),
                micros(m.server_cpu_per_request.unwrap_or(f64::NAN)),
                m.server_cores.unwrap_or(f64::NAN),
                m.errors,
                m.unanswered,
                extra(&m),
            );
            if let Some(error) = &m.first_error {
                eprintln!("    first error: {error}");
            }
            this_round.push(m);
        }
        rounds.push(this_round);
    }
    drop(client_runtime);
    let elapsed = started.elapsed();

    let summary = summarise(&config, &rounds);
    print_markdown(&config, &rounds, &summary, cores, elapsed);
    let failures: u64 = rounds
        .iter()
        .flatten()
        .map(|m| m.errors + m.unanswered)
        .sum();

    if let Some(path) = &config.json {
        let document = json!({
            "benchmark": "load",
            "mode": config.mode,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
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
        });
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::write(path, serde_json::to_string_pretty(&document).expect("JSON")) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(error) => eprintln!("could not write {}: {error}", path.display()),
        }
    }

    if config.mode == "test" {
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

fn measured_json(m: &Measured) -> Value {
    json!({
        "variant": m.variant.number(),
        "key": m.variant.key(),
        "rps": m.rps,
        "requests": m.requests,
        "requests_total": m.requests_total,
        "latency_ns": { "p50": m.p50, "p99": m.p99, "p999": m.p999, "max": m.max },
        "errors": m.errors,
        "unanswered": m.unanswered,
        "server_cpu_ns_per_request": m.server_cpu_per_request,
        "client_cpu_ns_per_request": m.client_cpu_per_request,
        "server_cores_busy": m.server_cores,
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
    })
}

struct Summary {
    medians: Vec<Value>,
    ratios: Vec<Value>,
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
            let runs = of(variant);
            let med = |f: fn(&Measured) -> f64| median(runs.iter().map(|m| f(m)).collect());
            json!({
                "variant": variant.number(),
                "key": variant.key(),
                "label": variant.label(),
                "rps": med(|m| m.rps),
                "p50_ns": med(|m| m.p50 as f64),
                "p99_ns": med(|m| m.p99 as f64),
                "p999_ns": med(|m| m.p999 as f64),
                "server_cpu_ns_per_request": med(|m| m.server_cpu_per_request.unwrap_or(f64::NAN)),
                "client_cpu_ns_per_request": med(|m| m.client_cpu_per_request.unwrap_or(f64::NAN)),
                "server_cores_busy": med(|m| m.server_cores.unwrap_or(f64::NAN)),
                "rps_per_round": runs.iter().map(|m| m.rps).collect::<Vec<_>>(),
                "p99_ns_per_round": runs.iter().map(|m| m.p99).collect::<Vec<_>>(),
            })
        })
        .collect();
    let ratios = ratios()
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
        .collect();
    Summary { medians, ratios }
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
        let per_round: Vec<String> = row["rps_per_round"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.0}", v.as_f64().unwrap_or(f64::NAN)))
            .collect();
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
            per_round.join(" / "),
        );
    }
    println!();
    println!("| ratio | target | median | per round | met |");
    println!("|---|---|---|---|---|");
    for ratio in &summary.ratios {
        let per_round: Vec<String> = ratio["per_round"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.3}", v.as_f64().unwrap_or(f64::NAN)))
            .collect();
        println!(
            "| {} | {} | **{:.3}** | {} | {} |",
            ratio["what"].as_str().unwrap_or(""),
            ratio["target"].as_str().unwrap_or("—"),
            ratio["median"].as_f64().unwrap_or(f64::NAN),
            per_round.join(" / "),
            match ratio["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            },
        );
    }

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
