//! [`Keys`]: one task at a time per key, in hand-off order.
//!
//! A keyed task takes its key when it is handed off, before its lane: if
//! the key is free it goes on to its lane at once; if another task holds
//! it, it waits here, behind the key's earlier tasks. The holder gives the
//! key to the next waiter when it ends. A key with no holder has no entry,
//! so the map holds only keys in use: bounded by the tasks running plus
//! those pending, which `max_queued` bounds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::metrics::Stamp;
use crate::origin::Origin;
use crate::work::QueuedTask;

/// A keyed task waiting for its key.
pub(crate) type Parked = (Origin, QueuedTask, Stamp);

/// The keys in use, each with the tasks waiting for it.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    /// A key's entry exists while a task holds it; its queue holds the
    /// tasks waiting for it, oldest first.
    held: Mutex<HashMap<Box<str>, VecDeque<Parked>>>,
}

impl Keys {
    /// Takes the key of `task` (which has one) and gives the task back,
    /// or, if the key is held, keeps the task until its turn and returns
    /// `None`.
    pub(crate) fn take_or_wait(&self, task: Parked) -> Option<Parked> {
        let key = task.1.key().unwrap_or_default();
        let mut held = self.lock();
        if let Some(waiting) = held.get_mut(key) {
            waiting.push_back(task);
            return None;
        }
        held.insert(key.into(), VecDeque::new());
        Some(task)
    }

    /// The holder of `key` has ended: the next task waiting for it, which
    /// holds it from now on, or `None`, and the key is free.
    pub(crate) fn pass_on(&self, key: &str) -> Option<Parked> {
        let mut held = self.lock();
        // `None`: drained at an abort.
        let waiting = held.get_mut(key)?;
        let next = waiting.pop_front();
        if next.is_none() {
            held.remove(key);
        }
        next
    }

    /// Every waiting task (at an abort); the keys are forgotten.
    pub(crate) fn drain(&self) -> Vec<Parked> {
        let held = std::mem::take(&mut *self.lock());
        held.into_values().flatten().collect()
    }

    /// How many keys are held: what the map holds.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, VecDeque<Parked>>> {
        // Nothing panics while the map is locked.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `key` as logs show it: at most 64 characters, then `…`.
pub(crate) fn for_log(key: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 64;
    match key.char_indices().nth(SHOWN) {
        None => key.into(),
        Some((cut, _)) => format!("{}…", &key[..cut]).into(),
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::work::{self, Work, DEFAULT_LANE};

    fn parked(key: &str, tag: &'static str) -> Parked {
        let work = Work::Async(work::boxed(async {}));
        let task = QueuedTask::new(work, DEFAULT_LANE, Some(tag), Some(key.into()));
        (Origin::new(&Method::GET, "/"), task, Stamp::now())
    }

    fn name(parked: Option<Parked>) -> Option<&'static str> {
        parked.and_then(|(_, task, _)| task.name())
    }

    #[test]
    fn a_key_goes_to_its_waiters_in_order_then_is_forgotten() {
        let keys = Keys::default();
        assert_eq!(name(keys.take_or_wait(parked("a", "a1"))), Some("a1"));
        assert!(keys.take_or_wait(parked("a", "a2")).is_none());
        assert!(keys.take_or_wait(parked("a", "a3")).is_none());
        assert_eq!(name(keys.take_or_wait(parked("b", "b1"))), Some("b1"));
        assert_eq!(keys.held(), 2);

        assert_eq!(name(keys.pass_on("a")), Some("a2"));
        assert_eq!(name(keys.pass_on("a")), Some("a3"));
        assert_eq!(name(keys.pass_on("a")), None);
        assert_eq!(name(keys.pass_on("b")), None);
        assert_eq!(keys.held(), 0, "a key with nothing waiting holds nothing");
    }

    #[test]
    fn long_keys_are_cut_in_logs() {
        assert_eq!(for_log("customer:42"), "customer:42");
        let long = "é".repeat(100);
        let shown = for_log(&long);
        assert_eq!(shown.chars().count(), 65);
        assert!(shown.ends_with('…'));
    }
}
