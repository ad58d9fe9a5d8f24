//! Lanes: independent pools of running slots, each with its own limit and a
//! queue of tasks waiting for a slot.
//!
//! A task takes a slot with one compare-and-swap when the lane has room; only
//! when it is full does it touch the queue's mutex. The queue holds the
//! type-erased task itself (about 80 bytes), not a parked tokio task, so a
//! waiting task costs little beyond its own future.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::metrics::{LaneMetrics, Stamp};
use crate::origin::Origin;
use crate::work::QueuedTask;

/// Something waiting for a slot.
pub(crate) enum Waiting {
    /// A handed-off task, started when a slot frees up, and when it was
    /// handed off (zero bytes without the `metrics` feature).
    Task(Origin, QueuedTask, Stamp),
    /// A step of a group already running, woken with its slot.
    Step(oneshot::Sender<()>),
}

pub(crate) struct Lane {
    pub(crate) name: Box<str>,
    pub(crate) limit: usize,
    /// Slots taken. Never above `limit`.
    running: AtomicUsize,
    /// Mirrors `queue.len()`, so the common case (an empty queue) is seen
    /// without the lock.
    queued: AtomicUsize,
    queue: Mutex<VecDeque<Waiting>>,
    /// The most slots ever taken at once (for tests and stats).
    high_water: AtomicUsize,
    /// Its gauges and series, which follow `running` and `queued`.
    pub(crate) metrics: LaneMetrics,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("running", &self.running())
            .field("queued", &self.queued())
            .finish()
    }
}

impl Lane {
    pub(crate) fn new(name: &str, limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            name: name.into(),
            limit,
            running: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            high_water: AtomicUsize::new(0),
            metrics: LaneMetrics::new(name, limit),
        }
    }

    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub(crate) fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free.
    pub(crate) fn try_claim(&self) -> bool {
        let mut running = self.running.load(Ordering::SeqCst);
        loop {
            if running >= self.limit {
                return false;
            }
            match self.running.compare_exchange_weak(
                running,
                running + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.metrics.claimed();
                    // Read first: a `fetch_max` is a locked write even when
                    // it changes nothing, and this runs for every task.
                    if running + 1 > self.high_water.load(Ordering::Relaxed) {
                        self.high_water.fetch_max(running + 1, Ordering::Relaxed);
                    }
                    return true;
                }
                Err(actual) => running = actual,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Waiting>> {
        // Nothing panics while the lock is held.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `waiting` for a slot. The caller must then call
    /// [`Lane::next`] until it returns `None`: a slot may have been freed
    /// between its failed `try_claim` and this push.
    pub(crate) fn push(&self, waiting: Waiting) {
        let mut queue = self.lock();
        queue.push_back(waiting);
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.metrics.queue_changed(1);
    }

    /// Gives back a slot. The caller must then call [`Lane::next`] until it
    /// returns `None`.
    #[inline]
    pub(crate) fn release(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.metrics.released();
    }

    /// Takes a slot for the first waiter, if there is a waiter and a slot.
    ///
    /// Called after every `push` and every `release`. Both sides change their
    /// own counter first and read the other's after (all `SeqCst`), so a
    /// waiter pushed while the last slot is being given back is always seen
    /// by one of the two.
    pub(crate) fn next(&self) -> Option<Waiting> {
        while self.queued() > 0 && self.try_claim() {
            let mut queue = self.lock();
            if let Some(waiting) = queue.pop_front() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                self.metrics.queue_changed(-1);
                return Some(waiting);
            }
            // Another thread took the waiter first: give the slot back and
            // look again.
            drop(queue);
            self.release();
        }
        None
    }

    /// Empties the queue (at abort): what was waiting never runs.
    pub(crate) fn drain(&self) -> Vec<Waiting> {
        let mut queue = self.lock();
        let drained: Vec<Waiting> = queue.drain(..).collect();
        self.queued.fetch_sub(drained.len(), Ordering::SeqCst);
        self.metrics.queue_changed(-(drained.len() as isize));
        drained
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_task_waiting_for_a_slot_is_small() {
        // What one queued task costs beyond its own future (and its
        // request's shared origin label): the budget is 128 bytes.
        // With the `metrics` feature a waiting task also keeps when it was
        // handed off; without it, that stamp is zero bytes.
        let task = std::mem::size_of::<QueuedTask>();
        let waiting = std::mem::size_of::<Waiting>();
        let stamp = std::mem::size_of::<Stamp>();
        assert!(task <= 40, "Task is {task} bytes");
        assert!(waiting <= 64 + stamp, "Waiting is {waiting} bytes");
    }

    #[test]
    fn never_more_slots_than_the_limit_and_no_waiter_forgotten() {
        // Four threads take slots, queue when full and release, racing; at
        // the end every waiter has been handed a slot and none is left over.
        let lane = Arc::new(Lane::new("test", 3));
        let started = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lane = Arc::clone(&lane);
                let started = Arc::clone(&started);
                std::thread::spawn(move || {
                    let mut held = 0;
                    for _ in 0..10_000 {
                        if lane.try_claim() {
                            held += 1;
                        } else {
                            let (sender, _receiver) = oneshot::channel();
                            lane.push(Waiting::Step(sender));
                            while let Some(_waiting) = lane.next() {
                                held += 1;
                            }
                        }
                        assert!(lane.running() <= 3);
                        if held > 0 {
                            held -= 1;
                            started.fetch_add(1, Ordering::SeqCst);
                            lane.release();
                            while let Some(_waiting) = lane.next() {
                                held += 1;
                            }
                        }
                    }
                    while held > 0 {
                        held -= 1;
                        started.fetch_add(1, Ordering::SeqCst);
                        lane.release();
                        while let Some(_waiting) = lane.next() {
                            held += 1;
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(lane.queued(), 0);
        assert_eq!(lane.running(), 0);
        assert_eq!(started.load(Ordering::SeqCst), 40_000);
        assert!(lane.high_water() <= 3);
    }
}
