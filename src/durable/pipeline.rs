//! [`Pipeline`]: drives a [`Persistence`] for one worker, claiming the next
//! batch of jobs while the outcomes of the previous one are being written.
//!
//! apalis's own driver (`Persisted`) makes one call at a time: claim a
//! batch, hand it out, write the outcomes, claim again. A worker then waits
//! for both statements, each with its commit, once per batch. Here the
//! claim and the write run at once, on two connections of the pool.
//!
//! A database with one writer at a time (SQLite, [`Statements::ONE_WRITER`])
//! cannot run them at once: a second writer only waits for the first, and
//! SQLite's busy handler makes it sleep. There the pipeline makes one call
//! at a time, and the claim carries the reports waiting to be written into
//! its own transaction: one commit per batch where apalis's driver makes
//! several.
//!
//! What the driver promises is what `Persisted` promises:
//! - the worker registers before its first claim, and heartbeats every
//!   interval;
//! - a job is claimed only once every job claimed before it has been handed
//!   out, so a worker holds at most its batch beyond the jobs it runs;
//! - a job's start is written no later than its outcome (writes leave in
//!   the order jobs reported, one at a time);
//! - at close, a claim in flight is awaited, claimed jobs never handed out
//!   are given back, and every reported outcome is written;
//! - after an error the worker stops, and the error is returned.
//!
//! Bounds: at most one claim and one write are in flight, and while
//! [`BACKLOG_BATCHES`] batches of reports wait to be written, nothing is
//! claimed. Reports are written once the batch has been handed out, once a
//! batch's worth has gathered, or [`WRITE_DELAY`] after the first one,
//! whichever comes first; with one writer, with the next claim or
//! [`WRITE_DELAY`] after the first one.
//!
//! A job's start mark waits for the job's outcome, which makes it
//! unnecessary: a job that ends within [`START_WAIT`] costs one row update,
//! its outcome. A job that runs longer is marked started by the next write
//! after that, and [`WRITE_DELAY`] after its start at the latest (plus the
//! write in flight).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::future::BoxSyncFuture;
use apalis_core::backend::persistence::{Persistence, TaskEvent};
use apalis_core::task::task_id::TaskId;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::{Instant, Sleep};

/// How long a reported outcome may wait for others to share its write.
const WRITE_DELAY: Duration = Duration::from_millis(20);

/// How long a start mark waits before it goes out with any write: its job
/// ends sooner, most of the time, and then only the outcome is written.
/// Past [`WRITE_DELAY`] the oldest start makes a write due, which takes
/// along every start this old, so starts alone cause at most one write
/// per `START_WAIT`.
const START_WAIT: Duration = Duration::from_millis(10);

/// A job reports its start and its outcome.
const EVENTS_PER_JOB: usize = 2;

/// How many batches of outcomes may wait to be written before the worker
/// stops claiming (apalis's driver buffers four).
const BACKLOG_BATCHES: usize = 4;

type Call<T, E> = BoxSyncFuture<Result<T, E>>;

/// What a [`Pipeline`] asks of its statements beyond apalis's
/// [`Persistence`].
pub(crate) trait Statements: Persistence {
    /// The database runs one writing transaction at a time (SQLite): the
    /// pipeline then makes one call at a time, and a claim carries the
    /// reports waiting to be written, into the same transaction.
    const ONE_WRITER: bool = false;

    /// Writes `events`, then claims the next batch: in one transaction
    /// where the statements can (called only when [`Self::ONE_WRITER`]).
    fn write_and_claim(
        &mut self,
        events: Vec<TaskEvent<Self::Response>>,
        worker: &WorkerContext,
    ) -> impl Future<Output = Result<Vec<Task<Self::Compact>>, Self::Error>> + Send
    where
        Self::Response: Send,
    {
        async move {
            self.handle_events(events, worker).await?;
            self.fetch_next(worker).await
        }
    }
}

/// A claimed job.
type Claimed<P> = Task<<P as Persistence>::Compact>;

/// A claim in flight: the jobs it claimed.
type ClaimCall<P> = Call<Vec<Claimed<P>>, <P as Persistence>::Error>;

/// Claims, hands out and acknowledges the jobs of one worker.
pub(crate) struct Pipeline<P: Statements> {
    persistence: P,
    batch_size: usize,
    heartbeat_interval: Duration,
    /// A claim may run while a write is in flight (and the other way round).
    overlap: bool,
    registration: Registration<P::Error>,
    next_heartbeat: Pin<Box<Sleep>>,
    heartbeat: Option<Call<(), P::Error>>,
    /// Claimed, not handed out yet, in claim order.
    claimed: VecDeque<Claimed<P>>,
    claim: Option<ClaimCall<P>>,
    /// The last claim found no job, and no claim has been asked for since.
    found_none: bool,
    events: Option<UnboundedReceiver<TaskEvent<P::Response>>>,
    /// Received from the jobs, not written yet (start marks aside).
    reported: Vec<TaskEvent<P::Response>>,
    /// When the first of `reported` arrived.
    reported_since: Option<Instant>,
    /// The start marks of running jobs, not written yet, oldest first, with
    /// when each arrived: a start waits for its job's outcome, which makes
    /// it unnecessary (see [`START_WAIT`]).
    starting: VecDeque<(Instant, TaskId)>,
    /// Wakes the pipeline when `reported` or the oldest start is due.
    write_by: Pin<Box<Sleep>>,
    /// The write in flight, and how many reports it carries.
    write: Option<(Call<(), P::Error>, usize)>,
    /// At close: claimed jobs never handed out, going back to the queue.
    give_back: Option<Call<u64, P::Error>>,
    stopped: bool,
}

impl<P: Statements> std::fmt::Debug for Pipeline<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("batch_size", &self.batch_size)
            .field("claimed", &self.claimed.len())
            .field("claiming", &self.claim.is_some())
            .field("reported", &self.reported.len())
            .field("starting", &self.starting.len())
            .field("writing", &self.write.as_ref().map(|(_, count)| *count))
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

enum Registration<E> {
    NotStarted,
    InFlight(Call<(), E>),
    Done,
}

impl<P> Pipeline<P>
where
    P: Statements,
    P::Compact: Send + 'static,
    P::Response: Send + 'static,
    P::Error: Send + 'static,
{
    pub(crate) fn new(persistence: P, batch_size: usize, heartbeat_interval: Duration) -> Self {
        Self {
            persistence,
            batch_size: batch_size.max(1),
            heartbeat_interval,
            overlap: !P::ONE_WRITER,
            registration: Registration::NotStarted,
            next_heartbeat: Box::pin(tokio::time::sleep(heartbeat_interval)),
            heartbeat: None,
            claimed: VecDeque::new(),
            claim: None,
            found_none: false,
            events: None,
            reported: Vec::new(),
            reported_since: None,
            starting: VecDeque::new(),
            write_by: Box::pin(tokio::time::sleep(WRITE_DELAY)),
            write: None,
            give_back: None,
            stopped: false,
        }
    }

    /// The statements the pipeline drives.
    pub(crate) fn persistence(&self) -> &P {
        &self.persistence
    }

    /// The sending end of the channel jobs report on (for
    /// [`ReportLayer`](super::job_events::ReportLayer)).
    pub(crate) fn reports(&mut self) -> UnboundedSender<TaskEvent<P::Response>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.events = Some(receiver);
        sender
    }

    /// Ready once the worker is registered; moves every call in flight
    /// along without waiting for it.
    pub(crate) fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), P::Error>> {
        if self.stopped {
            return Poll::Ready(Ok(()));
        }
        let result = match self.poll_registered(cx, worker) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => self
                .poll_heartbeat(cx, worker)
                .and_then(|()| self.poll_claim(cx))
                .and_then(|()| self.poll_write(cx, worker, false).map(|_| ())),
            Poll::Ready(Err(error)) => Err(error),
        };
        if result.is_err() {
            self.stopped = true;
        }
        Poll::Ready(result)
    }

    /// The next claimed job, claiming a batch when none is left.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Claimed<P>, P::Error>>> {
        loop {
            if self.stopped {
                return Poll::Ready(None);
            }
            if let Err(error) = self.poll_claim(cx) {
                self.stopped = true;
                return Poll::Ready(Some(Err(error)));
            }
            if let Some(task) = self.claimed.pop_front() {
                return Poll::Ready(Some(Ok(task)));
            }
            if self.claim.is_some() {
                return Poll::Pending;
            }
            if std::mem::take(&mut self.found_none) {
                // The last claim found nothing: sleep until the worker is
                // woken (a new job, the poll interval, a call answering).
                return Poll::Pending;
            }
            if !self.start_claim(worker) {
                // Too many outcomes wait: the write in flight wakes us.
                return Poll::Pending;
            }
        }
    }

    /// Gives back what was claimed and not handed out, and writes every
    /// reported event, before the worker stops.
    pub(crate) fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), P::Error>> {
        if let Registration::InFlight(_) = self.registration {
            std::task::ready!(self.poll_registered(cx, worker))?;
        }
        if let Some(heartbeat) = &mut self.heartbeat {
            let result = std::task::ready!(heartbeat.poll_unpin(cx));
            self.heartbeat = None;
            result?;
        }
        self.poll_claim(cx)?;
        if self.claim.is_some() {
            return Poll::Pending;
        }
        if self.give_back.is_none() && !self.claimed.is_empty() {
            let tasks = Vec::from(std::mem::take(&mut self.claimed));
            let mut persistence = self.persistence.clone();
            let worker = worker.clone();
            self.give_back = Some(call(async move {
                persistence.reenqueue_abandoned(tasks, &worker).await
            }));
        }
        if let Some(give_back) = &mut self.give_back {
            let result = std::task::ready!(give_back.poll_unpin(cx));
            self.give_back = None;
            result?;
        }
        match self.poll_write(cx, worker, true) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_registered(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), P::Error>> {
        loop {
            match &mut self.registration {
                Registration::Done => return Poll::Ready(Ok(())),
                Registration::NotStarted => {
                    let mut persistence = self.persistence.clone();
                    let worker = worker.clone();
                    self.registration =
                        Registration::InFlight(call(
                            async move { persistence.register(&worker).await },
                        ));
                }
                Registration::InFlight(register) => {
                    std::task::ready!(register.poll_unpin(cx))?;
                    self.registration = Registration::Done;
                    self.alive(cx, worker);
                }
            }
        }
    }

    fn poll_heartbeat(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Result<(), P::Error> {
        if self.heartbeat.is_none() && self.next_heartbeat.as_mut().poll(cx).is_ready() {
            let mut persistence = self.persistence.clone();
            let beating = worker.clone();
            self.heartbeat = Some(call(async move { persistence.heartbeat(&beating).await }));
        }
        if let Some(heartbeat) = &mut self.heartbeat {
            if let Poll::Ready(result) = heartbeat.poll_unpin(cx) {
                self.heartbeat = None;
                result?;
                self.alive(cx, worker);
            }
        }
        Ok(())
    }

    /// The worker's liveness was written: tell apalis, and arm the next
    /// heartbeat.
    fn alive(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) {
        worker.heartbeat(cx);
        let next = Instant::now() + self.heartbeat_interval;
        self.next_heartbeat.as_mut().reset(next);
        let _ = self.next_heartbeat.as_mut().poll(cx);
    }

    /// Starts a claim unless one is in flight or too many outcomes wait.
    fn start_claim(&mut self, worker: &WorkerContext) -> bool {
        if self.claim.is_some() {
            return true;
        }
        if !self.overlap && self.write.is_some() {
            return false;
        }
        let waiting = self.reported.len() + self.write.as_ref().map_or(0, |(_, n)| *n);
        if waiting >= BACKLOG_BATCHES * EVENTS_PER_JOB * self.batch_size {
            return false;
        }
        let mut persistence = self.persistence.clone();
        let worker = worker.clone();
        self.found_none = false;
        let events = if self.overlap {
            Vec::new()
        } else {
            self.take_due(false)
        };
        self.claim = Some(if events.is_empty() {
            call(async move { persistence.fetch_next(&worker).await })
        } else {
            call(async move { persistence.write_and_claim(events, &worker).await })
        });
        true
    }

    /// Takes the events the jobs reported since the last call: a start mark
    /// waits in `starting`, and an outcome takes its job's start mark out.
    fn receive(&mut self) {
        let Some(events) = &mut self.events else {
            return;
        };
        while let Ok(event) = events.try_recv() {
            match event {
                TaskEvent::Lock { task_id } => {
                    self.starting.push_back((Instant::now(), task_id));
                    continue;
                }
                TaskEvent::Complete(ref result) => {
                    if let Some(at) = self
                        .starting
                        .iter()
                        .position(|(_, id)| *id == result.task_id)
                    {
                        self.starting.remove(at);
                    }
                }
                _ => {}
            }
            if self.reported.is_empty() {
                self.reported_since = Some(Instant::now());
            }
            self.reported.push(event);
        }
    }

    /// How many of the oldest start marks have waited [`START_WAIT`]: all
    /// of them with `all`.
    fn due_starts(&self, all: bool) -> usize {
        if all {
            return self.starting.len();
        }
        let now = Instant::now();
        self.starting
            .iter()
            .take_while(|(at, _)| now.duration_since(*at) >= START_WAIT)
            .count()
    }

    /// Takes what is to be written: the start marks that waited
    /// [`START_WAIT`] (all of them with `all`), then every other report.
    fn take_due(&mut self, all: bool) -> Vec<TaskEvent<P::Response>> {
        let due = self.due_starts(all);
        let mut events: Vec<_> = self
            .starting
            .drain(..due)
            .map(|(_, task_id)| TaskEvent::Lock { task_id })
            .collect();
        events.append(&mut self.reported);
        self.reported_since = None;
        events
    }

    /// Arms `write_by` for the earliest of the reports' and the oldest
    /// start's deadlines (or keeps it armed for an earlier one), and
    /// registers the waker; `true` once it has fired.
    fn poll_write_by(&mut self, cx: &mut Context<'_>) -> bool {
        let reports = self.reported_since.map(|at| at + WRITE_DELAY);
        let start = self.starting.front().map(|(at, _)| *at + WRITE_DELAY);
        let Some(deadline) = reports.into_iter().chain(start).min() else {
            return false;
        };
        // Deadlines only grow as jobs start, so a timer armed earlier than
        // needed is left to fire, rather than re-armed with every job.
        if self.write_by.deadline() > deadline || self.write_by.is_elapsed() {
            self.write_by.as_mut().reset(deadline);
        }
        self.write_by.as_mut().poll(cx).is_ready()
    }

    /// Moves the claim in flight along.
    fn poll_claim(&mut self, cx: &mut Context<'_>) -> Result<(), P::Error> {
        let Some(claim) = &mut self.claim else {
            return Ok(());
        };
        let Poll::Ready(result) = claim.poll_unpin(cx) else {
            return Ok(());
        };
        self.claim = None;
        let tasks = result?;
        self.found_none = tasks.is_empty();
        self.claimed.extend(tasks);
        Ok(())
    }

    /// Writes reported events when they are due; `flush` writes them all
    /// now. `true` once nothing is left to write.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
        flush: bool,
    ) -> Result<bool, P::Error> {
        loop {
            self.receive();
            if let Some((write, _)) = &mut self.write {
                let Poll::Ready(result) = write.poll_unpin(cx) else {
                    return Ok(false);
                };
                self.write = None;
                result?;
                continue;
            }
            if self.reported.is_empty() && self.starting.is_empty() {
                return Ok(true);
            }
            // With one writer, the next claim carries the reports (the
            // worker asks for a job, so claims, whenever a job ends); until
            // it starts, only the delay makes them due.
            let due = flush
                || (self.overlap
                    && !self.reported.is_empty()
                    && (self.claimed.is_empty() || self.reported.len() >= self.batch_size))
                || self.poll_write_by(cx);
            if !due || (!self.overlap && self.claim.is_some()) {
                return Ok(false);
            }
            let events = self.take_due(flush);
            if events.is_empty() {
                // Only young start marks wait: `write_by` wakes us for them.
                let _ = self.poll_write_by(cx);
                return Ok(false);
            }
            let count = events.len();
            let mut persistence = self.persistence.clone();
            let worker = worker.clone();
            self.write = Some((
                call(async move { persistence.handle_events(events, &worker).await }),
                count,
            ));
        }
    }
}

fn call<T>(future: impl Future<Output = T> + Send + 'static) -> BoxSyncFuture<T> {
    BoxSyncFuture::new(Box::pin(future))
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use apalis_core::backend::TaskResult;
    use apalis_core::task::builder::TaskBuilder;
    use apalis_core::task::status::Status;
    use apalis_core::task::task_id::TaskId;

    use super::*;

    /// What a fake database was asked, in order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Asked {
        Register,
        Claim { reports: usize, claimed: usize },
        Write { reports: usize },
        GiveBack { jobs: usize },
    }

    /// A job table of `pending` jobs; every call takes a millisecond, and
    /// records whether another call was in flight meanwhile.
    #[derive(Clone, Debug)]
    struct FakeDatabase<const ONE_WRITER: bool> {
        batch: usize,
        pending: Arc<AtomicUsize>,
        asked: Arc<Mutex<Vec<Asked>>>,
        in_flight: Arc<AtomicUsize>,
        overlapped: Arc<AtomicBool>,
    }

    impl<const ONE_WRITER: bool> FakeDatabase<ONE_WRITER> {
        fn new(batch: usize, pending: usize) -> Self {
            Self {
                batch,
                pending: Arc::new(AtomicUsize::new(pending)),
                asked: Arc::default(),
                in_flight: Arc::default(),
                overlapped: Arc::default(),
            }
        }

        async fn call(&self, asked: Asked) {
            if self.in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
                self.overlapped.store(true, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.asked.lock().unwrap().push(asked);
        }

        fn take_batch(&self) -> Vec<Task<Vec<u8>>> {
            let mut taken = 0;
            let _ = self
                .pending
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    taken = left.min(self.batch);
                    Some(left - taken)
                });
            (0..taken)
                .map(|_| {
                    TaskBuilder::new(Vec::new())
                        .task_id(TaskId::from_ulid(ulid::Ulid::generate()))
                        .build()
                })
                .collect()
        }

        fn asked(&self) -> Vec<Asked> {
            self.asked.lock().unwrap().clone()
        }
    }

    impl<const ONE_WRITER: bool> Persistence for FakeDatabase<ONE_WRITER> {
        type Compact = Vec<u8>;
        type Error = std::io::Error;
        type Response = ();

        async fn register(&mut self, _: &WorkerContext) -> Result<(), Self::Error> {
            self.call(Asked::Register).await;
            Ok(())
        }

        async fn heartbeat(&mut self, _: &WorkerContext) -> Result<(), Self::Error> {
            Ok(())
        }

        async fn fetch_next(
            &mut self,
            _: &WorkerContext,
        ) -> Result<Vec<Task<Vec<u8>>>, Self::Error> {
            let claimed = self.take_batch();
            let asked = Asked::Claim {
                reports: 0,
                claimed: claimed.len(),
            };
            self.call(asked).await;
            Ok(claimed)
        }

        async fn reenqueue_abandoned(
            &mut self,
            tasks: Vec<Task<Vec<u8>>>,
            _: &WorkerContext,
        ) -> Result<u64, Self::Error> {
            self.call(Asked::GiveBack { jobs: tasks.len() }).await;
            Ok(tasks.len() as u64)
        }

        async fn handle_events(
            &mut self,
            events: Vec<TaskEvent<()>>,
            _: &WorkerContext,
        ) -> Result<(), Self::Error> {
            let reports = events.len();
            self.call(Asked::Write { reports }).await;
            Ok(())
        }

        async fn push_tasks(&mut self, _: Vec<Task<Vec<u8>>>) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    impl<const ONE_WRITER: bool> Statements for FakeDatabase<ONE_WRITER> {
        const ONE_WRITER: bool = ONE_WRITER;

        async fn write_and_claim(
            &mut self,
            events: Vec<TaskEvent<()>>,
            _: &WorkerContext,
        ) -> Result<Vec<Task<Vec<u8>>>, Self::Error> {
            let claimed = self.take_batch();
            let asked = Asked::Claim {
                reports: events.len(),
                claimed: claimed.len(),
            };
            self.call(asked).await;
            Ok(claimed)
        }
    }

    /// The next job, asked for as apalis's worker asks: ready, then next.
    async fn next_job<const ONE_WRITER: bool>(
        pipeline: &mut Pipeline<FakeDatabase<ONE_WRITER>>,
        worker: &WorkerContext,
    ) -> Result<Option<Task<Vec<u8>>>, std::io::Error> {
        poll_fn(|cx| {
            std::task::ready!(pipeline.poll_ready(cx, worker))?;
            pipeline.poll_next(cx, worker).map(Option::transpose)
        })
        .await
    }

    /// Takes the next job and reports its start; returns its id.
    async fn start_next_job<const ONE_WRITER: bool>(
        pipeline: &mut Pipeline<FakeDatabase<ONE_WRITER>>,
        worker: &WorkerContext,
        reports: &UnboundedSender<TaskEvent<()>>,
    ) -> TaskId {
        let task = next_job(pipeline, worker)
            .await
            .expect("no call fails")
            .expect("a job is left");
        let task_id = task.task_id().cloned().expect("claimed jobs have ids");
        reports
            .send(TaskEvent::Lock {
                task_id: task_id.clone(),
            })
            .unwrap();
        task_id
    }

    /// A job's successful outcome.
    fn done(task_id: TaskId) -> TaskEvent<()> {
        TaskEvent::Complete(TaskResult {
            task_id,
            attempt: 1,
            status: Status::Done,
            result: Ok(()),
        })
    }

    /// Runs `jobs` jobs as apalis's worker would (ready, then next), each
    /// reporting its start and its outcome at once, then closes.
    async fn run_jobs<const ONE_WRITER: bool>(database: &FakeDatabase<ONE_WRITER>, jobs: usize) {
        let worker = WorkerContext::new("pipeline-test");
        let mut pipeline = Pipeline::new(database.clone(), database.batch, Duration::from_secs(60));
        let reports = pipeline.reports();
        for _ in 0..jobs {
            let task_id = start_next_job(&mut pipeline, &worker, &reports).await;
            reports.send(done(task_id)).unwrap();
        }
        poll_fn(|cx| pipeline.poll_close(cx, &worker))
            .await
            .expect("no call fails");
    }

    #[tokio::test(start_paused = true)]
    async fn with_one_writer_a_lone_outcome_rides_on_the_next_claim_at_once() {
        let database = FakeDatabase::<true>::new(4, 1);
        let worker = WorkerContext::new("pipeline-test");
        let mut pipeline = Pipeline::new(database.clone(), 4, Duration::from_secs(60));
        let reports = pipeline.reports();
        let task = next_job(&mut pipeline, &worker)
            .await
            .expect("no call fails")
            .expect("the job");
        let task_id = task.task_id().cloned().expect("claimed jobs have ids");
        // The worker asks for more: the claim carries nothing yet and finds
        // the queue empty.
        let waited =
            tokio::time::timeout(Duration::from_millis(5), next_job(&mut pipeline, &worker)).await;
        assert!(waited.is_err(), "no second job: {waited:?}");
        reports
            .send(TaskEvent::Lock {
                task_id: task_id.clone(),
            })
            .unwrap();
        reports.send(done(task_id)).unwrap();
        // The job's end wakes the worker, which asks for a job again.
        let reported = Instant::now();
        while reports_written(&database.asked()) < 1 {
            let _ =
                tokio::time::timeout(Duration::from_millis(1), next_job(&mut pipeline, &worker))
                    .await;
            assert!(
                reported.elapsed() < WRITE_DELAY,
                "the outcome waited for the write delay: {:?}",
                database.asked()
            );
        }
    }

    fn reports_written(asked: &[Asked]) -> usize {
        asked
            .iter()
            .map(|asked| match asked {
                Asked::Claim { reports, .. } | Asked::Write { reports } => *reports,
                _ => 0,
            })
            .sum()
    }

    #[tokio::test]
    async fn with_one_writer_claims_carry_the_reports_and_calls_never_overlap() {
        let database = FakeDatabase::<true>::new(4, 12);
        run_jobs(&database, 12).await;
        let asked = database.asked();
        assert!(!database.overlapped.load(Ordering::SeqCst), "{asked:?}");
        assert_eq!(
            &asked[..4],
            [
                Asked::Register,
                Asked::Claim {
                    reports: 0,
                    claimed: 4
                },
                Asked::Claim {
                    reports: 4,
                    claimed: 4
                },
                Asked::Claim {
                    reports: 4,
                    claimed: 4
                },
            ],
            "each claim writes the outcomes of the batch before it: {asked:?}",
        );
        assert_eq!(
            reports_written(&asked),
            12,
            "every outcome written once, and no start of a finished job: {asked:?}"
        );
    }

    #[tokio::test]
    async fn with_several_writers_claims_and_writes_are_separate_calls() {
        let database = FakeDatabase::<false>::new(4, 12);
        run_jobs(&database, 12).await;
        let asked = database.asked();
        let claims = asked
            .iter()
            .filter(|asked| matches!(asked, Asked::Claim { .. }))
            .collect::<Vec<_>>();
        assert!(
            claims
                .iter()
                .all(|claim| matches!(claim, Asked::Claim { reports: 0, .. })),
            "{asked:?}"
        );
        assert_eq!(
            reports_written(&asked),
            12,
            "every outcome written once, and no start of a finished job: {asked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_waited_rides_with_the_next_outcome() {
        let database = FakeDatabase::<false>::new(2, 2);
        let worker = WorkerContext::new("pipeline-test");
        let mut pipeline = Pipeline::new(database.clone(), 2, Duration::from_secs(60));
        let reports = pipeline.reports();
        let _running = start_next_job(&mut pipeline, &worker, &reports).await;
        let ending = start_next_job(&mut pipeline, &worker, &reports).await;
        // Longer than a start waits, shorter than the write delay.
        tokio::time::sleep(WRITE_DELAY - Duration::from_millis(5)).await;
        // The second job ends; the first still runs.
        reports.send(done(ending)).unwrap();
        let _ =
            tokio::time::timeout(Duration::from_millis(3), next_job(&mut pipeline, &worker)).await;
        let writes: Vec<_> = database
            .asked()
            .into_iter()
            .filter(|asked| matches!(asked, Asked::Write { .. }))
            .collect();
        assert_eq!(
            writes,
            [Asked::Write { reports: 2 }],
            "the outcome, with the start of the job still running: {:?}",
            database.asked()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_jobs_start_is_written_after_the_write_delay() {
        let database = FakeDatabase::<false>::new(4, 1);
        let worker = WorkerContext::new("pipeline-test");
        let mut pipeline = Pipeline::new(database.clone(), 4, Duration::from_secs(60));
        let reports = pipeline.reports();
        let task_id = start_next_job(&mut pipeline, &worker, &reports).await;
        let started = Instant::now();
        // The worker waits for a job while this one runs.
        let mut waited = Duration::ZERO;
        while reports_written(&database.asked()) == 0 {
            let _ =
                tokio::time::timeout(Duration::from_millis(1), next_job(&mut pipeline, &worker))
                    .await;
            waited = started.elapsed();
            assert!(waited < 10 * WRITE_DELAY, "the start was never written");
        }
        assert!(
            waited >= WRITE_DELAY,
            "the start was written before its job had run the write delay ({waited:?}): {:?}",
            database.asked()
        );
        reports.send(done(task_id)).unwrap();
        poll_fn(|cx| pipeline.poll_close(cx, &worker))
            .await
            .expect("no call fails");
        assert_eq!(
            reports_written(&database.asked()),
            2,
            "the start, then the outcome: {:?}",
            database.asked()
        );
    }
}
