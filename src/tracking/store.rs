//! [`TaskStore`]: where tracked tasks' records and locks live, under the
//! [`TaskRegistry`](super::TaskRegistry).

use std::future::{ready, Future};
use std::time::{Duration, SystemTime};

use super::error::StoreError;
use super::id::TaskId;
use super::record::{TaskOutcome, TaskRecord};
use super::spec::TaskSpec;

/// Where tracked tasks' records and locks live.
///
/// [`MemoryStore`](super::MemoryStore) is the default. The trait is what a
/// store shared by several servers (a database) implements, so every method
/// is async and fallible, and the one that starts a task is a single atomic
/// operation, for the store to run as one transaction or conditional insert.
///
/// # What an implementation must guarantee
///
/// - [`try_start`](Self::try_start) is atomic: checking the lock, checking
///   the capacity and inserting the record are one step. Of any number of
///   concurrent starts with the same lock key, exactly one is
///   [`Admission::Started`]; every other learns that one's id
///   ([`Admission::Locked`]). Never check-then-insert in two round trips.
/// - An [idempotency key](TaskSpec::idempotency) is checked in the same
///   step, before the lock, and scoped to the task's
///   [signature](TaskSpec::signature): a record of the same signature
///   started with the same key answers [`Admission::Repeated`] (same
///   [args signature](super::Idempotency::args_signature)) or
///   [`Admission::KeyReused`] (other arguments), and nothing is
///   registered. A key is kept exactly as long as the record it started,
///   so keys never outnumber records, unless that record is `cancelled`:
///   a task refused at its start (answered `503`), discarded with its
///   request or stopped by a shutdown has no result to answer a retry
///   with, so its key is free for the next start.
/// - [`complete`](Self::complete) records the first outcome of a running
///   task and releases its lock in the same step; later outcomes for the
///   same id, and outcomes for unknown ids, change nothing.
/// - Memory (or rows) stay bounded: ended records expire, and a full store
///   makes room from ended records or refuses ([`Admission::Full`]) —
///   never by dropping a running task's record, which would free its lock.
/// - With a [`lease`](Self::lease), a running task whose lease has lapsed
///   (its server stopped [renewing](Self::renew) it) no longer holds its
///   lock: `try_start` ends its record as `failed` and takes the lock in
///   the same atomic step. Until then, its lock holds.
///
/// # Cancel safety
///
/// The registry may drop any of these futures before it completes (a
/// request abandoned mid-start, a task aborted while its end is being
/// recorded). Each operation must then have happened entirely or not at
/// all, as a transaction does. A start dropped after the store registered
/// it is ended as `cancelled` by the registry's drop guard.
///
/// The registry calls `complete` from a drop guard when a task's future is
/// dropped (shutdown abort, discarded requests); there, the returned future
/// is polled once and, if it is not ready, spawned on the current tokio
/// runtime. A store whose `complete` is ready at its first poll, like the
/// in-memory one, records those outcomes before the drop returns.
///
/// # Example
///
/// A store that forwards to [`MemoryStore`](super::MemoryStore) and counts
/// starts, as a skeleton for a real one:
///
/// ```
/// use std::future::Future;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::SystemTime;
/// use tower_background::tracking::{
///     Admission, MemoryStore, StoreError, TaskId, TaskOutcome, TaskRecord, TaskRegistry, TaskSpec,
///     TaskStore,
/// };
///
/// #[derive(Debug, Default)]
/// struct Counting {
///     inner: MemoryStore,
///     starts: AtomicUsize,
/// }
///
/// impl TaskStore for Counting {
///     fn try_start(
///         &self,
///         record: TaskRecord,
///         spec: &TaskSpec,
///     ) -> impl Future<Output = Result<Admission, StoreError>> + Send {
///         self.starts.fetch_add(1, Ordering::Relaxed);
///         self.inner.try_start(record, spec)
///     }
///
///     fn complete(
///         &self,
///         task_id: TaskId,
///         outcome: TaskOutcome,
///         end_time: SystemTime,
///     ) -> impl Future<Output = Result<(), StoreError>> + Send {
///         self.inner.complete(task_id, outcome, end_time)
///     }
///
///     fn get(
///         &self,
///         task_id: TaskId,
///     ) -> impl Future<Output = Result<Option<TaskRecord>, StoreError>> + Send {
///         self.inner.get(task_id)
///     }
///
///     fn purge_expired(&self) -> impl Future<Output = Result<usize, StoreError>> + Send {
///         self.inner.purge_expired()
///     }
/// }
///
/// let registry = TaskRegistry::builder().store(Counting::default()).build();
/// # let _ = registry;
/// ```
pub trait TaskStore: Send + Sync + 'static {
    /// Registers `record` (running, made from `spec`), takes the
    /// [lock](TaskSpec::lock_key) and keeps the
    /// [idempotency key](TaskSpec::idempotency) of `spec`, if any, as one
    /// atomic step; see the guarantees above.
    ///
    /// Returns, checked in this order: [`Admission::Repeated`] or
    /// [`Admission::KeyReused`] if a record of this task was started with
    /// the same key; [`Admission::Locked`] with the running task's id if a
    /// running task holds the lock; [`Admission::Full`] if there is no
    /// room; and [`Admission::Started`] otherwise.
    fn try_start(
        &self,
        record: TaskRecord,
        spec: &TaskSpec,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send;

    /// Ends the running task `task_id` with `outcome` at `end_time` (see
    /// [`TaskRecord::complete`]) and releases its lock; its record is kept
    /// until it expires.
    fn complete(
        &self,
        task_id: TaskId,
        outcome: TaskOutcome,
        end_time: SystemTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The record of `task_id`, or `None` if there is none (never was, or
    /// expired, or evicted).
    fn get(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Option<TaskRecord>, StoreError>> + Send;

    /// Removes the records whose retention time is over; returns how many.
    /// Stores that expire records on their own may just return `Ok(0)`.
    fn purge_expired(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// How long a running task's record and lock stay valid unless
    /// [renewed](Self::renew): `Some` for a store shared by several
    /// servers, so that a server that crashes (or loses the store) while
    /// running a task leaves no lock behind for longer than this.
    ///
    /// While a task of a store with a lease may run — from its start until
    /// its end is recorded — the registry renews the lease every third of
    /// it.
    ///
    /// `None`, the default: records and locks never lapse, and nothing is
    /// renewed. Right for a store that lives and dies with its process,
    /// like the [`MemoryStore`](super::MemoryStore).
    fn lease(&self) -> Option<Duration> {
        None
    }

    /// Extends the lease of the running task `task_id` to
    /// [`lease`](Self::lease) from now. Returns `false` if the task is not
    /// running any more in the store: it ended, or it was given up when its
    /// lease lapsed (another start may hold its lock now).
    ///
    /// The default, for stores without a lease, does nothing and returns
    /// `true`.
    fn renew(&self, task_id: TaskId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = task_id;
        ready(Ok(true))
    }
}

/// The answer of [`TaskStore::try_start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// The task was registered (and its lock, if any, taken, and its
    /// idempotency key kept).
    Started,
    /// A record of this task was started with the same idempotency key
    /// and the same arguments: this one is its id (it may be running or
    /// ended). Nothing was registered.
    Repeated(TaskId),
    /// A record of this task was started with the same idempotency key
    /// and other arguments: this one is its id. Nothing was registered.
    KeyReused(TaskId),
    /// A running task holds the lock: this one is its id. Nothing was
    /// registered.
    Locked(TaskId),
    /// No room: every record is a running task's. Nothing was registered.
    Full,
}
