//! Load benchmark: a real axum server on `127.0.0.1:0`, driven by a real
//! HTTP/1.1 keep-alive client, comparing the layer with what users do today.
//!
//! Ten variants by default (an eleventh on request), all answering `GET /`
//! with the same two-byte body `ok`:
//!
//! 1. `bare`: the handler alone, no layer;
//! 2. `layer_no_task`: the layer installed, nothing queued;
//!
//!    2b. `extension_only`: instead of ours, a layer that only inserts a
//!    clone of one shared `Arc` into each request's extensions (tower's
//!    `MapRequestLayer`), installed the same way, same handler: the least
//!    any layer that hands the request a handle costs, so the floor under
//!    variant 2's target; v2b ÷ v1 is that cost, v2 ÷ v2b our layer's own;
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
//!
//!    6c. `layer_sleep_1s_own_runtime`: variant 6 with the supervisor's
//!    tasks on a second runtime of one worker (`SupervisorBuilder::runtime`),
//!    their sleep made in the task so that its timer is that runtime's too:
//!    does keeping the sleeping tasks off the serving runtime bring variant
//!    6's p99 to variant 3's? That runtime's threads count as the server's;
//!
//!    6d. `tokio_spawn_boxed_sleep_1s`, only when `--variants` names it:
//!    6b with the sleep boxed and type-erased, as a handed-off task's future
//!    is. v6d ÷ v6b is what that box costs tokio alone, v6 ÷ v6d the rest
//!    of our share (CPU per request); it is not paced;
//! 7. `layer_blocking_2ms`: the layer, one `tasks.add_blocking` closure per
//!    request that burns about 2 ms of CPU (a loop calibrated at start-up).
//!    It runs in the supervisor's blocking lane (16 at a time by default,
//!    `--blocking-limit`); the rest wait in the lane's queue. The closure
//!    returns at once once the cancellation token is cancelled, so the
//!    backlog drains at shutdown.
//!
//! Each variant runs on a fresh server: its own tokio runtime
//! (`--server-threads` workers, 1 by default), its own listener and, for the
//! layer variants, its own supervisor (the default limits, grace 200 ms,
//! cleanup 150 ms; the rejected count is printed after each variant). The client is another tokio runtime
//! (`--client-threads` workers, 1 by default) in the same process: 64
//! connections (`--connections`), one task each, sending requests one after
//! the other on its keep-alive connection with `hyper::client::conn::http1`.
//! A closed loop: a slow response holds back its connection's next request.
//! One worker each means the two sides never compete with each other for a
//! core on a two-core machine, and the server's cost per request is not
//! blurred by work stealing.
//!
//! A variant warms up (`--warm-up`; variants 6, 6b and 6c at least 1.2 s,
//! until their population of sleeping tasks is steady), then is measured
//! (`--secs`): throughput is the responses completed inside the window,
//! latency the time from sending a request started inside the window to its
//! body's end. The CPU time of the server's threads (workers and blocking
//! pool, and 6c's tasks' runtime) and of the client's is read from
//! `/proc/self/task/*/schedstat` at the window's start and end (Linux only),
//! and reported per request: unlike throughput, it hardly moves when other
//! processes take the cores.
//!
//! Variants are interleaved over rounds (round 1: 1..7 with 2b after 2, 6b
//! and 6c after 6, round 2: the same, ...) so drift on the machine hits all
//! of them alike; the tables show medians over rounds, and each ratio is
//! taken within a round, then its median. After each variant the server
//! stops, `Supervisor::shutdown` runs (and the tracker is closed and waited
//! for) and the runtime (6c: both runtimes) is shut down.
//!
//! **The paced window.** A saturated closed loop keeps about 64 requests
//! queued, so its latency is about connections ÷ throughput (Little's law):
//! its p99 mostly measures the server's CPU per request, and a variant that
//! costs more per request (6 against 3, 6b against 4: a task that sleeps
//! costs a timer and a second poll) has the higher p99 whether or not a
//! response ever waits on a task. So variants 3, 4, 6, 6b and 6c
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
//! (1.05 s for 6, 6b and 6c, until the tasks started at the saturated rate have
//! ended and the population of sleeping tasks is the paced rate's, R × 1 s),
//! then `--paced-secs` are. R is `--rate` if given; otherwise a quarter of the
//! throughput of variant 3 in a run of its own before round 1, which also
//! warms the process up, so that every round keeps its order and every
//! paced window of a run has the same R. The paced table reports the rate
//! achieved, p50 / p99 / p99.9, server CPU per request, and the ratios v6 ÷
//! v3 (the issue's target), v6c ÷ v3, v6c ÷ v6, v6b ÷ v4 and v6 ÷ v6b of
//! the paced p99.
//!
//! ```text
//! cargo bench -p benches --bench load               # 6 rounds × ((0.5 s + 2 s) × 10 + paced 2 s × 5), about 4.5 minutes
//! cargo bench -p benches --bench load -- --quick    # 3 rounds × ((0.2 s + 0.5 s) × 10 + paced 0.3 s × 5), about 55 s
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

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

#[path = "../support/mod.rs"]
mod support;

mod client;
mod config;
mod json;
mod markdown;
mod sample;
mod server;
mod stats;
mod summary;

use client::{drive, ClientRun, Phase};
use config::{Config, PacedRate, Variant, PACED_SHARE, PACED_VARIANTS, RATE_BOUNDS};
use markdown::{micros, print_markdown, print_paced_markdown};
use sample::CLIENT_THREADS;
use server::{calibrate_burn, Server, BURN_ITERATIONS, TRIVIAL_RAN};
use stats::{Measured, Paced, WindowStats};
use summary::summarise;
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
        let document = json::document(&config, &rate, &rounds, &summary, cores, elapsed);
        support::write_json(path, &document);
    }

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
