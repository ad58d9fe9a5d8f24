//! The tables a run ends with: each variant's medians over rounds, then
//! the ratios a change is judged by, each taken within a round and then its
//! median; the same for the paced windows.

use crate::config::{Config, PacedRate, Variant, CLIENT_WORKERS, PACED_LEAD_IN, SERVER_WORKERS};
use crate::stats::{Measured, WindowStats};
use crate::support::{median, print_table};

/// A time in ns as µs: no decimal from 100 µs up, one below.
pub(crate) fn micros(ns: f64) -> String {
    let us = ns / 1000.0;
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

#[derive(Clone, Copy, Debug)]
enum Metric {
    Rps,
    P99,
    Cpu,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Self::Rps => "req/s",
            Self::P99 => "p99",
            Self::Cpu => "server CPU per request",
        }
    }

    fn of(self, window: &WindowStats) -> f64 {
        match self {
            Self::Rps => window.rps,
            Self::P99 => window.p99 as f64,
            Self::Cpu => window.server_cpu_per_request.unwrap_or(f64::NAN),
        }
    }
}

/// A bound the issue sets on a ratio.
#[derive(Clone, Copy, Debug)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

/// `numerator ÷ denominator` of a metric, and its target if it has one.
struct Ratio(Variant, Variant, Metric, Option<Target>);

use Metric::{Cpu, Rps, P99};
use Target::{AtLeast, AtMost};
use Variant::{
    Bare, ExtensionOnly, LayerNoTask, LayerSleep, LayerSleepOwnRuntime, LayerTask,
    LayerTaskMetrics, SpawnBoxedSleep, SpawnSleep, TaskTracker, TokioSpawn,
};

/// The saturated windows' ratios: against no layer, `tokio::spawn` and
/// `TaskTracker`, what a recorder adds, and what a sleeping task adds.
const SATURATED: &[Ratio] = &[
    Ratio(LayerNoTask, Bare, Rps, Some(AtLeast(0.99))),
    Ratio(LayerNoTask, Bare, Cpu, None),
    Ratio(ExtensionOnly, Bare, Cpu, None),
    Ratio(LayerNoTask, ExtensionOnly, Cpu, None),
    Ratio(LayerTask, TokioSpawn, Rps, Some(AtLeast(0.95))),
    Ratio(LayerTask, TokioSpawn, Cpu, None),
    Ratio(LayerTask, TaskTracker, Rps, Some(AtLeast(1.0))),
    Ratio(LayerTask, TaskTracker, Cpu, None),
    Ratio(LayerTaskMetrics, LayerTask, Rps, None),
    Ratio(LayerTaskMetrics, LayerTask, Cpu, None),
    Ratio(LayerSleep, LayerTask, P99, Some(AtMost(1.05))),
    Ratio(LayerSleep, LayerTask, Cpu, None),
    Ratio(SpawnSleep, TokioSpawn, P99, None),
    Ratio(SpawnSleep, TokioSpawn, Cpu, None),
    Ratio(LayerSleep, SpawnSleep, P99, None),
    Ratio(LayerSleep, SpawnSleep, Cpu, None),
    Ratio(LayerSleepOwnRuntime, LayerSleep, P99, None),
    Ratio(LayerSleepOwnRuntime, LayerSleep, Cpu, None),
    Ratio(SpawnBoxedSleep, SpawnSleep, P99, None),
    Ratio(SpawnBoxedSleep, SpawnSleep, Cpu, None),
    Ratio(LayerSleep, SpawnBoxedSleep, Cpu, None),
];

/// The paced windows' ratios.
const PACED: &[Ratio] = &[
    Ratio(LayerSleep, LayerTask, P99, Some(AtMost(1.05))),
    Ratio(SpawnSleep, TokioSpawn, P99, None),
    Ratio(LayerSleep, SpawnSleep, P99, None),
    Ratio(LayerSleepOwnRuntime, LayerSleep, P99, None),
];

fn saturated(m: &Measured) -> Option<&WindowStats> {
    Some(&m.stats)
}

fn paced(m: &Measured) -> Option<&WindowStats> {
    m.paced.as_ref().map(|paced| &paced.stats)
}

/// Prints every table of the run.
pub(crate) fn print(config: &Config, rate: &PacedRate, rounds: &[Vec<Measured>], cores: usize) {
    println!();
    println!(
        "Load, {} mode: {} connections, {} round(s) of {:.1} s per variant after {:.1} s \
         warm-up; server runtime {} worker(s), client runtime {} worker(s); {cores} cores; \
         medians over rounds.",
        config.mode,
        config.connections,
        config.rounds,
        config.measure.as_secs_f64(),
        config.warm_up.as_secs_f64(),
        SERVER_WORKERS,
        CLIENT_WORKERS,
    );
    print_medians(config, rounds, saturated, &[]);
    print_ratios(rounds, SATURATED, saturated);

    if !rounds.iter().flatten().any(|m| m.paced.is_some()) {
        return;
    }
    println!();
    println!(
        "Paced (open loop) at {:.0} req/s (a quarter of variant 3's {:.0} req/s before \
         round 1) for every paced variant, right after its \
         saturated window; {:.2} s lead-in ({:.2} s for the sleeping variants), then {:.1} s \
         measured. Latency from when a request was due, less the client's own lateness on an \
         idle connection.",
        rate.per_second,
        rate.variant3_rps,
        PACED_LEAD_IN.as_secs_f64(),
        LayerSleep.paced_lead_in(config).as_secs_f64(),
        config.paced.map_or(0.0, |paced| paced.as_secs_f64()),
    );
    print_medians(
        config,
        rounds,
        paced,
        &[
            ("p99 µs from due time", |m| {
                m.paced.as_ref().map(|p| p.from_schedule_p99 as f64)
            }),
            ("lateness p99 µs", |m| {
                m.paced.as_ref().map(|p| p.send_lag_p99 as f64)
            }),
        ],
    );
    print_ratios(rounds, PACED, paced);
}

/// A column of its own: its header and its figure (ns) in one round.
type Extra = (&'static str, fn(&Measured) -> Option<f64>);

/// One row per variant: the medians over rounds of `window`, and req/s in
/// each round.
fn print_medians(
    config: &Config,
    rounds: &[Vec<Measured>],
    window: fn(&Measured) -> Option<&WindowStats>,
    extra: &[Extra],
) {
    let mut header = vec![
        "#",
        "variant",
        "req/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "server CPU µs/req",
        "client CPU µs/req",
    ];
    header.extend(extra.iter().map(|(name, _)| *name));
    header.push("req/s per round");
    let mut rows = Vec::new();
    for &variant in &config.variants {
        let runs: Vec<&Measured> = of(rounds, variant).collect();
        let windows: Vec<&WindowStats> = runs.iter().filter_map(|m| window(m)).collect();
        if windows.is_empty() {
            continue;
        }
        let med = |f: fn(&WindowStats) -> f64| median(windows.iter().map(|w| f(w)).collect());
        let mut row = vec![
            variant.number().to_owned(),
            variant.label().to_owned(),
            format!("{:.0}", med(|w| w.rps)),
            micros(med(|w| w.p50 as f64)),
            micros(med(|w| w.p99 as f64)),
            micros(med(|w| w.p999 as f64)),
            micros(med(|w| w.server_cpu_per_request.unwrap_or(f64::NAN))),
            micros(med(|w| w.client_cpu_per_request.unwrap_or(f64::NAN))),
        ];
        for (_, f) in extra {
            row.push(micros(median(runs.iter().filter_map(|m| f(m)).collect())));
        }
        let per_round: Vec<String> = windows.iter().map(|w| format!("{:.0}", w.rps)).collect();
        row.push(per_round.join(" / "));
        rows.push(row);
    }
    print_table(&header, &rows);
}

/// Each ratio that some round has both variants of: its median over
/// rounds, the ratio in each round, its target and whether it is met.
fn print_ratios(
    rounds: &[Vec<Measured>],
    ratios: &[Ratio],
    window: fn(&Measured) -> Option<&WindowStats>,
) {
    let mut rows = Vec::new();
    for &Ratio(numerator, denominator, metric, target) in ratios {
        let per_round: Vec<f64> = rounds
            .iter()
            .filter_map(|round| {
                let of = |variant| window(round.iter().find(|m| m.variant == variant)?);
                Some(metric.of(of(numerator)?) / metric.of(of(denominator)?))
            })
            .collect();
        if per_round.is_empty() {
            continue;
        }
        let value = median(per_round.clone());
        let (target, met) = match target {
            Some(AtLeast(bound)) => (format!(">= {bound}"), value >= bound),
            Some(AtMost(bound)) => (format!("<= {bound}"), value <= bound),
            None => (String::new(), true),
        };
        let shown: Vec<String> = per_round.iter().map(|r| format!("{r:.3}")).collect();
        rows.push(vec![
            format!(
                "v{} ÷ v{}, {}",
                numerator.number(),
                denominator.number(),
                metric.name()
            ),
            format!("{value:.3}"),
            target,
            if met { "" } else { "not met" }.to_owned(),
            shown.join(" / "),
        ]);
    }
    print_table(&["ratio", "median", "target", "", "per round"], &rows);
}

/// `variant`'s measurement in each round that has it.
fn of(rounds: &[Vec<Measured>], variant: Variant) -> impl Iterator<Item = &Measured> {
    rounds
        .iter()
        .filter_map(move |round| round.iter().find(|m| m.variant == variant))
}
