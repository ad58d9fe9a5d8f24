//! [`MemoryStore`]: the default [`TaskStore`], in this process's memory,
//! bounded in size and retention.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{ready, Future};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::error::StoreError;
use super::id::TaskId;
use super::idempotency::{Idempotency, IdempotencyKey};
use super::lock::LockKey;
use super::record::{TaskOutcome, TaskRecord, TaskStatus};
use super::signature::Signature;
use super::spec::TaskSpec;
use super::store::{Admission, TaskStore};

/// How long [`MemoryStore`] keeps an ended task's record unless told
/// otherwise: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);

/// How many records [`MemoryStore`] holds unless told otherwise: 10 000.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// The default [`TaskStore`]: records and locks in this process's memory,
/// behind one mutex.
///
/// # Retention
///
/// - A **running** task's record is kept until it ends. Its lock is held
///   as long.
/// - An **ended** task's record (finished, failed or cancelled) is kept for
///   the TTL ([`DEFAULT_TTL`], one hour), then forgotten: its id answers
///   `404`.
/// - At most **capacity** records are kept ([`DEFAULT_CAPACITY`], 10 000).
///   A start that finds the store full evicts the ended record that ended
///   first; if every record is a running task's, the start is refused
///   ([`Admission::Full`], over HTTP `503` with `Retry-After`).
/// - An **idempotency key** is kept as long as the record of the task it
///   started, running or ended: it expires and is evicted with it.
///
/// So memory is bounded by the capacity whatever the traffic: the records,
/// the lock table (one entry per running locked task), the key table (one
/// entry per record started with a key, each key at most
/// [`MAX_IDEMPOTENCY_KEY_LEN`](super::MAX_IDEMPOTENCY_KEY_LEN) bytes) and
/// the expiry queue never hold more than `capacity` entries; a flood of
/// distinct keys is a flood of starts, bounded like any other. (Results
/// are kept as the tasks returned them; bound a task's result if it can be
/// large.)
///
/// Expiry uses [`tokio::time::Instant`], so tests can move it with
/// `tokio::time::pause` and `advance`; it is applied lazily, on each call,
/// in time proportional to the number of records that expired.
///
/// # Atomicity
///
/// Every method takes the mutex once and does all of its work under it,
/// so `try_start`'s key check, lock check, capacity check and insertion
/// are one step.
/// Every method's future is ready at its first poll.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_background::tracking::{MemoryStore, TaskRegistry};
///
/// let store = MemoryStore::builder()
///     .ttl(Duration::from_secs(10 * 60))
///     .capacity(1_000)
///     .build();
/// let registry = TaskRegistry::builder().store(store).build();
/// assert_eq!(registry.store().capacity(), 1_000);
/// ```
pub struct MemoryStore {
    state: Mutex<State>,
    ttl: Duration,
    capacity: usize,
}

#[derive(Default)]
struct State {
    records: HashMap<TaskId, Stored>,
    /// Running locked tasks, by lock.
    locks: HashMap<LockKey, TaskId>,
    /// The records started with an idempotency key, by their task's
    /// signature and the key.
    keys: HashMap<(Signature, IdempotencyKey), TaskId>,
    /// Ended tasks in the order they ended, with when they expire (`None`:
    /// a TTL too long to add to the clock, never). The TTL is the same for
    /// all, so this is also their order of expiry.
    ended: VecDeque<(TaskId, Option<Instant>)>,
}

struct Stored {
    record: TaskRecord,
    lock: Option<LockKey>,
    idempotency: Option<Idempotency>,
}

impl MemoryStore {
    /// A store with the default TTL and capacity.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// How long ended records are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many records are kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many records are held now (running and ended, expired ones
    /// excluded).
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// `true` when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of the records are running tasks'.
    pub fn running(&self) -> usize {
        let state = self.lock();
        state.records.len() - state.ended.len()
    }

    /// The state, with expired records removed.
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the mutex is held, and every change leaves
        // the state consistent, so poisoning is ignored.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.purge(Instant::now());
        state
    }

    fn start_now(&self, record: TaskRecord, spec: &TaskSpec) -> Admission {
        let mut state = self.lock();
        let idempotency = spec.idempotency();
        let scoped_key =
            idempotency.map(|idempotency| (spec.signature(), idempotency.key().clone()));
        if let (Some(idempotency), Some(key)) = (idempotency, &scoped_key) {
            // A cancelled task (refused at its start, discarded with its
            // request, stopped by a shutdown) produced no result to answer
            // a retry with: its key starts the task again.
            let cancelled = |first: &TaskId| {
                state
                    .records
                    .get(first)
                    .is_some_and(|stored| stored.record.status == TaskStatus::Cancelled)
            };
            if state.keys.get(key).is_some_and(cancelled) {
                state.keys.remove(key);
            }
            if let Some(&first) = state.keys.get(key) {
                let first_args = state
                    .records
                    .get(&first)
                    .and_then(|stored| stored.idempotency.as_ref())
                    .map(Idempotency::args_signature);
                return if first_args == Some(idempotency.args_signature()) {
                    Admission::Repeated(first)
                } else {
                    Admission::KeyReused(first)
                };
            }
        }
        let lock = spec.lock_key();
        if let Some(running) = lock.and_then(|lock| state.locks.get(lock)) {
            return Admission::Locked(*running);
        }
        while state.records.len() >= self.capacity {
            if !state.evict_oldest_ended() {
                return Admission::Full;
            }
        }
        let task_id = record.task_id;
        if let Some(lock) = lock {
            state.locks.insert(lock.clone(), task_id);
        }
        if let Some(key) = scoped_key {
            state.keys.insert(key, task_id);
        }
        let stored = Stored {
            record,
            lock: lock.cloned(),
            idempotency: idempotency.cloned(),
        };
        state.records.insert(task_id, stored);
        Admission::Started
    }

    fn complete_now(&self, task_id: TaskId, outcome: TaskOutcome, end_time: SystemTime) {
        let mut state = self.lock();
        let Some(stored) = state.records.get_mut(&task_id) else {
            return;
        };
        if !stored.record.complete(outcome, end_time) {
            return;
        }
        let lock = stored.lock.take();
        if let Some(lock) = lock {
            if state.locks.get(&lock) == Some(&task_id) {
                state.locks.remove(&lock);
            }
        }
        let expires = Instant::now().checked_add(self.ttl);
        state.ended.push_back((task_id, expires));
    }
}

impl State {
    /// Removes the ended records that expired at or before `now`.
    fn purge(&mut self, now: Instant) -> usize {
        let mut purged = 0;
        while let Some(&(task_id, Some(expires))) = self.ended.front() {
            if expires > now {
                break;
            }
            self.ended.pop_front();
            self.remove(task_id);
            purged += 1;
        }
        purged
    }

    /// Removes the ended record that ended first; `false` if none has.
    fn evict_oldest_ended(&mut self) -> bool {
        match self.ended.pop_front() {
            Some((task_id, _)) => {
                self.remove(task_id);
                true
            }
            None => false,
        }
    }

    /// Removes an ended record, and its idempotency key with it.
    fn remove(&mut self, task_id: TaskId) {
        let Some(stored) = self.records.remove(&task_id) else {
            return;
        };
        if let Some(idempotency) = stored.idempotency {
            let key = (stored.record.signature, idempotency.key().clone());
            if self.keys.get(&key) == Some(&task_id) {
                self.keys.remove(&key);
            }
        }
    }
}

impl TaskStore for MemoryStore {
    fn try_start(
        &self,
        record: TaskRecord,
        spec: &TaskSpec,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send {
        ready(Ok(self.start_now(record, spec)))
    }

    fn complete(
        &self,
        task_id: TaskId,
        outcome: TaskOutcome,
        end_time: SystemTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.complete_now(task_id, outcome, end_time);
        ready(Ok(()))
    }

    fn get(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Option<TaskRecord>, StoreError>> + Send {
        let record = self
            .lock()
            .records
            .get(&task_id)
            .map(|stored| stored.record.clone());
        ready(Ok(record))
    }

    fn purge_expired(&self) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        ready(Ok(state.purge(Instant::now())))
    }
}

impl Default for MemoryStore {
    /// Same as [`MemoryStore::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("records", &state.records.len())
            .field("running", &(state.records.len() - state.ended.len()))
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Settings for a [`MemoryStore`], from [`MemoryStore::builder`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_background::tracking::MemoryStore;
///
/// let store = MemoryStore::builder().ttl(Duration::from_secs(60)).build();
/// assert_eq!(store.ttl(), Duration::from_secs(60));
/// assert_eq!(store.capacity(), tower_background::tracking::DEFAULT_CAPACITY);
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct MemoryStoreBuilder {
    ttl: Duration,
    capacity: usize,
}

impl MemoryStoreBuilder {
    /// How long an ended task's record is kept (default [`DEFAULT_TTL`]).
    /// `Duration::ZERO` forgets it as soon as it ends; a TTL too long to
    /// add to the clock (`Duration::MAX`) keeps it until the capacity evicts
    /// it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many records are kept at most (default [`DEFAULT_CAPACITY`]),
    /// running tasks' included, so also how many tasks can run at once. A
    /// capacity of 0 refuses every start.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State::default()),
            ttl: self.ttl,
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use serde_json::json;

    use super::*;
    use crate::tracking::recorder::poll_once;
    use crate::tracking::{Lock, TaskSpec, TaskStatus};

    fn start(store: &MemoryStore, name: &str, lock: Lock) -> (TaskId, Admission) {
        start_spec(store, &TaskSpec::new(name, lock, &()).unwrap())
    }

    fn start_spec(store: &MemoryStore, spec: &TaskSpec) -> (TaskId, Admission) {
        let record = TaskRecord::running(TaskId::new(), spec, SystemTime::now());
        let id = record.task_id;
        (id, ready_now(store.try_start(record, spec)))
    }

    /// The task `name` with `args`, under `key`.
    fn keyed(name: &str, key: &str, args: u8) -> TaskSpec {
        TaskSpec::new(name, Lock::None, &args)
            .unwrap()
            .with_idempotency_key(key.parse().unwrap(), &args)
            .unwrap()
    }

    fn finish(store: &MemoryStore, id: TaskId) {
        ready_now(store.complete(id, TaskOutcome::Finished(json!(1)), SystemTime::now()));
    }

    fn get(store: &MemoryStore, id: TaskId) -> Option<TaskRecord> {
        ready_now(store.get(id))
    }

    /// The output of one of the store's futures, all ready at once.
    fn ready_now<T>(future: impl Future<Output = Result<T, StoreError>>) -> T {
        poll_once(pin!(future))
            .expect("ready at once")
            .expect("never fails")
    }

    #[test]
    fn a_lock_refuses_until_its_task_ends() {
        let store = MemoryStore::new();
        let (first, admitted) = start(&store, "t", Lock::Signature);
        assert_eq!(admitted, Admission::Started);
        assert_eq!(
            start(&store, "t", Lock::Signature).1,
            Admission::Locked(first)
        );
        assert_eq!(start(&store, "u", Lock::Signature).1, Admission::Started);
        assert_eq!(start(&store, "t", Lock::None).1, Admission::Started);
        finish(&store, first);
        assert_eq!(start(&store, "t", Lock::Signature).1, Admission::Started);
    }

    #[test]
    fn completing_twice_or_an_unknown_id_changes_nothing() {
        let store = MemoryStore::new();
        let (id, _) = start(&store, "t", Lock::Signature);
        finish(&store, id);
        let (second, _) = start(&store, "t", Lock::Signature);
        // A late outcome for the first task must not free the second's lock.
        ready_now(store.complete(id, TaskOutcome::Cancelled, SystemTime::now()));
        assert_eq!(get(&store, id).unwrap().status, TaskStatus::Finished);
        assert_eq!(
            start(&store, "t", Lock::Signature).1,
            Admission::Locked(second)
        );
        finish(&store, TaskId::new());
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn capacity_evicts_the_first_ended_and_never_a_running_task() {
        let store = MemoryStore::builder().capacity(3).build();
        let (a, _) = start(&store, "a", Lock::None);
        let (b, _) = start(&store, "b", Lock::None);
        let (c, _) = start(&store, "c", Lock::None);
        finish(&store, b);
        finish(&store, a);
        // b ended first: it goes first.
        let (d, admitted) = start(&store, "d", Lock::None);
        assert_eq!(admitted, Admission::Started);
        assert!(get(&store, b).is_none());
        assert!(get(&store, a).is_some());
        let (_, admitted) = start(&store, "e", Lock::None);
        assert_eq!(admitted, Admission::Started);
        assert!(get(&store, a).is_none());
        // c, d and e are running: no room.
        assert_eq!(start(&store, "f", Lock::None).1, Admission::Full);
        assert_eq!((store.len(), store.running()), (3, 3));
        assert!(get(&store, c).is_some() && get(&store, d).is_some());
    }

    #[test]
    fn capacity_zero_refuses_everything() {
        let store = MemoryStore::builder().capacity(0).build();
        assert_eq!(start(&store, "t", Lock::None).1, Admission::Full);
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ended_records_expire_after_the_ttl() {
        let store = MemoryStore::builder().ttl(Duration::from_secs(60)).build();
        let (id, _) = start(&store, "t", Lock::None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(get(&store, id).is_some(), "running records never expire");
        finish(&store, id);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(get(&store, id).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(get(&store, id).is_none());
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_ttls_do_not_panic() {
        let store = MemoryStore::builder().ttl(Duration::MAX).build();
        let (id, _) = start(&store, "t", Lock::None);
        finish(&store, id);
        tokio::time::advance(Duration::from_secs(10 * 365 * 86_400)).await;
        assert!(get(&store, id).is_some());
        assert_eq!(ready_now(store.purge_expired()), 0);

        let store = MemoryStore::builder().ttl(Duration::ZERO).build();
        let (id, _) = start(&store, "t", Lock::None);
        finish(&store, id);
        assert!(get(&store, id).is_none());
    }

    #[test]
    fn a_key_answers_with_its_task_per_task_and_per_arguments() {
        let store = MemoryStore::new();
        let (first, admitted) = start_spec(&store, &keyed("t", "k", 1));
        assert_eq!(admitted, Admission::Started);
        assert_eq!(
            start_spec(&store, &keyed("t", "k", 1)).1,
            Admission::Repeated(first)
        );
        finish(&store, first);
        assert_eq!(
            start_spec(&store, &keyed("t", "k", 1)).1,
            Admission::Repeated(first),
            "an ended task keeps its key"
        );
        assert_eq!(
            start_spec(&store, &keyed("t", "k", 2)).1,
            Admission::KeyReused(first)
        );
        assert_eq!(
            start_spec(&store, &keyed("u", "k", 1)).1,
            Admission::Started
        );
        assert_eq!(
            start_spec(&store, &keyed("t", "k2", 1)).1,
            Admission::Started
        );
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn a_cancelled_task_frees_its_key() {
        let store = MemoryStore::new();
        let (first, admitted) = start_spec(&store, &keyed("t", "k", 1));
        assert_eq!(admitted, Admission::Started);
        store.complete_now(first, TaskOutcome::Cancelled, SystemTime::now());
        let (retried, admitted) = start_spec(&store, &keyed("t", "k", 1));
        assert_eq!(
            admitted,
            Admission::Started,
            "a retry after a cancelled start"
        );
        assert_eq!(
            start_spec(&store, &keyed("t", "k", 1)).1,
            Admission::Repeated(retried)
        );
        assert_eq!(store.len(), 2, "the cancelled record stays");
        finish(&store, first);
        assert_eq!(store.lock().keys.len(), 1);
    }

    #[test]
    fn keys_go_with_their_records() {
        let store = MemoryStore::builder().capacity(2).build();
        let mut ids = Vec::new();
        for i in 0..10 {
            let (id, admitted) = start_spec(&store, &keyed("t", &format!("k{i}"), 1));
            assert_eq!(admitted, Admission::Started);
            finish(&store, id);
            ids.push(id);
        }
        let state = store.lock();
        assert_eq!((state.records.len(), state.keys.len()), (2, 2));
        drop(state);
        // The first key's record was evicted: the key is free again.
        let (again, admitted) = start_spec(&store, &keyed("t", "k0", 1));
        assert_eq!(admitted, Admission::Started);
        assert!(!ids.contains(&again));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_expire_with_their_records() {
        let store = MemoryStore::builder().ttl(Duration::from_secs(60)).build();
        let (id, _) = start_spec(&store, &keyed("t", "k", 1));
        finish(&store, id);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(ready_now(store.purge_expired()), 1);
        assert!(store.lock().keys.is_empty());
        assert_eq!(
            start_spec(&store, &keyed("t", "k", 2)).1,
            Admission::Started
        );
    }
}
