//! [`Job`]: a serde type with an async handler, and [`JobId`].

use std::fmt;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The error a job's handler returns; the job is then retried up to
/// [`Job::MAX_ATTEMPTS`] times in all.
pub type JobFailure = Box<dyn std::error::Error + Send + Sync>;

/// A durable job: its arguments are the serde value itself, stored as JSON
/// in the job table; [`run`](Job::run) is its handler.
///
/// A job may run **more than once** (delivery is at least once): a worker
/// that dies mid-job, or a job still running when the cleanup period of a
/// shutdown begins, is run again by another worker. Write handlers so that a
/// second run does no harm (an idempotency key, an upsert, "if not already
/// sent").
///
/// # Example
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tower_background::durable::{Job, JobFailure};
///
/// #[derive(Serialize, Deserialize)]
/// struct Add {
///     a: i64,
///     b: i64,
/// }
///
/// impl Job for Add {
///     const NAME: &'static str = "add";
///     type Output = i64;
///
///     async fn run(self) -> Result<i64, JobFailure> {
///         self.a.checked_add(self.b).ok_or_else(|| "overflow".into())
///     }
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The job's queue name: stable across deploys and unique among your
    /// jobs, since workers find their jobs by it. Renaming it strands the
    /// jobs already queued under the old name.
    const NAME: &'static str;

    /// How many times the job is tried in all before it is left failed:
    /// each run that returns `Err` or panics is one attempt.
    ///
    /// A job given back to the queue because its worker died or was
    /// stopped by a shutdown has its count of attempts raised too (apalis
    /// counts the give-back, whether the job had started or was only
    /// claimed), but it runs again whatever that count says: the limit
    /// ends retries after failures, not deliveries after crashes. A job
    /// that kills its worker process each time it runs is delivered again
    /// each time; find it by its attempts in the job table.
    const MAX_ATTEMPTS: u32 = 5;

    /// What a finished job returns; stored with the job as JSON.
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Runs the job. An `Err` (or a panic) fails this attempt.
    fn run(self) -> impl Future<Output = Result<Self::Output, JobFailure>> + Send;

    /// A key that makes the job unique among the jobs of its type that are
    /// waiting or running (`Some(format!("invoice:{}", self.invoice_id))`):
    /// pushing a job whose key is held stores nothing and returns the
    /// holder's id, atomically across every process sharing the queue (the
    /// job table's unique index decides). A holder whose attempt failed
    /// with attempts left is waiting for its retry, and keeps the key; once
    /// it is done, has failed its last attempt or was killed, the key is
    /// free again. `None` (the default): every push stores a job.
    ///
    /// A key is a value, never code: not empty, at most
    /// [`MAX_UNIQUE_KEY_LEN`](super::MAX_UNIQUE_KEY_LEN) bytes, no control
    /// characters; anything else is a [`JobError::InvalidUniqueKey`](super::JobError::InvalidUniqueKey)
    /// at the push. [`JobQueue::enqueue`](super::JobQueue::enqueue) returns
    /// the new job's id before the push, so for a unique job it may name a
    /// job that was never stored (counted in
    /// [`JobStats::deduplicated`](super::JobStats::deduplicated)): use
    /// [`push`](super::JobQueue::push) when the id matters.
    fn unique_key(&self) -> Option<String> {
        None
    }
}

/// A durable job's id: a ULID, given when the job is enqueued and kept by
/// the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub(crate) ulid::Ulid);

impl JobId {
    pub(crate) fn new() -> Self {
        Self(ulid::Ulid::generate())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for JobId {
    type Err = ulid::DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}
