//! Counters of every task the supervisor has seen, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Ended, SetCounters};

/// A snapshot of a supervisor's counters, from
/// [`Supervisor::stats`](crate::Supervisor::stats) or
/// [`Monitor::stats`](crate::Monitor::stats).
///
/// Every task passed to [`add`](crate::BackgroundTasks::add) or
/// [`add_blocking`](crate::BackgroundTasks::add_blocking) is counted in
/// `submitted` and is, at any moment, in exactly one of the other states, so
/// that once nothing is moving
///
/// ```text
/// submitted == waiting + queued + running + completed + failed + panicked
///              + timed_out + cancelled + discarded + refused
/// ```
///
/// ([`Stats::accounted`] is the right-hand side). A task not accepted at all
/// by a full queue is counted in [`rejected`](Stats::rejected) (the plain
/// `add` methods) or not counted (the `try_` methods, which return the
/// error instead). A group counts as one task. The counters are read one
/// after another without a lock, so a snapshot taken while tasks are moving
/// between states may be off by those tasks; each counter on its own is exact.
/// Counts are totals since the supervisor was built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Tasks ever passed to a handle.
    pub submitted: u64,
    /// Queued on a request whose response has not ended yet.
    pub waiting: u64,
    /// Handed off, waiting for a free slot in their lane.
    pub queued: u64,
    /// Running in a lane: started, and not yet seen to end. A task is seen to
    /// end when the runtime next polls it, so a task whose work has just
    /// returned is still counted here for that moment. Its lane slot is
    /// free already, and a blocking closure gives its slot back the instant
    /// it returns, so on a busy runtime `running` can exceed the lanes'
    /// limits for a while. Each lane's [`running`](LaneStats::running) counts its
    /// slots and never exceeds its limit.
    pub running: u64,
    /// Returned `()` or `Ok`.
    pub completed: u64,
    /// Returned `Err`.
    pub failed: u64,
    /// Panicked (the panic was caught).
    pub panicked: u64,
    /// Ran past their [timeout](crate::Task::timeout) on their last
    /// attempt.
    pub timed_out: u64,
    /// Aborted unfinished at the end of the shutdown grace period, or dropped
    /// unfinished with the runtime. (A task that returns during the cleanup
    /// period is counted by what it returned.)
    pub cancelled: u64,
    /// Never started, by policy or because no response was produced; the
    /// reasons are in [`Stats::discard_reasons`].
    pub discarded: u64,
    /// Why the [`discarded`](Stats::discarded) tasks were discarded.
    pub discard_reasons: DiscardReasons,
    /// Offered after shutdown had begun, and not accepted.
    pub refused: u64,
    /// Offered with a plain `add` while the queue was full (or to a lane
    /// that does not exist), and not accepted: logged at `WARN`, and the
    /// request answered `503` if its response had not been produced yet.
    /// Not part of [`submitted`](Stats::submitted).
    pub rejected: u64,
    /// Steps of groups that did not run because an earlier step failed
    /// (sequential groups) or a step failed first (fail-fast groups).
    pub skipped: u64,
    /// Attempts after the first, made under a [`Retry`](crate::Retry) policy.
    pub retried: u64,
    /// Requests answered `503` by [`LoadShedLayer`](crate::LoadShedLayer)
    /// (requests, not tasks).
    pub shed: u64,
    /// Each lane: the default one, the blocking one, then the named ones.
    pub lanes: Vec<LaneStats>,
}

/// One lane's slots: see [`SupervisorBuilder::lane`](crate::SupervisorBuilder::lane).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LaneStats {
    /// `"default"`, `"blocking"`, or the name it was configured with.
    pub name: String,
    /// The most slots taken at once; `None`: no limit (the default lane's
    /// default).
    pub limit: Option<u64>,
    /// Slots taken now (a group's blocking step takes a slot in the blocking
    /// lane while its group holds one in its own lane).
    pub running: u64,
    /// Tasks and group steps waiting for a slot.
    pub queued: u64,
    /// The most slots ever taken at once.
    pub high_water: u64,
}

/// How many tasks were discarded for each reason; they add up to
/// [`Stats::discarded`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DiscardReasons {
    /// The inner service returned an error, or the response future was
    /// dropped (a timeout, a caught panic) before a response existed.
    pub no_response: u64,
    /// The response body was dropped before it ended, under
    /// [`OnDisconnect::Skip`](crate::OnDisconnect::Skip).
    pub client_disconnected: u64,
    /// The response had a `5xx` status, under
    /// [`OnServerError::Skip`](crate::OnServerError::Skip); or the layer
    /// answered `503` instead of the response because a plain
    /// [`add`](crate::BackgroundTasks::add) on the request was rejected.
    pub server_error: u64,
}

impl Stats {
    /// Tasks accepted and not finished: waiting for their response, for a
    /// slot, or running. What a `/backlog` endpoint reports, and what
    /// [`LoadShedLayer`](crate::LoadShedLayer) compares with its mark.
    pub fn backlog(&self) -> u64 {
        self.waiting + self.queued + self.running
    }

    /// The sum of the states a task can be in: equal to
    /// [`submitted`](Stats::submitted) whenever no task is between states.
    pub fn accounted(&self) -> u64 {
        // Tasks not yet finished plus tasks finished.
        self.waiting
            + self.queued
            + self.running
            + self.completed
            + self.failed
            + self.panicked
            + self.timed_out
            + self.cancelled
            + self.discarded
            + self.refused
    }
}

/// Why a request's tasks were discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DiscardReason {
    NoResponse,
    ClientDisconnected,
    ServerError,
}

impl DiscardReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoResponse => "no response was produced",
            Self::ClientDisconnected => "the client disconnected",
            Self::ServerError => "the response was a server error",
        }
    }
}

/// How a handed-off task ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Completed,
    Failed(String),
    Panicked(String),
    TimedOut,
    Cancelled,
}

impl Outcome {
    pub(crate) fn from_result(result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Self::Completed,
            Err(message) => Self::Failed(message),
        }
    }

    /// The `outcome` label of the metrics.
    pub(crate) fn ended(&self) -> Ended {
        match self {
            Self::Completed => Ended::Completed,
            Self::Failed(_) => Ended::Failed,
            Self::Panicked(_) => Ended::Panicked,
            Self::TimedOut => Ended::TimedOut,
            Self::Cancelled => Ended::Cancelled,
        }
    }
}

/// The live counters behind [`Stats`]. Those that are states rather than
/// events (waiting, queued, running) are derived from the task set's own
/// counts, which admission and shutdown need anyway.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    submitted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
    rejected: AtomicU64,
    skipped: AtomicU64,
    retried: AtomicU64,
    shed: AtomicU64,
    no_response: AtomicU64,
    client_disconnected: AtomicU64,
    server_error: AtomicU64,
    /// The metrics of the events above that have no lane or task name
    /// (registered with the counters, when the supervisor is built).
    metrics: SetCounters,
}

// Plain event counters: no other memory is published through them, so
// `Relaxed` is enough; a snapshot is documented as not atomic across fields.
fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn submitted(&self) {
        add(&self.submitted, 1);
    }

    pub(crate) fn refused(&self, n: u64) {
        add(&self.refused, n);
    }

    /// Counts one rejection and says whether to log it: the first, then
    /// every 1024th, so an overload does not also flood the log.
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn skipped(&self, n: u64) {
        add(&self.skipped, n);
        self.metrics.skipped(n);
    }

    pub(crate) fn retried(&self) {
        add(&self.retried, 1);
        self.metrics.retried();
    }

    pub(crate) fn shed(&self) {
        add(&self.shed, 1);
        self.metrics.shed();
    }

    pub(crate) fn discarded(&self, n: u64, reason: DiscardReason) {
        let counter = match reason {
            DiscardReason::NoResponse => &self.no_response,
            DiscardReason::ClientDisconnected => &self.client_disconnected,
            DiscardReason::ServerError => &self.server_error,
        };
        add(counter, n);
    }

    pub(crate) fn finished(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Failed(_) => &self.failed,
            Outcome::Panicked(_) => &self.panicked,
            Outcome::TimedOut => &self.timed_out,
            Outcome::Cancelled => &self.cancelled,
        };
        add(counter, 1);
    }

    /// `pending`: admitted and not started (waiting for a response or a
    /// slot); `active`: handed off and not finished (queued or running);
    /// `queued`: tasks waiting for a slot (not group steps, which the lanes'
    /// own queue lengths include).
    pub(crate) fn snapshot(
        &self,
        pending: u64,
        active: u64,
        queued: u64,
        lanes: Vec<LaneStats>,
    ) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let discard_reasons = DiscardReasons {
            no_response: load(&self.no_response),
            client_disconnected: load(&self.client_disconnected),
            server_error: load(&self.server_error),
        };
        Stats {
            submitted: load(&self.submitted),
            waiting: pending.saturating_sub(queued),
            queued,
            running: active.saturating_sub(queued),
            completed: load(&self.completed),
            failed: load(&self.failed),
            panicked: load(&self.panicked),
            timed_out: load(&self.timed_out),
            cancelled: load(&self.cancelled),
            discarded: discard_reasons.no_response
                + discard_reasons.client_disconnected
                + discard_reasons.server_error,
            discard_reasons,
            refused: load(&self.refused),
            rejected: load(&self.rejected),
            skipped: load(&self.skipped),
            retried: load(&self.retried),
            shed: load(&self.shed),
            lanes,
        }
    }
}
