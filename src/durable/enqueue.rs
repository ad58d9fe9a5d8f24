//! [`JobQueue::enqueue`]: a durable job from a handler, pushed once the
//! response has been sent, as one of the request's background tasks.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::encoded::EncodedJob;
use super::error::JobError;
use super::insert::Inserted;
use super::job::{Job, JobId};
use super::queue::JobQueue;
use crate::handle::BackgroundTasks;
use crate::retry::Retry;

/// The first wait before pushing a deferred job again; it doubles (with
/// full jitter) up to [`MAX_PUSH_DELAY`].
const FIRST_PUSH_DELAY: Duration = Duration::from_millis(50);
/// The longest wait between two pushes of a deferred job.
const MAX_PUSH_DELAY: Duration = Duration::from_secs(5);

impl JobQueue {
    /// Queues durable job `job` on `tasks`, the request's handle, to be
    /// pushed to this queue once the response body has ended, like any
    /// task: the response never waits for the database. Returns the job's
    /// id at once.
    ///
    /// The job is encoded here, so a job that cannot be encoded is an error
    /// now ([`JobError::Encode`]); so is a supervisor that does not accept
    /// the push (shutting down, queue full: [`JobError::NotAccepted`]).
    ///
    /// A push that fails (database down, locked, unreachable) is tried again
    /// with exponential backoff (50 ms doubling to 5 s, full jitter) for as
    /// long as the application runs, each retry counted in
    /// [`JobStats::push_retries`](super::JobStats::push_retries) and logged
    /// at `WARN`. Between attempts the push stops when shutdown's cleanup
    /// period begins; an attempt already waiting on the database (at most
    /// [`ACQUIRE_TIMEOUT`](super::ACQUIRE_TIMEOUT)) is stopped at the end of
    /// the grace period. If the job was not stored by then, it is counted
    /// in [`JobStats::abandoned`](super::JobStats::abandoned) and logged at
    /// `ERROR` with its JSON: never dropped silently. Until it is pushed, a
    /// crash of this process loses it; for work that must survive a crash
    /// right after the `2xx`, use [`push`](Self::push), which returns once
    /// the database has the job.
    ///
    /// ```
    /// # #[cfg(all(feature = "sqlite", feature = "axum"))]
    /// # mod example {
    /// use axum::extract::State;
    /// use axum::http::StatusCode;
    /// use serde::{Deserialize, Serialize};
    /// use tower_background::durable::{Job, JobError, JobFailure, JobQueue};
    /// use tower_background::BackgroundTasks;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Welcome {
    ///     email: String,
    /// }
    ///
    /// impl Job for Welcome {
    ///     const NAME: &'static str = "welcome";
    ///     type Output = ();
    ///     async fn run(self) -> Result<(), JobFailure> {
    ///         Ok(()) // send the e-mail
    ///     }
    /// }
    ///
    /// async fn signup(
    ///     State(queue): State<JobQueue>,
    ///     tasks: BackgroundTasks,
    /// ) -> Result<StatusCode, JobError> {
    ///     queue.enqueue(&tasks, Welcome { email: "ada@example.com".into() })?;
    ///     Ok(StatusCode::CREATED)
    /// }
    /// # }
    /// ```
    pub fn enqueue<J: Job>(&self, tasks: &BackgroundTasks, job: J) -> Result<JobId, JobError> {
        let job = EncodedJob::new(&job)?;
        let id = job.id;
        let cancel = tasks.cancellation_token();
        // Counted first: a handle used after its response has ended starts
        // the push at once, and `pushed_deferred` must never pass `deferred`.
        self.counters.deferred();
        match tasks.try_add(push_until_stored(self.clone(), job, cancel)) {
            Ok(()) => Ok(id),
            Err(error) => {
                self.counters.not_deferred();
                Err(JobError::NotAccepted(error))
            }
        }
    }
}

/// The deferred push: tries until the database has the job. A guard counts
/// and logs the job if the task ends any other way (cancelled at the end of
/// the cleanup period, or aborted at the end of grace).
async fn push_until_stored(
    queue: JobQueue,
    job: EncodedJob,
    cancel: CancellationToken,
) -> Result<(), JobError> {
    let mut unstored = Unstored {
        queue: &queue,
        job: &job,
        stored: false,
    };
    let backoff = Retry::exponential(u32::MAX)
        .base_delay(FIRST_PUSH_DELAY)
        .max_delay(MAX_PUSH_DELAY);
    let mut attempt = 1;
    loop {
        let error = match queue.push_encoded(&job).await {
            Ok(inserted) => {
                unstored.stored = true;
                queue.counters.pushed_deferred();
                queue.announcer.announce();
                if matches!(inserted, Inserted::Existing(_)) {
                    queue.counters.deduplicated();
                }
                return Ok(());
            }
            Err(error) => error,
        };
        queue.counters.push_retry();
        let delay = backoff.delay_after(attempt);
        tracing::warn!(
            job.id = %job.id,
            job.name = job.queue,
            attempt,
            retry_in = ?delay,
            %error,
            "durable job: push failed, retrying",
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return Err(error),
        }
        attempt = attempt.saturating_add(1);
    }
}

/// Counts and logs a deferred job whose push ended without storing it.
struct Unstored<'a> {
    queue: &'a JobQueue,
    job: &'a EncodedJob,
    stored: bool,
}

impl Drop for Unstored<'_> {
    fn drop(&mut self) {
        if self.stored {
            return;
        }
        self.queue.counters.abandoned();
        tracing::error!(
            job.id = %self.job.id,
            job.name = self.job.queue,
            job.args = %String::from_utf8_lossy(&self.job.args),
            "durable job: shutdown ended before the database took it; job abandoned",
        );
    }
}
