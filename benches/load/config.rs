//! What a run measures: the variants, the options and their presets for
//! each mode, and the paced rate.

use std::time::Duration;

use crate::support::{parse, Flags, Mode};

/// Worker threads of the server's runtime and of the client's: one each,
/// so that on a two-core machine the two sides never compete for a core.
pub(crate) const SERVER_WORKERS: usize = 1;
pub(crate) const CLIENT_WORKERS: usize = 1;

/// How long variant 6's task sleeps.
pub(crate) const SLEEP_TASK: Duration = Duration::from_secs(1);

/// The variants measured again at a paced rate after their saturated
/// window: 6 against 3, their `tokio::spawn` baselines 6b and 4, and 6c.
pub(crate) const PACED_VARIANTS: [Variant; 5] = [
    Variant::LayerTask,
    Variant::TokioSpawn,
    Variant::LayerSleep,
    Variant::SpawnSleep,
    Variant::LayerSleepOwnRuntime,
];
/// The start of the paced schedule, left out of the measurement: the
/// saturated window's last requests end and its queue drains (variants 6,
/// 6b and 6c wait longer: [`Variant::paced_lead_in`]).
pub(crate) const PACED_LEAD_IN: Duration = Duration::from_millis(50);
/// The paced rate as a share of variant 3's saturated throughput: well below saturation for every paced variant,
/// even on a busy machine.
const PACED_SHARE: f64 = 0.25;
/// Bounds on the paced rate (requests/s), so that a connection's period is
/// never zero.
const RATE_BOUNDS: (f64, f64) = (1.0, 10_000_000.0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    Bare,
    LayerNoTask,
    ExtensionOnly,
    LayerTask,
    LayerTaskMetrics,
    TokioSpawn,
    TaskTracker,
    LayerSleep,
    SpawnSleep,
    LayerSleepOwnRuntime,
    SpawnBoxedSleep,
    LayerBlocking,
}

impl Variant {
    /// Every variant, in the order a round runs them: each lettered one
    /// right after the variant it is read against.
    const ALL: [Self; 10] = [
        Self::Bare,
        Self::LayerNoTask,
        Self::ExtensionOnly,
        Self::LayerTask,
        Self::TokioSpawn,
        Self::TaskTracker,
        Self::LayerSleep,
        Self::SpawnSleep,
        Self::LayerSleepOwnRuntime,
        Self::LayerBlocking,
    ];

    /// Variants measured only when `--variants` names them, so that
    /// `--quick` stays under a minute (3m only in a build with the
    /// `metrics` feature: [`Self::available`]).
    const OPT_IN: [Self; 2] = [Self::LayerTaskMetrics, Self::SpawnBoxedSleep];

    /// Whether this build can run the variant.
    fn available(self) -> bool {
        // Variant 3m needs the `metrics` feature (see `recorder`).
        self != Self::LayerTaskMetrics || cfg!(feature = "metrics")
    }

    /// The variant's number in the tables and in `--variants`: a letter
    /// marks a variant read against the one of its number.
    pub(crate) fn number(self) -> &'static str {
        match self {
            Self::Bare => "1",
            Self::LayerNoTask => "2",
            Self::ExtensionOnly => "2b",
            Self::LayerTask => "3",
            Self::LayerTaskMetrics => "3m",
            Self::TokioSpawn => "4",
            Self::TaskTracker => "5",
            Self::LayerSleep => "6",
            Self::SpawnSleep => "6b",
            Self::LayerSleepOwnRuntime => "6c",
            Self::SpawnBoxedSleep => "6d",
            Self::LayerBlocking => "7",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare handler, no layer",
            Self::LayerNoTask => "layer, no task",
            Self::ExtensionOnly => "extension-only layer, no task",
            Self::LayerTask => "layer, 1 trivial task (`add`)",
            Self::LayerTaskMetrics => "layer, 1 trivial task, Prometheus recorder",
            Self::TokioSpawn => "no layer, `tokio::spawn`",
            Self::TaskTracker => "no layer, `TaskTracker::spawn`",
            Self::LayerSleep => "layer, 1 task sleeping 1 s",
            Self::SpawnSleep => "no layer, `tokio::spawn` of a 1 s sleep",
            Self::LayerSleepOwnRuntime => "layer, 1 task sleeping 1 s, tasks on their own runtime",
            Self::SpawnBoxedSleep => "no layer, `tokio::spawn` of a boxed 1 s sleep",
            Self::LayerBlocking => "layer, 1 blocking task, 2 ms CPU",
        }
    }

    /// Whether the handler's task sleeps [`SLEEP_TASK`] (variants 6, 6b, 6c
    /// and 6d): such a variant is steady only once its first tasks have
    /// ended.
    fn sleeps(self) -> bool {
        matches!(
            self,
            Self::LayerSleep
                | Self::SpawnSleep
                | Self::LayerSleepOwnRuntime
                | Self::SpawnBoxedSleep
        )
    }

    /// Variant 6's (and 6b's and 6c's) population of sleeping tasks is
    /// steady only once its first tasks end: it warms up for at least
    /// [`SLEEP_TASK`] + 200 ms.
    pub(crate) fn warm_up(self, config: &Config) -> Duration {
        if self.sleeps() && config.mode.measures() {
            config.warm_up.max(SLEEP_TASK + Duration::from_millis(200))
        } else {
            config.warm_up
        }
    }

    /// The paced schedule's unmeasured start: [`PACED_LEAD_IN`], and for
    /// variants 6, 6b and 6c [`SLEEP_TASK`] more, so that the tasks started
    /// at the saturated window's higher rate have ended: the population of
    /// sleeping tasks, and the work of ending them, is the paced rate's.
    pub(crate) fn paced_lead_in(self, config: &Config) -> Duration {
        if self.sleeps() && config.mode.measures() {
            SLEEP_TASK + PACED_LEAD_IN
        } else {
            PACED_LEAD_IN
        }
    }

    /// Whether the variant has our layer, and so a supervisor (variant 2b's
    /// layer is not ours: it only puts a marker into the extensions).
    pub(crate) fn uses_layer(self) -> bool {
        matches!(
            self,
            Self::LayerNoTask
                | Self::LayerTask
                | Self::LayerTaskMetrics
                | Self::LayerSleep
                | Self::LayerSleepOwnRuntime
                | Self::LayerBlocking
        )
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) mode: Mode,
    pub(crate) rounds: usize,
    pub(crate) warm_up: Duration,
    pub(crate) measure: Duration,
    /// How long to wait, after the window, for requests sent inside it.
    pub(crate) drain: Duration,
    /// The paced window of the variants in [`PACED_VARIANTS`] (after
    /// [`PACED_LEAD_IN`]); `None` with `--paced-secs 0`.
    pub(crate) paced: Option<Duration>,
    pub(crate) connections: usize,
    pub(crate) variants: Vec<Variant>,
}

impl Config {
    pub(crate) fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mode = Mode::from_args(&args);
        // `--quick` is to end within a minute.
        let mut config = match mode {
            Mode::Smoke => Self::preset(mode, 1, 0.1, 0.2, 0.1, 4),
            Mode::Quick => Self::preset(mode, 3, 0.2, 0.5, 0.3, 64),
            Mode::Full => Self::preset(mode, 6, 0.5, 2.0, 2.0, 64),
        };
        let mut flags = Flags::new("load", args);
        while let Some(flag) = flags.next() {
            match flag.as_str() {
                "--rounds" => config.rounds = parse::<usize>(&flags.value("--rounds")).max(1),
                "--secs" => config.measure = seconds(&flags.value("--secs")),
                "--warm-up" => config.warm_up = seconds(&flags.value("--warm-up")),
                "--paced-secs" => {
                    let secs = flags.value("--paced-secs");
                    config.paced = (parse::<f64>(&secs) > 0.0).then(|| seconds(&secs));
                }
                "--variants" => {
                    config.variants = flags
                        .value("--variants")
                        .split(',')
                        .map(|n| {
                            let n = n.trim();
                            let variant = *Variant::ALL
                                .iter()
                                .chain(&Variant::OPT_IN)
                                .find(|variant| variant.number() == n)
                                .unwrap_or_else(|| {
                                    panic!("no variant {n} (1–7, 2b, 3m, 6b, 6c or 6d)")
                                });
                            assert!(
                                variant.available(),
                                "variant {n} needs `--features metrics`"
                            );
                            variant
                        })
                        .collect();
                }
                other => flags.ignore(other),
            }
        }
        // Keep every run bounded, whatever the flags say.
        config.measure = config.measure.min(Duration::from_secs(60));
        config.paced = config.paced.map(|paced| paced.min(Duration::from_secs(60)));
        config.warm_up = config.warm_up.min(Duration::from_secs(30));
        config.rounds = config.rounds.min(50);
        config
    }

    fn preset(
        mode: Mode,
        rounds: usize,
        warm_up: f64,
        measure: f64,
        paced: f64,
        connections: usize,
    ) -> Self {
        Self {
            mode,
            rounds,
            warm_up: Duration::from_secs_f64(warm_up),
            measure: Duration::from_secs_f64(measure),
            drain: Duration::from_secs(2),
            paced: Some(Duration::from_secs_f64(paced)),
            connections,
            // The smoke run (`cargo test`) also checks that the opt-in
            // variants still serve.
            variants: if mode == Mode::Smoke {
                Variant::ALL
                    .iter()
                    .chain(&Variant::OPT_IN)
                    .copied()
                    .filter(|variant| variant.available())
                    .collect()
            } else {
                Variant::ALL.to_vec()
            },
        }
    }
}

fn seconds(value: &str) -> Duration {
    Duration::from_secs_f64(parse::<f64>(value).clamp(0.01, 600.0))
}

/// The rate of every paced window in a run: [`PACED_SHARE`] of variant 3's
/// throughput in a run before round 1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PacedRate {
    /// Requests/s, over all connections.
    pub(crate) per_second: f64,
    /// Variant 3's throughput in the run before round 1.
    pub(crate) variant3_rps: f64,
}

impl PacedRate {
    pub(crate) fn new(variant3_rps: f64) -> Self {
        Self {
            per_second: (variant3_rps * PACED_SHARE).clamp(RATE_BOUNDS.0, RATE_BOUNDS.1),
            variant3_rps,
        }
    }
}
