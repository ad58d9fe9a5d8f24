//! [`JobQueue::enqueue`]: a durable job from a handler, pushed once the
//! response has been sent, as one of the request's background tasks.

use std::cell::Cell;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::encoded::EncodedJob;
use super::error::JobError;
use super::insert::Inserted;
use super::job::{Job, JobId};
use super::queue::JobQueue;
use crate::handle::{BackgroundTasks, ShutdownProbe};
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
    /// The job is encoded and checked here, so a job that cannot be encoded
    /// ([`JobError::Encode`]), does not decode back
    /// ([`JobError::Undecodable`]), is over
    /// [`max_job_bytes`](Self::max_job_bytes) ([`JobError::TooLarge`], a
    /// `413`) or has a malformed [unique key](super::Job::unique_key)
    /// ([`JobError::InvalidUniqueKey`]) is an error now; so is a supervisor
    /// that does not accept the push (shutting down, queue full:
    /// [`JobError::NotAccepted`]), and a queue whose deferred jobs waiting
    /// for the database already number
    /// [`max_pending`](Self::max_pending) ([`JobError::Full`], a `503` with
    /// `Retry-After`). `enqueue` never waits for room: a handler that did
    /// would hold its response back, which is what `enqueue` is for
    /// avoiding.
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
    /// The push is one of the request's background tasks and shares their
    /// fate. If they are discarded before they start (the handler produced
    /// no response, as when hyper drops it because its client went away,
    /// or the layer's [`OnDisconnect::Skip`](crate::OnDisconnect::Skip) or
    /// [`OnServerError::Skip`](crate::OnServerError::Skip) applies), the
    /// job is never pushed: it is counted in
    /// [`JobStats::discarded`](super::JobStats::discarded) and logged at
    /// `WARN` with its JSON. If shutdown has begun when the response ends,
    /// the push is refused with the rest, counted as abandoned and logged
    /// at `ERROR`.
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
        let job = self.encode(&job)?;
        let id = job.id;
        self.defer(tasks, vec![job])?;
        Ok(id)
    }

    /// [`enqueue`](Self::enqueue) for many jobs at once (an import, a
    /// fan-out): encoded here (the first that cannot be is the error, and
    /// nothing is queued), pushed after the response together, in one
    /// transaction ([`push_all`](Self::push_all)), and retried together.
    /// Returns their ids in order.
    ///
    /// The batch waits in memory as one: it counts as its number of jobs
    /// against [`max_pending`](Self::max_pending), so it is refused with
    /// [`JobError::Full`] (a `503`) if that many would not fit now, and
    /// with [`JobError::BatchTooLarge`] (a `413`) if more jobs than
    /// `max_pending` could never fit.
    pub fn enqueue_all<J: Job>(
        &self,
        tasks: &BackgroundTasks,
        jobs: impl IntoIterator<Item = J>,
    ) -> Result<Vec<JobId>, JobError> {
        let jobs = jobs
            .into_iter()
            .map(|job| self.encode(&job))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = jobs.iter().map(|job| job.id).collect();
        if !jobs.is_empty() {
            self.defer(tasks, jobs)?;
        }
        Ok(ids)
    }

    /// Adds the push of `jobs` to `tasks`.
    fn defer(&self, tasks: &BackgroundTasks, jobs: Vec<EncodedJob>) -> Result<(), JobError> {
        let max_pending = self.counters.max_pending();
        if jobs.len() > max_pending {
            return Err(JobError::BatchTooLarge {
                jobs: jobs.len(),
                max_pending,
            });
        }
        let n = jobs.len() as u64;
        let cancel = tasks.cancellation_token();
        // Counted first: a handle used after its response has ended starts
        // the push at once, and `pushed_deferred` must never pass `deferred`.
        if !self.counters.try_defer(n) {
            return Err(JobError::Full {
                max_pending: self.counters.max_pending(),
            });
        }
        let deferred = Deferred {
            queue: self.clone(),
            jobs,
            shutdown: tasks.shutdown_probe(),
            progress: Progress::Queued,
        };
        let offered = {
            let _offering = Offering::begin();
            tasks.try_add(push_until_stored(deferred, cancel))
        };
        match offered {
            Ok(()) => Ok(()),
            Err(error) => {
                self.counters.not_deferred(n);
                Err(JobError::NotAccepted(error))
            }
        }
    }
}

thread_local! {
    /// Set while [`JobQueue::defer`] offers a push to a request's tasks.
    /// `try_add` drops a task it refuses before it returns, and no other
    /// task: a push dropped meanwhile was refused, and `defer`, told so by
    /// the error, answers for its jobs (they were never accepted).
    static OFFERING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as [offering](OFFERING) a push while it lives.
struct Offering;

impl Offering {
    fn begin() -> Self {
        OFFERING.set(true);
        Self
    }
}

impl Drop for Offering {
    fn drop(&mut self) {
        OFFERING.set(false);
    }
}

/// The deferred push: tries until the database has the jobs. If the task
/// ends any other way, or never starts, [`Deferred`] counts and logs them.
async fn push_until_stored(
    mut deferred: Deferred,
    cancel: CancellationToken,
) -> Result<(), JobError> {
    deferred.progress = Progress::Pushing;
    let queue = &deferred.queue;
    let jobs = &deferred.jobs;
    let backoff = Retry::exponential(u32::MAX)
        .base_delay(FIRST_PUSH_DELAY)
        .max_delay(MAX_PUSH_DELAY);
    let mut attempt = 1;
    loop {
        let mut stored = match jobs.as_slice() {
            [job] => queue
                .push_deferred(job)
                .await
                .map(|inserted| vec![inserted]),
            // Boxed, as is the check below: a transaction's future is
            // large, and every deferred push's task would carry it (and
            // copy it whenever the task moves), though most push one job
            // through the group commit and never fail.
            jobs => Box::pin(queue.push_encoded_all(jobs)).await,
        };
        let may_have_committed = stored.as_ref().is_err_and(JobError::may_have_committed);
        if may_have_committed && Box::pin(committed_after_all(queue, jobs)).await {
            // The commit went through but its answer was lost (the
            // connection broke after it): pushing again would fail on the
            // jobs' own ids forever. A push that got no connection sent
            // nothing, and is not checked: the check would wait for a
            // connection from the same exhausted pool, a second time. Nor
            // is one that gave up waiting for a lock: it was rolled back,
            // and the check would wait behind the same lock.
            stored = Ok(jobs.iter().map(|job| Inserted::New(job.id)).collect());
        }
        let error = match stored {
            Ok(inserted) => {
                deferred.progress = Progress::Stored;
                for inserted in inserted {
                    queue.counters.pushed_deferred();
                    if matches!(inserted, Inserted::Existing(_)) {
                        queue.counters.deduplicated();
                    }
                }
                queue.announcer.announce();
                return Ok(());
            }
            Err(error) => error,
        };
        queue.counters.push_retry();
        let delay = backoff.delay_after(attempt);
        tracing::warn!(
            job.id = %jobs[0].id,
            job.name = jobs[0].queue,
            jobs = jobs.len(),
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

/// Whether a push that failed was committed all the same. The jobs of one
/// push are stored in one transaction, so one plain job found stored means
/// they all are (a unique job's own id is not stored when its key is held,
/// and pushing it again is harmless anyway).
async fn committed_after_all(queue: &JobQueue, jobs: &[EncodedJob]) -> bool {
    let Some(plain) = jobs.iter().find(|job| job.unique_key.is_none()) else {
        return false;
    };
    matches!(queue.job_type(plain.id).await, Ok(Some(_)))
}

/// The jobs of one deferred push, from `enqueue` until the database has
/// them. Dropped before that, it counts and logs them by why they were
/// never stored, so that none goes silently.
struct Deferred {
    queue: JobQueue,
    jobs: Vec<EncodedJob>,
    shutdown: ShutdownProbe,
    progress: Progress,
}

/// How far a [`Deferred`] push got.
enum Progress {
    /// Among its request's tasks, not started.
    Queued,
    /// Started: trying until the database has the jobs.
    Pushing,
    Stored,
}

impl Drop for Deferred {
    fn drop(&mut self) {
        let started = match self.progress {
            Progress::Stored => return,
            Progress::Queued if OFFERING.get() => return,
            Progress::Queued => false,
            Progress::Pushing => true,
        };
        let abandoned = if started {
            Some("shutdown ended before the database took it")
        } else if self.shutdown.shutdown_begun() {
            Some("shutdown came before its push started")
        } else {
            None
        };
        let counters = &self.queue.counters;
        for job in &self.jobs {
            let args = String::from_utf8_lossy(&job.args);
            if let Some(reason) = abandoned {
                counters.abandoned();
                tracing::error!(
                    job.id = %job.id,
                    job.name = job.queue,
                    job.args = %args,
                    reason,
                    "durable job: job abandoned",
                );
            } else {
                counters.discarded();
                tracing::warn!(
                    job.id = %job.id,
                    job.name = job.queue,
                    job.args = %args,
                    "durable job: its request's background tasks were discarded \
                     (no response, or a skip policy); job not pushed",
                );
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    /// Every deferred push is a task of its own, boxed when it is added and
    /// copied whole each time it moves: it must not carry the futures of
    /// the paths few pushes take (a transaction of several jobs, the check
    /// after a failed commit), which are several times its size.
    #[tokio::test]
    async fn a_deferred_push_carries_only_the_group_commit_path() {
        let dir = tempfile::tempdir().unwrap();
        let queue = JobQueue::sqlite(dir.path().join("jobs.db")).await.unwrap();
        let supervisor = crate::Supervisor::new();
        let deferred = Deferred {
            queue: queue.clone(),
            jobs: Vec::new(),
            shutdown: supervisor.tasks().shutdown_probe(),
            progress: Progress::Queued,
        };
        let push = push_until_stored(deferred, CancellationToken::new());
        let jobs: &[EncodedJob] = &[];
        let several = std::mem::size_of_val(&queue.push_encoded_all(jobs));
        assert!(
            std::mem::size_of_val(&push) < several / 2,
            "a deferred push is {} bytes; a push of several jobs alone is {several}",
            std::mem::size_of_val(&push),
        );
    }
}
