//! Aborting every running task at once: a flag every task reads on each
//! poll, and the wakers of the tasks that are waiting, woken together when
//! the flag is set. Each waker sits with what shutdown says of its task
//! ([`Started`]): its progress lines and its report name the oldest.
//!
//! Written by hand because the alternatives cost every waiting task more:
//! a `CancellationToken` waiter (what this replaces) takes the token's locks
//! to register, to be polled and to be dropped, and boxes a future per task;
//! keeping each task's `AbortHandle` would register every task at spawn,
//! even the many that finish on their first poll. Here a task registers only
//! once it has returned `Pending`, in one of [`SHARDS`] small slabs: the one
//! of the thread that polled it, so two workers rarely take the same lock.
//!
//! The shard is the thread's, not one picked by the task's address, so that
//! a shard lists its tasks in the order they first waited, which is about
//! the order they were allocated in. Waking them in that order at an abort
//! drops and frees them in that order too, so the allocator's and tokio's
//! task-list neighbours are still in cache. With 100 000 tasks on two
//! workers, the scattered order an address gives left 11 000–61 000 of them
//! uncounted 100 ms after the abort; this order counts them all (see
//! `BENCHMARKS.md`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use crate::started::{Oldest, Started};

/// Slabs of wakers; a power of two well above the usual worker count.
const SHARDS: usize = 32;

/// The abort flag and the wakers of the tasks that are waiting.
pub(crate) struct Abort {
    aborted: AtomicBool,
    shards: Box<[Shard]>,
}

/// Where a task's waker sits, to take it out when the task ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Registration {
    shard: u32,
    slot: u32,
    /// The shard's generation at registration: after a drain the slot may
    /// belong to another task.
    generation: u32,
}

/// One slab, on its own cache lines so that shards do not share them.
#[repr(align(128))]
struct Shard(Mutex<Wakers>);

/// A waiting task: its waker, and what shutdown says of it.
struct Entry {
    waker: Waker,
    started: Started,
}

#[derive(Default)]
struct Wakers {
    /// `None` marks a free slot, whose index is in `free`.
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    generation: u32,
}

impl std::fmt::Debug for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Abort")
            .field("aborted", &self.is_aborted())
            .finish_non_exhaustive()
    }
}

impl Abort {
    pub(crate) fn new() -> Self {
        Self {
            aborted: AtomicBool::new(false),
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(Wakers::default())))
                .collect(),
        }
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Keeps `waker` until [`Abort::unregister`] or [`Abort::fire`].
    ///
    /// The caller must read [`Abort::is_aborted`] again afterwards: `fire`
    /// may have drained the shard just before.
    pub(crate) fn register(&self, waker: &Waker, started: Started) -> Registration {
        self.register_in(home_shard(), waker, started)
    }

    fn register_in(&self, shard: usize, waker: &Waker, started: Started) -> Registration {
        let entry = Some(Entry {
            waker: waker.clone(),
            started,
        });
        let mut wakers = self.lock(shard);
        let slot = match wakers.free.pop() {
            Some(slot) => {
                wakers.slots[slot as usize] = entry;
                slot
            }
            None => {
                wakers.slots.push(entry);
                (wakers.slots.len() - 1) as u32
            }
        };
        Registration {
            shard: shard as u32,
            slot,
            generation: wakers.generation,
        }
    }

    /// Drops the waker of a task that has ended. Once aborted there is
    /// nothing to do: its shard was (or is being) drained.
    pub(crate) fn unregister(&self, registration: Registration) {
        if self.is_aborted() {
            return;
        }
        let mut wakers = self.lock(registration.shard as usize);
        if wakers.generation != registration.generation {
            return;
        }
        let slot = registration.slot as usize;
        if let Some(entry) = wakers.slots.get_mut(slot).and_then(Option::take) {
            wakers.free.push(registration.slot);
            drop(wakers);
            drop(entry);
        }
    }

    /// Offers every waiting task to `oldest`, without disturbing them.
    pub(crate) fn survey(&self, oldest: &mut Oldest) {
        for shard in 0..SHARDS {
            let wakers = self.lock(shard);
            for entry in wakers.slots.iter().flatten() {
                oldest.offer(&entry.started);
            }
        }
    }

    /// Sets the flag, then wakes every registered task, one shard at a
    /// time and outside its lock, so that each is polled, sees the flag and
    /// drops its work. Each is offered to `aborted` on its way.
    pub(crate) fn fire(&self, aborted: &mut Oldest) {
        self.aborted.store(true, Ordering::SeqCst);
        for shard in 0..SHARDS {
            let slots = {
                let mut wakers = self.lock(shard);
                wakers.generation = wakers.generation.wrapping_add(1);
                wakers.free = Vec::new();
                std::mem::take(&mut wakers.slots)
            };
            for entry in slots.into_iter().flatten() {
                aborted.offer(&entry.started);
                entry.waker.wake();
            }
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Wakers> {
        // Nothing panics while a shard is locked (waking happens outside).
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The calling thread's shard: given out round-robin at its first call.
fn home_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    HOME.with(|home| match home.get() {
        usize::MAX => {
            let shard = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            home.set(shard);
            shard
        }
        shard => shard,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    use http::Method;

    use super::*;
    use crate::origin::Origin;

    fn started() -> Started {
        Started::now(Some("test"), &Origin::new(&Method::GET, "/"))
    }

    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn fire_wakes_what_is_registered_and_nothing_that_ended() {
        let abort = Abort::new();
        let woken = Arc::new(Counted(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&woken));
        let registrations: Vec<_> = (0..100)
            .map(|i| abort.register_in(i % SHARDS, &waker, started()))
            .collect();
        for registration in &registrations[..40] {
            abort.unregister(*registration);
        }
        // Freed slots are reused.
        let again = abort.register(&waker, started());
        let mut aborted = Oldest::new(10);
        abort.fire(&mut aborted);
        assert!(abort.is_aborted());
        assert_eq!(woken.0.load(Ordering::SeqCst), 61);
        assert_eq!(aborted.seen(), 61);
        // Late unregistrations, and a second fire, are harmless.
        abort.unregister(again);
        abort.unregister(registrations[99]);
        abort.fire(&mut Oldest::new(1));
        assert_eq!(woken.0.load(Ordering::SeqCst), 61);
        // Only `waker` itself is left: every clone was woken or dropped.
        assert_eq!(Arc::strong_count(&woken), 2);
    }

    #[test]
    fn a_stale_registration_does_not_remove_a_newer_one() {
        let abort = Abort::new();
        let woken = Arc::new(Counted(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&woken));
        let old = abort.register_in(0, &waker, started());
        {
            // A drain without setting the flag, as `fire` does.
            let mut wakers = abort.lock(0);
            wakers.generation += 1;
            wakers.free.clear();
            wakers.slots.clear();
        }
        let new = abort.register_in(0, &waker, started());
        assert_eq!((old.shard, old.slot), (new.shard, new.slot));
        abort.unregister(old);
        abort.fire(&mut Oldest::new(1));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }
}
