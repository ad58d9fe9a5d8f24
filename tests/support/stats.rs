//! Whole `Stats` snapshots to compare at once, and the accounting identity
//! (`submitted == accounted()`) they must satisfy.

use std::sync::atomic::{AtomicUsize, Ordering};

use tower_background::{Stats, Supervisor};

use super::wait::within;

/// `stats` without the per-lane figures, to compare task counts with
/// [`stats`].
pub(crate) fn counts(mut stats: Stats) -> Stats {
    stats.lanes.clear();
    stats
}

/// Stats with every counter at zero except those `set` sets, to compare a
/// whole snapshot at once.
pub(crate) fn stats(set: impl FnOnce(&mut Stats)) -> Stats {
    let mut stats = Stats::default();
    set(&mut stats);
    stats
}

/// Asserts that `actual`'s task counts are those `set` sets (every other
/// counter zero, lanes ignored) and that they add up.
#[track_caller]
pub(crate) fn assert_counts(actual: Stats, message: &str, set: impl FnOnce(&mut Stats)) {
    assert_eq!(counts(actual.clone()), stats(set), "{message}");
    assert_eq!(
        actual.submitted,
        actual.accounted(),
        "{message}: {actual:?}"
    );
}

/// Asserts that `queued` tasks are still waiting for their response to end:
/// none has been handed off, so none has run.
///
/// Deterministic without sleeping: a handed-off task counts as running from
/// the moment it is handed off, so `wait_idle` would wait for it to finish
/// and `runs` would show it.
pub(crate) async fn assert_still_queued(supervisor: &Supervisor, runs: &AtomicUsize, queued: u64) {
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a task ran too early");
    let stats = supervisor.stats();
    assert_eq!(
        stats.waiting, queued,
        "tasks left the queue early: {stats:?}"
    );
    assert_eq!(stats.running, 0, "a task was handed off early: {stats:?}");
}
