//! What the supervisor reports on the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`), for whichever exporter the application
//! installs: the metric names and labels are in [the crate's
//! docs](crate#metrics).
//!
//! The core calls the same functions and holds the same types whether the
//! feature is on or not. Without it they are empty: every type here is zero
//! bytes, every function an empty `#[inline]` one, and every argument that
//! would cost something to compute (a lane's metrics, a task list) is a
//! closure or an iterator that is never called. So the feature costs nothing
//! when it is off, and the only `cfg` for it is in this file.
//!
//! With the feature on:
//!
//! - A lane's gauges, and the series of its unnamed tasks, are registered
//!   once, when the supervisor is built ([`LaneMetrics::new`]); so are the
//!   supervisor-wide counters ([`SetCounters`]). Handles made before a
//!   recorder is installed stay no-ops, hence the documented rule: install
//!   the recorder before `SupervisorBuilder::build`.
//! - A named task's series are registered the first time its lane sees the
//!   name, and kept in one of the lane's [`NAMED_PER_LANE`] slots; a task then
//!   finds them by comparing names, without a lock. Names beyond that many
//!   in one lane (names are `&'static str`, so they are few in any real
//!   program) are registered at each use instead: correct, only slower.
//! - The gauges move with the lane's own counts, by increments and
//!   decrements rather than by setting a value read elsewhere, so two
//!   updates racing can never leave a stale value behind; two supervisors
//!   in one process add up in the same series.

// Without the feature, the names and labels below are only documentation.
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

/// The counter of tasks by how they ended.
pub(crate) const TASKS_TOTAL: &str = "background_tasks_total";
/// The gauge of slots taken in a lane.
pub(crate) const RUNNING: &str = "background_tasks_running";
/// The gauge of tasks and group steps waiting for a slot in a lane.
pub(crate) const QUEUED: &str = "background_tasks_queued";
/// The gauge of a lane's limit (absent for a lane without one).
pub(crate) const LIMIT: &str = "background_tasks_limit";
/// The histogram of the time from hand-off to a task's first poll.
pub(crate) const WAIT_SECONDS: &str = "background_task_wait_seconds";
/// The histogram of the time from a task's first poll to its end.
pub(crate) const RUN_SECONDS: &str = "background_task_run_seconds";
/// The counter of group steps skipped after a failure.
pub(crate) const SKIPPED_TOTAL: &str = "background_task_steps_skipped_total";
/// The counter of attempts after the first under a retry policy.
pub(crate) const RETRIES_TOTAL: &str = "background_task_retries_total";
/// The counter of requests answered `503` by `LoadShedLayer`.
pub(crate) const SHED_TOTAL: &str = "background_requests_shed_total";

/// How many named series a lane keeps at hand.
pub(crate) const NAMED_PER_LANE: usize = 32;

/// How a task ended, as the `outcome` label says it: the five ways a
/// handed-off task ends, and the three ways a task never runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Completed,
    Failed,
    Panicked,
    TimedOut,
    Cancelled,
    Discarded,
    Refused,
    Rejected,
}

impl Ended {
    /// Every outcome, in the order of a series' counters.
    const ALL: [Ended; 8] = [
        Ended::Completed,
        Ended::Failed,
        Ended::Panicked,
        Ended::TimedOut,
        Ended::Cancelled,
        Ended::Discarded,
        Ended::Refused,
        Ended::Rejected,
    ];

    /// The `outcome` label: the name of the matching `Stats` field.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Ended::Completed => "completed",
            Ended::Failed => "failed",
            Ended::Panicked => "panicked",
            Ended::TimedOut => "timed_out",
            Ended::Cancelled => "cancelled",
            Ended::Discarded => "discarded",
            Ended::Refused => "refused",
            Ended::Rejected => "rejected",
        }
    }
}

pub(crate) use imp::{
    describe, rejected_in_unknown_lane, LaneMetrics, SetCounters, Stamp, TaskMetrics,
};

/// Counts tasks that never ran (discarded, refused, rejected, or cancelled
/// while queued), each under its lane and name. `lane_of` finds a lane's
/// metrics; neither it nor `tasks` is touched without the feature.
#[inline]
pub(crate) fn count_each<'a, L, I>(lane_of: L, tasks: I, ended: Ended)
where
    L: Fn(usize) -> &'a LaneMetrics,
    I: IntoIterator<Item = (usize, Option<&'static str>)>,
{
    imp::count_each(lane_of, tasks, ended);
}

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::OnceLock;

    use ::metrics::{
        counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
        Gauge, Histogram, Unit,
    };
    use tokio::time::Instant;

    use super::*;

    /// Describes every metric to the current recorder; called by each
    /// `build`, which is cheap and makes a recorder installed between two
    /// builds hear the descriptions too.
    pub(crate) fn describe() {
        describe_counter!(
            TASKS_TOTAL,
            Unit::Count,
            "Background tasks by how they ended (outcome: completed, failed, panicked, \
             timed_out, cancelled, discarded, refused, rejected), per lane and task name."
        );
        describe_gauge!(RUNNING, Unit::Count, "Slots taken in the lane now.");
        describe_gauge!(
            QUEUED,
            Unit::Count,
            "Tasks and group steps waiting for a slot in the lane."
        );
        describe_gauge!(
            LIMIT,
            Unit::Count,
            "The most slots the lane gives at once (absent: no limit)."
        );
        describe_histogram!(
            WAIT_SECONDS,
            Unit::Seconds,
            "Time from a task's hand-off (its response ended) to its first poll."
        );
        describe_histogram!(
            RUN_SECONDS,
            Unit::Seconds,
            "Time from a task's first poll to its end, whatever the outcome."
        );
        describe_counter!(
            SKIPPED_TOTAL,
            Unit::Count,
            "Group steps that did not run because another step failed."
        );
        describe_counter!(
            RETRIES_TOTAL,
            Unit::Count,
            "Attempts after the first, made under a retry policy."
        );
        describe_counter!(
            SHED_TOTAL,
            Unit::Count,
            "Requests answered 503 by LoadShedLayer before the handler ran."
        );
    }

    /// When a task was handed off.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Stamp(Instant);

    impl Stamp {
        #[inline]
        pub(crate) fn now() -> Self {
            Self(Instant::now())
        }
    }

    /// The counters and histograms of one lane and task name.
    #[derive(Debug)]
    struct Series {
        /// `""` for unnamed tasks.
        name: &'static str,
        /// In the order of [`Ended::ALL`].
        ended: [Counter; 8],
        wait: Histogram,
        run: Histogram,
    }

    impl Series {
        fn register(lane: &str, name: &'static str) -> Self {
            Self {
                name,
                ended: Ended::ALL.map(|ended| ended_counter(lane, name, ended)),
                wait: histogram(WAIT_SECONDS, lane, name),
                run: histogram(RUN_SECONDS, lane, name),
            }
        }
    }

    fn ended_counter(lane: &str, name: &'static str, ended: Ended) -> Counter {
        counter!(
            TASKS_TOTAL,
            "lane" => lane.to_owned(),
            "name" => name,
            "outcome" => ended.label(),
        )
    }

    fn histogram(metric: &'static str, lane: &str, name: &'static str) -> Histogram {
        histogram!(metric, "lane" => lane.to_owned(), "name" => name)
    }

    /// Where a task's series are, once looked up.
    #[derive(Clone, Copy, Debug)]
    enum Which {
        Unnamed,
        Named(usize),
        /// More names than [`NAMED_PER_LANE`]: registered at each use.
        Unlisted(&'static str),
    }

    /// One lane's gauges and series.
    #[derive(Debug)]
    pub(crate) struct LaneMetrics {
        lane: Box<str>,
        running: Gauge,
        queued: Gauge,
        unnamed: Series,
        named: Box<[OnceLock<Series>]>,
    }

    impl LaneMetrics {
        /// Registers the lane's gauges and its unnamed series, and sets its
        /// limit gauge (`usize::MAX`: no limit, no gauge).
        pub(crate) fn new(lane: &str, limit: usize) -> Self {
            if limit != usize::MAX {
                gauge!(LIMIT, "lane" => lane.to_owned()).set(limit as f64);
            }
            Self {
                lane: lane.into(),
                running: gauge!(RUNNING, "lane" => lane.to_owned()),
                queued: gauge!(QUEUED, "lane" => lane.to_owned()),
                unnamed: Series::register(lane, ""),
                named: (0..NAMED_PER_LANE).map(|_| OnceLock::new()).collect(),
            }
        }

        /// A slot was taken.
        #[inline]
        pub(crate) fn claimed(&self) {
            self.running.increment(1.0);
        }

        /// A slot was given back.
        #[inline]
        pub(crate) fn released(&self) {
            self.running.decrement(1.0);
        }

        /// `n` waiters joined (`n > 0`) or left the queue.
        #[inline]
        pub(crate) fn queue_changed(&self, n: isize) {
            self.queued.increment(n as f64);
        }

        fn which(&self, name: Option<&'static str>) -> Which {
            let Some(name) = name else {
                return Which::Unnamed;
            };
            for (index, slot) in self.named.iter().enumerate() {
                // The first free slot is taken for this name, unless another
                // thread takes it for another name first: then look on.
                let series = slot.get_or_init(|| Series::register(&self.lane, name));
                if series.name == name {
                    return Which::Named(index);
                }
            }
            Which::Unlisted(name)
        }

        fn series(&self, which: Which) -> Option<&Series> {
            match which {
                Which::Unnamed => Some(&self.unnamed),
                Which::Named(index) => self.named[index].get(),
                Which::Unlisted(_) => None,
            }
        }

        fn count(&self, which: Which, ended: Ended, n: u64) {
            match self.series(which) {
                Some(series) => series.ended[ended as usize].increment(n),
                None => {
                    let name = match which {
                        Which::Unlisted(name) => name,
                        _ => "",
                    };
                    ended_counter(&self.lane, name, ended).increment(n);
                }
            }
        }

        fn record(&self, which: Which, wait: bool, seconds: f64) {
            match (self.series(which), which) {
                (Some(series), _) => {
                    let histogram = if wait { &series.wait } else { &series.run };
                    histogram.record(seconds);
                }
                (None, Which::Unlisted(name)) => {
                    let metric = if wait { WAIT_SECONDS } else { RUN_SECONDS };
                    histogram(metric, &self.lane, name).record(seconds);
                }
                (None, _) => {}
            }
        }
    }

    pub(crate) fn count_each<'a, L, I>(lane_of: L, tasks: I, ended: Ended)
    where
        L: Fn(usize) -> &'a LaneMetrics,
        I: IntoIterator<Item = (usize, Option<&'static str>)>,
    {
        for (lane, name) in tasks {
            let lane = lane_of(lane);
            lane.count(lane.which(name), ended, 1);
        }
    }

    /// A task given a lane that does not exist: its lane label is empty,
    /// since the requested name may come from anywhere and label values
    /// must stay few.
    pub(crate) fn rejected_in_unknown_lane(name: Option<&'static str>) {
        ended_counter("", name.unwrap_or(""), Ended::Rejected).increment(1);
    }

    /// A handed-off task's times, kept by its `Running` future.
    #[derive(Debug)]
    pub(crate) struct TaskMetrics {
        which: Option<Which>,
        timing: Timing,
    }

    #[derive(Debug)]
    enum Timing {
        HandedOff(Instant),
        Started(Instant),
    }

    impl TaskMetrics {
        #[inline]
        pub(crate) fn new(handed_off: Stamp) -> Self {
            Self {
                which: None,
                timing: Timing::HandedOff(handed_off.0),
            }
        }

        fn which(&mut self, lane: &LaneMetrics, name: Option<&'static str>) -> Which {
            *self.which.get_or_insert_with(|| lane.which(name))
        }

        /// Called at every poll before the work is polled: the first
        /// records the wait.
        #[inline]
        pub(crate) fn polled<'a>(
            &mut self,
            lane: impl FnOnce() -> &'a LaneMetrics,
            name: Option<&'static str>,
        ) {
            if let Timing::HandedOff(handed_off) = self.timing {
                let now = Instant::now();
                self.timing = Timing::Started(now);
                let lane = lane();
                let which = self.which(lane, name);
                lane.record(which, true, (now - handed_off).as_secs_f64());
            }
        }

        /// Counts the task's outcome, and its run time if it started.
        #[inline]
        pub(crate) fn ended<'a>(
            &mut self,
            lane: impl FnOnce() -> &'a LaneMetrics,
            name: Option<&'static str>,
            ended: Ended,
        ) {
            let lane = lane();
            let which = self.which(lane, name);
            lane.count(which, ended, 1);
            if let Timing::Started(started) = self.timing {
                lane.record(which, false, started.elapsed().as_secs_f64());
            }
        }
    }

    /// The supervisor-wide counters that have no lane or name to go with.
    #[derive(Debug)]
    pub(crate) struct SetCounters {
        skipped: Counter,
        retried: Counter,
        shed: Counter,
    }

    impl Default for SetCounters {
        fn default() -> Self {
            Self {
                skipped: counter!(SKIPPED_TOTAL),
                retried: counter!(RETRIES_TOTAL),
                shed: counter!(SHED_TOTAL),
            }
        }
    }

    impl SetCounters {
        #[inline]
        pub(crate) fn skipped(&self, n: u64) {
            self.skipped.increment(n);
        }

        #[inline]
        pub(crate) fn retried(&self) {
            self.retried.increment(1);
        }

        #[inline]
        pub(crate) fn shed(&self) {
            self.shed.increment(1);
        }
    }
}

/// The same, empty: zero-sized types and functions that do nothing.
#[cfg(not(feature = "metrics"))]
mod imp {
    use super::Ended;

    #[inline]
    pub(crate) fn describe() {}

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Stamp;

    impl Stamp {
        #[inline]
        pub(crate) fn now() -> Self {
            Self
        }
    }

    #[derive(Debug)]
    pub(crate) struct LaneMetrics;

    impl LaneMetrics {
        #[inline]
        pub(crate) fn new(_lane: &str, _limit: usize) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn claimed(&self) {}

        #[inline]
        pub(crate) fn released(&self) {}

        #[inline]
        pub(crate) fn queue_changed(&self, _n: isize) {}
    }

    #[inline]
    pub(crate) fn count_each<'a, L, I>(_lane_of: L, _tasks: I, _ended: Ended)
    where
        L: Fn(usize) -> &'a LaneMetrics,
        I: IntoIterator<Item = (usize, Option<&'static str>)>,
    {
    }

    #[inline]
    pub(crate) fn rejected_in_unknown_lane(_name: Option<&'static str>) {}

    #[derive(Debug)]
    pub(crate) struct TaskMetrics;

    impl TaskMetrics {
        #[inline]
        pub(crate) fn new(_handed_off: Stamp) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn polled<'a>(
            &mut self,
            _lane: impl FnOnce() -> &'a LaneMetrics,
            _name: Option<&'static str>,
        ) {
        }

        #[inline]
        pub(crate) fn ended<'a>(
            &mut self,
            _lane: impl FnOnce() -> &'a LaneMetrics,
            _name: Option<&'static str>,
            _ended: Ended,
        ) {
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct SetCounters;

    impl SetCounters {
        #[inline]
        pub(crate) fn skipped(&self, _n: u64) {}

        #[inline]
        pub(crate) fn retried(&self) {}

        #[inline]
        pub(crate) fn shed(&self) {}
    }
}
