//! The server side: the axum app of each variant and its handlers, and a
//! variant's server (its runtime, listener and supervisor, and for
//! variant 6c the tasks' runtime, for variant 3m its recorder) started and
//! stopped, the supervisor shut down.

use std::future::{Future, IntoFuture};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout};
use tokio_util::task::TaskTracker;
use tower::util::MapRequestLayer;
use tower_background::{BackgroundTasks, Monitor, ShutdownReport, Supervisor};

use crate::config::{Variant, SERVER_WORKERS, SLEEP_TASK};
use crate::recorder::Recorder;
use crate::sample::{SERVER_TASK_THREADS, SERVER_THREADS};

/// Every variant's response body.
pub(crate) const BODY: &str = "ok";
/// About how much CPU variant 7's closure burns.
const BURN: Duration = Duration::from_millis(2);
/// The supervisor's grace period: short, so that shutting down after
/// variant 6 aborts its sleeping tasks instead of waiting for them.
const GRACE: Duration = Duration::from_millis(200);
/// The last part of the grace period, when the cancellation token fires
/// (variant 7's queued closures then return at once).
const CLEANUP: Duration = Duration::from_millis(150);
/// Bounds on the steps of stopping a server.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Trivial tasks run (variants 3, 3m, 4 and 5); checked after each variant.
pub(crate) static TRIVIAL_RAN: AtomicU64 = AtomicU64::new(0);
/// Loop iterations that take about [`BURN`] on one core (calibrated).
pub(crate) static BURN_ITERATIONS: AtomicU64 = AtomicU64::new(0);

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

/// Variant 6c's handler: variant 6's task, but its sleep is made when the
/// task is first polled, on the tasks' runtime. `tokio::time::sleep` takes
/// the timer of the runtime it is called on, so [`add_sleep`]'s sleep,
/// made in the handler, would put every task's timer entry in the serving
/// runtime's wheel, to be fired by its thread, wherever the task runs.
async fn add_sleep_in_task(tasks: BackgroundTasks) -> &'static str {
    tasks.add(async { sleep(SLEEP_TASK).await });
    BODY
}

async fn spawn_sleep() -> &'static str {
    drop(tokio::spawn(sleep(SLEEP_TASK)));
    BODY
}

/// Variant 6d's handler: 6b's sleep, boxed and type-erased as a handed-off
/// task's future is, so that 6d ÷ 6b is what that box costs tokio alone,
/// and 6 ÷ 6d the rest of our share.
async fn spawn_boxed_sleep() -> &'static str {
    let boxed: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(sleep(SLEEP_TASK));
    drop(tokio::spawn(boxed));
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
pub(crate) fn calibrate_burn() -> u64 {
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

/// What variant 2b's layer puts into every request's extensions: a clone of
/// one shared `Arc`, as any per-request handle into app-lifespan state must
/// hold at least (ours clones the supervisor's, and allocates the request's
/// own state besides).
#[derive(Clone, Debug, Default)]
struct Marker(
    #[allow(dead_code, reason = "never read: cloning and dropping it is the cost")] Arc<()>,
);

/// Variant 2b's layer, the least a layer that puts a handle into the
/// request's extensions can do: insert a [`Marker`] and call the inner
/// service, its future unwrapped (`MapRequest` returns the inner future).
fn extension_only_layer() -> MapRequestLayer<impl Fn(Request) -> Request + Clone + Send + Sync> {
    let marker = Marker::default();
    MapRequestLayer::new(move |mut request: Request| {
        request.extensions_mut().insert(marker.clone());
        request
    })
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
        Variant::ExtensionOnly => Router::new()
            .route("/", get(bare))
            .layer(extension_only_layer()),
        Variant::LayerTask | Variant::LayerTaskMetrics => {
            Router::new().route("/", get(add_trivial)).layer(layer())
        }
        Variant::TokioSpawn => Router::new().route("/", get(spawn_trivial)),
        Variant::TaskTracker => Router::new()
            .route("/", get(track_trivial))
            .with_state(tracker.expect("a tracker")),
        Variant::LayerSleep => Router::new().route("/", get(add_sleep)).layer(layer()),
        Variant::SpawnSleep => Router::new().route("/", get(spawn_sleep)),
        Variant::SpawnBoxedSleep => Router::new().route("/", get(spawn_boxed_sleep)),
        Variant::LayerSleepOwnRuntime => Router::new()
            .route("/", get(add_sleep_in_task))
            .layer(layer()),
        Variant::LayerBlocking => Router::new().route("/", get(add_burn)).layer(layer()),
    }
}

/// One variant's server: its own runtime, listener and supervisor.
pub(crate) struct Server {
    runtime: Runtime,
    /// Variant 6c's: the runtime its supervisor spawns tasks on, one worker,
    /// so that the serving runtime only answers and hands tasks off.
    tasks_runtime: Option<Runtime>,
    pub(crate) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    supervisor: Option<Supervisor>,
    tracker: Option<TaskTracker>,
    /// Variant 3m's.
    recorder: Option<Recorder>,
}

/// What stopping a server saw.
#[derive(Debug, Default)]
pub(crate) struct Teardown {
    pub(crate) server_stopped: bool,
    /// Tasks running when `shutdown` was called.
    pub(crate) running_at_shutdown: u64,
    /// Tasks handed off and waiting for a slot when `shutdown` was called.
    pub(crate) queued_at_shutdown: u64,
    pub(crate) shutdown: Option<ShutdownReport>,
    /// `TaskTracker::close` + `wait`: `None` if it did not end in time.
    pub(crate) tracker_wait: Option<Duration>,
    /// Variant 3m: the completed tasks its recorder counted, checked equal
    /// to the supervisor's count.
    pub(crate) recorded_completed: Option<u64>,
}

impl Server {
    pub(crate) fn start(variant: Variant) -> Self {
        let recorder = Recorder::for_variant(variant);
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime
            .worker_threads(SERVER_WORKERS)
            .thread_name(SERVER_THREADS)
            .enable_all();
        if let Some(recorder) = recorder {
            recorder.install_on(&mut runtime);
        }
        let runtime = runtime.build().expect("the server runtime");
        // Its threads' names start with the serving runtime's, so that the
        // server's CPU per request counts them too.
        let tasks_runtime = (variant == Variant::LayerSleepOwnRuntime).then(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(SERVER_TASK_THREADS)
                .enable_all()
                .build()
                .expect("the tasks' runtime")
        });
        let (supervisor, tracker, listener) = {
            let _entered = runtime.enter();
            let supervisor = variant.uses_layer().then(|| {
                let builder = Supervisor::builder()
                    .grace_period(GRACE)
                    .cleanup_period(CLEANUP);
                let builder = match &tasks_runtime {
                    Some(tasks_runtime) => builder.runtime(tasks_runtime.handle().clone()),
                    None => builder,
                };
                match recorder {
                    Some(recorder) => recorder.build(builder),
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
        if let Some(recorder) = recorder {
            recorder.spawn_upkeep(&runtime);
        }
        Self {
            runtime,
            tasks_runtime,
            addr,
            stop,
            serving,
            supervisor,
            tracker,
            recorder,
        }
    }

    pub(crate) fn monitor(&self) -> Option<Monitor> {
        self.supervisor.as_ref().map(Supervisor::monitor)
    }

    /// Stops serving, shuts the supervisor down (or closes and waits for the
    /// tracker), then the tasks' runtime if the variant has one, then the
    /// serving runtime; every step bounded. Called outside any runtime, so
    /// dropping one here does not panic.
    pub(crate) fn stop(self) -> Teardown {
        let Self {
            runtime,
            tasks_runtime,
            stop,
            serving,
            supervisor,
            tracker,
            recorder,
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
            let report = runtime.block_on(supervisor.shutdown());
            teardown.recorded_completed =
                recorder.map(|recorder| recorder.check(report.stats.completed));
            teardown.shutdown = Some(report);
        }
        if let Some(tracker) = tracker {
            tracker.close();
            let started = Instant::now();
            teardown.tracker_wait = runtime
                .block_on(async { timeout(STOP_TIMEOUT, tracker.wait()).await })
                .ok()
                .map(|()| started.elapsed());
        }
        // After the supervisor's shutdown, which has waited for its tasks or
        // aborted them: what is left on this runtime is dropped unrun.
        if let Some(tasks_runtime) = tasks_runtime {
            tasks_runtime.shutdown_timeout(STOP_TIMEOUT);
        }
        runtime.shutdown_timeout(STOP_TIMEOUT);
        teardown
    }
}
