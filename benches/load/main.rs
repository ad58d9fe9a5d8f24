//! Load benchmark: a real axum server on `127.0.0.1:0`, driven by a real
//! HTTP/1.1 keep-alive client, comparing the layer with what users do today.
//!
//! Ten variants by default (two more on request), all answering `GET /`
//! with the two-byte body `ok`:
//!
//! 1. the handler alone, no layer;
//! 2. the layer installed, nothing queued;
//!
//!    2b. a layer that only inserts a clone of one shared `Arc` into each
//!    request's extensions (tower's `MapRequestLayer`): the least any layer
//!    that hands the handler something costs; v2b ÷ v1 is that floor,
//!    v2 ÷ v2b our layer's own share;
//! 3. the layer, one trivial task per request (`tasks.add`);
//!
//!    3m. only when `--variants` names it, in a build with `--features
//!    metrics`: 3 with a Prometheus recorder
//!    (`metrics-exporter-prometheus`) installed for the server's threads
//!    (thread-locally, not globally) before the supervisor is built, its
//!    upkeep run every second; at teardown its count of completed tasks
//!    must equal the supervisor's. 3m ÷ 3 is what the feature costs when
//!    it is on (without a recorder it does nothing, and is compiled in for
//!    every variant of such a build);
//! 4. no layer, the handler `tokio::spawn`s the same task;
//! 5. no layer, `TaskTracker::spawn` of the same task (the tracker reaches
//!    the handler as axum `State`);
//! 6. the layer, one task per request that sleeps 1 s and ignores the
//!    cancellation token, so tens of thousands of sleeping tasks are alive
//!    while the server answers;
//!
//!    6b. no layer, `tokio::spawn` of the same sleep: what that many
//!    sleeping tasks cost tokio alone;
//!
//!    6c. 6 with the supervisor's tasks on a second runtime of one worker
//!    (`SupervisorBuilder::runtime`), the sleep made in the task so that
//!    its timer is that runtime's; that runtime's threads count as the
//!    server's;
//!
//!    6d. only when `--variants` names it: 6b with the sleep boxed and
//!    type-erased, as a handed-off task's future is (not paced);
//! 7. the layer, one `tasks.add_blocking` closure per request that burns
//!    about 2 ms of CPU (a loop calibrated at start-up), in the blocking
//!    lane (16 at a time by default); the closure returns at once once the
//!    token is cancelled, so the backlog drains at shutdown.
//!
//! Each variant runs on a fresh server: its own tokio runtime of one
//! worker, listener and, for the layer variants, supervisor (default
//! limits, grace 200 ms, cleanup 150 ms). The client is another runtime of
//! one worker in the same process: 64 connections, each a task sending requests
//! one after the other on its keep-alive connection
//! (`hyper::client::conn::http1`), a closed loop. One worker each keeps the
//! two sides from competing for a core on a two-core machine.
//!
//! A variant warms up (`--warm-up`; the sleeping variants at least 1.2 s,
//! until their population of sleeping tasks is steady), then is measured
//! (`--secs`): throughput is the responses completed inside the window,
//! latency the time from sending a request started inside it to its body's
//! end. The CPU time of the server's threads and of the client's is read
//! from `/proc/self/task/*/schedstat` (Linux) at the window's start and end
//! and reported per request: unlike throughput, it hardly moves when other
//! processes take the cores.
//!
//! Variants are interleaved over rounds, each lettered one right after the
//! variant it is read against, so drift on the machine hits all alike; the
//! tables show medians over rounds, and each ratio is taken within a round,
//! then its median.
//!
//! **The paced window.** A saturated closed loop keeps about 64 requests
//! queued, so its p99 mostly measures the server's CPU per request. So
//! variants 3, 4, 6, 6b and 6c are measured a second time, right after
//! the saturated window on the same server and connections, at one offered
//! rate R below saturation: an open loop where connection i has its k-th
//! request due at `end + i/R + k·64/R`, a request due while its connection
//! is busy going as soon as it is free (`MissedTickBehavior::Burst`).
//! Latency counts from the due time (no coordinated omission), less the
//! client's own lateness in sending once the request was due and its
//! connection free (tokio's timer fires about 1 ms late, more than the
//! server's share at this load); both are reported too. The schedule's
//! first 50 ms (1.05 s for the sleeping variants, until the population of
//! sleeping tasks is the paced rate's) are not measured, then
//! `--paced-secs` are. R is a quarter of variant 3's throughput in an
//! unrecorded run before round 1, which also warms the
//! process up.
//!
//! ```text
//! cargo bench -p benches --bench load               # 6 rounds, about 4.5 minutes
//! cargo bench -p benches --bench load -- --quick    # 3 rounds, under a minute
//! cargo bench -p benches --bench load --features metrics -- --variants 3,3m
//! ```
//!
//! Other options (after `--`): `--rounds N`, `--secs S`, `--warm-up S`,
//! `--paced-secs S` (0: no paced windows) and `--variants 1,3,4`.
//!
//! Prints a progress line per variant and round to stderr, then the tables
//! to stdout. Run without `--bench` (as `cargo test --benches` does) it
//! makes one short smoke pass. The server listens on loopback only; every
//! loop and wait is bounded.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

#[path = "../support/mod.rs"]
mod support;

mod client;
mod config;
mod recorder;
mod report;
mod sample;
mod server;
mod stats;

use client::{drive, ClientRun, Phase};
use config::{Config, PacedRate, Variant, CLIENT_WORKERS, PACED_VARIANTS, SERVER_WORKERS};
use report::micros;
use sample::CLIENT_THREADS;
use server::{calibrate_burn, Server, BURN_ITERATIONS, TRIVIAL_RAN};
use stats::{Measured, Paced, WindowStats};
use support::Mode;

/// A pause between two variants, for the last one's threads to go quiet.
const SETTLE: Duration = Duration::from_millis(200);

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
        SERVER_WORKERS,
        CLIENT_WORKERS,
        cores,
        BURN_ITERATIONS.load(Ordering::Relaxed),
    );
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_WORKERS)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("the client runtime");

    // Before the first round, variant 3 runs once, unrecorded: it warms the
    // process up (the allocator, page tables, caches) and fixes the paced
    // rate at a share of its throughput. A run of
    // its own rather than round 1's variant 3, so that the rounds keep their
    // order and every paced window of the run has the same rate.
    let warm_up = Config {
        measure: config.warm_up,
        ..config.clone()
    };
    let variant3_rps = run_variant(Variant::LayerTask, &warm_up, &client_runtime, None)
        .stats
        .rps;
    let rate = PacedRate::new(variant3_rps);
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
                "round {round} v{:<2} {:<36} {:>9.0} req/s  p50 {:>7} µs  p99 {:>7} µs  \
                 p99.9 {:>7} µs  server CPU {} µs/req ({:.2} cores)  errors {} unanswered {}{}",
                variant.number(),
                variant.label(),
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
    eprintln!("load: {:.0} s", started.elapsed().as_secs_f64());

    report::print(&config, &rate, &rounds, cores);
    let failures: u64 = rounds
        .iter()
        .flatten()
        .map(|m| m.stats.failures() + m.paced.as_ref().map_or(0, |paced| paced.stats.failures()))
        .sum();

    if config.mode == Mode::Smoke {
        assert_eq!(failures, 0, "requests failed in the smoke pass");
        eprintln!(
            "load: smoke pass ok (run with `cargo bench -p benches --bench load` to measure)"
        );
    } else if failures > 0 {
        eprintln!("load: {failures} request(s) failed or went unanswered; see above");
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
    let server = Server::start(variant);
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
        trivial_ran: TRIVIAL_RAN.load(Ordering::Relaxed),
        teardown,
        paced: paced.map(Paced::from),
    }
}

/// Per-variant notes for the progress line.
fn extra(m: &Measured) -> String {
    let mut notes = String::new();
    if matches!(
        m.variant,
        Variant::LayerTask | Variant::LayerTaskMetrics | Variant::TokioSpawn | Variant::TaskTracker
    ) {
        notes += &format!("  trivial tasks run {}", m.trivial_ran);
    }
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
    if let Some(completed) = m.teardown.recorded_completed {
        notes += &format!("  recorder: {completed} completed, as the supervisor counted");
    }
    if let Some(wait) = m.teardown.tracker_wait {
        notes += &format!("  tracker wait {wait:.1?}");
    }
    if !m.teardown.server_stopped {
        notes += "  (server did not stop cleanly)";
    }
    notes
}
