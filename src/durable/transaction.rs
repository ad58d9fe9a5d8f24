//! Pushing a job inside the application's own database transaction
//! ([`JobQueue::push_in`]), and [`JobDatabase`], the engines that can.

use std::future::Future;
use std::pin::Pin;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;

use super::error::JobError;
use super::job::{Job, JobId};
use super::queue::{EncodedJob, JobQueue};

/// A future that pushes one job on a connection.
type Push<'a> = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>>;

/// A database whose transactions can hold a job: [`sqlx::Sqlite`] (feature
/// `sqlite`) and [`sqlx::Postgres`] (feature `postgres`). Sealed.
pub trait JobDatabase: sqlx::Database + sealed::Sealed {
    /// The engine's name, as [`JobQueue::engine`] gives it.
    #[doc(hidden)]
    const ENGINE: &'static str;

    /// Inserts the job into apalis's job table on `connection`.
    #[doc(hidden)]
    fn push<'a>(
        connection: &'a mut Self::Connection,
        queue: &'static str,
        id: JobId,
        args: Vec<u8>,
        max_attempts: u32,
    ) -> Push<'a>;
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
}

#[cfg(feature = "sqlite")]
impl JobDatabase for sqlx::Sqlite {
    const ENGINE: &'static str = "sqlite";

    fn push<'a>(
        connection: &'a mut sqlx::SqliteConnection,
        queue: &'static str,
        id: JobId,
        args: Vec<u8>,
        max_attempts: u32,
    ) -> Push<'a> {
        Box::pin(async move {
            let task = TaskBuilder::new(args)
                .task_id(TaskId::from_string(id.to_string()))
                .max_attempts(max_attempts as usize)
                .build();
            apalis_sqlite::queries::push_tasks(connection, queue, &[task])
                .await
                .map_err(JobError::database)
        })
    }
}

#[cfg(feature = "postgres")]
impl JobDatabase for sqlx::Postgres {
    const ENGINE: &'static str = "postgres";

    fn push<'a>(
        connection: &'a mut sqlx::PgConnection,
        queue: &'static str,
        id: JobId,
        args: Vec<u8>,
        max_attempts: u32,
    ) -> Push<'a> {
        Box::pin(async move {
            let task = TaskBuilder::new(args)
                .task_id(TaskId::from_string(id.to_string()))
                .max_attempts(max_attempts as usize)
                .build();
            apalis_postgres::queries::push_tasks(connection, queue, vec![task])
                .await
                .map_err(JobError::database)
        })
    }
}

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
    /// there for workers that never come. The job is counted in
    /// [`JobStats::pushed`](super::JobStats::pushed) when this returns, even
    /// if `tx` later rolls back. On PostgreSQL, workers listening for new
    /// jobs are told at the commit; on SQLite they find it at their next
    /// poll.
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
        let EncodedJob {
            id,
            queue,
            args,
            max_attempts,
        } = EncodedJob::new(job)?;
        DB::push(&mut **tx, queue, id, args, max_attempts).await?;
        self.counters.pushed();
        Ok(id)
    }
}
