//! [`RequestQueue`]: the tasks one request queues before its response ends,
//! and the one state that says whether they still wait there, were handed
//! off, or were discarded.

use std::mem;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::stats::DiscardReason;
use crate::work::{Queued, QueuedTask};

/// How a request's queue was closed; every later task follows the same
/// fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// Handed off: later tasks start at once.
    HandedOff,
    /// Discarded: later tasks are discarded for the same reason.
    Discarded(DiscardReason),
}

/// Where a request's queue is. It only moves forward: `Untouched` →
/// `Queued` → `Closed`, or `Untouched` → `Closed`, and a closed queue stays
/// as it was first closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Open, and nothing was ever offered (most requests): closing it is
    /// one compare-and-swap, and its lock is never taken.
    Untouched,
    /// Open; the tasks offered wait in the queue.
    Queued,
    /// Closed: see [`Closed`].
    Closed(Closed),
}

impl State {
    /// Every state, in the order of its bits: the encoding is a state's
    /// place here, so no number is written by hand.
    const ALL: [State; 6] = [
        State::Untouched,
        State::Queued,
        State::Closed(Closed::HandedOff),
        State::Closed(Closed::Discarded(DiscardReason::NoResponse)),
        State::Closed(Closed::Discarded(DiscardReason::ClientDisconnected)),
        State::Closed(Closed::Discarded(DiscardReason::ServerError)),
    ];

    /// Its place in [`ALL`](Self::ALL).
    #[inline]
    fn bits(self) -> u8 {
        let mut bits = 0;
        while Self::ALL[bits] != self {
            bits += 1;
        }
        bits as u8
    }

    /// The state `bits` encodes. `bits` only ever comes from
    /// [`bits`](Self::bits), so it is always in range.
    fn from_bits(bits: u8) -> Self {
        Self::ALL[usize::from(bits)]
    }
}

/// One request's queue. The state word is its only state: the mutex guards
/// the tasks alone, and a task is pushed only while the state, read under
/// the lock, is still open. Closing swaps the state first and takes the
/// tasks under the lock after, so a task is either pushed before the close
/// takes them, or sees the queue closed and follows its fate: never lost.
#[derive(Debug)]
pub(crate) struct RequestQueue {
    /// A [`State`], as its [`bits`](State::bits).
    state: AtomicU8,
    tasks: Mutex<Queued>,
}

impl RequestQueue {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(State::Untouched.bits()),
            tasks: Mutex::new(Queued::new()),
        }
    }

    fn state(&self) -> State {
        State::from_bits(self.state.load(Ordering::Acquire))
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        // Nothing panics while the lock is held; should it ever, the tasks
        // are still consistent, so poisoning is ignored rather than
        // propagated.
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `task` while the queue is open, calling `on_queued` under the
    /// lock (before a close can take the task); gives the task back with
    /// how the queue was closed otherwise.
    #[inline]
    pub(crate) fn push(
        &self,
        task: QueuedTask,
        on_queued: impl FnOnce(),
    ) -> Result<(), (QueuedTask, Closed)> {
        // The first offer moves the queue out of `Untouched`, so that a close
        // from now on looks at the tasks.
        let first = self.state.compare_exchange(
            State::Untouched.bits(),
            State::Queued.bits(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if let Err(bits) = first {
            if let State::Closed(closed) = State::from_bits(bits) {
                return Err((task, closed));
            }
        }
        let mut tasks = self.lock();
        match self.state() {
            State::Closed(closed) => Err((task, closed)),
            State::Untouched | State::Queued => {
                tasks.push(task);
                on_queued();
                Ok(())
            }
        }
    }

    /// Closes the queue as `next`, unless it was closed already (only the
    /// first close has any effect), and returns the tasks that waited:
    /// `None` when it was closed already or nothing was ever offered.
    pub(crate) fn close(&self, next: Closed) -> Option<Queued> {
        let closed = State::Closed(next).bits();
        // Most requests queue nothing: one compare-and-swap closes them.
        let mut expected = State::Untouched.bits();
        loop {
            match self
                .state
                .compare_exchange(expected, closed, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if expected == State::Untouched.bits() => return None,
                Ok(_) => return Some(mem::take(&mut *self.lock())),
                Err(actual) => match State::from_bits(actual) {
                    State::Closed(_) => return None,
                    State::Untouched | State::Queued => expected = actual,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;
    use crate::work::{self, Work, DEFAULT_LANE};

    fn task() -> QueuedTask {
        QueuedTask::new(Work::Async(work::boxed(async {})), DEFAULT_LANE, None, None)
    }

    #[test]
    fn every_state_round_trips_through_its_bits() {
        for state in State::ALL {
            assert_eq!(State::from_bits(state.bits()), state);
        }
    }

    #[test]
    fn only_the_first_close_counts_and_later_tasks_follow_it() {
        let untouched = RequestQueue::new();
        assert!(untouched.close(Closed::HandedOff).is_none());
        assert!(untouched
            .close(Closed::Discarded(DiscardReason::NoResponse))
            .is_none());
        assert!(matches!(
            untouched.push(task(), || unreachable!()),
            Err((_, Closed::HandedOff))
        ));

        let queued = RequestQueue::new();
        let counted = AtomicUsize::new(0);
        for _ in 0..2 {
            assert!(queued
                .push(task(), || {
                    counted.fetch_add(1, Ordering::SeqCst);
                })
                .is_ok());
        }
        assert_eq!(counted.load(Ordering::SeqCst), 2);
        let reason = DiscardReason::ClientDisconnected;
        assert_eq!(
            queued.close(Closed::Discarded(reason)).map(|t| t.len()),
            Some(2)
        );
        assert!(queued.close(Closed::HandedOff).is_none());
        assert!(matches!(
            queued.push(task(), || unreachable!()),
            Err((_, Closed::Discarded(DiscardReason::ClientDisconnected)))
        ));
    }

    #[test]
    fn a_task_racing_the_close_is_taken_by_it_or_told_it_closed() {
        // Threads push while another closes: every task is either among
        // those the close took or given back, exactly once.
        for _ in 0..200 {
            let queue = Arc::new(RequestQueue::new());
            let queued = Arc::new(AtomicUsize::new(0));
            let pushers: Vec<_> = (0..3)
                .map(|_| {
                    let (queue, queued) = (Arc::clone(&queue), Arc::clone(&queued));
                    std::thread::spawn(move || {
                        let mut refused = 0;
                        for _ in 0..50 {
                            let pushed = queue.push(task(), || {
                                queued.fetch_add(1, Ordering::SeqCst);
                            });
                            refused += usize::from(pushed.is_err());
                        }
                        refused
                    })
                })
                .collect();
            let taken = queue
                .close(Closed::HandedOff)
                .map_or(0, |tasks| tasks.len());
            let refused: usize = pushers.into_iter().map(|p| p.join().unwrap()).sum();
            assert_eq!(queued.load(Ordering::SeqCst), taken);
            assert_eq!(taken + refused, 150);
            assert!(queue.lock().is_empty(), "nothing left behind the close");
        }
    }
}
