//! Group commit: pushes that arrive while another commit is in flight are
//! stored together, in one transaction, by one flusher task per queue.
//!
//! A push hands its job to the flusher and waits for the commit that holds
//! it, so the guarantee of [`JobQueue::push`](super::JobQueue::push) is
//! unchanged: when it returns `Ok`, the job is stored. A lone push does not
//! wait for company: with no other push under way it commits its job
//! itself, in its own task ([`Batcher::push`]); under concurrency, the
//! pushes that queued during one commit share the next, so the commits per
//! second stay about the same while the jobs per commit grow. A commit that
//! stalls (behind a lock, on a slow disk) holds up only its own pushes: the
//! next batch waits for it [`STALLED_COMMIT`] at most, then commits on a
//! connection of its own. Each of the flusher's commits is a task of its
//! own so that a caller that is dropped mid-commit (a client that went
//! away) cannot leave the others' jobs half-stored; a lone push's commit
//! holds only its own job.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::encoded::EncodedJob;
use super::engine::Engine;
use super::error::{JobError, NothingCommitted};
use super::insert::{Inserted, JobDatabase, Rows};
use super::job::JobId;

/// The most jobs one commit holds.
pub(crate) const MAX_BATCH: usize = 512;

/// One push waiting for its commit.
struct Request {
    job: EncodedJob,
    done: oneshot::Sender<Result<Inserted, Failure>>,
}

/// Why a batch was not stored, told to each of its pushes.
#[derive(Clone, Debug)]
struct Failure {
    /// The cause's text (each push wraps it in a `JobError` of its own).
    message: String,
    /// Why nothing was committed, when that is certain; otherwise the
    /// commit may have gone through.
    nothing_committed: Option<NothingCommitted>,
}

impl From<JobError> for Failure {
    fn from(error: JobError) -> Self {
        let nothing_committed = error.nothing_committed_because();
        // Each push wraps the cause in its own `JobError::Database`, so it
        // gets the cause, not this error's text.
        let message = match error {
            JobError::Database(cause) => cause.to_string(),
            other => other.to_string(),
        };
        Self {
            message,
            nothing_committed,
        }
    }
}

impl From<Failure> for JobError {
    fn from(failure: Failure) -> Self {
        let cause = std::io::Error::other(failure.message);
        match failure.nothing_committed {
            Some(why) => JobError::nothing_committed(why, cause),
            None => JobError::database(cause),
        }
    }
}

/// The way to a queue's flusher, which is started on the first push (on
/// the runtime of that push) and again if its runtime has gone.
#[derive(Debug)]
pub(crate) struct Batcher {
    sender: Mutex<Option<mpsc::UnboundedSender<Request>>>,
    /// Held by the commit of this queue's pushes in flight, the flusher's
    /// or a lone push's (one permit).
    committing: Arc<Semaphore>,
    /// Pushes begun and not ended (returned or dropped).
    pushing: AtomicUsize,
}

impl Default for Batcher {
    fn default() -> Self {
        Self {
            sender: Mutex::default(),
            committing: Arc::new(Semaphore::new(1)),
            pushing: AtomicUsize::new(0),
        }
    }
}

/// Counts a push in [`Batcher::pushing`] while it lives.
struct Pushing<'a>(&'a AtomicUsize);

impl<'a> Pushing<'a> {
    /// Counts a push; `true` if no other was under way.
    fn begin(pushing: &'a AtomicUsize) -> (Self, bool) {
        let alone = pushing.fetch_add(1, Ordering::AcqRel) == 0;
        (Self(pushing), alone)
    }
}

impl Drop for Pushing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("job", &self.job.id)
            .finish()
    }
}

impl Batcher {
    /// Stores `job` in the next commit, and says what that commit did.
    ///
    /// A lone push (no other push under way, no commit in flight, and a
    /// connection free) commits its job itself, in the caller's task: it
    /// then costs what its insert statement costs, where the way through
    /// the flusher and back adds two hand-offs between tasks, each a
    /// wake-up of another thread. The pushes that arrive meanwhile queue
    /// for the flusher, which waits for this commit as for one of its own.
    ///
    /// Pushes that find company go to the flusher, to share its commits:
    /// the callers a commit wakes push again before the others have
    /// returned, and none of them may take a commit of its own between two
    /// of the flusher's. With no connection free, the push goes to the
    /// flusher too, so that the pushes waiting for a connection wait for
    /// one together.
    pub(crate) async fn push(
        &self,
        engine: &Engine,
        job: EncodedJob,
    ) -> Result<Inserted, JobError> {
        let (_pushing, alone) = Pushing::begin(&self.pushing);
        if alone && engine.has_idle_connection() {
            if let Ok(committing) = Arc::clone(&self.committing).try_acquire_owned() {
                // Boxed: kept out of the size of every push's future, most
                // of which take the flusher's way.
                let holders = Box::pin(commit(engine, &[&job])).await;
                drop(committing);
                let holder = holders?.into_iter().next().flatten();
                return Ok(Inserted::of(job.id, holder));
            }
        }
        self.through_flusher(engine, job).await
    }

    /// Stores `job` in the next of the flusher's commits, however few
    /// pushes are under way: for deferred pushes, which come in bursts and
    /// answer no caller, so a commit of one job of its own would only come
    /// between two shared ones.
    pub(crate) async fn push_shared(
        &self,
        engine: &Engine,
        job: EncodedJob,
    ) -> Result<Inserted, JobError> {
        let _pushing = Pushing::begin(&self.pushing);
        self.through_flusher(engine, job).await
    }

    async fn through_flusher(
        &self,
        engine: &Engine,
        job: EncodedJob,
    ) -> Result<Inserted, JobError> {
        let (done, committed) = oneshot::channel();
        let mut request = Request { job, done };
        {
            let mut sender = self
                .sender
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            loop {
                if let Some(flusher) = sender.as_ref() {
                    match flusher.send(request) {
                        Ok(()) => break,
                        // The flusher's runtime has gone: start another.
                        Err(mpsc::error::SendError(returned)) => request = returned,
                    }
                }
                let (tx, rx) = mpsc::unbounded_channel();
                let committing = Arc::clone(&self.committing);
                tokio::spawn(flush_all(engine.clone(), rx, committing));
                *sender = Some(tx);
            }
        }
        match committed.await {
            Ok(Ok(inserted)) => Ok(inserted),
            Ok(Err(failure)) => Err(failure.into()),
            Err(_) => Err(JobError::database(std::io::Error::other(
                "the job's commit was interrupted (its runtime shut down)",
            ))),
        }
    }
}

/// How long the next batch waits for the commit in flight before it starts
/// on a connection of its own. A commit normally takes milliseconds, so
/// batches still form behind it; one stuck behind a lock (up to
/// [`LOCK_TIMEOUT`](super::LOCK_TIMEOUT)) or a slow disk no longer makes
/// the pushes after it wait for it and then for their own commit.
const STALLED_COMMIT: Duration = Duration::from_millis(100);

/// The flusher: for each round, waits for a push, lets the commit in flight
/// finish (for at most [`STALLED_COMMIT`]), waits for a connection, then
/// takes every push that queued meanwhile (up to [`MAX_BATCH`]) and commits
/// them together in a task of their own, until every sender has gone.
///
/// The commit in flight is the flusher's last, or a lone push's (which the
/// flusher sees only by `committing`'s permit, so it gives that one
/// [`STALLED_COMMIT`] from the moment it finds it). Once a commit has
/// stalled, the rounds after it no longer wait for the permit it holds.
///
/// The connection comes before the batch is closed so that a push waits
/// for one connection at most, its own batch's: a push that arrived while
/// the flusher was waiting for a connection joins that batch, rather than
/// waiting for the next one to look for a connection all over again. If
/// no connection comes within the pool's acquire timeout, every push of
/// the batch fails with that error.
async fn flush_all(
    engine: Engine,
    mut requests: mpsc::UnboundedReceiver<Request>,
    committing: Arc<Semaphore>,
) {
    let mut in_flight: Option<(Instant, JoinHandle<()>)> = None;
    // The commit holding the permit overran `STALLED_COMMIT`.
    let mut stalled = false;
    while let Some(first) = requests.recv().await {
        let mut deadline = Instant::now() + STALLED_COMMIT;
        if let Some((started, mut commit)) = in_flight.take() {
            if !commit.is_finished() {
                deadline = started + STALLED_COMMIT;
                tokio::select! {
                    _ = &mut commit => {}
                    // Left to finish on its own; its pushes wait for it.
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        let permit = match Arc::clone(&committing).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if stalled => None,
            Err(_) => {
                let permit = Arc::clone(&committing).acquire_owned();
                tokio::time::timeout_at(deadline, permit)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        stalled = permit.is_none();
        let batch = vec![first];
        let commit = match &engine {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite(pool) => start_commit(pool, &mut requests, batch, permit).await,
            #[cfg(feature = "postgres")]
            Engine::Postgres(pool) => start_commit(pool, &mut requests, batch, permit).await,
        };
        in_flight = commit.map(|commit| (Instant::now(), commit));
    }
}

/// Takes a connection from `pool`, adds to `batch` what queued in
/// `requests` meanwhile, and starts the commit of the batch's jobs on it,
/// holding `permit` until the pushes have been told; `None` if no
/// connection came (the batch's pushes have been told).
async fn start_commit<DB: JobDatabase>(
    pool: &sqlx::Pool<DB>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    mut batch: Vec<Request>,
    permit: Option<OwnedSemaphorePermit>,
) -> Option<JoinHandle<()>> {
    let connection = pool.acquire().await;
    while batch.len() < MAX_BATCH {
        match requests.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    match connection {
        Ok(mut connection) => Some(tokio::spawn(async move {
            let jobs: Vec<&EncodedJob> = batch.iter().map(|request| &request.job).collect();
            let result = commit_on(&mut connection, &jobs).await;
            drop(jobs);
            reply(batch, result);
            drop(permit);
        })),
        Err(error) => {
            reply(batch, Err(JobError::no_connection(error)));
            None
        }
    }
}

/// Tells each push of `batch` what its commit did.
fn reply(batch: Vec<Request>, result: Result<Vec<Option<JobId>>, JobError>) {
    match result {
        Ok(holders) => {
            for (request, holder) in batch.into_iter().zip(holders) {
                let _ = request.done.send(Ok(Inserted::of(request.job.id, holder)));
            }
        }
        Err(error) => {
            let failure = Failure::from(error);
            for request in batch {
                let _ = request.done.send(Err(failure.clone()));
            }
        }
    }
}

/// The most bytes of job arguments one insert statement carries, so that a
/// batch of large jobs stays far below what the databases take in one
/// statement (PostgreSQL: 1 GiB per value, and the job arguments of a
/// statement are one array).
const MAX_STATEMENT_BYTES: usize = 64 * 1024 * 1024;

/// How many of `jobs` (sorted by type) the next insert statement takes:
/// the leading jobs of type `queue`, up to `max_bytes` of arguments, and at
/// least one.
fn one_statement(jobs: &[&EncodedJob], queue: &str, max_bytes: usize) -> usize {
    let mut bytes = 0;
    let mut taken = 0;
    for job in jobs.iter().take_while(|job| job.queue == queue) {
        bytes += job.args.len();
        if taken > 0 && bytes > max_bytes {
            break;
        }
        taken += 1;
    }
    taken
}

/// Stores `jobs` in one transaction; for each, `Some` holder's id if it was
/// a unique job whose key was held.
pub(crate) async fn commit(
    engine: &Engine,
    jobs: &[&EncodedJob],
) -> Result<Vec<Option<JobId>>, JobError> {
    match engine {
        #[cfg(feature = "sqlite")]
        Engine::Sqlite(pool) => {
            let mut connection = pool.acquire().await.map_err(JobError::no_connection)?;
            commit_on(&mut connection, jobs).await
        }
        #[cfg(feature = "postgres")]
        Engine::Postgres(pool) => {
            let mut connection = pool.acquire().await.map_err(JobError::no_connection)?;
            commit_on(&mut connection, jobs).await
        }
    }
}

async fn commit_on<DB: JobDatabase>(
    connection: &mut sqlx::pool::PoolConnection<DB>,
    jobs: &[&EncodedJob],
) -> Result<Vec<Option<JobId>>, JobError> {
    if let Some(queue) = one_statement_of_plain_jobs(jobs, DB::ROWS_PER_STATEMENT) {
        // A single statement is atomic and, once it returns, committed:
        // no transaction around it, so one round trip to the database
        // rather than three. (Under load, each round trip also waits for
        // the runtime to poll this task again.)
        DB::insert_many(&mut **connection, queue, rows(jobs)).await?;
        return Ok(vec![None; jobs.len()]);
    }
    let mut tx = sqlx::Connection::begin(&mut **connection)
        .await
        .map_err(JobError::database)?;
    let mut holders = vec![None; jobs.len()];
    // Plain jobs of one type go in one statement where the engine can.
    let mut plain: Vec<&EncodedJob> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        if job.unique_key.is_some() {
            holders[i] = DB::insert(
                &mut *tx,
                job.queue,
                job.id,
                job.args.clone(),
                job.max_attempts,
                job.run_at,
                job.unique_key.as_deref(),
                job.key_held_for_good,
            )
            .await?;
        } else {
            plain.push(job);
        }
    }
    plain.sort_by_key(|job| job.queue);
    let mut rest = &plain[..];
    while let Some(first) = rest.first() {
        let statement = one_statement(rest, first.queue, MAX_STATEMENT_BYTES);
        DB::insert_many(&mut *tx, first.queue, rows(&rest[..statement])).await?;
        rest = &rest[statement..];
    }
    tx.commit().await.map_err(JobError::database)?;
    Ok(holders)
}

/// The type of `jobs` if they are all plain jobs of that one type that
/// one insert statement holds (at most `rows_per_statement`).
fn one_statement_of_plain_jobs(
    jobs: &[&EncodedJob],
    rows_per_statement: usize,
) -> Option<&'static str> {
    let first = jobs.first()?;
    let plain = jobs.iter().all(|job| job.unique_key.is_none());
    let one = jobs.len() <= rows_per_statement
        && one_statement(jobs, first.queue, MAX_STATEMENT_BYTES) == jobs.len();
    (plain && one).then_some(first.queue)
}

/// `jobs` as [`JobDatabase::insert_many`] binds them.
fn rows(jobs: &[&EncodedJob]) -> Rows {
    jobs.iter()
        .map(|job| (job.id, job.args.clone(), job.max_attempts, job.run_at))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(queue: &'static str, bytes: usize) -> EncodedJob {
        EncodedJob {
            id: JobId::new(),
            queue,
            args: vec![b'1'; bytes],
            max_attempts: 1,
            run_at: None,
            unique_key: None,
            key_held_for_good: false,
        }
    }

    #[test]
    fn a_statement_takes_one_type_up_to_its_bytes_and_at_least_one_job() {
        let jobs = [
            job("a", 60),
            job("a", 40),
            job("a", 1),
            job("b", 500),
            job("b", 1),
        ];
        let jobs: Vec<&EncodedJob> = jobs.iter().collect();
        assert_eq!(one_statement(&jobs, "a", 100), 2, "up to the bound");
        assert_eq!(one_statement(&jobs[2..], "a", 100), 1, "not past the type");
        assert_eq!(
            one_statement(&jobs[3..], "b", 100),
            1,
            "one job over the bound alone"
        );
        assert_eq!(one_statement(&jobs[4..], "b", 100), 1);
        assert_eq!(one_statement(&jobs, "a", 1_000), 3);
    }

    /// A lone push commits in its caller's task: the flusher, and the two
    /// hand-offs through it, are for the pushes that find another push
    /// under way or a commit in flight (they wait for it, and are stored
    /// once it ends), and for deferred pushes.
    #[cfg(feature = "sqlite")]
    #[tokio::test]
    // With one engine enabled, matching the queue's engine cannot fail.
    #[allow(irrefutable_let_patterns)]
    async fn a_lone_push_commits_without_the_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let queue = crate::durable::JobQueue::sqlite(path).await.unwrap();
        let engine = queue.engine.clone();
        let batcher = Arc::new(Batcher::default());
        let flusher_started = |batcher: &Batcher| batcher.sender.lock().unwrap().is_some();
        let idle_connection = || async {
            // A connection goes back to the pool in a task of its own.
            while !engine.has_idle_connection() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        for _ in 0..3 {
            idle_connection().await;
            batcher.push(&engine, job("a", 10)).await.unwrap();
        }
        assert!(
            !flusher_started(&batcher),
            "a lone push went through the flusher"
        );

        // Another push under way: this one shares the flusher's commits.
        let (other, _) = Pushing::begin(&batcher.pushing);
        idle_connection().await;
        batcher.push(&engine, job("a", 10)).await.unwrap();
        assert!(
            flusher_started(&batcher),
            "a push beside another went alone"
        );
        drop(other);
        *batcher.sender.lock().unwrap() = None;

        // A deferred push shares the flusher's commits, even alone.
        idle_connection().await;
        batcher.push_shared(&engine, job("a", 10)).await.unwrap();
        assert!(flusher_started(&batcher), "a deferred push went alone");
        *batcher.sender.lock().unwrap() = None;

        let in_flight = Arc::clone(&batcher.committing).try_acquire_owned().unwrap();
        idle_connection().await;
        let pushing = tokio::spawn({
            let (batcher, engine) = (Arc::clone(&batcher), engine.clone());
            async move { batcher.push(&engine, job("a", 10)).await }
        });
        tokio::time::timeout(Duration::from_secs(10), async {
            while !flusher_started(&batcher) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a push beside a commit in flight goes to the flusher");
        drop(in_flight);
        pushing.await.unwrap().unwrap();
        let Engine::Sqlite(pool) = &engine else {
            unreachable!("a SQLite queue")
        };
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE job_type = 'a'")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(stored, 6);
    }

    /// A push that joined the flusher's commits is stored even if its
    /// caller goes away (a handler dropped when its client disconnects),
    /// as `JobQueue::push`'s cancel safety says.
    #[cfg(feature = "sqlite")]
    #[tokio::test]
    // With one engine enabled, matching the queue's engine cannot fail.
    #[allow(irrefutable_let_patterns)]
    async fn a_shared_push_dropped_by_its_caller_is_still_stored() {
        let dir = tempfile::tempdir().unwrap();
        let queue = crate::durable::JobQueue::sqlite(dir.path().join("jobs.db"))
            .await
            .unwrap();
        let engine = queue.engine.clone();
        let Engine::Sqlite(pool) = &engine else {
            unreachable!("a SQLite queue")
        };
        let batcher = Arc::new(Batcher::default());
        // A commit in flight sends the push to the flusher, which waits for it.
        let in_flight = Arc::clone(&batcher.committing).try_acquire_owned().unwrap();
        let pushing = tokio::spawn({
            let (batcher, engine) = (Arc::clone(&batcher), engine.clone());
            async move { batcher.push(&engine, job("dropped", 10)).await }
        });
        tokio::time::timeout(Duration::from_secs(10), async {
            while batcher.sender.lock().unwrap().is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the push reached the flusher");
        pushing.abort();
        assert!(pushing.await.unwrap_err().is_cancelled());
        drop(in_flight);
        let stored = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let stored: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE job_type = 'dropped'")
                        .fetch_one(pool)
                        .await
                        .unwrap();
                if stored > 0 {
                    return stored;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the dropped push's job was never stored");
        assert_eq!(stored, 1);
    }

    #[test]
    fn only_plain_jobs_of_one_type_in_one_statement_skip_the_transaction() {
        let plain = [job("a", 10), job("a", 10), job("a", 10)];
        let plain: Vec<&EncodedJob> = plain.iter().collect();
        assert_eq!(one_statement_of_plain_jobs(&plain, 3), Some("a"));
        assert_eq!(
            one_statement_of_plain_jobs(&plain, 2),
            None,
            "two statements"
        );
        assert_eq!(one_statement_of_plain_jobs(&[], 3), None);

        let mixed = [job("a", 10), job("b", 10)];
        let mixed: Vec<&EncodedJob> = mixed.iter().collect();
        assert_eq!(one_statement_of_plain_jobs(&mixed, 3), None, "two types");

        let mut unique = job("a", 10);
        unique.unique_key = Some("invoice-1".into());
        let with_unique = [plain[0], &unique];
        // A unique job's insert is a statement of its own (and a look-up).
        assert_eq!(one_statement_of_plain_jobs(&with_unique, 3), None);
    }
}
