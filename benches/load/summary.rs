//! Over rounds: each variant's medians, and the ratios the issue sets
//! targets for (or asks to report), each taken within a round, then its
//! median; kept as the JSON values that the tables and the JSON file show.

use serde_json::{json, Map, Value};

use crate::config::{Config, Variant};
use crate::stats::{Measured, Paced, WindowStats};
use crate::support::median;

pub(crate) struct Summary {
    pub(crate) medians: Vec<Value>,
    pub(crate) ratios: Vec<Value>,
    /// The paced windows' medians, for the variants that have one.
    pub(crate) paced_medians: Vec<Value>,
    pub(crate) paced_ratios: Vec<Value>,
}

pub(crate) fn summarise(config: &Config, rounds: &[Vec<Measured>]) -> Summary {
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

/// A JSON object: `fields` (another, from `json!`) added to `object`.
pub(crate) fn extended(mut object: Map<String, Value>, fields: Value) -> Value {
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object)
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
            name: "v2b_over_v1_rps",
            what: "throughput, extension-only layer ÷ bare (reported: what any handle-in-extensions layer costs)",
            numerator: Variant::ExtensionOnly,
            denominator: Variant::Bare,
            metric: rps,
            target: None,
        },
        Ratio {
            name: "v2_over_v2b_rps",
            what: "throughput, layer with no task ÷ extension-only layer (reported: our layer's own share)",
            numerator: Variant::LayerNoTask,
            denominator: Variant::ExtensionOnly,
            metric: rps,
            target: None,
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
            name: "v6c_over_v3_p99",
            what: "p99, sleeping tasks alive on their own runtime ÷ trivial task (reported)",
            numerator: Variant::LayerSleepOwnRuntime,
            denominator: Variant::LayerTask,
            metric: p99,
            target: None,
        },
        Ratio {
            name: "v6c_over_v6_p99",
            what: "p99, sleeping tasks on their own runtime ÷ on the serving runtime (reported)",
            numerator: Variant::LayerSleepOwnRuntime,
            denominator: Variant::LayerSleep,
            metric: p99,
            target: None,
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
            name: "v6d_over_v6b_server_cpu",
            what: "server CPU per request, `tokio::spawn` of a boxed sleep ÷ of the sleep itself (reported, opt-in 6d: what the box costs tokio alone)",
            numerator: Variant::SpawnBoxedSleep,
            denominator: Variant::SpawnSleep,
            metric: cpu,
            target: None,
        },
        Ratio {
            name: "v6_over_v6d_server_cpu",
            what: "server CPU per request, sleeping task through the layer ÷ `tokio::spawn` of it boxed (reported, opt-in 6d: our share without the box)",
            numerator: Variant::LayerSleep,
            denominator: Variant::SpawnBoxedSleep,
            metric: cpu,
            target: None,
        },
        Ratio {
            name: "v6c_over_v6_server_cpu",
            what: "server CPU per request, sleeping task on its own runtime ÷ on the serving runtime (reported; both runtimes' threads counted)",
            numerator: Variant::LayerSleepOwnRuntime,
            denominator: Variant::LayerSleep,
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
            name: "v2b_over_v1_server_cpu",
            what: "server CPU per request, extension-only layer ÷ bare (reported: what any handle-in-extensions layer costs)",
            numerator: Variant::ExtensionOnly,
            denominator: Variant::Bare,
            metric: cpu,
            target: None,
        },
        Ratio {
            name: "v2_over_v2b_server_cpu",
            what: "server CPU per request, layer with no task ÷ extension-only layer (reported: our layer's own share)",
            numerator: Variant::LayerNoTask,
            denominator: Variant::ExtensionOnly,
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
            name: "paced_v6c_over_v3_p99",
            what: "paced p99, sleeping tasks alive on their own runtime ÷ trivial task (reported)",
            numerator: Variant::LayerSleepOwnRuntime,
            denominator: Variant::LayerTask,
            metric: p99,
            target: None,
        },
        Ratio {
            name: "paced_v6c_over_v6_p99",
            what: "paced p99, sleeping tasks on their own runtime ÷ on the serving runtime (reported)",
            numerator: Variant::LayerSleepOwnRuntime,
            denominator: Variant::LayerSleep,
            metric: p99,
            target: None,
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
