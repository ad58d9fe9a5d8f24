//! Admission control: what the limit on running tasks costs in throughput,
//! and what a task waiting for a slot holds in memory.
//!
//! Not a criterion benchmark (`harness = false`): one measured unit is a
//! million tasks, and the two variants of each comparison are run in
//! alternation, round after round, so that both see the same moments of a
//! noisy machine. Criterion would take ten or more samples of one variant
//! before starting the other.
//!
//! # Throughput
//!
//! 1 000 requests go through the real layer, one after another, from one task
//! on the runtime (on a worker). Each handler adds 1 000 tiny tasks (each
//! increments a shared atomic); reading the response body to its end hands
//! them off. The time is taken from the first request until
//! `Monitor::wait_idle` returns for the last time: 1 000 000 tasks added,
//! handed off, run and counted.
//!
//! - `limited`: `Supervisor::builder().max_running(1000).max_queued(2_000_000)`.
//! - `unlimited`: `max_running(usize::MAX)` with the same `max_queued`.
//!   (`Lane::new` only raises a limit of 0 to 1, and a slot is taken only
//!   while `running < limit`, so `usize::MAX` cannot overflow.) Every task is
//!   spawned at its hand-off.
//!
//! Two ways of serving the requests:
//!
//! - `all at once`: the 1 000 requests back to back, then `wait_idle`. The
//!   serving loop never yields, so with the limit all but the first
//!   request's tasks go through the lane's queue (and finishing tasks start
//!   the waiting ones), while without it a million tokio tasks exist at once.
//! - `in bursts`: `wait_idle` after every 10 requests (10 000 tasks), so
//!   without the limit at most 10 000 tokio tasks exist at once, and with it
//!   9 000 of every 10 000 tasks still wait in the queue. This isolates the
//!   cost of the queue path from the cost of holding a million tasks.
//!
//! Each runs on a multi-thread runtime with 2 workers (the target's setting)
//! and on a current-thread runtime (no work stealing, so less noise). One
//! unmeasured run of each variant comes first. The figures are medians over
//! the rounds; the ratio is limited ÷ unlimited throughput.
//!
//! # Memory per waiting task
//!
//! Each figure comes from a fresh child process (this binary run again with
//! `--probe NAME N`) on a current-thread runtime. It is the growth of the
//! process's anonymous resident memory (`Anonymous:` in
//! `/proc/self/smaps_rollup`, exact to the page) across the step that creates
//! N = 100 000 waiting tasks, divided by N. A fresh process has next to no
//! freed memory for the step to reuse, so the growth is what the step keeps.
//!
//! This is what `malloc` really takes: each allocation's chunk (the request
//! plus an 8-byte header, rounded up to 16 bytes, at least 32), and of a
//! growing `Vec` or `VecDeque` only the pages written so far (the `memory`
//! bench counts requested bytes instead).
//!
//! The tiny task's future is one byte; the crate boxes it with its output
//! mapping, an allocation of a few bytes that takes a 32-byte chunk. Probes:
//!
//! - `boxed_future`: N such boxes alone (mirrors the crate's wrapper), stored
//!   in slots written before the measurement: the task's own future.
//! - `lane_one_request`: `max_running(1)`, the slot held by a task parked on
//!   a gate; then one request adds N tasks and its body is read, so all N
//!   wait in the lane's queue (`stats().queued == N`).
//! - `lane_n_requests`: the same, but N requests adding one task each; each
//!   waiting task keeps its request's shared state alive.
//! - `response_one_request`: one request adds N tasks and its response body
//!   is not read: they wait for their response (`stats().waiting == N`).
//! - `tokio_semaphore`: what a naive design costs, a tokio task per waiting
//!   task parked in `Semaphore::acquire` on a 1-permit semaphore held
//!   elsewhere. Spawned in batches of 1 024, each batch parked before the
//!   next, so tokio's run queue stays small.
//!
//! Each probe runs three times; the figure is the median.
//!
//! # Running it
//!
//! ```text
//! cargo bench -p benches --bench admission              # 9 rounds, 1-2 min once built
//! cargo bench -p benches --bench admission -- --quick   # 3 rounds, one run per probe (about 30 s)
//! cargo bench -p benches --bench admission -- memory    # only the probes (or `throughput`)
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it makes one
//! small pass of everything to check that it works. The figures are in
//! `BENCHMARKS.md`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::io::Write;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use http_body::Body;
use tokio::runtime::Runtime;
use tokio::sync::{Notify, Semaphore};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_background::{Monitor, Supervisor};

mod support;
use support::requests::{
    current_thread_runtime, multi_thread_runtime, ok, request, serve_one, tasks_of, URI,
};
use support::{median, Mode};

/// The limit of the `limited` variant.
const LIMIT: usize = 1000;
/// `max_queued` of both variants: above the million tasks, so none is refused.
const MAX_QUEUED: usize = 2_000_000;
/// Requests per run, and tasks each request adds: a million tasks per run.
const REQUESTS: usize = 1000;
const TASKS_PER_REQUEST: usize = 1000;
/// Requests per burst in the `in bursts` scenario: 10 000 tasks.
const BURST: usize = 10;
/// Waiting tasks per memory probe.
const PROBE_N: usize = 100_000;
/// Tokio tasks spawned before letting them park, in `tokio_semaphore`.
const BATCH: usize = 1024;

/// Ticked by every tiny task.
static RAN: AtomicUsize = AtomicUsize::new(0);

/// The tiny task: one byte of future state.
async fn tiny() {
    RAN.fetch_add(1, Ordering::Relaxed);
}

/// How the crate boxes a task's future (`task::boxed`: the future, awaited,
/// its output mapped to an outcome); for the `boxed_future` probe.
fn boxed_like_the_crate<F>(future: F) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    F: Future<Output = ()> + Send + 'static,
{
    // Deliberately an async block around the future, as in the crate.
    #[allow(clippy::redundant_async_block)]
    Box::pin(async move { future.await })
}

struct Settings {
    rounds: usize,
    probe_runs: usize,
    requests: usize,
    tasks_per_request: usize,
    probe_n: usize,
    throughput: bool,
    memory: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|arg| arg == "--probe") {
        let name = args.get(at + 1).expect("--probe NAME N");
        let n = args
            .get(at + 2)
            .and_then(|n| n.parse().ok())
            .expect("--probe NAME N");
        probe(name, n);
        return;
    }
    let mode = Mode::from_args(&args);
    let quick = mode == Mode::Quick;
    let filters: Vec<&String> = args.iter().filter(|arg| !arg.starts_with('-')).collect();
    let wanted =
        |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f.as_str()));
    let settings = if mode.measures() {
        Settings {
            rounds: if quick { 3 } else { 9 },
            probe_runs: if quick { 1 } else { 3 },
            requests: REQUESTS,
            tasks_per_request: TASKS_PER_REQUEST,
            probe_n: PROBE_N,
            throughput: wanted("throughput"),
            memory: wanted("memory"),
        }
    } else {
        // `cargo test --benches`: check that everything works, quickly.
        println!("(run without --bench: a small check pass, not a measurement)");
        Settings {
            rounds: 1,
            probe_runs: 1,
            requests: 10,
            tasks_per_request: 100,
            probe_n: 1000,
            throughput: true,
            memory: true,
        }
    };
    if settings.throughput {
        throughput(&settings);
    }
    if settings.memory {
        memory(&settings);
    }
}

// ---------------------------------------------------------------------------
// Throughput

/// One timed run.
#[derive(Clone, Copy, Debug)]
struct Run {
    elapsed: Duration,
    /// On-CPU time of all the process's threads during the run.
    cpu: Duration,
    /// Tasks waiting for a slot right after the last hand-off.
    queued_after_handoffs: u64,
}

/// Serves `requests` requests, waiting until every task has run after each
/// `burst` of them.
async fn run_once<S, B>(
    service: &mut S,
    monitor: &Monitor,
    uri: &Uri,
    requests: usize,
    burst: usize,
) -> Run
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let mut queued_after_handoffs = 0;
    let mut served = 0;
    while served < requests {
        let this_burst = burst.min(requests - served);
        for _ in 0..this_burst {
            serve_one(service, uri).await;
        }
        served += this_burst;
        queued_after_handoffs = queued_after_handoffs.max(monitor.stats().queued);
        monitor.wait_idle().await;
    }
    Run {
        elapsed: start.elapsed(),
        cpu: Duration::ZERO,
        queued_after_handoffs,
    }
}

/// How the requests of a run are served.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    /// Requests served back to back before waiting for their tasks.
    burst: usize,
}

fn throughput(settings: &Settings) {
    let tasks = settings.requests * settings.tasks_per_request;
    println!(
        "throughput: {} requests x {} tasks = {tasks} tasks per run, {} rounds, \
         limited = max_running({LIMIT}), unlimited = max_running(usize::MAX)",
        settings.requests, settings.tasks_per_request, settings.rounds,
    );
    let scenarios = [
        Scenario {
            name: "all at once (every request served, then wait_idle)",
            burst: settings.requests,
        },
        Scenario {
            name: "in bursts (wait_idle after every 10 requests)",
            burst: BURST,
        },
    ];
    for (name, runtime) in [
        ("multi-thread, 2 workers", multi_thread_runtime()),
        ("current-thread", current_thread_runtime()),
    ] {
        for scenario in scenarios {
            throughput_on(settings, name, &runtime, scenario);
        }
    }
}

fn throughput_on(settings: &Settings, runtime_name: &str, runtime: &Runtime, scenario: Scenario) {
    let per_request = settings.tasks_per_request;
    let tasks = (settings.requests * per_request) as u64;
    let (limited, unlimited) = runtime.block_on(async {
        let limited = Supervisor::builder()
            .max_running(LIMIT)
            .max_queued(MAX_QUEUED)
            .build();
        let unlimited = Supervisor::builder()
            .max_running(usize::MAX)
            .max_queued(MAX_QUEUED)
            .build();
        (limited, unlimited)
    });
    let service_of = |supervisor: &Supervisor| {
        supervisor
            .layer()
            .layer(service_fn(move |request: Request<()>| async move {
                let tasks = tasks_of(&request);
                for _ in 0..per_request {
                    tasks.add(tiny());
                }
                Ok::<_, Infallible>(ok())
            }))
    };
    let variants = [
        ("limited", service_of(&limited), limited.monitor()),
        ("unlimited", service_of(&unlimited), unlimited.monitor()),
    ];
    let uri: Uri = URI.parse().expect("a URI");
    let requests = settings.requests;
    let burst = scenario.burst;

    let measure = |variant: usize| -> Run {
        let (_, service, monitor) = &variants[variant];
        let mut service = service.clone();
        let monitor = monitor.clone();
        let uri = uri.clone();
        let ran_before = RAN.load(Ordering::SeqCst);
        let cpu_before = process_cpu();
        let mut run = runtime
            .block_on(runtime.spawn(async move {
                run_once(&mut service, &monitor, &uri, requests, burst).await
            }))
            .expect("the timed loop panicked");
        run.cpu = process_cpu() - cpu_before;
        let ran = RAN.load(Ordering::SeqCst) - ran_before;
        assert_eq!(ran as u64, tasks, "every task ran once");
        run
    };

    // One unmeasured run of each: the heap grows to its working size.
    measure(0);
    measure(1);
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for round in 0..settings.rounds {
        // Alternate which variant goes first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for variant in order {
            runs[variant].push(measure(variant));
        }
    }

    let high_water = limited.stats().lanes[0].high_water;
    assert!(high_water <= LIMIT as u64, "the limit held");
    for supervisor in [limited, unlimited] {
        let report = runtime.block_on(supervisor.shutdown());
        assert!(report.is_complete(), "{report}");
    }

    println!("\n{runtime_name}, {}", scenario.name);
    let ms = |variant: usize, of: fn(&Run) -> Duration| -> Vec<f64> {
        runs[variant]
            .iter()
            .map(|run| of(run).as_secs_f64() * 1e3)
            .collect()
    };
    let mut wall = [0.0; 2];
    let mut cpu = [0.0; 2];
    for (variant, (name, _, _)) in variants.iter().enumerate() {
        let elapsed = ms(variant, |run| run.elapsed);
        let listed: Vec<String> = elapsed.iter().map(|ms| format!("{ms:.0}")).collect();
        wall[variant] = median(elapsed);
        cpu[variant] = median(ms(variant, |run| run.cpu));
        let queued = runs[variant].iter().map(|run| run.queued_after_handoffs);
        println!(
            "  {name:<9} median {:>6.0} ms = {:>5.2} M tasks/s ({:>4.0} ns/task), \
             CPU {:>6.0} ms ({:>4.0} ns/task); runs (ms, in order): {}; \
             most queued after a burst's hand-offs: {}..={}",
            wall[variant],
            tasks as f64 / wall[variant] / 1e3,
            wall[variant] * 1e6 / tasks as f64,
            cpu[variant],
            cpu[variant] * 1e6 / tasks as f64,
            listed.join(" "),
            queued.clone().min().unwrap_or(0),
            queued.max().unwrap_or(0),
        );
    }
    let round_ratios: Vec<f64> = runs[0]
        .iter()
        .zip(&runs[1])
        .map(|(limited, unlimited)| unlimited.elapsed.as_secs_f64() / limited.elapsed.as_secs_f64())
        .collect();
    let (low, high) = round_ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(low, high), r| {
            (low.min(*r), high.max(*r))
        });
    println!(
        "  limited / unlimited throughput: {:.2}x (ratio of medians; per round: median {:.2}x, \
         {low:.2}x..{high:.2}x); by CPU time {:.2}x; default lane high-water mark {high_water} \
         (limit {LIMIT})",
        wall[1] / wall[0],
        median(round_ratios),
        cpu[1] / cpu[0],
    );
}

/// The on-CPU time of all this process's threads so far: less disturbed
/// than the wall clock by other processes on a busy machine.
fn process_cpu() -> Duration {
    Duration::from_nanos(support::threads_cpu_ns("").expect("/proc/self/task/*/schedstat"))
}

// ---------------------------------------------------------------------------
// Memory

const PROBES: [(&str, &str); 5] = [
    (
        "boxed_future",
        "the boxed future alone (the task's own future)",
    ),
    (
        "lane_one_request",
        "waiting for a slot, 1 request x N tasks",
    ),
    ("lane_n_requests", "waiting for a slot, N requests x 1 task"),
    (
        "response_one_request",
        "waiting for the response, 1 request x N tasks",
    ),
    (
        "tokio_semaphore",
        "naive: a tokio task parked on a semaphore",
    ),
];

fn memory(settings: &Settings) {
    let n = settings.probe_n;
    println!(
        "\nmemory: growth of anonymous RSS / N, N = {n}, fresh process per probe, \
         median of {} runs",
        settings.probe_runs,
    );
    let mut per_task = Vec::new();
    for (name, what) in PROBES {
        let bytes: Vec<f64> = (0..settings.probe_runs)
            .map(|_| {
                let measured = run_probe(name, n);
                (measured.after - measured.before) as f64 * 1024.0 / n as f64
            })
            .collect();
        let listed: Vec<String> = bytes.iter().map(|b| format!("{b:.1}")).collect();
        let median = median(bytes);
        per_task.push(median);
        println!(
            "  {name:<21} {median:>6.1} B per task  ({what}; runs: {})",
            listed.join(" ")
        );
    }
    let future = per_task[0];
    println!(
        "  user future: {} B (`tiny()`); boxed like the crate boxes it: {} B requested, \
         a {future:.1} B chunk (measured above)",
        std::mem::size_of_val(&tiny()),
        std::mem::size_of_val(&async move { tiny().await }),
    );
    for (index, (name, _)) in PROBES.iter().enumerate().skip(1).take(3) {
        println!(
            "  {name:<21} beyond the task's own future: {:>6.1} B (target <= 128 B)",
            per_task[index] - future
        );
    }
    println!(
        "  tokio_semaphore       the naive task's future is {} B; whole tokio task per waiting task \
         {:.1} B",
        std::mem::size_of_val(&naive_task(Box::leak(Box::new(Semaphore::new(1))))),
        per_task[4],
    );
}

/// Runs `--probe name n` in a child process; what it measured, in kB.
fn run_probe(name: &str, n: usize) -> Measured {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let output = Command::new(exe)
        .args(["--probe", name, &n.to_string()])
        .output()
        .expect("the probe runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "probe {name} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr),
    );
    let field = |key: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("probe {name} printed no {key}: {stdout}"))
    };
    let hugepages = field("anon_huge_kb=");
    if hugepages > 0 {
        println!("  warning: {name} used {hugepages} kB of transparent huge pages");
    }
    Measured {
        before: field("before_kb="),
        after: field("after_kb="),
    }
}

/// The anonymous resident memory of this process, and how much of it is in
/// transparent huge pages, in kB.
fn anon_kb() -> (u64, u64) {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")
        .expect("the memory probes read /proc/self/smaps_rollup (Linux 4.14+)");
    let field = |key: &str| -> u64 {
        rollup
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/self/smaps_rollup"))
    };
    (field("Anonymous:"), field("AnonHugePages:"))
}

/// Parked tokio tasks of the `tokio_semaphore` probe.
static PARKED: AtomicUsize = AtomicUsize::new(0);

async fn naive_task(semaphore: &'static Semaphore) {
    PARKED.fetch_add(1, Ordering::SeqCst);
    let _permit = semaphore.acquire().await;
    tiny().await;
}

/// Lets spawned tasks run until they have parked.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Runs one probe in this (fresh) process, prints its result line and exits
/// without tearing anything down.
fn probe(name: &str, n: usize) {
    let runtime = current_thread_runtime();
    let measured = runtime.block_on(probe_on(name, n));
    let (_, huge) = anon_kb();
    println!(
        "probe={name} n={n} before_kb={} after_kb={} anon_huge_kb={huge}",
        measured.before, measured.after,
    );
    std::io::stdout().flush().expect("stdout");
    std::process::exit(0);
}

/// What a probe measured, in kB.
#[derive(Clone, Copy, Debug)]
struct Measured {
    before: u64,
    after: u64,
}

async fn probe_on(name: &str, n: usize) -> Measured {
    let uri: Uri = URI.parse().expect("a URI");
    match name {
        "boxed_future" => {
            let mut slots: Vec<Option<Pin<Box<dyn Future<Output = ()> + Send>>>> =
                Vec::with_capacity(n);
            slots.resize_with(n, || None);
            let (before, _) = anon_kb();
            for slot in &mut slots {
                *slot = Some(boxed_like_the_crate(tiny()));
            }
            let (after, _) = anon_kb();
            black_box(&slots);
            Measured { before, after }
        }
        "lane_one_request" | "lane_n_requests" => {
            let supervisor = Supervisor::builder()
                .max_running(1)
                .max_queued(n + 1)
                .build();
            // The one slot, held by a task parked on a gate that never opens.
            let gate: &'static Notify = Box::leak(Box::new(Notify::new()));
            let mut blocker =
                supervisor
                    .layer()
                    .layer(service_fn(move |request: Request<()>| async move {
                        tasks_of(&request).add(async move { gate.notified().await });
                        Ok::<_, Infallible>(ok())
                    }));
            serve_one(&mut blocker, &uri).await;
            settle().await;
            assert_eq!(
                supervisor.stats().lanes[0].running,
                1,
                "the gate holds the slot"
            );
            let per_request = if name == "lane_one_request" { n } else { 1 };
            let mut adding =
                supervisor
                    .layer()
                    .layer(service_fn(move |request: Request<()>| async move {
                        let tasks = tasks_of(&request);
                        for _ in 0..per_request {
                            tasks.add(tiny());
                        }
                        Ok::<_, Infallible>(ok())
                    }));
            let (before, _) = anon_kb();
            for _ in 0..n / per_request {
                serve_one(&mut adding, &uri).await;
            }
            let (after, _) = anon_kb();
            let stats = supervisor.stats();
            assert_eq!(stats.queued, n as u64, "all N wait in the lane's queue");
            assert_eq!(stats.lanes[0].queued, n as u64);
            // Leave the tasks where they are: no shutdown before the exit.
            std::mem::forget(supervisor);
            Measured { before, after }
        }
        "response_one_request" => {
            let supervisor = Supervisor::builder().max_queued(n).build();
            let mut adding =
                supervisor
                    .layer()
                    .layer(service_fn(move |request: Request<()>| async move {
                        let tasks = tasks_of(&request);
                        for _ in 0..n {
                            tasks.add(tiny());
                        }
                        Ok::<_, Infallible>(ok())
                    }));
            let (before, _) = anon_kb();
            let response = adding
                .ready()
                .await
                .expect("infallible")
                .call(request(&uri))
                .await
                .expect("infallible");
            let (after, _) = anon_kb();
            assert_eq!(
                supervisor.stats().waiting,
                n as u64,
                "all N wait for the response"
            );
            // Leave the tasks where they are: no shutdown before the exit.
            std::mem::forget((supervisor, response));
            Measured { before, after }
        }
        "tokio_semaphore" => {
            let semaphore: &'static Semaphore = Box::leak(Box::new(Semaphore::new(1)));
            let _held = semaphore.acquire().await.expect("an open semaphore");
            let (before, _) = anon_kb();
            let mut spawned = 0;
            while spawned < n {
                let batch = BATCH.min(n - spawned);
                for _ in 0..batch {
                    drop(tokio::spawn(naive_task(semaphore)));
                }
                spawned += batch;
                while PARKED.load(Ordering::SeqCst) < spawned {
                    tokio::task::yield_now().await;
                }
            }
            let (after, _) = anon_kb();
            assert_eq!(semaphore.available_permits(), 0);
            Measured { before, after }
        }
        other => panic!("no probe named {other}"),
    }
}
