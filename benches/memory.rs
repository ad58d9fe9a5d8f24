//! Memory per sleeping task: the heap a task holds while it waits, through
//! the layer against `tokio::spawn` of the same sleep, measured in the same
//! run.
//!
//! ```text
//! cargo bench -p benches --bench memory            # 100 000 tasks per scenario
//! cargo bench -p benches --bench memory -- 20000   # another count
//! ```
//!
//! A counting global allocator (the `cap` crate's) tracks the bytes live on
//! the heap (what was asked of the allocator, not its own overhead or the process's RSS, so the
//! figure is the same on every run). Each scenario starts `n` tasks that
//! each sleep for a minute, lets every one of them reach its first `await`,
//! reads the live bytes, divides the growth by `n`, then aborts the tasks:
//!
//! - `tokio_spawn`: a handler-less baseline, `tokio::spawn` of an `async`
//!   block that sleeps (what a handler calling `tokio::spawn` holds);
//! - `tokio_spawn_boxed`: the same future boxed and type-erased first, as
//!   the layer's tasks are;
//! - `layer`: `n` requests through `BackgroundTaskLayer` with the default
//!   settings (`Supervisor::new()`), each adding the same sleep with
//!   `tasks.add`, each response body read to its end (which hands the task
//!   off); what the requests themselves allocated is freed by then, so what
//!   is left is the tasks'.
//!
//! The ratio `layer ÷ tokio_spawn` is the figure `BENCHMARKS.md` reports.

use std::alloc::System;
use std::convert::Infallible;
use std::future::{ready, Future};
use std::pin::Pin;
use std::time::Duration;

use cap::Cap;
use http::Uri;
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tower::{service_fn, Layer};
use tower_background::Supervisor;

mod support;
use support::requests::{current_thread_runtime, ok, serve_one, tasks_of, URI};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// How long each task sleeps: far longer than the measurement.
const NAP: Duration = Duration::from_secs(60);

fn live() -> isize {
    ALLOCATOR.allocated() as isize
}

async fn nap() {
    sleep(NAP).await;
}

/// Lets every spawned task be polled to its first `await` (the runtime has
/// one thread, so a few yields after the last spawn are enough; a short
/// sleep makes sure).
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    sleep(Duration::from_millis(50)).await;
}

/// Bytes per task of `n` tasks made by `spawn` and left sleeping.
async fn spawned(n: usize, spawn: impl Fn() -> JoinHandle<()>) -> f64 {
    let before = live();
    let mut handles = Vec::with_capacity(n);
    // The handles' own vector is not the tasks' memory.
    let vector = live() - before;
    for _ in 0..n {
        handles.push(spawn());
    }
    settle().await;
    let per_task = (live() - before - vector) as f64 / n as f64;
    for handle in &handles {
        handle.abort();
    }
    settle().await;
    per_task
}

async fn tokio_spawn(n: usize) -> f64 {
    spawned(n, || tokio::spawn(nap())).await
}

async fn tokio_spawn_boxed(n: usize) -> f64 {
    spawned(n, || {
        let boxed: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(nap());
        tokio::spawn(boxed)
    })
    .await
}

/// Returns the bytes per task and the rejected count.
async fn layer(n: usize) -> (f64, u64) {
    let supervisor = Supervisor::new();
    let mut service = supervisor.layer().layer(service_fn(|request| {
        tasks_of(&request).add(nap());
        ready(Ok::<_, Infallible>(ok()))
    }));
    let uri: Uri = URI.parse().expect("a valid URI");
    // One request first, so that what the first request allocates once
    // (the runtime's and tracing's lazily made state) is not counted.
    serve_one(&mut service, &uri).await;
    settle().await;
    let before = live();
    for _ in 0..n {
        serve_one(&mut service, &uri).await;
    }
    settle().await;
    let per_task = (live() - before) as f64 / n as f64;
    let stats = supervisor.stats();
    assert_eq!(stats.running, n as u64 + 1, "every task is running");
    drop(service);
    // Dropped without `shutdown`: the sleeping tasks are aborted at once.
    drop(supervisor);
    (per_task, stats.rejected)
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the task count.
    let n = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(100_000);
    current_thread_runtime().block_on(async {
        // Warm the runtime's own lazily made state up before any figure.
        tokio_spawn(1_000).await;
        let baseline = tokio_spawn(n).await;
        let boxed = tokio_spawn_boxed(n).await;
        let (ours, rejected) = layer(n).await;
        println!("memory per sleeping task, {n} tasks (heap bytes live per task)");
        println!("| scenario | bytes per task | ÷ tokio_spawn |");
        println!("|---|---:|---:|");
        for (name, bytes) in [
            ("tokio_spawn", baseline),
            ("tokio_spawn_boxed", boxed),
            ("layer (defaults)", ours),
        ] {
            println!("| {name} | {bytes:.0} | {:.2} |", bytes / baseline);
        }
        println!("rejected through the layer: {rejected}");
    });
}
