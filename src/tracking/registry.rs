//! [`TaskRegistry`]: starts tracked tasks on a request's
//! [`BackgroundTasks`] and answers what became of them.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::task::TaskTracker;

use crate::handle::BackgroundTasks;

use super::error::TrackingError;
use super::id::TaskId;
use super::lock::Lock;
use super::memory::MemoryStore;
use super::output::IntoTaskResult;
use super::record::TaskRecord;
use super::recorder::{track, Recorder};
use super::spec::TaskSpec;
use super::store::{Admission, TaskStore};

/// The `Retry-After` of a `503` from a full registry unless told otherwise:
/// 5 seconds.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The tracked tasks of an application: each started on a request's
/// [`BackgroundTasks`] with an id, a status and, once it ends, a result,
/// kept in a [`TaskStore`] ([`MemoryStore`] by default).
///
/// It lives beside the [`Supervisor`](crate::Supervisor): the supervisor
/// runs the tasks (after the response has been sent, counted, drained at
/// shutdown), the registry records them. Cheap to clone (one reference
/// count); clones share the store.
///
/// [`route`](TaskRegistry::route) makes a whole `POST`/`GET` route of an
/// async function; [`start`](TaskRegistry::start) and
/// [`get`](TaskRegistry::get) are the building blocks for routes of your
/// own.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use axum::Router;
/// use tower_background::tracking::{Lock, TaskRegistry};
/// use tower_background::Supervisor;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Hello {
///     name: String,
/// }
///
/// async fn hello_task(args: Hello) -> String {
///     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///     format!("Hello {}!", args.name)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let supervisor = Supervisor::new();
/// let registry = TaskRegistry::new();
/// let app: Router = Router::new()
///     .route("/hello-single", registry.route("hello_task", Lock::Signature, hello_task))
///     .layer(supervisor.layer());
/// # drop(app);
/// # }
/// ```
pub struct TaskRegistry<S = MemoryStore> {
    store: Arc<S>,
    retry_after: Duration,
    /// The ends of tasks dropped unfinished that a slow store is still
    /// writing (see [`flush`](Self::flush)).
    writes: TaskTracker,
}

/// What [`TaskRegistry::start`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Started {
    /// The task is registered and queued on the request; it starts once the
    /// response has been sent. Over HTTP: `202 Accepted`.
    Accepted(TaskRecord),
    /// A running task holds the lock; nothing was started. Over HTTP:
    /// `303 See Other` to the running task.
    Locked {
        /// The running task's id.
        running: TaskId,
        /// The lock that refused the start.
        lock: Lock,
    },
    /// The start's idempotency key, with the same arguments, already
    /// started this task (running or ended); nothing was started. Over
    /// HTTP: `303 See Other` to it.
    Repeated(TaskId),
}

impl Started {
    /// The started task's id, or the running one's, or the one the
    /// idempotency key started.
    pub fn task_id(&self) -> TaskId {
        match self {
            Self::Accepted(record) => record.task_id,
            Self::Locked { running, .. } => *running,
            Self::Repeated(task_id) => *task_id,
        }
    }
}

impl TaskRegistry {
    /// A registry with a [`MemoryStore`] of default TTL and capacity, and
    /// the default `Retry-After`.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a registry.
    pub fn builder() -> TaskRegistryBuilder {
        TaskRegistryBuilder {
            store: MemoryStore::new(),
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

impl<S: TaskStore> TaskRegistry<S> {
    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Waits until the store has the end of every task that ended without
    /// its future running to completion: aborted at the end of a shutdown's
    /// grace period, or discarded with its request. Such an end is written
    /// from the task's drop, and a store that does not answer at once (the
    /// `SqlStore`) is written on a tokio task of its own, which dies with
    /// the runtime.
    ///
    /// Call it after [`Supervisor::shutdown`](crate::Supervisor::shutdown)
    /// and before the runtime ends, so that an aborted task's record says
    /// `cancelled` and its lock is free, rather than `running` (and
    /// locked) until its lease lapses. With the
    /// [`MemoryStore`](super::MemoryStore), which answers at once, it
    /// returns at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the writes go on without it.
    pub async fn flush(&self) {
        self.writes.close();
        self.writes.wait().await;
        self.writes.reopen();
    }

    /// Registers a task described by `spec` and queues `task` on `tasks`,
    /// unless a running task holds its lock, or the spec's
    /// [idempotency key](TaskSpec::with_idempotency_key) already started
    /// one.
    ///
    /// Checking the key, taking the lock and registering are one atomic
    /// step of the store: of concurrent starts with the same lock, exactly
    /// one is [`Started::Accepted`], the others are [`Started::Locked`]
    /// with its id; of starts with the same key and arguments, exactly one
    /// is accepted and the others are [`Started::Repeated`] with its id,
    /// for as long as its record is kept.
    ///
    /// An accepted task is `running` from now on, and starts when the
    /// response to this request has been sent, like any task added to
    /// `tasks`. Whatever then happens to it is recorded and releases its
    /// lock: its value (`finished`), its error or panic (`failed`, and the
    /// supervisor counts it as failed or panicked), or its being dropped
    /// (`cancelled`: aborted at shutdown, refused because shutdown had
    /// begun, or discarded with the request's tasks).
    ///
    /// With a store that has a [lease](TaskStore::lease) (a database shared
    /// by several servers), the lease is renewed every third of it from now
    /// until the outcome is recorded. If this process dies, the lock lapses
    /// with the lease and the record is ended as `failed` (`SqlStore`, with
    /// the features `sqlite` or `postgres`, works this way).
    ///
    /// # Errors
    ///
    /// [`TrackingError::IdempotencyKeyReused`] when the key started a task
    /// with other arguments, [`TrackingError::Full`] when the store has no
    /// room (every record is a running task's), [`TrackingError::Store`]
    /// when it fails. `task` is then dropped unstarted.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops `task` unstarted; if the store had
    /// already registered it, it is recorded as `cancelled` and its lock
    /// released.
    ///
    /// # Panics
    ///
    /// Only if the operating system cannot provide the random bytes of the
    /// task's id (see [`TaskId::new`]).
    ///
    /// # Example
    ///
    /// A `POST` handler of your own, with the lock per arguments and the
    /// client's `Idempotency-Key`, if it sent one:
    ///
    /// ```
    /// use axum::extract::{OriginalUri, Query, State};
    /// use axum::response::Response;
    /// use tower_background::tracking::{
    ///     IdempotencyKey, Lock, TaskRegistry, TaskSpec, TrackingError,
    /// };
    /// use tower_background::BackgroundTasks;
    ///
    /// #[derive(serde::Deserialize, serde::Serialize)]
    /// struct Report {
    ///     month: u8,
    /// }
    ///
    /// async fn start_report(
    ///     State(registry): State<TaskRegistry>,
    ///     tasks: BackgroundTasks,
    ///     OriginalUri(uri): OriginalUri,
    ///     key: Option<IdempotencyKey>, // a malformed one is a `400`
    ///     Query(args): Query<Report>,
    /// ) -> Result<Response, TrackingError> {
    ///     let mut spec = TaskSpec::new("monthly_report", Lock::Args, &args)?;
    ///     if let Some(key) = key {
    ///         spec = spec.with_idempotency_key(key, &args)?;
    ///     }
    ///     let started = registry.start(&tasks, &spec, render(args)).await?;
    ///     Ok(started.into_response_at(uri.path()))
    /// }
    ///
    /// async fn render(args: Report) -> Result<String, std::io::Error> {
    ///     Ok(format!("report for month {}", args.month))
    /// }
    /// # let _ = axum::routing::post(start_report).with_state::<()>(TaskRegistry::new());
    /// ```
    pub async fn start<F>(
        &self,
        tasks: &BackgroundTasks,
        spec: &TaskSpec,
        task: F,
    ) -> Result<Started, TrackingError>
    where
        F: Future + Send + 'static,
        F::Output: IntoTaskResult,
    {
        let record = TaskRecord::running(TaskId::new(), spec, SystemTime::now());
        let task_id = record.task_id;
        // Armed before the store is asked, so that a start abandoned while
        // the store works still ends what it may have registered.
        let mut recorder = Recorder::new(Arc::clone(&self.store), task_id, self.writes.clone());
        let admission = self.store.try_start(record.clone(), spec).await?;
        match admission {
            // Not accepted (shutting down, queue full): the dropped task's
            // recorder marks the record cancelled and releases the lock.
            Admission::Started => {
                recorder.keep_leased();
                match tasks.try_add(track(recorder, task)) {
                    Ok(()) => Ok(Started::Accepted(record)),
                    Err(error) => Err(TrackingError::NotAccepted(error)),
                }
            }
            Admission::Repeated(first) => {
                recorder.disarm();
                Ok(Started::Repeated(first))
            }
            Admission::KeyReused(_) => {
                recorder.disarm();
                Err(TrackingError::IdempotencyKeyReused)
            }
            Admission::Locked(running) => {
                recorder.disarm();
                Ok(Started::Locked {
                    running,
                    lock: spec.lock(),
                })
            }
            Admission::Full => {
                recorder.disarm();
                Err(TrackingError::Full {
                    retry_after: self.retry_after,
                })
            }
        }
    }

    /// The record of `task_id`.
    ///
    /// # Errors
    ///
    /// [`TrackingError::TaskNotFound`] when there is none (it never existed,
    /// expired or was evicted), [`TrackingError::Store`] when the store
    /// fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Example
    ///
    /// A `GET` handler of your own; [`TaskIdQuery`](super::TaskIdQuery)
    /// reads `?task_id=` and answers `400` for a missing or malformed one:
    ///
    /// ```
    /// use axum::extract::State;
    /// use tower_background::tracking::{TaskIdQuery, TaskRecord, TaskRegistry, TrackingError};
    ///
    /// async fn status(
    ///     State(registry): State<TaskRegistry>,
    ///     TaskIdQuery(task_id): TaskIdQuery,
    /// ) -> Result<TaskRecord, TrackingError> {
    ///     registry.get(task_id).await // `TaskRecord` is a `200` with its JSON
    /// }
    /// # let _ = axum::routing::get(status).with_state::<()>(TaskRegistry::new());
    /// ```
    pub async fn get(&self, task_id: TaskId) -> Result<TaskRecord, TrackingError> {
        self.store
            .get(task_id)
            .await?
            .ok_or(TrackingError::TaskNotFound)
    }

    /// Removes the records whose retention time is over; returns how many.
    /// The [`MemoryStore`] also does this on every call, so this is only
    /// needed to free memory while the registry is idle.
    ///
    /// # Errors
    ///
    /// [`TrackingError::Store`] when the store fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe with the [`MemoryStore`], whose future is done at its
    /// first poll; for other stores, as their `purge_expired`.
    pub async fn purge_expired(&self) -> Result<usize, TrackingError> {
        Ok(self.store.purge_expired().await?)
    }
}

impl Default for TaskRegistry {
    /// Same as [`TaskRegistry::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Clone for TaskRegistry<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            retry_after: self.retry_after,
            writes: self.writes.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for TaskRegistry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRegistry")
            .field("store", &self.store)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// Settings for a [`TaskRegistry`], from [`TaskRegistry::builder`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_background::tracking::{MemoryStore, TaskRegistry};
///
/// let registry = TaskRegistry::builder()
///     .store(MemoryStore::builder().capacity(100).build())
///     .retry_after(Duration::from_secs(30))
///     .build();
/// # drop(registry);
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct TaskRegistryBuilder<S = MemoryStore> {
    store: S,
    retry_after: Duration,
}

impl<S: TaskStore> TaskRegistryBuilder<S> {
    /// Where records and locks are kept (default: a [`MemoryStore`] with
    /// its default TTL and capacity).
    pub fn store<T: TaskStore>(self, store: T) -> TaskRegistryBuilder<T> {
        TaskRegistryBuilder {
            store,
            retry_after: self.retry_after,
        }
    }

    /// The `Retry-After` sent with a `503` when the store is full of
    /// running tasks (default [`DEFAULT_RETRY_AFTER`]); sent in whole
    /// seconds, rounded up, at least 1.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The registry.
    pub fn build(self) -> TaskRegistry<S> {
        TaskRegistry {
            store: Arc::new(self.store),
            retry_after: self.retry_after,
            writes: TaskTracker::new(),
        }
    }
}
