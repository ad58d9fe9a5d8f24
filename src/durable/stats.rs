//! [`JobStats`]: what this process has done with durable jobs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counts of what this process has done with durable jobs, from
/// [`JobQueue::stats`](super::JobQueue::stats). Jobs pushed or run by other
/// processes are not in it; the database is the shared record.
///
/// Every job a handler enqueued is, at any time, in exactly one of:
/// waiting to be pushed (`pending`), pushed, abandoned (shutdown came
/// before the database took it), or discarded (with its request's
/// background tasks, before they started). Each abandoned or discarded
/// job is logged with its JSON (at `ERROR` and `WARN`), so that it can be
/// pushed by hand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct JobStats {
    /// Jobs stored in the database by this process (by `JobQueue::push`,
    /// `push_at`, `push_after`, `push_all`, `push_in`, a `Periodic` tick,
    /// or a deferred push that succeeded), counting a unique job found
    /// already waiting or running (see `deduplicated`).
    pub pushed: u64,
    /// Pushes of a unique job whose key a waiting or running job of the same
    /// type held: nothing was stored (included in `pushed`).
    pub deduplicated: u64,
    /// Jobs accepted by `JobQueue::enqueue`, to be pushed after their
    /// response.
    pub deferred: u64,
    /// Deferred pushes that succeeded (included in `pushed`).
    pub pushed_deferred: u64,
    /// Push attempts that failed and were tried again.
    pub push_retries: u64,
    /// Deferred jobs given up at shutdown before the database took them:
    /// their push was still being retried when the cleanup period began,
    /// or had not started when shutdown began.
    pub abandoned: u64,
    /// Deferred jobs dropped with their request's background tasks before
    /// those started, as every task of the request is: the handler
    /// produced no response, or the layer's
    /// [`OnDisconnect::Skip`](crate::OnDisconnect::Skip) or
    /// [`OnServerError::Skip`](crate::OnServerError::Skip) applied.
    pub discarded: u64,
    /// Deferred jobs waiting in this process's memory for the database now
    /// (`deferred - pushed_deferred - abandoned - discarded`), at most
    /// [`JobQueue::max_pending`](super::JobQueue::max_pending).
    pub pending: u64,
    /// Calls to `JobQueue::enqueue` refused because `pending` was at its
    /// limit (`JobError::Full`): the handler was told, nothing was queued.
    pub refused_full: u64,
    /// Jobs this process's workers finished with `Ok`.
    pub succeeded: u64,
    /// Job attempts this process's workers finished with `Err` or a panic.
    pub failed: u64,
    /// Jobs this process's workers were running when a shutdown's cleanup
    /// period began, returned to the queue for another worker.
    pub released: u64,
}

/// The live counters behind [`JobStats`].
#[derive(Debug, Default)]
pub(crate) struct JobCounters {
    pushed: AtomicU64,
    deduplicated: AtomicU64,
    deferred: AtomicU64,
    pushed_deferred: AtomicU64,
    push_retries: AtomicU64,
    abandoned: AtomicU64,
    discarded: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    released: AtomicU64,
    /// Deferred jobs not yet stored, abandoned nor discarded.
    pending: AtomicU64,
    refused_full: AtomicU64,
    max_pending: AtomicUsize,
}

impl JobCounters {
    pub(crate) fn with_max_pending(max_pending: usize) -> Self {
        let counters = Self::default();
        counters.set_max_pending(max_pending);
        counters
    }

    pub(crate) fn pushed(&self) {
        self.pushed.fetch_add(1, Relaxed);
    }

    pub(crate) fn deduplicated(&self) {
        self.deduplicated.fetch_add(1, Relaxed);
    }

    pub(crate) fn max_pending(&self) -> usize {
        self.max_pending.load(Relaxed)
    }

    pub(crate) fn set_max_pending(&self, max: usize) {
        self.max_pending.store(max, Relaxed);
    }

    /// Counts `n` jobs as deferred and pending, unless that would take
    /// `pending` past its limit: then counts a refusal and says no. One
    /// read-modify-write decides, so concurrent handlers never overshoot.
    pub(crate) fn try_defer(&self, n: u64) -> bool {
        let max = self.max_pending() as u64;
        let room = self
            .pending
            .fetch_update(Relaxed, Relaxed, |pending| {
                pending.checked_add(n).filter(|&after| after <= max)
            })
            .is_ok();
        if room {
            self.deferred.fetch_add(n, Relaxed);
        } else {
            self.refused_full.fetch_add(1, Relaxed);
        }
        room
    }

    /// Takes back `deferred` jobs the task set did not accept.
    pub(crate) fn not_deferred(&self, n: u64) {
        self.deferred.fetch_sub(n, Relaxed);
        self.pending.fetch_sub(n, Relaxed);
    }

    pub(crate) fn pushed_deferred(&self) {
        self.pushed.fetch_add(1, Relaxed);
        self.pushed_deferred.fetch_add(1, Relaxed);
        self.pending.fetch_sub(1, Relaxed);
    }

    pub(crate) fn push_retry(&self) {
        self.push_retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn abandoned(&self) {
        self.abandoned.fetch_add(1, Relaxed);
        self.pending.fetch_sub(1, Relaxed);
    }

    pub(crate) fn discarded(&self) {
        self.discarded.fetch_add(1, Relaxed);
        self.pending.fetch_sub(1, Relaxed);
    }

    pub(crate) fn finished(&self, ok: bool) {
        if ok {
            self.succeeded.fetch_add(1, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn released(&self, n: u64) {
        self.released.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> JobStats {
        JobStats {
            pushed: self.pushed.load(Relaxed),
            deduplicated: self.deduplicated.load(Relaxed),
            deferred: self.deferred.load(Relaxed),
            pushed_deferred: self.pushed_deferred.load(Relaxed),
            push_retries: self.push_retries.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            discarded: self.discarded.load(Relaxed),
            succeeded: self.succeeded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            released: self.released.load(Relaxed),
            pending: self.pending.load(Relaxed),
            refused_full: self.refused_full.load(Relaxed),
        }
    }
}
