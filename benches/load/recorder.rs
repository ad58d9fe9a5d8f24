//! Variant 3m's metrics recorder (feature `metrics`): a Prometheus recorder
//! of its own per server, installed for that server only (thread-locally,
//! not globally), as an application installs one, and checked at teardown
//! against the supervisor's own count.
//!
//! Without the feature `Recorder` has no value, and `--variants 3m` is
//! refused when the options are read (`Variant::available`, the one `cfg`
//! for it outside this file).

pub(crate) use imp::Recorder;

#[cfg(feature = "metrics")]
mod imp {
    use std::time::Duration;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
    use tokio::runtime::{Builder, Runtime};
    use tower_background::{Supervisor, SupervisorBuilder};

    use crate::config::Variant;

    /// How often the recorder's histograms are folded in, as an application
    /// must do (`PrometheusHandle::run_upkeep`).
    const UPKEEP_EVERY: Duration = Duration::from_secs(1);

    /// The series variant 3m's tasks end in.
    const COMPLETED: &str = r#"background_tasks_total{lane="default",name="",outcome="completed"}"#;

    /// One server's recorder. Leaked: the runtime's threads point at it
    /// until they end, and a few per run cost nothing.
    #[derive(Clone, Copy)]
    pub(crate) struct Recorder(&'static PrometheusRecorder);

    impl std::fmt::Debug for Recorder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Recorder")
        }
    }

    impl Recorder {
        /// A new recorder if `variant` is 3m.
        pub(crate) fn for_variant(variant: Variant) -> Option<Self> {
            (variant == Variant::LayerTaskMetrics).then(|| {
                Self(Box::leak(Box::new(
                    PrometheusBuilder::new().build_recorder(),
                )))
            })
        }

        /// Makes the recorder every thread of the runtime's default, for
        /// what the library registers after `build`.
        pub(crate) fn install_on(self, runtime: &mut Builder) {
            let recorder = self.0;
            runtime.on_thread_start(move || {
                // Never restored: the thread serves this variant only.
                std::mem::forget(metrics::set_default_local_recorder(recorder));
            });
        }

        /// Builds the supervisor with the recorder installed, so that its
        /// lanes register their series with it.
        pub(crate) fn build(self, builder: SupervisorBuilder) -> Supervisor {
            metrics::with_local_recorder(self.0, || builder.build())
        }

        /// Runs the upkeep on `runtime` until the runtime shuts down.
        pub(crate) fn spawn_upkeep(self, runtime: &Runtime) {
            let handle = self.0.handle();
            drop(runtime.spawn(async move {
                let mut every = tokio::time::interval(UPKEEP_EVERY);
                loop {
                    every.tick().await;
                    handle.run_upkeep();
                }
            }));
        }

        /// Panics unless the rendered count of completed tasks is
        /// `completed` (the supervisor's `Stats::completed`); returns it.
        pub(crate) fn check(self, completed: u64) -> u64 {
            let rendered = self.0.handle().render();
            let recorded = rendered
                .lines()
                .find_map(|line| line.strip_prefix(COMPLETED))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("variant 3m: no `{COMPLETED}` in\n{rendered}"))
                as u64;
            assert_eq!(
                recorded, completed,
                "variant 3m: the recorder counted {recorded} completed tasks, \
                 the supervisor {completed}"
            );
            recorded
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use tokio::runtime::{Builder, Runtime};
    use tower_background::{Supervisor, SupervisorBuilder};

    use crate::config::Variant;

    /// No recorder without the feature.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Recorder {}

    impl Recorder {
        pub(crate) fn for_variant(variant: Variant) -> Option<Self> {
            assert!(
                variant != Variant::LayerTaskMetrics,
                "variant 3m needs `--features metrics`"
            );
            None
        }

        pub(crate) fn install_on(self, _runtime: &mut Builder) {
            match self {}
        }

        pub(crate) fn build(self, _builder: SupervisorBuilder) -> Supervisor {
            match self {}
        }

        pub(crate) fn spawn_upkeep(self, _runtime: &Runtime) {
            match self {}
        }

        pub(crate) fn check(self, _completed: u64) -> u64 {
            match self {}
        }
    }
}
