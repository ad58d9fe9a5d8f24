//! [`ShutdownReport`]: what [`Supervisor::shutdown`](crate::Supervisor::shutdown) saw.

use std::fmt;
use std::time::Duration;

use crate::stats::Stats;

/// The outcome of [`Supervisor::shutdown`](crate::Supervisor::shutdown).
///
/// `stats` holds the supervisor's final counters (totals since it was built),
/// taken once every task had finished or been aborted, so they are exact. Two
/// of them may be non-zero only in unusual cases, and both are logged at
/// `WARN`:
///
/// - `stats.running`: tasks that did not stop even when aborted, because
///   they block their thread without yielding; they are left detached.
/// - `stats.waiting`: tasks whose request was still in flight (shutdown
///   was called before the server finished its requests); they are refused
///   when their response ends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The final counters.
    pub stats: Stats,
    /// How long `shutdown` took.
    pub elapsed: Duration,
    /// Whether the grace period ran out, so some tasks were aborted.
    pub aborted: bool,
}

impl ShutdownReport {
    /// `true` when every task that was handed off ran to its own end: none
    /// was cancelled, none is still running and none is still waiting.
    pub fn is_complete(&self) -> bool {
        self.stats.cancelled == 0 && self.stats.running == 0 && self.stats.waiting == 0
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "background tasks after {:.3?}: {} completed, {} failed, {} panicked, \
             {} cancelled, {} discarded, {} refused",
            self.elapsed, s.completed, s.failed, s.panicked, s.cancelled, s.discarded, s.refused,
        )?;
        if s.running > 0 {
            write!(f, ", {} still running (detached)", s.running)?;
        }
        if s.waiting > 0 {
            write!(f, ", {} still waiting for their response", s.waiting)?;
        }
        Ok(())
    }
}
