//! Counters of every task the supervisor has seen, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

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
/// submitted == waiting + running + completed + failed + panicked
///              + cancelled + discarded + refused
/// ```
///
/// ([`Stats::accounted`] is the right-hand side). The counters are read one
/// after another without a lock, so a snapshot taken while tasks are moving
/// between states may be off by those tasks; each counter on its own is exact.
/// Counts are totals since the supervisor was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Tasks ever passed to a handle.
    pub submitted: u64,
    /// Queued on a request whose response has not ended yet.
    pub waiting: u64,
    /// Handed off to the task set and not finished yet.
    pub running: u64,
    /// Returned `()` or `Ok`.
    pub completed: u64,
    /// Returned `Err`.
    pub failed: u64,
    /// Panicked (the panic was caught).
    pub panicked: u64,
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
    /// [`OnServerError::Skip`](crate::OnServerError::Skip).
    pub server_error: u64,
}

impl Stats {
    /// The sum of the states a task can be in: equal to
    /// [`submitted`](Stats::submitted) whenever no task is between states.
    pub fn accounted(&self) -> u64 {
        self.waiting
            + self.running
            + self.completed
            + self.failed
            + self.panicked
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
    Cancelled,
}

/// The live counters behind [`Stats`]. `running` is not here: it lives in
/// the task set's state word, where it is updated together with the
/// closed flag.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    submitted: AtomicU64,
    waiting: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
    no_response: AtomicU64,
    client_disconnected: AtomicU64,
    server_error: AtomicU64,
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

    pub(crate) fn queued(&self) {
        add(&self.waiting, 1);
    }

    pub(crate) fn unqueued(&self, n: u64) {
        self.waiting.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, n: u64) {
        add(&self.refused, n);
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
            Outcome::Cancelled => &self.cancelled,
        };
        add(counter, 1);
    }

    pub(crate) fn snapshot(&self, running: u64) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let discard_reasons = DiscardReasons {
            no_response: load(&self.no_response),
            client_disconnected: load(&self.client_disconnected),
            server_error: load(&self.server_error),
        };
        Stats {
            submitted: load(&self.submitted),
            waiting: load(&self.waiting),
            running,
            completed: load(&self.completed),
            failed: load(&self.failed),
            panicked: load(&self.panicked),
            cancelled: load(&self.cancelled),
            discarded: discard_reasons.no_response
                + discard_reasons.client_disconnected
                + discard_reasons.server_error,
            discard_reasons,
            refused: load(&self.refused),
        }
    }
}
