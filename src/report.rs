//! [`ShutdownReport`]: what [`Supervisor::shutdown`](crate::Supervisor::shutdown) saw.

use std::fmt;
use std::time::Duration;

use crate::started::UnfinishedTask;
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
    /// Of the `stats.cancelled` tasks, those still queued for a slot in
    /// their lane when the grace period ran out: they never started. Non-zero
    /// only when a lane's limit held more work than the grace period
    /// could run.
    pub cancelled_while_queued: u64,
    /// The oldest of the running tasks that had to be aborted (at most 10),
    /// oldest first: the tasks that held the shutdown up.
    pub aborted_tasks: Vec<UnfinishedTask>,
    /// How many more running tasks were aborted than `aborted_tasks` lists.
    pub aborted_tasks_unlisted: u64,
}

impl ShutdownReport {
    /// `true` when every task that was handed off ran to its own end: none
    /// was cancelled, none is still running and none is still waiting.
    pub fn is_complete(&self) -> bool {
        self.stats.cancelled == 0 && self.stats.running == 0 && self.stats.waiting == 0
    }
}

impl fmt::Display for ShutdownReport {
    /// One line: how long shutdown took, then every outcome that happened at
    /// least once (completed always), then the tasks that had to be aborted,
    /// for example `background tasks after 2.001s: 7 completed, 2 cancelled;
    /// aborted: report (POST /report, 2s), POST /export (1.5s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "background tasks after {:.3?}: {} completed",
            self.elapsed, s.completed
        )?;
        let outcomes = [
            (s.failed, "failed"),
            (s.panicked, "panicked"),
            (s.timed_out, "timed out"),
            (s.cancelled, "cancelled"),
            (s.discarded, "discarded"),
            (s.refused, "refused (shutting down)"),
            (s.rejected, "rejected (queue full)"),
            (s.skipped, "group steps skipped"),
            (s.retried, "retries"),
            (s.shed, "requests shed"),
        ];
        for (count, what) in outcomes {
            if count > 0 {
                write!(f, ", {count} {what}")?;
            }
            if what == "cancelled" && self.cancelled_while_queued > 0 {
                write!(
                    f,
                    " ({} of them still queued for a slot when the grace period ran out)",
                    self.cancelled_while_queued
                )?;
            }
        }
        if s.running > 0 {
            write!(f, ", {} still running (detached)", s.running)?;
        }
        if s.waiting > 0 {
            write!(f, ", {} still waiting for their response", s.waiting)?;
        }
        for (i, task) in self.aborted_tasks.iter().enumerate() {
            let lead = if i == 0 { "; aborted: " } else { ", " };
            write!(f, "{lead}{task}")?;
        }
        if self.aborted_tasks_unlisted > 0 {
            write!(f, " and {} more", self.aborted_tasks_unlisted)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stats: Stats, cancelled_while_queued: u64) -> ShutdownReport {
        ShutdownReport {
            stats,
            elapsed: Duration::from_millis(1500),
            aborted: cancelled_while_queued > 0,
            cancelled_while_queued,
            aborted_tasks: Vec::new(),
            aborted_tasks_unlisted: 0,
        }
    }

    #[test]
    fn names_every_outcome_that_happened_and_no_other() {
        let stats = Stats {
            completed: 10,
            failed: 1,
            panicked: 2,
            timed_out: 3,
            cancelled: 4,
            discarded: 5,
            refused: 6,
            rejected: 7,
            skipped: 8,
            retried: 9,
            shed: 11,
            running: 12,
            waiting: 13,
            ..Stats::default()
        };
        assert_eq!(
            report(stats, 2).to_string(),
            "background tasks after 1.500s: 10 completed, 1 failed, 2 panicked, \
             3 timed out, 4 cancelled (2 of them still queued for a slot when the \
             grace period ran out), 5 discarded, 6 refused (shutting down), \
             7 rejected (queue full), 8 group steps skipped, 9 retries, \
             11 requests shed, 12 still running (detached), 13 still waiting for \
             their response"
        );
        let mut aborted = report(
            Stats {
                completed: 1,
                cancelled: 3,
                ..Stats::default()
            },
            0,
        );
        aborted.aborted_tasks = vec![
            UnfinishedTask {
                name: Some("report"),
                request: Some("POST /report".to_owned()),
                age: Duration::from_millis(2049),
            },
            UnfinishedTask {
                name: None,
                request: Some("GET /export".to_owned()),
                age: Duration::from_millis(1500),
            },
        ];
        aborted.aborted_tasks_unlisted = 1;
        assert_eq!(
            aborted.to_string(),
            "background tasks after 1.500s: 1 completed, 3 cancelled; aborted: \
             report (POST /report, 2s), GET /export (1.5s) and 1 more"
        );
        let quiet = Stats {
            completed: 3,
            ..Stats::default()
        };
        assert_eq!(
            report(quiet, 0).to_string(),
            "background tasks after 1.500s: 3 completed"
        );
    }
}
