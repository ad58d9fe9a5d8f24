//! The JSON file of a run (`--json`, by default
//! `$CARGO_TARGET_DIR/load-bench.json`): the whole document, each round's
//! windows and the paced windows'.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{Config, PacedRate, Variant, PACED_LEAD_IN, PACED_SHARE};
use crate::server::BURN_ITERATIONS;
use crate::stats::{Measured, WindowStats};
use crate::summary::{extended, Summary};
use crate::support;

/// The whole JSON document of a run: its configuration, the medians and
/// ratios, every round's windows and the paced windows'.
pub(crate) fn document(
    config: &Config,
    rate: &PacedRate,
    rounds: &[Vec<Measured>],
    summary: &Summary,
    cores: usize,
    elapsed: Duration,
) -> Value {
    json!({
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
            "burn_iterations": BURN_ITERATIONS.load(Ordering::Relaxed),
        },
        "elapsed_s": elapsed.as_secs_f64(),
        "medians": summary.medians,
        "ratios": summary.ratios,
        "rounds": rounds.iter().map(|round| round.iter().map(measured_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "paced": paced_json(config, rate, rounds, summary),
    })
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
        // Variant 6c's too: the key is older than 6c.
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
