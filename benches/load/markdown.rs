//! The Markdown tables printed to stdout: the saturated windows' medians
//! and ratios, what the sleeping and blocking variants left at shutdown,
//! then the paced windows'.

use std::time::Duration;

use serde_json::Value;

use crate::config::{Config, PacedRate, Variant, PACED_LEAD_IN};
use crate::stats::Measured;
use crate::summary::Summary;
use crate::support;

/// A time in ns as µs: no decimal from 100 µs up, one below.
pub(crate) fn micros(ns: f64) -> String {
    let us = ns / 1000.0;
    if us >= 100.0 {
        format!("{:.0}", us)
    } else {
        format!("{:.1}", us)
    }
}

pub(crate) fn print_markdown(
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
    for variant in [
        Variant::LayerSleep,
        Variant::LayerSleepOwnRuntime,
        Variant::LayerBlocking,
    ] {
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
pub(crate) fn print_paced_markdown(
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
         after its saturated window; {:.2} s lead-in ({:.2} s for 6, 6b and 6c, until the tasks \
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

    // How many of variant 6's (and 6c's) tasks were alive while it was paced.
    for variant in [Variant::LayerSleep, Variant::LayerSleepOwnRuntime] {
        let populations: Vec<String> = rounds
            .iter()
            .filter_map(|round| round.iter().find(|m| m.variant == variant))
            .filter_map(|m| {
                let paced = m.paced.as_ref()?;
                Some(format!("{}–{}", paced.least_running?, paced.peak_running?))
            })
            .collect();
        if !populations.is_empty() {
            println!();
            println!(
                "v{} tasks running during the paced window (least–peak), per round: {}",
                variant.number(),
                populations.join(", ")
            );
        }
    }
}
