//! [`Periodic`]: a durable job pushed on a cron schedule, once per tick
//! whatever the number of servers.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;

use super::error::JobError;
use super::job::Job;
use super::queue::JobQueue;
use crate::Supervisor;

/// How long a tick's push is retried while the database refuses it, at
/// most: past it the tick is given up (logged at `ERROR`) and the next
/// one is waited for.
const TICK_RETRY_FOR: Duration = Duration::from_secs(30);
/// The wait between two tries of a tick's push.
const TICK_RETRY_EVERY: Duration = Duration::from_secs(1);

/// A job pushed on a cron schedule (UTC), run by the queue's workers like
/// any other.
///
/// Every server of an application can spawn the same `Periodic`: each tick
/// is pushed under the key `periodic:{NAME}:{tick}` (the tick in Unix
/// seconds), which the job table holds for good, so a tick is stored once
/// whatever the number of servers, and a server that restarts does not
/// push it again. The job is stored to run at its tick. Ticks that fall
/// while no server runs are skipped, not caught up. The loop runs as a
/// [resident](crate::Supervisor::spawn_resident) of the supervisor and
/// stops when its shutdown begins; the jobs themselves are the workers'.
///
/// The expression has seconds: `sec min hour day-of-month month
/// day-of-week [year]`, as the [`cron`](https://docs.rs/cron) crate reads
/// it (`"0 */5 * * * *"`: every five minutes). A malformed one is a
/// [`JobError::InvalidSchedule`] from [`Periodic::new`].
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn example(queue: tower_background::durable::JobQueue) -> Result<(), tower_background::durable::JobError> {
/// use serde::{Deserialize, Serialize};
/// use tower_background::durable::{Job, JobFailure, Periodic, Workers};
/// use tower_background::Supervisor;
///
/// #[derive(Serialize, Deserialize)]
/// struct PurgeSessions;
///
/// impl Job for PurgeSessions {
///     const NAME: &'static str = "purge-sessions";
///     type Output = ();
///     async fn run(self) -> Result<(), JobFailure> {
///         Ok(()) // DELETE FROM sessions WHERE expires_at < now()
///     }
/// }
///
/// let supervisor = Supervisor::new();
/// Workers::new(&queue).register::<PurgeSessions>().spawn(&supervisor);
/// Periodic::new("0 0 * * * *", || PurgeSessions)?.spawn(&queue, &supervisor); // hourly
/// # Ok(())
/// # }
/// ```
pub struct Periodic<J> {
    schedule: cron::Schedule,
    make: Arc<dyn Fn() -> J + Send + Sync>,
}

impl<J> fmt::Debug for Periodic<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Periodic")
            .field("schedule", &self.schedule.source())
            .finish_non_exhaustive()
    }
}

impl<J: Job> Periodic<J> {
    /// A job made by `make` at each tick of the cron `expression`.
    pub fn new(
        expression: &str,
        make: impl Fn() -> J + Send + Sync + 'static,
    ) -> Result<Self, JobError> {
        let schedule = cron::Schedule::from_str(expression).map_err(|error| {
            let shown: String = expression.chars().take(100).collect();
            JobError::InvalidSchedule(format!("{shown:?} is not a cron expression: {error}"))
        })?;
        Ok(Self {
            schedule,
            make: Arc::new(make),
        })
    }

    /// The next `n` ticks after now: what the schedule will do.
    pub fn upcoming(&self, n: usize) -> Vec<SystemTime> {
        self.schedule
            .upcoming(Utc)
            .take(n)
            .map(SystemTime::from)
            .collect()
    }

    /// Pushes a job to `queue` at every tick, for as long as `supervisor`
    /// runs.
    pub fn spawn(self, queue: &JobQueue, supervisor: &Supervisor) {
        let queue = queue.clone();
        supervisor.spawn_resident(move |shutdown| async move {
            for tick in self.schedule.upcoming_owned(Utc) {
                let wait = (tick - Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.closing() => return,
                }
                tokio::select! {
                    () = push_tick(&queue, &*self.make, tick.into()) => {}
                    () = shutdown.closing() => return,
                }
            }
        });
    }
}

/// Pushes the job of `tick`, retrying for a while if the database refuses.
async fn push_tick<J: Job>(
    queue: &JobQueue,
    make: &(dyn Fn() -> J + Send + Sync),
    tick: SystemTime,
) {
    let seconds = tick
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let job = match queue.encode(&make()) {
        Ok(job) => job.at(tick).once(format!("periodic:{}:{seconds}", J::NAME)),
        Err(error) => {
            tracing::error!(job.name = J::NAME, tick = seconds, %error, "periodic job: cannot be encoded");
            return;
        }
    };
    let give_up = tokio::time::Instant::now() + TICK_RETRY_FOR;
    loop {
        match queue.push_encoded(&job).await {
            Ok(inserted) => {
                let id = queue.count(inserted);
                tracing::debug!(job.name = J::NAME, tick = seconds, job.id = %id, "periodic job: pushed");
                return;
            }
            Err(error) if tokio::time::Instant::now() < give_up => {
                tracing::warn!(job.name = J::NAME, tick = seconds, %error, "periodic job: push failed, retrying");
                tokio::time::sleep(TICK_RETRY_EVERY).await;
            }
            Err(error) => {
                tracing::error!(job.name = J::NAME, tick = seconds, %error, "periodic job: tick given up");
                return;
            }
        }
    }
}
