//! What the layer and the hand-off cost, each next to its baseline.
//!
//! Unless its group says otherwise, every variant runs on a multi-thread
//! tokio runtime with two workers, and its timed loop runs *on a worker*
//! (inside a spawned task), the way a server's handlers and response bodies
//! do. Criterion's own thread only starts each sample.
//!
//! - `per_task/*` — add, hand off and complete `N` trivial tasks, against
//!   `tokio::spawn` of the same futures. Every task ticks a shared countdown
//!   whose last tick wakes the timed loop, on both sides, so both wait for
//!   the same thing: the `N`-th task body has run.
//!   - `raw_spawn` (baseline): `N` × `tokio::spawn`.
//!   - `boxed_then_spawn` (baseline): the `N` futures boxed into a `Vec`
//!     first, then each spawned: the least any design that defers the start
//!     pays in safe Rust (waiting futures of different types must be
//!     type-erased, which means a box each).
//!   - `one_request_n_tasks`: one request through the layer whose handler
//!     adds `N` tasks; the body is read to its end, which spawns them.
//!   - `one_request_n_task_new` (baseline for the keyed ones): the same,
//!     each task a `Task::new(future)` rather than a plain future.
//!   - `one_request_n_keyed`: the same, each `Task::new(future).key(k)`
//!     with `N` distinct keys (made once, cloned per task): what per-key
//!     order costs a task whose key is free.
//!   - `one_request_n_one_key`: the same with one key for all: the `N`
//!     tasks run one after another, each started when the last ends.
//!   - `n_requests_spawn` (baseline): `N` requests through the same service
//!     without the layer, each handler calling `tokio::spawn` once.
//!   - `n_requests_1_task`: `N` requests through the layer, each handler
//!     adding one task.
//! - `empty_request/*` — one request whose handler queues nothing.
//!   - `no_layer` (baseline): the bare `service_fn`.
//!   - `with_layer`: the same service behind the layer.
//!   - `handle_create_insert`: what the layer cannot avoid: build a value
//!     shaped like the handle (an `Arc` around a task-set reference, the
//!     method, the URI and a mutex-guarded queue) and insert a clone of it
//!     into empty `http::Extensions`, then drop both. (The real constructor
//!     is private to the crate.)
//! - `shutdown/*` — what `Supervisor::shutdown` costs, on a fresh supervisor
//!   per iteration. One request's handler queues the tasks (not timed); the
//!   timed part starts when its body is read, which hands them off.
//!   - `run_wait_idle` (baseline): 100 000 empty tasks handed off (the
//!     queue limit raised to hold them all; the default lane runs 1024 at a
//!     time), then `wait_idle`: the time it takes to just run them.
//!   - `drain`: the same tasks handed off, then `shutdown()` (target: no
//!     more than `run_wait_idle` + 10 ms).
//!   - `ignoring_cancellation/N`: `N` tasks that sleep for an hour and never
//!     look at the cancellation token, all running (`max_running(N)`), a
//!     50 ms grace period with 10 ms of cleanup; only `shutdown()` is timed
//!     (target: grace + 20 ms = 70 ms).
//!   - `joinset_shutdown/N` (baseline): tokio's own cost for the same abort:
//!     `N` tasks sleeping for an hour in a `tokio::task::JoinSet`, then
//!     `JoinSet::shutdown()` (abort all, wait for all), which alone is
//!     timed. There is no grace period: compare it with
//!     `ignoring_cancellation/N` minus 50 ms.
//!   - `abort_handles/N` (baseline): the floor under both: `N` sleeping
//!     tasks, each holding a guard that ticks a countdown when dropped, then
//!     every `AbortHandle` aborted; timed until the last guard is dropped.
//!
//! Run all of it (under three minutes once built):
//!
//! ```text
//! cargo bench -p benches --bench handoff
//! ```
//!
//! or a quicker, noisier pass with
//! `cargo bench -p benches --bench handoff -- --warm-up-time 1 --measurement-time 2`
//! (criterion's `--quick` works as well). The numbers are in
//! `BENCHMARKS.md`.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use http::{Extensions, Method, Request, Uri};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::{service_fn, Layer, ServiceExt};
use tower_background::layer::ResponseBody;
use tower_background::{BackgroundTasks, Supervisor, Task, TaskOutput};

mod support;
use support::requests::{multi_thread_runtime, ok, read_to_end, request, serve_one, tasks_of, URI};

/// Tasks per timed iteration in the `per_task` group.
const N: usize = 1000;

/// How a `per_task/one_request_*` handler adds its `N` tasks, each ticking
/// the countdown.
type AddN = fn(&BackgroundTasks, &'static Countdown);

/// `N` distinct keys, made once: a keyed variant clones one per task (one
/// small allocation, as any owned key costs), and formats none.
static KEYS: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..N).map(|i| format!("customer-{i:04}")).collect());

/// Runs `timed` as a task on `runtime` (on one of its workers, for a
/// multi-thread runtime) and returns what it measured.
fn on_worker<F>(runtime: &Runtime, timed: F) -> Duration
where
    F: Future<Output = Duration> + Send + 'static,
{
    let timed = runtime.spawn(timed);
    runtime.block_on(timed).expect("the timed loop panicked")
}

/// Counts task bodies down and wakes the timed loop at zero; the completion
/// signal both sides of `per_task` wait on.
#[derive(Debug)]
struct Countdown {
    left: AtomicUsize,
    done: Notify,
}

impl Countdown {
    fn leaked() -> &'static Self {
        Box::leak(Box::new(Self {
            left: AtomicUsize::new(0),
            done: Notify::new(),
        }))
    }

    fn arm(&self, n: usize) {
        self.left.store(n, Ordering::Release);
    }

    fn tick(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    async fn wait(&self) {
        self.done.notified().await;
    }
}

/// Ticks a [`Countdown`] when dropped: how `shutdown/abort_handles` knows
/// an aborted task's future is gone.
struct TickOnDrop(&'static Countdown);

impl Drop for TickOnDrop {
    fn drop(&mut self) {
        self.0.tick();
    }
}

fn per_task(c: &mut Criterion) {
    let runtime = &multi_thread_runtime();
    let supervisor = runtime.block_on(async { Supervisor::new() });
    let uri: Uri = URI.parse().expect("a URI");
    let countdown = Countdown::leaked();

    let mut group = c.benchmark_group("per_task");
    group.throughput(Throughput::Elements(N as u64));

    group.bench_function(BenchmarkId::new("raw_spawn", N), |b| {
        b.iter_custom(|iters| {
            on_worker(runtime, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    countdown.arm(N);
                    for _ in 0..N {
                        drop(tokio::spawn(async move { countdown.tick() }));
                    }
                    countdown.wait().await;
                }
                start.elapsed()
            })
        });
    });

    // What deferring the start costs at least in safe Rust: the futures
    // wait, type-erased (boxed), until they are spawned.
    group.bench_function(BenchmarkId::new("boxed_then_spawn", N), |b| {
        b.iter_custom(|iters| {
            on_worker(runtime, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    countdown.arm(N);
                    let mut waiting: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
                    for _ in 0..N {
                        waiting.push(Box::pin(async move { countdown.tick() }));
                    }
                    for future in waiting {
                        drop(tokio::spawn(future));
                    }
                    countdown.wait().await;
                }
                start.elapsed()
            })
        });
    });

    // The `one_request_*` variants: one request whose handler adds `N`
    // tasks, each a different way; the same service and timed loop for all.
    let adders: [(&str, AddN); 4] = [
        ("one_request_n_tasks", |tasks, countdown| {
            for _ in 0..N {
                tasks.add(async move { countdown.tick() });
            }
        }),
        ("one_request_n_task_new", |tasks, countdown| {
            for _ in 0..N {
                tasks.add(Task::new(async move { countdown.tick() }));
            }
        }),
        ("one_request_n_keyed", |tasks, countdown| {
            for key in KEYS.iter() {
                tasks.add(Task::new(async move { countdown.tick() }).key(key.clone()));
            }
        }),
        ("one_request_n_one_key", |tasks, countdown| {
            let key = &KEYS[0];
            for _ in 0..N {
                tasks.add(Task::new(async move { countdown.tick() }).key(key.clone()));
            }
        }),
    ];
    for (name, add) in adders {
        let one_request =
            supervisor
                .layer()
                .layer(service_fn(move |request: Request<()>| async move {
                    add(tasks_of(&request), countdown);
                    Ok::<_, Infallible>(ok())
                }));
        group.bench_function(BenchmarkId::new(name, N), |b| {
            b.iter_custom(|iters| {
                let mut service = one_request.clone();
                let uri = uri.clone();
                on_worker(runtime, async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        countdown.arm(N);
                        serve_one(&mut service, &uri).await;
                        countdown.wait().await;
                    }
                    start.elapsed()
                })
            });
        });
    }

    let spawning = service_fn(move |_request: Request<()>| async move {
        drop(tokio::spawn(async move { countdown.tick() }));
        Ok::<_, Infallible>(ok())
    });
    group.bench_function(BenchmarkId::new("n_requests_spawn", N), |b| {
        b.iter_custom(|iters| {
            let mut service = spawning;
            let uri = uri.clone();
            on_worker(runtime, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    countdown.arm(N);
                    for _ in 0..N {
                        serve_one(&mut service, &uri).await;
                    }
                    countdown.wait().await;
                }
                start.elapsed()
            })
        });
    });

    let adding = supervisor
        .layer()
        .layer(service_fn(move |request: Request<()>| async move {
            tasks_of(&request).add(async move { countdown.tick() });
            Ok::<_, Infallible>(ok())
        }));
    group.bench_function(BenchmarkId::new("n_requests_1_task", N), |b| {
        b.iter_custom(|iters| {
            let mut service = adding.clone();
            let uri = uri.clone();
            on_worker(runtime, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    countdown.arm(N);
                    for _ in 0..N {
                        serve_one(&mut service, &uri).await;
                    }
                    countdown.wait().await;
                }
                start.elapsed()
            })
        });
    });
    group.finish();

    let report = runtime.block_on(supervisor.shutdown());
    assert!(report.is_complete(), "{report}");
}

/// Shaped like the crate's `BackgroundTasks`: one `Arc` around what a
/// request's handle holds.
#[derive(Clone, Debug)]
struct HandleLike {
    _state: Arc<HandleState>,
}

#[derive(Debug)]
struct HandleState {
    _set: Arc<AtomicUsize>,
    _method: Method,
    _uri: Uri,
    _queue: Mutex<Option<Vec<Box<dyn Any + Send>>>>,
}

fn empty_request(c: &mut Criterion) {
    let runtime = &multi_thread_runtime();
    let supervisor = runtime.block_on(async { Supervisor::new() });
    let uri: Uri = URI.parse().expect("a URI");

    let mut group = c.benchmark_group("empty_request");

    let bare = service_fn(|_request: Request<()>| async { Ok::<_, Infallible>(ok()) });
    group.bench_function("no_layer", |b| {
        b.iter_custom(|iters| {
            let mut service = bare;
            let uri = uri.clone();
            on_worker(runtime, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    serve_one(&mut service, &uri).await;
                }
                start.elapsed()
            })
        });
    });

    let layered = supervisor.layer().layer(bare);
    group.bench_function("with_layer", |b| {
        b.iter_custom(|iters| {
            let mut service = layered.clone();
            let uri = uri.clone();
            on_worker(runtime, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    serve_one(&mut service, &uri).await;
                }
                start.elapsed()
            })
        });
    });

    let set = Arc::new(AtomicUsize::new(0));
    group.bench_function("handle_create_insert", |b| {
        b.iter_custom(|iters| {
            let set = Arc::clone(&set);
            let uri = uri.clone();
            on_worker(runtime, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let handle = HandleLike {
                        _state: Arc::new(HandleState {
                            _set: Arc::clone(&set),
                            _method: Method::POST,
                            _uri: black_box(&uri).clone(),
                            _queue: Mutex::new(Some(Vec::new())),
                        }),
                    };
                    let mut extensions = Extensions::new();
                    extensions.insert(handle.clone());
                    drop(black_box(extensions));
                    drop(black_box(handle));
                }
                start.elapsed()
            })
        });
    });
    group.finish();

    let report = runtime.block_on(supervisor.shutdown());
    assert!(report.is_complete(), "{report}");
}

/// Tasks handed off per iteration in `shutdown/run_wait_idle` and
/// `shutdown/drain`.
const DRAIN_TASKS: usize = 100_000;
/// `shutdown/ignoring_cancellation`: the grace period and its cleanup part.
const STUCK_GRACE: Duration = Duration::from_millis(50);
/// How many tasks are aborted in `shutdown/ignoring_cancellation` and its
/// baselines.
const STUCK_TASKS: [usize; 3] = [1_000, 10_000, 100_000];
const STUCK_CLEANUP: Duration = Duration::from_millis(10);

/// Sends one request through `supervisor`'s layer to a handler that queues
/// `n` tasks made by `task`, and returns the response body unread: the tasks
/// are queued, none is handed off yet.
async fn queue_tasks<T>(
    supervisor: &Supervisor,
    uri: &Uri,
    n: usize,
    task: fn() -> T,
) -> ResponseBody<Full<Bytes>>
where
    T: Future + Send + 'static,
    T::Output: TaskOutput,
{
    let service = supervisor
        .layer()
        .layer(service_fn(move |request: Request<()>| async move {
            let tasks = tasks_of(&request);
            for _ in 0..n {
                tasks.add(task());
            }
            Ok::<_, Infallible>(ok())
        }));
    service
        .oneshot(request(uri))
        .await
        .expect("infallible")
        .into_body()
}

/// A supervisor that accepts all [`DRAIN_TASKS`] at once (the default
/// queue holds 65 536); the default lane runs 1024 of them at a time, as it
/// would in an application.
fn drain_supervisor() -> Supervisor {
    Supervisor::builder().max_queued(DRAIN_TASKS).build()
}

fn shutdown(c: &mut Criterion) {
    let runtime = &multi_thread_runtime();
    let uri: Uri = URI.parse().expect("a URI");

    let mut group = c.benchmark_group("shutdown");
    // Each iteration takes tens of milliseconds: a few per sample is enough.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));

    group.bench_function(BenchmarkId::new("run_wait_idle", DRAIN_TASKS), |b| {
        b.iter_custom(|iters| {
            let uri = uri.clone();
            on_worker(runtime, async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let supervisor = drain_supervisor();
                    let body = queue_tasks(&supervisor, &uri, DRAIN_TASKS, || async {}).await;
                    let start = Instant::now();
                    read_to_end(body).await;
                    supervisor.wait_idle().await;
                    timed += start.elapsed();
                    let report = supervisor.shutdown().await;
                    assert_eq!(report.stats.completed, DRAIN_TASKS as u64, "{report}");
                }
                timed
            })
        });
    });

    group.bench_function(BenchmarkId::new("drain", DRAIN_TASKS), |b| {
        b.iter_custom(|iters| {
            let uri = uri.clone();
            on_worker(runtime, async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let supervisor = drain_supervisor();
                    let body = queue_tasks(&supervisor, &uri, DRAIN_TASKS, || async {}).await;
                    let start = Instant::now();
                    read_to_end(body).await;
                    let report = supervisor.shutdown().await;
                    timed += start.elapsed();
                    assert!(report.is_complete(), "{report}");
                    assert_eq!(report.stats.completed, DRAIN_TASKS as u64, "{report}");
                }
                timed
            })
        });
    });

    // tokio's own floor for the same abort: `n` tasks sleeping in a
    // `JoinSet`, then `JoinSet::shutdown` (abort all, wait for all); only
    // that is timed. No grace period: compare it with
    // `ignoring_cancellation/n` minus the grace period.
    for n in STUCK_TASKS {
        group.bench_function(BenchmarkId::new("joinset_shutdown", n), |b| {
            b.iter_custom(|iters| {
                on_worker(runtime, async move {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let mut set = JoinSet::new();
                        for _ in 0..n {
                            set.spawn(tokio::time::sleep(Duration::from_secs(3600)));
                        }
                        // Every task polled once and waiting, as in
                        // `ignoring_cancellation` after its hand-off.
                        tokio::time::sleep(STUCK_GRACE).await;
                        let start = Instant::now();
                        set.shutdown().await;
                        timed += start.elapsed();
                    }
                    timed
                })
            });
        });
    }

    // The floor under both: `n` tasks spawned, each holding a guard that
    // ticks a countdown when it is dropped, then every `AbortHandle` aborted;
    // timed until the last guard has been dropped.
    let countdown = Countdown::leaked();
    for n in STUCK_TASKS {
        group.bench_function(BenchmarkId::new("abort_handles", n), |b| {
            b.iter_custom(|iters| {
                on_worker(runtime, async move {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        countdown.arm(n);
                        let handles: Vec<_> = (0..n)
                            .map(|_| {
                                let guard = TickOnDrop(countdown);
                                tokio::spawn(async move {
                                    let _guard = guard;
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                })
                                .abort_handle()
                            })
                            .collect();
                        tokio::time::sleep(STUCK_GRACE).await;
                        let start = Instant::now();
                        for handle in &handles {
                            handle.abort();
                        }
                        countdown.wait().await;
                        timed += start.elapsed();
                    }
                    timed
                })
            });
        });
    }

    for n in STUCK_TASKS {
        group.bench_function(BenchmarkId::new("ignoring_cancellation", n), |b| {
            b.iter_custom(|iters| {
                let uri = uri.clone();
                on_worker(runtime, async move {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        // Every task running (none waiting for a slot), so
                        // that each must be woken and dropped at the abort.
                        let supervisor = Supervisor::builder()
                            .grace_period(STUCK_GRACE)
                            .cleanup_period(STUCK_CLEANUP)
                            .max_running(n)
                            .max_queued(n)
                            .build();
                        let never = || tokio::time::sleep(Duration::from_secs(3600));
                        read_to_end(queue_tasks(&supervisor, &uri, n, never).await).await;
                        let start = Instant::now();
                        let report = supervisor.shutdown().await;
                        timed += start.elapsed();
                        assert!(report.aborted, "{report}");
                        assert_eq!(
                            report.stats.cancelled + report.stats.running,
                            n as u64,
                            "{report}"
                        );
                    }
                    timed
                })
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(60);
    targets = per_task, empty_request, shutdown
}
criterion_main!(benches);
