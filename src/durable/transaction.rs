//! Pushing a job inside the application's own database transaction:
//! [`JobQueue::push_in`].

use super::error::JobError;
use super::insert::{Inserted, JobDatabase};
use super::job::{Job, JobId};
use super::queue::JobQueue;

impl JobQueue {
    /// Pushes `job` inside the caller's transaction `tx`: if `tx` commits,
    /// the job exists and will run; if it rolls back (or is dropped), the
    /// job never existed. This is how a handler writes its own rows and the
    /// job that follows them up atomically, with no window in which one
    /// exists without the other.
    ///
    /// `tx` must be on the queue's database (the same SQLite file, or the
    /// same PostgreSQL database): a transaction on the other engine is
    /// refused with [`JobError::EngineMismatch`]; one on another database
    /// of the same engine cannot be told apart, and its jobs would wait
    /// there for workers that never come. A [unique](Job::unique_key) job
    /// whose key is held returns the holder's id and stores nothing. The
    /// job is counted in [`JobStats::pushed`](super::JobStats::pushed) when
    /// this returns, even if `tx` later rolls back. On PostgreSQL, workers
    /// listening for new jobs are told at the commit; on SQLite they find
    /// it at their next poll.
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # async fn example(pool: sqlx::SqlitePool, queue: tower_background::durable::JobQueue)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct WelcomeEmail { to: String }
    /// # impl tower_background::durable::Job for WelcomeEmail {
    /// #     const NAME: &'static str = "welcome-email";
    /// #     type Output = ();
    /// #     async fn run(self) -> Result<(), tower_background::durable::JobFailure> { Ok(()) }
    /// # }
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO users (email) VALUES (?)")
    ///     .bind("ada@example.com")
    ///     .execute(&mut *tx)
    ///     .await?;
    /// queue.push_in(&mut tx, &WelcomeEmail { to: "ada@example.com".into() }).await?;
    /// tx.commit().await?; // the user and the e-mail job, or neither
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropped before it returns, the job may or may not be in `tx`: roll
    /// `tx` back (drop it) rather than commit it.
    pub async fn push_in<DB, J>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        job: &J,
    ) -> Result<JobId, JobError>
    where
        DB: JobDatabase,
        J: Job,
    {
        if DB::ENGINE != self.engine() {
            return Err(JobError::EngineMismatch {
                queue: self.engine(),
                transaction: DB::ENGINE,
            });
        }
        let job = self.encode(job)?;
        let holder = DB::insert(
            &mut **tx,
            job.queue,
            job.id,
            job.args,
            job.max_attempts,
            job.run_at,
            job.unique_key.as_deref(),
            job.key_held_for_good,
        )
        .await?;
        Ok(self.count(Inserted::of(job.id, holder)))
    }
}
