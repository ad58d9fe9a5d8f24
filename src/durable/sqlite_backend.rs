//! [`sqlite_jobs`]: the backend SQLite workers run on: a
//! [`Pipeline`](super::pipeline::Pipeline) over apalis-sqlite's own
//! statements, with a worker's reports written in the transaction of its
//! next claim.
//!
//! apalis's `SqliteStorage` writes the jobs' starts and outcomes whenever
//! the worker asks for its next job and some are waiting: several small
//! transactions per batch besides the claim's, each a commit and, with
//! `synchronous = FULL`, a sync of the log. SQLite has one writer at a
//! time, so nothing is gained by writing them beside the claim either.
//! Here the pipeline makes one call at a time, and the claim writes what
//! the previous batch reported before it claims (one transaction, one
//! commit per batch). Reports wait for a claim at most the pipeline's write
//! delay, then are written on their own.
//!
//! A job that finished before its start was written gets only its outcome
//! written, as on PostgreSQL. Otherwise the statements are apalis-sqlite's,
//! so the rows written are the ones it writes and its tools read them as
//! before.

use std::collections::HashSet;

use apalis_core::backend::persistence::{Persistence, TaskEvent};
use apalis_core::backend::WorkerFilter;
use apalis_core::worker::context::WorkerContext;
use apalis_sqlite::queries::{
    ack_tasks, fetch_next, keep_alive, lock_tasks, push_tasks, reenqueue_abandoned,
    reenqueue_orphaned, register_worker,
};
use apalis_sqlite::{Config, Error, SqlitePool, SqliteTask};
use serde_json::Value;

use super::pipeline::Statements;
use super::worker_backend::{EngineStatements, Options, WorkerBackend};

/// The `storage_name` workers register under (apalis-sqlite's).
const STORAGE_NAME: &str = "SqliteStorage";

/// The backend a SQLite worker for jobs of type `Args` runs on, configured
/// as apalis's `SqliteStorage` is.
pub(crate) fn sqlite_jobs<Args>(
    pool: &SqlitePool,
    config: Config,
) -> WorkerBackend<SqliteStatements, Args> {
    let options = Options {
        batch_size: config.batch_size,
        heartbeat_interval: config.heartbeat_interval,
        results: config.persist_results,
        starts: config.lock_tasks,
    };
    let statements = SqliteStatements {
        pool: pool.clone(),
        config,
    };
    WorkerBackend::new(statements, options)
}

/// apalis-sqlite's statements, each call in a transaction of its own, as
/// apalis-sqlite runs them, except that a claim may carry reports.
#[derive(Clone, Debug)]
pub(crate) struct SqliteStatements {
    pool: SqlitePool,
    config: Config,
}

impl Persistence for SqliteStatements {
    type Compact = Vec<u8>;
    type Error = Error;
    type Response = Value;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let dead_for = secs(self.config.heartbeat_interval);
        let mut tx = self.pool.begin().await?;
        let only = WorkerFilter::Only(worker.name().to_owned());
        reenqueue_orphaned(&mut *tx, dead_for, queue, &only).await?;
        register_worker(&mut *tx, &self.config, worker, STORAGE_NAME).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let dead_for = secs(self.config.orphaned_duration());
        let mut tx = self.pool.begin().await?;
        keep_alive(&mut *tx, &self.config, worker).await?;
        let others = WorkerFilter::AllExcept(worker.name().to_owned());
        reenqueue_orphaned(&mut *tx, dead_for, queue, &others).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<SqliteTask>, Error> {
        let mut tx = self.pool.begin().await?;
        let claimed = fetch_next(&mut *tx, &self.config, worker).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Error> {
        if needs_write(&events) {
            let mut tx = self.pool.begin().await?;
            write_events(&mut tx, &events, worker).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<SqliteTask>,
        worker: &WorkerContext,
    ) -> Result<u64, Error> {
        let ids = tasks
            .iter()
            .filter_map(|task| task.task_id().map(ToString::to_string))
            .collect::<Vec<_>>();
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        let count = reenqueue_abandoned(&mut *tx, queue, worker.name(), &ids).await?;
        if count as usize != tasks.len() {
            return Err(Error::ReenqueueMismatch {
                queued: tasks.len(),
                abandoned: count as usize,
            });
        }
        tx.commit().await?;
        Ok(count)
    }

    async fn push_tasks(&mut self, tasks: Vec<SqliteTask>) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        push_tasks(&mut *tx, queue, &tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl EngineStatements for SqliteStatements {
    type Config = Config;

    fn config(&self) -> &Config {
        &self.config
    }
}

impl Statements for SqliteStatements {
    const ONE_WRITER: bool = true;

    async fn write_and_claim(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<Vec<SqliteTask>, Error> {
        let mut tx = self.pool.begin().await?;
        write_events(&mut tx, &events, worker).await?;
        let claimed = fetch_next(&mut *tx, &self.config, worker).await?;
        tx.commit().await?;
        Ok(claimed)
    }
}

/// Whether `events` change any row: apalis reports nothing else than
/// starts and outcomes.
fn needs_write(events: &[TaskEvent<Value>]) -> bool {
    events
        .iter()
        .any(|event| matches!(event, TaskEvent::Lock { .. } | TaskEvent::Complete(_)))
}

/// Writes the jobs' starts and outcomes, as apalis-sqlite writes them.
async fn write_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    events: &[TaskEvent<Value>],
    worker: &WorkerContext,
) -> Result<(), Error> {
    let mut started = Vec::new();
    let mut outcomes = Vec::new();
    for event in events {
        match event {
            TaskEvent::Lock { task_id } => started.push(task_id.to_string()),
            TaskEvent::Complete(result) => outcomes.push(result),
            _ => {}
        }
    }
    // A job that finished before its start was written needs only its
    // outcome.
    let finished: HashSet<String> = outcomes.iter().map(|o| o.task_id.to_string()).collect();
    started.retain(|id| !finished.contains(id));
    if !started.is_empty() {
        lock_tasks(&mut **tx, &started, worker.name()).await?;
    }
    if !outcomes.is_empty() {
        ack_tasks(&mut **tx, &outcomes, worker.name()).await?;
    }
    Ok(())
}

/// Whole seconds, as apalis-sqlite binds durations.
fn secs(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}
