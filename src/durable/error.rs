//! [`JobError`]: why a durable-job operation failed.

use std::fmt;
use std::time::Duration;

use crate::error::AddError;

/// Why enqueuing, connecting or looking up a durable job failed.
///
/// With the `axum` feature it is a response: `503 Service Unavailable` with
/// `Retry-After` when the database or the task set may take the job later,
/// `500` for a server-side mistake, each with a JSON body
/// `{"error": code, "message": text}`.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// The job could not be turned into JSON (or its output read back).
    Encode(serde_json::Error),
    /// The job's JSON does not decode back into the job (its `Serialize`
    /// and `Deserialize` disagree, e.g. a field skipped when serialized but
    /// required when deserialized): its worker could never run it, so it
    /// is refused where it is pushed or enqueued.
    Undecodable(serde_json::Error),
    /// The database refused or could not be reached.
    Database(Box<dyn std::error::Error + Send + Sync>),
    /// The task set did not accept the deferred push (shutting down, full).
    NotAccepted(AddError),
    /// [`JobQueue::enqueue`](super::JobQueue::enqueue) was refused: this
    /// many deferred jobs already wait in memory for the database
    /// ([`JobQueue::max_pending`](super::JobQueue::max_pending)).
    Full {
        /// The limit that was reached.
        max_pending: usize,
    },
    /// [`JobQueue::enqueue_all`](super::JobQueue::enqueue_all) was given
    /// more jobs than may ever wait in memory at once
    /// ([`JobQueue::max_pending`](super::JobQueue::max_pending)), so no
    /// retry could succeed. With the `axum` feature it is a
    /// `413 Payload Too Large`. Push such a batch with
    /// [`push_all`](super::JobQueue::push_all), or in smaller batches.
    BatchTooLarge {
        /// The jobs in the batch.
        jobs: usize,
        /// The queue's limit.
        max_pending: usize,
    },
    /// A `DATABASE_URL` (or path) names no engine this build supports.
    UnsupportedUrl(String),
    /// The job ran and failed on its last attempt.
    Failed(String),
    /// The job's JSON is larger than the queue takes
    /// ([`JobQueue::max_job_bytes`](super::JobQueue::max_job_bytes)). With
    /// the `axum` feature it is a `413 Payload Too Large`: the usual cause
    /// is data the request carried.
    TooLarge {
        /// The job's size, in bytes of JSON.
        bytes: usize,
        /// The queue's limit.
        max: usize,
    },
    /// A job's [`unique_key`](super::Job::unique_key) is empty, longer than
    /// [`MAX_UNIQUE_KEY_LEN`](super::MAX_UNIQUE_KEY_LEN) bytes, or holds a
    /// control character: the key (cut and escaped) and what is wrong.
    InvalidUniqueKey(String),
    /// A delay or a schedule that names no time the job could run at.
    InvalidSchedule(String),
    /// [`JobQueue::push_in`](super::JobQueue::push_in) was given a
    /// transaction on another engine than the queue's.
    EngineMismatch {
        /// The queue's engine (`"sqlite"` or `"postgres"`).
        queue: &'static str,
        /// The transaction's engine.
        transaction: &'static str,
    },
}

impl JobError {
    pub(crate) fn database(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Database(Box::new(error))
    }

    /// A [`Database`](Self::Database) error met before any statement was
    /// sent: the pool gave no connection in time.
    pub(crate) fn no_connection(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::nothing_committed(NothingCommitted::NoConnection, error)
    }

    /// A [`Database`](Self::Database) error known to have committed
    /// nothing, for the reason `why`.
    pub(crate) fn nothing_committed(
        why: NothingCommitted,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Database(Box::new(Uncommitted {
            why,
            cause: Box::new(error),
        }))
    }

    /// Whether the write that failed may have been committed all the same,
    /// its answer lost: any database error but one met before a statement
    /// was sent or when a statement gave up waiting for a lock. (Other
    /// errors the database answers with are checked too: a push retried
    /// after a commit whose answer was lost fails on its own job's id.)
    pub(crate) fn may_have_committed(&self) -> bool {
        matches!(self, Self::Database(_)) && self.nothing_committed_because().is_none()
    }

    /// Why nothing of the write that failed was committed, when that is
    /// certain.
    pub(crate) fn nothing_committed_because(&self) -> Option<NothingCommitted> {
        let Self::Database(cause) = self else {
            return None;
        };
        if let Some(uncommitted) = cause.downcast_ref::<Uncommitted>() {
            return Some(uncommitted.why);
        }
        match sqlx_error(&**cause) {
            Some(sqlx::Error::Database(error)) if gave_up_on_a_lock(&**error) => {
                Some(NothingCommitted::LockWait)
            }
            _ => None,
        }
    }

    /// A stable, machine-readable code (the `error` field of the JSON body).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Encode(_) => "job-encoding",
            Self::Undecodable(_) => "job-undecodable",
            Self::Database(_) => "job-database-unavailable",
            Self::NotAccepted(error) => error.code(),
            Self::Full { .. } => "job-queue-full",
            Self::BatchTooLarge { .. } => "job-batch-too-large",
            Self::UnsupportedUrl(_) => "unsupported-database-url",
            Self::Failed(_) => "job-failed",
            Self::EngineMismatch { .. } => "job-engine-mismatch",
            Self::TooLarge { .. } => "job-too-large",
            Self::InvalidUniqueKey(_) => "invalid-unique-key",
            Self::InvalidSchedule(_) => "invalid-schedule",
        }
    }

    /// How long a client should wait before trying again, if trying again
    /// may help.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Database(_) => Some(Duration::from_secs(2)),
            Self::Full { .. } => Some(Duration::from_secs(1)),
            Self::NotAccepted(error) => error.retry_after(),
            _ => None,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Encode(error) => write!(f, "the job could not be encoded as JSON: {error}"),
            Self::Undecodable(error) => write!(
                f,
                "the job's JSON does not decode back into the job, so no worker could run it: {error}"
            ),
            Self::Database(error) => write!(f, "the job database is unavailable: {error}"),
            Self::NotAccepted(error) => write!(f, "the job was not accepted: {error}"),
            Self::Full { max_pending } => write!(
                f,
                "{max_pending} deferred jobs already wait for the database; try again later"
            ),
            Self::BatchTooLarge { jobs, max_pending } => write!(
                f,
                "{jobs} jobs in one batch, over the {max_pending} deferred jobs that may wait \
                 for the database (JobQueue::max_pending); push them with push_all, or in \
                 smaller batches"
            ),
            Self::UnsupportedUrl(url) => write!(
                f,
                "{url:?} is not a database this build supports (features `sqlite`, `postgres`)"
            ),
            Self::Failed(message) => write!(f, "the job failed: {message}"),
            Self::TooLarge { bytes, max } => write!(
                f,
                "the job is {bytes} bytes of JSON, over the queue's limit of {max} \
                 (JobQueue::max_job_bytes)"
            ),
            Self::InvalidUniqueKey(problem) => write!(f, "the job's unique key {problem}"),
            Self::InvalidSchedule(problem) => write!(f, "invalid schedule: {problem}"),
            Self::EngineMismatch { queue, transaction } => write!(
                f,
                "a job of a {queue} queue cannot be pushed in a {transaction} transaction"
            ),
        }
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Encode(error) | Self::Undecodable(error) => Some(error),
            Self::Database(error) => Some(&**error),
            Self::NotAccepted(error) => Some(error),
            _ => None,
        }
    }
}

/// Why a failed write certainly committed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NothingCommitted {
    /// No connection came within the pool's acquire timeout: no statement
    /// was sent.
    NoConnection,
    /// A statement gave up waiting for a lock (PostgreSQL's
    /// `lock_timeout`, SQLite's busy timeout): the transaction was rolled
    /// back.
    LockWait,
}

/// The cause of a [`JobError::Database`] known to have committed nothing,
/// and why. It shows as the error it wraps.
#[derive(Debug)]
struct Uncommitted {
    why: NothingCommitted,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for Uncommitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cause.fmt(f)
    }
}

impl std::error::Error for Uncommitted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.source()
    }
}

/// Whether the database failed a statement because it waited too long for
/// a lock: PostgreSQL's `lock_not_available` (`lock_timeout`), SQLite's
/// `SQLITE_BUSY` or `SQLITE_LOCKED` (any extended code).
fn gave_up_on_a_lock(error: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = error.code() else {
        return false;
    };
    code == "55P03"
        || code
            .parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

/// The sqlx error `cause` is, or that apalis's error wraps.
fn sqlx_error<'e>(
    cause: &'e (dyn std::error::Error + Send + Sync + 'static),
) -> Option<&'e sqlx::Error> {
    if let Some(error) = cause.downcast_ref::<sqlx::Error>() {
        return Some(error);
    }
    #[cfg(feature = "postgres")]
    if let Some(apalis_postgres::Error::Database(error)) = cause.downcast_ref() {
        return Some(error);
    }
    #[cfg(feature = "sqlite")]
    if let Some(apalis_sqlite::Error::Database(error)) = cause.downcast_ref() {
        return Some(error);
    }
    None
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for JobError {
    fn into_response(self) -> axum_core::response::Response {
        let status = match self {
            Self::TooLarge { .. } | Self::BatchTooLarge { .. } => {
                Some(http::StatusCode::PAYLOAD_TOO_LARGE)
            }
            _ => None,
        };
        crate::error::error_response_as(status, self.code(), &self.to_string(), self.retry_after())
            .map(axum_core::body::Body::from)
    }
}
