//! Durable jobs against in-process background tasks and against the
//! database's own limits: enqueue throughput (jobs/s), execution throughput
//! and enqueue → start latency, SQLite and PostgreSQL, in one run.
//!
//! Not a criterion benchmark (`harness = false`): the modes are interleaved
//! round after round so that all of them see the same moments of a noisy
//! machine; the tables show medians over rounds, and each ratio is taken
//! within a round, then its median.
//!
//! # Throughput
//!
//! P producers (1 and 16), each a tokio task sending requests one after the
//! other through the real layer, the response body read to its end, N
//! requests in all (10 000, 400 with `--quick`: enough that a run's rate
//! is the sustained one, not the first and last commits', and no more than
//! a queue's default `max_pending`, so no deferred job is refused: `--jobs`
//! is capped there). Each
//! handler does one of:
//!
//! - `add`: `tasks.add` of a trivial task (the in-process baseline);
//! - `enqueue_now`: `queue.push(&job).await` (the job is in the database
//!   when the handler returns);
//! - `enqueue`: `queue.enqueue(&tasks, job)` (returns at once; a task pushes
//!   the job after the response, retrying until it is stored).
//!
//! "Accepted/s" is N over the time until every producer has its last
//! response. For `enqueue`, "stored/s" is N over the time until the queue's
//! `JobStats::pushed_deferred` has grown by N (every job in the database);
//! for `add`, "done/s" is N over the time until `Supervisor::wait_idle`
//! returns (every task ran). No worker runs during these runs: the jobs
//! stay in the table, their rows are counted (they must be exactly N) and
//! deleted after each run.
//!
//! # Latency, enqueue → start
//!
//! K jobs enqueued one every W / K over W = 1 s (an open loop: each request
//! is its own tokio task), to an idle queue with `Workers` started fresh
//! for each run with its defaults
//! (`Workers::new(&queue).register::<J>().spawn(..)`). The latency of a job
//! is the time from just before the handler's enqueue call to the moment
//! the job's handler starts (for `add`: the task's first poll).
//!
//! `enqueue_now/other_queue` pushes the same way through a second
//! `JobQueue` on the same database, with connections of its own: to the
//! workers, what another process's pushes are. PostgreSQL's workers hear
//! them through `LISTEN`; SQLite's find them at their next poll
//! (`Workers::poll_interval`).
//!
//! # Limits (issue 16)
//!
//! Each round also measures, per engine, on the same database, what raw
//! sqlx statements reach:
//!
//! - **(1), the enqueue ceiling:** E rows inserted by multi-row `INSERT`s,
//!   512 rows per transaction, into apalis's own job table, the table the
//!   queue writes (its indexes and, on PostgreSQL, its per-row
//!   notification trigger); beside it, the same into a minimal scratch
//!   table of the same columns (a primary key on `id`, a partial index on
//!   pending rows), which shows what the job table's indexes cost; as
//!   the "one commit per job" baseline of 16 producers' `push`, scratch
//!   rows inserted one per transaction, one after the other; and as the
//!   baseline of one producer's `push`, what a lone push sends the
//!   database: one row of the job table per insert statement, each
//!   statement its own commit, one after the other, in 10 blocks that
//!   alternate with blocks of as many `JobQueue::push` calls, one after
//!   the other (the ratio is the median over pairs of blocks);
//! - **(2), the execution ceiling:** E pending rows of apalis's job table
//!   claimed 64 at a time, what the workers below claim per fetch, in
//!   apalis's claim order, for a registered worker (`… LIMIT 64 FOR UPDATE
//!   SKIP LOCKED` inside an `UPDATE … RETURNING`, one commit) and marked
//!   done (a second commit), until none is left; 4 loops at once on
//!   PostgreSQL, 1 on SQLite (one writer). Beside it, the same on the
//!   minimal scratch table, which shows what the job table's indexes and
//!   foreign key cost each claim, and on PostgreSQL the same with one
//!   loop: what one apalis worker per job type, which claims and
//!   acknowledges one statement after another, could reach at best; and
//!   the one loop's 64 rows split across 2 loops of 32 and 4 of 16: no
//!   more rows held at once than a worker at the default prefetch holds.
//!   On PostgreSQL each execution run, the workers' included, starts on a
//!   freshly vacuumed table (the bench's own claims and deletes leave dead
//!   rows faster than autovacuum clears them).
//!
//! and what the queue reaches of them: `JobQueue::push_all` of E no-op
//! jobs, 512 per call; then `Workers` with `.concurrency(16)` started on
//! them, jobs/s from their start until this process counts E succeeded.
//! The per-engine tables put these beside the throughput and latency
//! figures above, with issue 16's ratios and targets.
//!
//! # PostgreSQL
//!
//! `DATABASE_URL` if it is set (a `postgres://` URL); otherwise a private
//! server started here: `initdb` (as the `postgres` user when run as root)
//! into a temporary directory, trust authentication, a free loopback port,
//! `pg_ctl -w start`, and `pg_ctl stop` at the end. Binaries are looked for
//! under `/usr/lib/postgresql/*/bin`, then on `PATH`. If neither works, it
//! prints `PostgreSQL skipped: <why>` and goes on with SQLite. The server
//! runs with PostgreSQL's defaults (`fsync`, `synchronous_commit` on).
//! SQLite is `JobQueue::sqlite` on a file in a temporary directory.
//!
//! # Running it
//!
//! ```text
//! cargo bench -p benches --bench durable              # 5 rounds
//! cargo bench -p benches --bench durable -- --quick   # 1 round, under a minute
//! ```
//!
//! Other options (after `--`): `--rounds N`, `--jobs N` (per throughput
//! run), `--latency-jobs K`, `--exec-jobs E` (per ceiling and execution
//! run: 20 000, 2 000 with `--quick`), `--prefetch N` (a second
//! workers run with `Workers::prefetch(N)`, reported beside the default's:
//! graphile-worker's 41 000/s was measured with a local queue of 500 jobs
//! at concurrency 24, where our default holds 64). Prints a progress line per run to stderr, then
//! the tables to stdout. Run without `--bench` (as `cargo test --benches`
//! does) it makes one small pass. Every wait is bounded; everything stops
//! by itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::time::{sleep, sleep_until};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_background::durable::{
    Job, JobFailure, JobQueue, Workers, DEFAULT_HEARTBEAT, DEFAULT_MAX_PENDING,
    DEFAULT_POLL_INTERVAL, DEFAULT_PREFETCH_MULTIPLIER,
};
use tower_background::Supervisor;

mod support;
use support::requests::{ok, tasks_of};
use support::{parse, print_table, Flags, Mode};

/// The window over which a latency run enqueues its jobs.
const WINDOW: Duration = Duration::from_secs(1);
/// Time for freshly started workers to register and go idle.
const SETTLE: Duration = Duration::from_millis(300);
/// Bounds on waits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Jobs.

/// A job that records when its handler starts; one type per latency mode,
/// so each mode has a queue (and workers) of its own.
trait Probe: Job<Output = ()> {
    fn with_seq(seq: u64) -> Self;
}

macro_rules! probes {
    ($($ty:ident = $name:literal),* $(,)?) => {$(
        #[derive(Serialize, Deserialize)]
        struct $ty {
            seq: u64,
        }

        impl Job for $ty {
            const NAME: &'static str = $name;
            type Output = ();

            async fn run(self) -> Result<(), JobFailure> {
                started(self.seq);
                Ok(())
            }
        }

        impl Probe for $ty {
            fn with_seq(seq: u64) -> Self {
                Self { seq }
            }
        }
    )*};
}

probes! {
    // Throughput: never run (no worker registers it).
    Filler = "bench_fill",
    Pushed = "bench_pushed",
    Deferred = "bench_deferred",
    // Execution: a no-op run by `Workers` with concurrency 16.
    Noop = "bench_noop",
}

/// When each job was enqueued and first started, by sequence number.
type Clock = Mutex<HashMap<u64, (Instant, Option<Instant>)>>;

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(Mutex::default)
}

static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

fn next_seq() -> u64 {
    NEXT_SEQ.fetch_add(1, Ordering::Relaxed)
}

fn enqueued(seq: u64) {
    clock()
        .lock()
        .expect("clock")
        .insert(seq, (Instant::now(), None));
}

/// Records the first start of job `seq` (a job may run twice).
fn started(seq: u64) {
    let now = Instant::now();
    if let Some((_, start)) = clock().lock().expect("clock").get_mut(&seq) {
        start.get_or_insert(now);
    }
}

/// Latencies (µs) of `seqs` that started, and how many did not.
fn latencies(seqs: &[u64]) -> (Vec<f64>, usize) {
    let clock = clock().lock().expect("clock");
    let mut done = Vec::new();
    let mut missing = 0;
    for seq in seqs {
        match clock.get(seq) {
            Some((at, Some(start))) => done.push(start.duration_since(*at).as_secs_f64() * 1e6),
            _ => missing += 1,
        }
    }
    done.sort_by(f64::total_cmp);
    (done, missing)
}

fn all_started(seqs: &[u64]) -> bool {
    let clock = clock().lock().expect("clock");
    seqs.iter()
        .all(|seq| matches!(clock.get(seq), Some((_, Some(_)))))
}

// ---------------------------------------------------------------------------
// Configuration.

#[derive(Clone, Debug)]
struct Config {
    mode: Mode,
    rounds: usize,
    jobs: usize,
    latency_jobs: usize,
    /// Rows per execution run (the ceiling's and the workers').
    exec_jobs: usize,
    /// With `--prefetch N`: a second workers run with `Workers::prefetch(N)`,
    /// beside the one with the default.
    prefetch: Option<usize>,
}

impl Config {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mode = Mode::from_args(&args);
        let (rounds, jobs, latency_jobs, exec_jobs) = match mode {
            Mode::Smoke => (1, 64, 8, 64),
            Mode::Quick => (1, 400, 30, 2000),
            Mode::Full => (5, 10_000, 60, 20_000),
        };
        let mut config = Self {
            mode,
            rounds,
            jobs,
            latency_jobs,
            exec_jobs,
            prefetch: None,
        };
        let mut flags = Flags::new("durable", args);
        while let Some(flag) = flags.next() {
            match flag.as_str() {
                "--rounds" => config.rounds = parse(&flags.value("--rounds")),
                "--jobs" => config.jobs = parse(&flags.value("--jobs")),
                "--latency-jobs" => config.latency_jobs = parse(&flags.value("--latency-jobs")),
                "--exec-jobs" => config.exec_jobs = parse(&flags.value("--exec-jobs")),
                "--prefetch" => config.prefetch = Some(parse(&flags.value("--prefetch"))),
                other => flags.ignore(other),
            }
        }
        config.rounds = config.rounds.clamp(1, 50);
        // More would be refused by the default `max_pending`, which the
        // `enqueue` runs measure with.
        config.jobs = config.jobs.clamp(16, DEFAULT_MAX_PENDING);
        config.latency_jobs = config.latency_jobs.clamp(2, 10_000);
        config.exec_jobs = config.exec_jobs.clamp(16, 1_000_000);
        config.prefetch = config.prefetch.map(|jobs| jobs.clamp(1, 100_000));
        config
    }
}

// ---------------------------------------------------------------------------
// Engines.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn key(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// An engine's queue, plus a pool of our own for counting and deleting rows.
#[derive(Clone)]
struct Database {
    engine: Engine,
    queue: JobQueue,
    /// A second queue on the same database, with connections of its own:
    /// to the workers of `queue`, its pushes are another process's (no
    /// in-process announcement reaches them).
    other_queue: JobQueue,
    admin: Admin,
}

#[derive(Clone)]
enum Admin {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Database {
    /// Claim loops run at once for (2): one writer on SQLite.
    fn claimers(&self) -> usize {
        match self.engine {
            Engine::Sqlite => 1,
            Engine::Postgres => PG_CLAIMERS,
        }
    }

    async fn rows(&self, job_type: &str) -> i64 {
        let result = match &self.admin {
            Admin::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE job_type = ?1")
                    .bind(job_type)
                    .fetch_one(pool)
                    .await
            }
            Admin::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM apalis.jobs WHERE job_type = $1")
                    .bind(job_type)
                    .fetch_one(pool)
                    .await
            }
        };
        result.expect("counting rows")
    }

    async fn delete(&self, job_type: &str) {
        let result = match &self.admin {
            Admin::Sqlite(pool) => sqlx::query("DELETE FROM Jobs WHERE job_type = ?1")
                .bind(job_type)
                .execute(pool)
                .await
                .map(drop),
            Admin::Postgres(pool) => sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
                .bind(job_type)
                .execute(pool)
                .await
                .map(drop),
        };
        result.expect("deleting rows");
    }

    /// PostgreSQL: clears `table` of the dead rows the bench's own runs
    /// leave (every claim and delete leaves one per row), so that each
    /// execution run starts on the same table, not on one that holds
    /// whatever autovacuum (once a minute) has not cleared yet: claims walk
    /// the index entries of dead rows too, and a round may leave hundreds
    /// of thousands. SQLite frees a deleted row at once.
    async fn vacuum(&self, table: Table) {
        if let Admin::Postgres(pool) = &self.admin {
            let vacuum = match table {
                Table::Jobs => "VACUUM apalis.jobs",
                Table::Minimal => "VACUUM bench_ceiling",
            };
            sqlx::raw_sql(vacuum)
                .execute(pool)
                .await
                .expect("vacuuming the job table");
        }
    }
}

async fn open_sqlite(dir: &Path) -> Database {
    let path = dir.join("jobs.db");
    let queue = JobQueue::sqlite(&path).await.expect("the SQLite queue");
    let other_queue = JobQueue::sqlite(&path)
        .await
        .expect("a second SQLite queue");
    // The same durability as the queue's connections: the raw ceilings
    // must `fsync` as the queue does.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5));
    let admin = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .expect("the SQLite admin pool");
    Database {
        engine: Engine::Sqlite,
        queue,
        other_queue,
        admin: Admin::Sqlite(admin),
    }
}

async fn open_postgres(url: &str) -> Result<Database, String> {
    let queue = JobQueue::postgres(url)
        .await
        .map_err(|error| format!("JobQueue::postgres: {error}"))?;
    let other_queue = JobQueue::postgres(url)
        .await
        .map_err(|error| format!("a second JobQueue::postgres: {error}"))?;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .map_err(|error| format!("connecting: {error}"))?;
    Ok(Database {
        engine: Engine::Postgres,
        queue,
        other_queue,
        admin: Admin::Postgres(admin),
    })
}

// ---------------------------------------------------------------------------
// A private PostgreSQL server.

struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl PgServer {
    fn start() -> Result<(Self, String), String> {
        let bin =
            find_pg_bin().ok_or("no initdb/pg_ctl under /usr/lib/postgresql/*/bin or on PATH")?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("durable-bench-pg")
            .tempdir()
            .map_err(|error| format!("a temporary directory: {error}"))?;
        let data = dir.path().join("data");
        if as_postgres {
            run(Command::new("chown").arg("postgres").arg(dir.path()))?;
        }
        let server = Self {
            bin,
            data,
            as_postgres,
            _dir: dir,
        };
        server.run_pg(
            "initdb",
            &[
                "-D",
                &server.data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| format!("a free port: {error}"))?
            .port();
        let socket_dir = server
            .data
            .parent()
            .expect("a parent")
            .display()
            .to_string();
        let log = server
            .data
            .with_file_name("server.log")
            .display()
            .to_string();
        let options = format!("-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1");
        server.run_pg(
            "pg_ctl",
            &[
                "-D",
                &server.data.display().to_string(),
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                "start",
            ],
        )?;
        Ok((
            server,
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        ))
    }

    fn run_pg(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command.args(args);
        run(&mut command)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        match self.run_pg(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", "20", "stop"],
        ) {
            Ok(()) => eprintln!("stopped the private PostgreSQL server"),
            Err(error) => eprintln!("could not stop the private PostgreSQL server: {error}"),
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|error| format!("{command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}; {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn find_pg_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    // The newest version first (directory names are version numbers).
    candidates.sort_by_key(|path| {
        std::cmp::Reverse(
            path.parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

// ---------------------------------------------------------------------------
// Requests through the layer.

/// What a handler does with its request's `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Add,
    EnqueueNow,
    Enqueue,
}

impl Call {
    fn key(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::EnqueueNow => "enqueue_now",
            Self::Enqueue => "enqueue",
        }
    }
}

/// The sequence number of a latency run's request; throughput requests
/// carry none (their handler takes a fresh number and records nothing).
#[derive(Clone, Copy)]
struct Seq(u64);

/// The layer around a handler that does `call` with a job `J`.
fn service<J: Probe>(
    supervisor: &Supervisor,
    queue: Option<&JobQueue>,
    call: Call,
) -> impl Service<
    Request<()>,
    Response = Response<impl Body<Data: Send, Error: std::fmt::Debug> + Send>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    let queue = queue.cloned();
    supervisor
        .layer()
        .layer(service_fn(move |request: Request<()>| {
            let queue = queue.clone();
            async move {
                let tasks = tasks_of(&request);
                let recorded = request.extensions().get::<Seq>().copied();
                if let Some(Seq(seq)) = recorded {
                    enqueued(seq);
                }
                let seq = recorded.map_or_else(next_seq, |Seq(seq)| seq);
                match call {
                    Call::Add if recorded.is_some() => tasks.add(async move { started(seq) }),
                    Call::Add => tasks.add(async {}),
                    Call::EnqueueNow => {
                        let queue = queue.as_ref().expect("a job queue");
                        queue.push(&J::with_seq(seq)).await.expect("push");
                    }
                    Call::Enqueue => {
                        let queue = queue.as_ref().expect("a job queue");
                        queue.enqueue(tasks, J::with_seq(seq)).expect("enqueue");
                    }
                }
                Ok::<_, Infallible>(ok())
            }
        }))
}

/// Sends one request and reads the response body to its end, which hands
/// the request's tasks off.
async fn send<S, B>(service: &mut S, request: Request<()>)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let response = service
        .ready()
        .await
        .expect("infallible")
        .call(request)
        .await
        .expect("infallible");
    response.into_body().collect().await.expect("the body");
}

// ---------------------------------------------------------------------------
// Throughput.

#[derive(Clone, Debug)]
struct ThroughputRun {
    key: String,
    accepted_per_s: f64,
    /// `enqueue`: stored/s; `add`: done/s.
    settled_per_s: Option<f64>,
    push_retries: u64,
}

async fn throughput(
    database: Option<&Database>,
    path: Call,
    producers: usize,
    jobs: usize,
) -> ThroughputRun {
    let key = format!(
        "{}/{}/p{producers}",
        database.map_or("task", |d| d.engine.key()),
        path.key()
    );
    let supervisor = Arc::new(Supervisor::builder().max_queued(1 << 20).build());
    let before = database.map(|d| d.queue.stats());
    let started_at = Instant::now();
    let mut producer_tasks = Vec::new();
    for producer in 0..producers {
        let share = jobs / producers + usize::from(producer < jobs % producers);
        let mut service = service::<Filler>(&supervisor, database.map(|d| &d.queue), path);
        producer_tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                send(&mut service, Request::new(())).await;
            }
        }));
    }
    for task in producer_tasks {
        task.await.expect("a producer panicked");
    }
    let accepted = started_at.elapsed();
    let settled = match (path, database, before) {
        (Call::Add, _, _) => {
            tokio::time::timeout(DRAIN_TIMEOUT, supervisor.wait_idle())
                .await
                .expect("the tasks ran");
            Some(started_at.elapsed())
        }
        (Call::Enqueue, Some(database), Some(before)) => {
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            loop {
                let now = database.queue.stats();
                if now.pushed_deferred - before.pushed_deferred >= jobs as u64 {
                    break Some(started_at.elapsed());
                }
                assert!(Instant::now() < deadline, "deferred pushes did not finish");
                sleep(Duration::from_millis(1)).await;
            }
        }
        _ => None,
    };
    let supervisor = Arc::into_inner(supervisor).expect("the producers are done");
    let report = tokio::time::timeout(STOP_TIMEOUT, supervisor.shutdown())
        .await
        .expect("shutdown");
    assert!(report.is_complete(), "{report}");
    let push_retries = match (database, before) {
        (Some(database), Some(before)) => {
            let after = database.queue.stats();
            assert_eq!(after.abandoned, before.abandoned, "no job abandoned");
            let rows = database.rows(Filler::NAME).await;
            assert_eq!(
                rows, jobs as i64,
                "{key}: every accepted job is stored, once"
            );
            database.delete(Filler::NAME).await;
            after.push_retries - before.push_retries
        }
        _ => 0,
    };
    ThroughputRun {
        key,
        accepted_per_s: jobs as f64 / accepted.as_secs_f64(),
        settled_per_s: settled.map(|d| jobs as f64 / d.as_secs_f64()),
        push_retries,
    }
}

// ---------------------------------------------------------------------------
// The physical limits, and what the queue reaches of them.

/// Rows per transaction of the enqueue ceiling, and jobs per `push_all`
/// call: the group commit's largest batch.
const INSERT_BATCH: usize = 512;
/// Rows claimed at a time by the execution ceiling: as many as the
/// workers (concurrency 16, the default prefetch) claim per fetch.
const CLAIM_BATCH: usize = 16 * DEFAULT_PREFETCH_MULTIPLIER;
/// Loops claiming at once in the PostgreSQL execution ceiling (what `SKIP
/// LOCKED` is for); SQLite has one writer, so one loop.
const PG_CLAIMERS: usize = 4;
/// Into how many loops PostgreSQL's raw claim also splits one loop's
/// [`CLAIM_BATCH`] rows: whether claims of fewer rows at once go faster
/// than one claim while holding as many rows, which is all a worker at
/// the default prefetch may hold.
const SPLIT_LOOPS: [usize; 2] = [2, 4];
/// The report's keys for the [`SPLIT_LOOPS`] figures.
const SPLIT_KEYS: [&str; 2] = ["split_2", "split_4"];
/// The job type of the rows the job-table ceilings insert (and delete).
const CEILING_JOB_TYPE: &str = "bench_ceiling";
/// The worker the job-table claim ceiling claims for.
const CEILING_WORKER: &str = "bench-ceiling";
/// apalis's figure for graphile-worker on PostgreSQL, no-op jobs/s.
const GRAPHILE_WORKER: f64 = 41_000.0;

impl Database {
    /// Creates the ceilings' scratch table if missing, and empties it: the
    /// row of apalis's job table (id, type, JSON bytes, status, attempts,
    /// run at, lock), its primary key, and a partial index on pending rows
    /// in the order the claim takes them, so that a claim reads only the
    /// rows it takes, however many are pending.
    async fn scratch_reset(&self) {
        let result = match &self.admin {
            Admin::Sqlite(pool) => {
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS bench_ceiling (\
                       id TEXT PRIMARY KEY NOT NULL, job_type TEXT NOT NULL, job BLOB NOT NULL, \
                       status TEXT NOT NULL DEFAULT 'Pending', attempts INTEGER NOT NULL DEFAULT 0, \
                       max_attempts INTEGER NOT NULL, \
                       run_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')), \
                       lock_by TEXT, lock_at INTEGER, done_at INTEGER); \
                     DROP INDEX IF EXISTS bench_ceiling_fetch; \
                     CREATE INDEX IF NOT EXISTS bench_ceiling_claim \
                       ON bench_ceiling (job_type, run_at, id) WHERE status = 'Pending'; \
                     DELETE FROM bench_ceiling;",
                )
                .execute(pool)
                .await
                .map(drop)
            }
            Admin::Postgres(pool) => {
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS bench_ceiling (\
                       id TEXT PRIMARY KEY, job_type TEXT NOT NULL, job BYTEA NOT NULL, \
                       status TEXT NOT NULL DEFAULT 'Pending', attempts INTEGER NOT NULL DEFAULT 0, \
                       max_attempts INTEGER NOT NULL, run_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
                       lock_by TEXT, lock_at TIMESTAMPTZ, done_at TIMESTAMPTZ); \
                     DROP INDEX IF EXISTS bench_ceiling_fetch; \
                     CREATE INDEX IF NOT EXISTS bench_ceiling_claim \
                       ON bench_ceiling (job_type, run_at, id) WHERE status = 'Pending'; \
                     TRUNCATE bench_ceiling;",
                )
                .execute(pool)
                .await
                .map(drop)
            }
        };
        result.expect("the scratch table");
    }

    /// Inserts `rows` raw in one multi-row `INSERT`, in one transaction.
    async fn scratch_insert(&self, rows: &[(String, Vec<u8>)]) {
        fn values<DB>(builder: &mut sqlx::QueryBuilder<DB>, rows: &[(String, Vec<u8>)])
        where
            DB: sqlx::Database,
            for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
            for<'a> &'a [u8]: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
            for<'a> i32: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        {
            builder.push_values(rows, |mut row, (id, job)| {
                row.push_bind(id.as_str())
                    .push_bind(Noop::NAME)
                    .push_bind(job.as_slice())
                    .push_bind(5_i32);
            });
        }
        const INSERT: &str = "INSERT INTO bench_ceiling (id, job_type, job, max_attempts) ";
        let result = match &self.admin {
            Admin::Sqlite(pool) => {
                async {
                    let mut tx = pool.begin().await?;
                    let mut builder = sqlx::QueryBuilder::new(INSERT);
                    values(&mut builder, rows);
                    builder.build().execute(&mut *tx).await?;
                    tx.commit().await
                }
                .await
            }
            Admin::Postgres(pool) => {
                async {
                    let mut tx = pool.begin().await?;
                    let mut builder = sqlx::QueryBuilder::new(INSERT);
                    values(&mut builder, rows);
                    builder.build().execute(&mut *tx).await?;
                    tx.commit().await
                }
                .await
            }
        };
        result.expect("a raw insert");
    }
}

/// How a raw insert commits.
#[derive(Clone, Copy)]
enum Commit {
    /// Inside `BEGIN` … `COMMIT`, as a batch of statements would.
    Transaction,
    /// As the statement alone, its own transaction: one round trip, as
    /// the queue stores a lone plain job.
    Statement,
}

impl Commit {
    /// Runs `builder`'s statement on `pool`, committed as `self` says.
    async fn execute<DB>(
        self,
        pool: &sqlx::Pool<DB>,
        mut builder: sqlx::QueryBuilder<DB>,
    ) -> Result<(), sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
    {
        match self {
            Self::Transaction => {
                let mut tx = pool.begin().await?;
                builder.build().execute(&mut *tx).await?;
                tx.commit().await
            }
            Self::Statement => builder.build().execute(pool).await.map(drop),
        }
    }
}

impl Database {
    /// Inserts `rows` raw into apalis's own job table (its indexes, and on
    /// PostgreSQL its per-row notification trigger), as job type
    /// [`CEILING_JOB_TYPE`], in one multi-row `INSERT`, committed as
    /// `commit` says.
    async fn job_table_insert(&self, rows: &[(String, Vec<u8>)], commit: Commit) {
        let result = match &self.admin {
            Admin::Sqlite(pool) => {
                async {
                    let mut builder = sqlx::QueryBuilder::new(
                        "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, \
                         run_at, priority, metadata) ",
                    );
                    builder.push_values(rows, |mut row, (id, job)| {
                        row.push_bind(job.as_slice())
                            .push_bind(id.as_str())
                            .push_bind(CEILING_JOB_TYPE)
                            .push_bind("Pending")
                            .push_bind(0_i64)
                            .push_bind(5_i64)
                            .push_bind(0_i64)
                            .push_bind(0_i64)
                            .push_bind("{}");
                    });
                    commit.execute(pool, builder).await
                }
                .await
            }
            Admin::Postgres(pool) => {
                async {
                    let mut builder = sqlx::QueryBuilder::new(
                        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, \
                         max_attempts, run_at, priority) ",
                    );
                    builder.push_values(rows, |mut row, (id, job)| {
                        row.push_bind(id.as_str())
                            .push_bind(CEILING_JOB_TYPE)
                            .push_bind(job.as_slice())
                            .push_bind("Pending")
                            .push_bind(0_i32)
                            .push_bind(5_i32)
                            .push_unseparated(", now()")
                            .push_bind(0_i32);
                    });
                    commit.execute(pool, builder).await
                }
                .await
            }
        };
        result.expect("a raw insert into the job table");
    }
}

impl Admin {
    /// Registers [`CEILING_WORKER`] in apalis's worker table (a claimed
    /// job's `lock_by` must name a worker).
    async fn register_ceiling_worker(&self) {
        let result = match self {
            Self::Sqlite(pool) => sqlx::query(
                "INSERT OR IGNORE INTO Workers (id, worker_type, storage_name, layers) \
                 VALUES (?1, ?2, 'bench', '')",
            )
            .bind(CEILING_WORKER)
            .bind(CEILING_JOB_TYPE)
            .execute(pool)
            .await
            .map(drop),
            Self::Postgres(pool) => sqlx::query(
                "INSERT INTO apalis.workers (id, worker_type, storage_name, layers) \
                 VALUES ($1, $2, 'bench', '') ON CONFLICT DO NOTHING",
            )
            .bind(CEILING_WORKER)
            .bind(CEILING_JOB_TYPE)
            .execute(pool)
            .await
            .map(drop),
        };
        result.expect("registering the ceiling's worker");
    }

    /// Claims up to `batch` pending rows of `table` (one commit), then
    /// marks them done (another): how many it claimed.
    async fn claim_and_complete(&self, table: Table, batch: usize) -> usize {
        let result = match self {
            Self::Sqlite(pool) => {
                async {
                    let (claim, complete) = table.sqlite_statements();
                    let ids: Vec<String> = sqlx::query_scalar(claim)
                        .bind(table.job_type())
                        .bind(batch as i64)
                        .bind(table.worker())
                        .fetch_all(pool)
                        .await?;
                    if !ids.is_empty() {
                        let json = format!("[\"{}\"]", ids.join("\",\""));
                        sqlx::query(complete).bind(json).execute(pool).await?;
                    }
                    Ok::<_, sqlx::Error>(ids.len())
                }
                .await
            }
            Self::Postgres(pool) => {
                async {
                    let (claim, complete) = table.postgres_statements();
                    let ids: Vec<String> = sqlx::query_scalar(claim)
                        .bind(table.job_type())
                        .bind(batch as i64)
                        .bind(table.worker())
                        .fetch_all(pool)
                        .await?;
                    if !ids.is_empty() {
                        sqlx::query(complete).bind(&ids).execute(pool).await?;
                    }
                    Ok(ids.len())
                }
                .await
            }
        };
        result.expect("a raw claim and complete")
    }
}

/// `n` rows (id, JSON bytes) as a job's: a fresh id, `{"seq":N}`.
fn scratch_rows(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let seq = next_seq();
            (
                format!("{seq:026}"),
                format!("{{\"seq\":{seq}}}").into_bytes(),
            )
        })
        .collect()
}

/// One round of an engine's limits and of what the queue reaches of them
/// (the `push` and `enqueue` figures are the throughput runs').
#[derive(Clone, Debug)]
struct LimitsRun {
    engine: Engine,
    /// (1): raw multi-row `INSERT`s into apalis's job table,
    /// [`INSERT_BATCH`] rows per commit, rows/s.
    insert_ceiling: f64,
    /// The same into a minimal table (primary key, one partial index).
    minimal_insert: f64,
    /// Raw single-row `INSERT`s into the minimal table, one transaction
    /// each, one after the other, rows/s.
    one_commit: f64,
    /// Raw single-row `INSERT`s into apalis's job table, each statement
    /// its own commit, one after the other, rows/s: what a lone `push`
    /// sends the database.
    one_statement: f64,
    /// `JobQueue::push` of one job after the other, jobs/s, in blocks
    /// alternating with those of `one_statement`.
    lone_push: f64,
    /// The median over pairs of blocks of `lone_push` ÷ `one_statement`.
    lone_push_ratio: f64,
    /// `JobQueue::push_all` of [`INSERT_BATCH`] jobs at a time, jobs/s.
    push_all: f64,
    /// (2): raw claim-and-complete loops on apalis's job table,
    /// [`CLAIM_BATCH`] rows at a time, rows/s.
    claim_ceiling: f64,
    /// The same on the minimal table.
    minimal_claim: f64,
    /// (2) with one loop (on SQLite, (2) itself).
    one_loop_claim: f64,
    /// PostgreSQL: the [`CLAIM_BATCH`] rows of one loop split across
    /// [`SPLIT_LOOPS`] loops claiming at once (as many rows held in all),
    /// rows/s, one figure per entry of [`SPLIT_LOOPS`].
    split_claims: Vec<f64>,
    /// `Workers` with concurrency 16 running no-op jobs, jobs/s.
    executed: f64,
    /// The same with `--prefetch N`'s prefetch.
    executed_prefetch: Option<f64>,
}

/// Rows/s of raw inserts into apalis's job table: `rows` in transactions
/// of [`INSERT_BATCH`].
async fn insert_ceiling(database: &Database, rows: usize) -> f64 {
    database.delete(CEILING_JOB_TYPE).await;
    let rows = scratch_rows(rows);
    let started = Instant::now();
    for batch in rows.chunks(INSERT_BATCH) {
        database.job_table_insert(batch, Commit::Transaction).await;
    }
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    database.delete(CEILING_JOB_TYPE).await;
    rate
}

/// Rows/s of raw inserts into the minimal scratch table: `rows` in
/// transactions of [`INSERT_BATCH`].
async fn minimal_insert(database: &Database, rows: usize) -> f64 {
    database.scratch_reset().await;
    let rows = scratch_rows(rows);
    let started = Instant::now();
    for batch in rows.chunks(INSERT_BATCH) {
        database.scratch_insert(batch).await;
    }
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

/// Rows/s of raw inserts of one row per transaction into the minimal
/// table, one after the other.
async fn one_commit_per_row(database: &Database, rows: usize) -> f64 {
    database.scratch_reset().await;
    let rows = scratch_rows(rows);
    let started = Instant::now();
    for row in rows.chunks(1) {
        database.scratch_insert(row).await;
    }
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

/// Pairs of blocks in [`lone_pushes`].
const LONE_PAIRS: usize = 10;

/// A lone push against what it sends the database.
struct LonePushes {
    /// Raw single-row insert statements into apalis's job table, one after
    /// the other, rows/s.
    statement: f64,
    /// `JobQueue::push` of one job after the other, jobs/s.
    push: f64,
    /// Per pair of blocks, push ÷ statement; their median.
    ratio: f64,
}

/// `rows` raw single-row inserts and `rows` lone pushes, in [`LONE_PAIRS`]
/// pairs of blocks that alternate (and alternate which goes first), so
/// that both see the same moments of the machine: a commit's `fsync` on
/// this machine moves by more from one second to the next than the two
/// differ by. Both run in a task of the runtime, as a handler's push does,
/// not on the thread that blocks on the bench.
async fn lone_pushes(database: &Database, rows: usize) -> LonePushes {
    let database = database.clone();
    tokio::spawn(async move { lone_pushes_in_task(&database, rows).await })
        .await
        .expect("the lone pushes panicked")
}

async fn lone_pushes_in_task(database: &Database, rows: usize) -> LonePushes {
    database.delete(CEILING_JOB_TYPE).await;
    let block = (rows / LONE_PAIRS).max(1);
    let (mut statement_time, mut push_time) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::with_capacity(LONE_PAIRS);
    for pair in 0..LONE_PAIRS {
        let mut statements = Duration::ZERO;
        let mut pushes = Duration::ZERO;
        for statements_first in [pair % 2 == 0, pair % 2 == 1] {
            let started = Instant::now();
            if statements_first {
                for row in scratch_rows(block).chunks(1) {
                    database.job_table_insert(row, Commit::Statement).await;
                }
                statements = started.elapsed();
            } else {
                for _ in 0..block {
                    let job = Filler::with_seq(next_seq());
                    database.queue.push(&job).await.expect("a lone push");
                }
                pushes = started.elapsed();
            }
        }
        ratios.push(statements.as_secs_f64() / pushes.as_secs_f64());
        statement_time += statements;
        push_time += pushes;
    }
    database.delete(CEILING_JOB_TYPE).await;
    database.delete(Filler::NAME).await;
    let done = (block * LONE_PAIRS) as f64;
    LonePushes {
        statement: done / statement_time.as_secs_f64(),
        push: done / push_time.as_secs_f64(),
        ratio: median(ratios),
    }
}

/// Rows/s claimed and completed from `rows` pending rows of apalis's job
/// table by `claimers` loops of `batch` rows.
async fn claim_ceiling(database: &Database, rows: usize, claimers: usize, batch: usize) -> f64 {
    database.delete(CEILING_JOB_TYPE).await;
    database.admin.register_ceiling_worker().await;
    for batch in scratch_rows(rows).chunks(INSERT_BATCH) {
        database.job_table_insert(batch, Commit::Transaction).await;
    }
    database.vacuum(Table::Jobs).await;
    let rate = claim_loops(database, rows, Table::Jobs, claimers, batch).await;
    database.delete(CEILING_JOB_TYPE).await;
    rate
}

/// The same from `rows` pending rows of the minimal table.
async fn minimal_claim(database: &Database, rows: usize) -> f64 {
    database.scratch_reset().await;
    for batch in scratch_rows(rows).chunks(INSERT_BATCH) {
        database.scratch_insert(batch).await;
    }
    database.vacuum(Table::Minimal).await;
    claim_loops(
        database,
        rows,
        Table::Minimal,
        database.claimers(),
        CLAIM_BATCH,
    )
    .await
}

/// Which table a claim loop claims from.
#[derive(Clone, Copy)]
enum Table {
    /// apalis's job table: rows of [`CEILING_JOB_TYPE`], in apalis's claim
    /// order, for [`CEILING_WORKER`]. PostgreSQL's claim names its rows
    /// with `= ANY(ARRAY(…))`, a plan that does not depend on estimates.
    Jobs,
    /// The minimal scratch table.
    Minimal,
}

impl Table {
    fn job_type(self) -> &'static str {
        match self {
            Self::Jobs => CEILING_JOB_TYPE,
            Self::Minimal => Noop::NAME,
        }
    }

    fn worker(self) -> &'static str {
        match self {
            Self::Jobs => CEILING_WORKER,
            Self::Minimal => "bench",
        }
    }

    /// SQLite's claim (binds: job type, batch, worker; returns the ids) and
    /// completion (binds: the ids as a JSON array).
    fn sqlite_statements(self) -> (&'static str, &'static str) {
        match self {
            Self::Jobs => (
                "UPDATE Jobs SET status = 'Running', lock_by = ?3, \
                   lock_at = strftime('%s', 'now') \
                 WHERE rowid IN (SELECT rowid FROM Jobs \
                   WHERE job_type = ?1 AND status = 'Pending' AND lock_by IS NULL \
                   ORDER BY priority DESC, run_at ASC, id ASC LIMIT ?2) \
                 RETURNING id",
                "UPDATE Jobs SET status = 'Done', attempts = 1, \
                   done_at = strftime('%s', 'now') \
                 WHERE id IN (SELECT value FROM json_each(?1))",
            ),
            Self::Minimal => (
                "UPDATE bench_ceiling SET status = 'Running', lock_by = ?3, \
                   lock_at = strftime('%s', 'now') \
                 WHERE rowid IN (SELECT rowid FROM bench_ceiling \
                   WHERE job_type = ?1 AND status = 'Pending' \
                   ORDER BY run_at, id LIMIT ?2) \
                 RETURNING id",
                "UPDATE bench_ceiling SET status = 'Done', attempts = 1, \
                   done_at = strftime('%s', 'now') \
                 WHERE id IN (SELECT value FROM json_each(?1))",
            ),
        }
    }

    /// PostgreSQL's claim (binds: job type, batch, worker; returns the ids)
    /// and completion (binds: the ids).
    fn postgres_statements(self) -> (&'static str, &'static str) {
        match self {
            Self::Jobs => (
                "UPDATE apalis.jobs SET status = 'Running', lock_by = $3, lock_at = now() \
                 WHERE id = ANY(ARRAY(SELECT id FROM apalis.jobs \
                   WHERE job_type = $1 AND status = 'Pending' AND run_at < now() \
                   ORDER BY priority DESC, run_at ASC LIMIT $2 FOR UPDATE SKIP LOCKED)) \
                 RETURNING id",
                "UPDATE apalis.jobs SET status = 'Done', attempts = 1, \
                   done_at = now() WHERE id = ANY($1)",
            ),
            Self::Minimal => (
                "WITH c AS (SELECT id FROM bench_ceiling \
                   WHERE job_type = $1 AND status = 'Pending' \
                   ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE bench_ceiling t SET status = 'Running', lock_by = $3, \
                   lock_at = now() \
                 FROM c WHERE t.id = c.id RETURNING t.id",
                "UPDATE bench_ceiling SET status = 'Done', attempts = 1, \
                   done_at = now() WHERE id = ANY($1)",
            ),
        }
    }
}

/// Rows/s claimed and completed by `claimers` loops of `batch` rows until
/// `table` has no pending row left; every one of the `rows` claimed once.
async fn claim_loops(
    database: &Database,
    rows: usize,
    table: Table,
    claimers: usize,
    batch: usize,
) -> f64 {
    let started = Instant::now();
    let loops: Vec<_> = (0..claimers)
        .map(|_| {
            let admin = database.admin.clone();
            tokio::spawn(async move {
                let mut done = 0;
                loop {
                    match admin.claim_and_complete(table, batch).await {
                        0 => break done,
                        n => done += n,
                    }
                }
            })
        })
        .collect();
    let mut done = 0;
    for claimer in loops {
        done += claimer.await.expect("a claimer panicked");
    }
    let elapsed = started.elapsed();
    assert_eq!(done, rows, "every row claimed once");
    rows as f64 / elapsed.as_secs_f64()
}

/// `JobQueue::push_all` of `jobs` no-op jobs, [`INSERT_BATCH`] at a time
/// (jobs/s), then `Workers` with concurrency 16 (and `prefetch`, if given)
/// started on them: jobs/s from the start of the workers until this
/// process counts every job succeeded.
async fn push_all_then_execute(
    database: &Database,
    jobs: usize,
    prefetch: Option<usize>,
) -> (f64, f64) {
    let queue = &database.queue;
    let before = queue.stats();
    let all: Vec<Noop> = (0..jobs).map(|_| Noop::with_seq(next_seq())).collect();
    let started = Instant::now();
    for batch in all.chunks(INSERT_BATCH) {
        queue.push_all(batch).await.expect("push_all");
    }
    let pushed = jobs as f64 / started.elapsed().as_secs_f64();
    database.vacuum(Table::Jobs).await;

    let supervisor = Supervisor::new();
    let started = Instant::now();
    let workers = Workers::new(queue)
        .register::<Noop>()
        .concurrency(16)
        .name(format!("bench-noop-{}", next_seq()));
    match prefetch {
        Some(jobs) => workers.prefetch(jobs),
        None => workers,
    }
    .spawn(&supervisor);
    let deadline = started + DRAIN_TIMEOUT * 5;
    while queue.stats().succeeded - before.succeeded < jobs as u64 {
        assert!(Instant::now() < deadline, "the no-op jobs did not finish");
        sleep(Duration::from_millis(1)).await;
    }
    let executed = jobs as f64 / started.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(STOP_TIMEOUT, supervisor.shutdown()).await;
    database.delete(Noop::NAME).await;
    (pushed, executed)
}

/// One round of `database`'s limits and of what the queue reaches of them.
async fn limits(database: &Database, config: &Config) -> LimitsRun {
    let insert_ceiling = insert_ceiling(database, config.exec_jobs).await;
    let minimal_insert = minimal_insert(database, config.exec_jobs).await;
    let one_commit = one_commit_per_row(database, (config.jobs / 4).clamp(16, 500)).await;
    let lone = lone_pushes(database, (config.jobs / 4).clamp(16, 500)).await;
    let rows = config.exec_jobs;
    let claim_ceiling = claim_ceiling(database, rows, database.claimers(), CLAIM_BATCH).await;
    let minimal_claim = minimal_claim(database, rows).await;
    let (one_loop_claim, split_claims) = match database.engine {
        Engine::Sqlite => (claim_ceiling, Vec::new()),
        Engine::Postgres => {
            let one_loop = self::claim_ceiling(database, rows, 1, CLAIM_BATCH).await;
            let mut split = Vec::new();
            for loops in SPLIT_LOOPS {
                let batch = CLAIM_BATCH / loops;
                split.push(self::claim_ceiling(database, rows, loops, batch).await);
            }
            (one_loop, split)
        }
    };
    database.scratch_reset().await;
    let (push_all, executed) = push_all_then_execute(database, config.exec_jobs, None).await;
    let executed_prefetch = match config.prefetch {
        Some(prefetch) => Some(
            push_all_then_execute(database, config.exec_jobs, Some(prefetch))
                .await
                .1,
        ),
        None => None,
    };
    LimitsRun {
        engine: database.engine,
        insert_ceiling,
        minimal_insert,
        one_commit,
        one_statement: lone.statement,
        lone_push: lone.push,
        lone_push_ratio: lone.ratio,
        push_all,
        claim_ceiling,
        minimal_claim,
        one_loop_claim,
        split_claims,
        executed,
        executed_prefetch,
    }
}

// ---------------------------------------------------------------------------
// Latency.

#[derive(Clone, Debug)]
struct LatencyRun {
    key: String,
    /// Sorted latencies, µs.
    latencies: Vec<f64>,
    missing: usize,
}

impl LatencyRun {
    fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies, q)
    }
}

/// Which queue a latency run's requests push through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pusher {
    /// The workers' own queue.
    Same,
    /// [`Database::other_queue`]: as another process would.
    Other,
}

/// `jobs` requests through the layer over [`WINDOW`], each doing `path`
/// with a job `J` (or, without a database, adding a task) through
/// `pusher`'s queue, and when each job started: workers registered for `J`
/// alone on the database's own queue, started fresh and idle.
async fn latency<J: Probe>(
    database: Option<&Database>,
    path: Call,
    pusher: Pusher,
    jobs: usize,
) -> LatencyRun {
    let key = format!(
        "{}/{}{}",
        database.map_or("task", |d| d.engine.key()),
        path.key(),
        match pusher {
            Pusher::Same => "",
            Pusher::Other => "/other_queue",
        }
    );
    let supervisor = Arc::new(Supervisor::new());
    if let Some(database) = database {
        Workers::new(&database.queue)
            .register::<J>()
            .name(format!("bench-{}-{}", J::NAME, next_seq()))
            .spawn(&supervisor);
    }
    sleep(SETTLE).await;

    let gap = WINDOW / jobs as u32;
    let t0 = tokio::time::Instant::now();
    let mut seqs = Vec::with_capacity(jobs);
    let mut requests = Vec::with_capacity(jobs);
    let queue = database.map(|d| match pusher {
        Pusher::Same => &d.queue,
        Pusher::Other => &d.other_queue,
    });
    let service = service::<J>(&supervisor, queue, path);
    for i in 0..jobs {
        sleep_until(t0 + gap * i as u32).await;
        let seq = next_seq();
        seqs.push(seq);
        let mut service = service.clone();
        requests.push(tokio::spawn(async move {
            let mut request = Request::new(());
            request.extensions_mut().insert(Seq(seq));
            send(&mut service, request).await;
        }));
    }
    for request in requests {
        request.await.expect("a request panicked");
    }
    drop(service);
    // Every job starts within a heartbeat (plus slack) of its enqueue.
    let bound = 2 * DEFAULT_HEARTBEAT + Duration::from_secs(10);
    let deadline = Instant::now() + bound;
    while !all_started(&seqs) && Instant::now() < deadline {
        sleep(Duration::from_millis(2)).await;
    }
    let (latencies, missing) = latencies(&seqs);

    let supervisor = Arc::into_inner(supervisor).expect("the requests are done");
    let _ = tokio::time::timeout(STOP_TIMEOUT, supervisor.shutdown()).await;
    if let Some(database) = database {
        database.delete(J::NAME).await;
    }
    LatencyRun {
        key,
        latencies,
        missing,
    }
}

// ---------------------------------------------------------------------------
// Statistics and output.

/// The `q`-quantile of sorted values by nearest rank; NaN when there are
/// none, which the tables show as "—".
fn percentile(sorted: &[f64], q: f64) -> f64 {
    support::percentile(sorted, q).unwrap_or(f64::NAN)
}

/// The median of the finite values, the lower of the middle two for an
/// even count (unlike `support::median`): a round with no figure (NaN) is
/// left out.
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

/// µs as a readable time.
fn time(us: f64) -> String {
    if !us.is_finite() {
        "—".to_owned()
    } else if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn main() {
    let config = Config::from_args();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let runtime: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");

    // PostgreSQL: DATABASE_URL, or a private server, or skipped.
    let mut server = None;
    let mut postgres_note = "skipped";
    let postgres_url = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            postgres_note = "DATABASE_URL";
            Some(url)
        }
        _ => match PgServer::start() {
            Ok((started, url)) => {
                postgres_note = "a private server started by the bench";
                server = Some(started);
                Some(url)
            }
            Err(why) => {
                println!("PostgreSQL skipped: {why}");
                None
            }
        },
    };

    let (sqlite, postgres) = runtime.block_on(async {
        let sqlite = open_sqlite(dir.path()).await;
        let postgres = match &postgres_url {
            Some(url) => match open_postgres(url).await {
                Ok(database) => Some(database),
                Err(why) => {
                    println!("PostgreSQL skipped: {why}");
                    postgres_note = "skipped";
                    None
                }
            },
            None => None,
        };
        (sqlite, postgres)
    });
    let databases: Vec<&Database> = std::iter::once(&sqlite).chain(postgres.as_ref()).collect();
    eprintln!(
        "durable ({} mode): {} round(s), {} jobs per throughput run, {} per latency run; \
         engines: {}; {cores} cores",
        config.mode,
        config.rounds,
        config.jobs,
        config.latency_jobs,
        databases
            .iter()
            .map(|d| d.engine.key())
            .collect::<Vec<_>>()
            .join(", "),
    );

    let started = Instant::now();
    let mut throughput_rounds: Vec<Vec<ThroughputRun>> = Vec::new();
    let mut latency_rounds: Vec<Vec<LatencyRun>> = Vec::new();
    let mut limits_rounds: Vec<Vec<LimitsRun>> = Vec::new();
    runtime.block_on(async {
        // Warm-up: one small unrecorded pass of every throughput mode.
        for database in &databases {
            throughput(Some(database), Call::EnqueueNow, 4, 64).await;
        }
        throughput(None, Call::Add, 4, 64).await;

        for round in 1..=config.rounds {
            let mut runs = Vec::new();
            for producers in [1, 16] {
                runs.push(throughput(None, Call::Add, producers, config.jobs).await);
                for database in &databases {
                    for path in [Call::EnqueueNow, Call::Enqueue] {
                        runs.push(throughput(Some(database), path, producers, config.jobs).await);
                    }
                }
            }
            for run in &runs {
                eprintln!(
                    "round {round} throughput {:<28} accepted {:>9.0}/s  {}  push retries {}",
                    run.key,
                    run.accepted_per_s,
                    run.settled_per_s
                        .map_or(String::new(), |s| format!("settled {s:>9.0}/s")),
                    run.push_retries,
                );
            }
            throughput_rounds.push(runs);

            let k = config.latency_jobs;
            let mut runs = vec![latency::<Filler>(None, Call::Add, Pusher::Same, k).await];
            for &database in &databases {
                let database = Some(database);
                runs.push(latency::<Pushed>(database, Call::EnqueueNow, Pusher::Same, k).await);
                runs.push(latency::<Deferred>(database, Call::Enqueue, Pusher::Same, k).await);
                runs.push(latency::<Pushed>(database, Call::EnqueueNow, Pusher::Other, k).await);
            }
            for run in &runs {
                eprintln!(
                    "round {round} latency {:<32} p50 {:>9}  p99 {:>9}  max {:>9}  \
                     ({} jobs, {} never started)",
                    run.key,
                    time(run.p(0.5)),
                    time(run.p(0.99)),
                    time(run.p(1.0)),
                    run.latencies.len(),
                    run.missing,
                );
            }
            latency_rounds.push(runs);

            let mut runs = Vec::new();
            for database in &databases {
                let run = limits(database, &config).await;
                eprintln!(
                    "round {round} limits {:<8} insert ceiling {:>7.0}/s (minimal table \
                     {:>7.0}/s)  one commit per row {:>5.0}/s (job table, statement alone {:>5.0}/s, \
                     lone push {:>5.0}/s)  push_all {:>7.0}/s  claim \
                     ceiling {:>6.0}/s (minimal table {:>6.0}/s, one loop {:>6.0}/s)  \
                     workers {:>6.0}/s",
                    run.engine.key(),
                    run.insert_ceiling,
                    run.minimal_insert,
                    run.one_commit,
                    run.one_statement,
                    run.lone_push,
                    run.push_all,
                    run.claim_ceiling,
                    run.minimal_claim,
                    run.one_loop_claim,
                    run.executed,
                );
                for (loops, rate) in SPLIT_LOOPS.iter().zip(&run.split_claims) {
                    eprintln!(
                        "round {round} limits {:<8} claim ceiling, {loops} loops of {} {rate:>6.0}/s",
                        run.engine.key(),
                        CLAIM_BATCH / loops,
                    );
                }
                if let (Some(prefetch), Some(executed)) = (config.prefetch, run.executed_prefetch) {
                    eprintln!(
                        "round {round} limits {:<8} workers at prefetch {prefetch} {executed:>6.0}/s",
                        run.engine.key(),
                    );
                }
                runs.push(run);
            }
            limits_rounds.push(runs);
        }
    });
    let elapsed = started.elapsed();
    let engines: Vec<Engine> = databases.iter().map(|d| d.engine).collect();
    drop(databases);
    drop(postgres);
    drop(sqlite);
    drop(runtime);
    drop(server);

    println!();
    println!(
        "Durable jobs, {} mode: {} round(s), {} jobs per throughput run, {} per latency run \
         over {WINDOW:?}; workers poll every {DEFAULT_POLL_INTERVAL:?}; {cores} cores; \
         PostgreSQL: {postgres_note}; medians over rounds ({:.0} s in all).",
        config.mode,
        config.rounds,
        config.jobs,
        config.latency_jobs,
        elapsed.as_secs_f64(),
    );
    print_throughput(&throughput_rounds);
    print_latency(&latency_rounds);
    for database in &engines {
        print_limits(
            *database,
            &limits_rounds,
            &throughput_rounds,
            &latency_rounds,
            config.prefetch,
        );
    }

    let missing: usize = latency_rounds.iter().flatten().map(|r| r.missing).sum();
    if config.mode == Mode::Smoke {
        assert_eq!(missing, 0, "jobs never started in the smoke pass");
        eprintln!(
            "durable: smoke pass ok (run with `cargo bench -p benches --bench durable` to measure)"
        );
    } else if missing > 0 {
        eprintln!("durable: {missing} job(s) never started; see above");
    }
}

/// The keys of the first round's runs: every round has the same.
fn keys<'a>(rounds: &'a [Vec<impl Keyed + 'a>]) -> impl Iterator<Item = &'a str> {
    rounds.first().into_iter().flatten().map(Keyed::key)
}

trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for ThroughputRun {
    fn key(&self) -> &str {
        &self.key
    }
}

impl Keyed for LatencyRun {
    fn key(&self) -> &str {
        &self.key
    }
}

/// `key`'s run in each round.
fn runs_of<'a, R: Keyed>(rounds: &'a [Vec<R>], key: &'a str) -> impl Iterator<Item = &'a R> {
    rounds
        .iter()
        .filter_map(move |round| round.iter().find(|run| run.key() == key))
}

/// Each throughput mode's medians, and its accepted/s ÷ that of `add` with
/// as many producers, within a round, then the median.
fn print_throughput(rounds: &[Vec<ThroughputRun>]) {
    let mut rows = Vec::new();
    for key in keys(rounds) {
        let runs: Vec<&ThroughputRun> = runs_of(rounds, key).collect();
        let producers = key.rsplit('/').next().unwrap_or("");
        let baseline = format!("task/add/{producers}");
        let ratios: Vec<f64> = rounds
            .iter()
            .filter_map(|round| {
                let of = |key: &str| round.iter().find(|run| run.key == key);
                Some(of(key)?.accepted_per_s / of(&baseline)?.accepted_per_s)
            })
            .collect();
        let settled = median(runs.iter().filter_map(|run| run.settled_per_s).collect());
        let per_round: Vec<String> = runs
            .iter()
            .map(|run| format!("{:.0}", run.accepted_per_s))
            .collect();
        rows.push(vec![
            key.to_owned(),
            format!(
                "{:.0}",
                median(runs.iter().map(|run| run.accepted_per_s).collect())
            ),
            if settled.is_finite() {
                format!("{settled:.0}")
            } else {
                "—".to_owned()
            },
            runs.iter()
                .map(|run| run.push_retries)
                .sum::<u64>()
                .to_string(),
            format!("{:.4}", median(ratios)),
            per_round.join(" / "),
        ]);
    }
    print_table(
        &[
            "engine/path/producers",
            "accepted/s",
            "stored/s (enqueue), done/s (add)",
            "push retries",
            "accepted ÷ add",
            "accepted/s per round",
        ],
        &rows,
    );
}

/// An engine's limits and what the queue reaches of them: medians over
/// rounds, and the ratios (each within a round, then the median) with
/// issue 16's targets.
fn print_limits(
    engine: Engine,
    limits: &[Vec<LimitsRun>],
    throughput: &[Vec<ThroughputRun>],
    latency: &[Vec<LatencyRun>],
    prefetch: Option<usize>,
) {
    let e = engine.key();
    // Per round: the figures by name.
    let rounds: Vec<HashMap<&str, f64>> = limits
        .iter()
        .zip(throughput)
        .zip(latency)
        .filter_map(|((limits, throughput), latency)| {
            let run = limits.iter().find(|run| run.engine == engine)?;
            let put = |key: String| throughput.iter().find(|run| run.key == key);
            let lat = |key: String| latency.iter().find(|run| run.key == key);
            let mut figures = HashMap::from([
                ("insert", run.insert_ceiling),
                ("minimal", run.minimal_insert),
                ("one_commit", run.one_commit),
                ("one_statement", run.one_statement),
                ("lone_push", run.lone_push),
                ("lone_push_ratio", run.lone_push_ratio),
                ("push_all", run.push_all),
                (
                    "push_p1",
                    put(format!("{e}/enqueue_now/p1"))?.accepted_per_s,
                ),
                (
                    "push_p16",
                    put(format!("{e}/enqueue_now/p16"))?.accepted_per_s,
                ),
                (
                    "stored_p16",
                    put(format!("{e}/enqueue/p16"))?.settled_per_s?,
                ),
                ("claim", run.claim_ceiling),
                ("minimal_claim", run.minimal_claim),
                ("one_loop_claim", run.one_loop_claim),
                ("executed", run.executed),
                ("lat_now", lat(format!("{e}/enqueue_now"))?.p(0.5)),
                ("lat_deferred", lat(format!("{e}/enqueue"))?.p(0.5)),
                (
                    "lat_other",
                    lat(format!("{e}/enqueue_now/other_queue"))?.p(0.5),
                ),
            ]);
            if let Some(executed) = run.executed_prefetch {
                figures.insert("executed_prefetch", executed);
            }
            for (key, rate) in SPLIT_KEYS.iter().zip(&run.split_claims) {
                figures.insert(key, *rate);
            }
            Some(figures)
        })
        .collect();
    if rounds.is_empty() {
        return;
    }
    let of = |f: &dyn Fn(&HashMap<&str, f64>) -> f64| -> (f64, String) {
        let values: Vec<f64> = rounds.iter().map(f).collect();
        let per_round: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        (median(values), per_round.join(" / "))
    };
    let mut rows = Vec::new();
    let mut rate = |what: &str, key: &str| {
        let (m, _) = of(&|r| r[key]);
        let per_round: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r[key])).collect();
        rows.push(vec![
            what.to_owned(),
            format!("{m:.0}"),
            String::new(),
            per_round.join(" / "),
        ]);
    };
    rate(
        "(1) raw INSERT into apalis's job table, 512 rows per commit, rows/s",
        "insert",
    );
    rate(
        "raw INSERT into a minimal table, 512 rows per commit, rows/s",
        "minimal",
    );
    rate(
        "raw INSERT into a minimal table, one commit per row, rows/s",
        "one_commit",
    );
    rate(
        "raw INSERT into apalis's job table, one statement (its own commit) per row, rows/s",
        "one_statement",
    );
    rate(
        "push, one job after the other, in blocks alternating with those, jobs/s",
        "lone_push",
    );
    rate("push_all, 512 jobs per call, jobs/s", "push_all");
    rate("push (enqueue_now), 1 producer, jobs/s", "push_p1");
    rate("push (enqueue_now), 16 producers, jobs/s", "push_p16");
    rate("enqueue, 16 producers, stored/s", "stored_p16");
    rate(
        "(2) raw claim + complete on apalis's job table, 64 per batch, rows/s",
        "claim",
    );
    rate(
        "raw claim + complete on a minimal table, 64 per batch, rows/s",
        "minimal_claim",
    );
    if engine == Engine::Postgres {
        rate(
            "raw claim + complete on apalis's job table, one loop, rows/s",
            "one_loop_claim",
        );
        for (loops, key) in SPLIT_LOOPS.iter().zip(SPLIT_KEYS) {
            rate(
                &format!(
                    "the same 64 rows split across {loops} loops of {}, rows/s",
                    CLAIM_BATCH / loops
                ),
                key,
            );
        }
    }
    rate("Workers, concurrency 16, no-op jobs/s", "executed");
    let prefetch = prefetch.filter(|_| rounds.iter().all(|r| r.contains_key("executed_prefetch")));
    if let Some(prefetch) = prefetch {
        rate(
            &format!("Workers, concurrency 16, prefetch {prefetch}, no-op jobs/s"),
            "executed_prefetch",
        );
    }
    let mut ratio = |what: &str, target: &str, f: &dyn Fn(&HashMap<&str, f64>) -> f64| {
        let (m, per_round) = of(f);
        rows.push(vec![
            what.to_owned(),
            format!("{m:.2}"),
            target.to_owned(),
            per_round,
        ]);
    };
    ratio("enqueue stored/s (16 producers) ÷ (1)", "≥ 0.5", &|r| {
        r["stored_p16"] / r["insert"]
    });
    ratio("push, 16 producers ÷ one commit per row", "≥ 5", &|r| {
        r["push_p16"] / r["one_commit"]
    });
    ratio("push, 1 producer ÷ one commit per row", "", &|r| {
        r["push_p1"] / r["one_commit"]
    });
    ratio(
        "push, 1 producer ÷ one statement per row into the job table",
        "",
        &|r| r["push_p1"] / r["one_statement"],
    );
    ratio(
        "lone push ÷ one statement per row, alternating blocks (median of pairs)",
        "≈ 1",
        &|r| r["lone_push_ratio"],
    );
    ratio("push_all ÷ (1)", "", &|r| r["push_all"] / r["insert"]);
    ratio("Workers ÷ (2)", "≥ 0.5", &|r| r["executed"] / r["claim"]);
    if engine == Engine::Postgres {
        ratio("Workers ÷ (2) with one loop", "", &|r| {
            r["executed"] / r["one_loop_claim"]
        });
        ratio("Workers ÷ graphile-worker's 41 000/s", "> 1", &|r| {
            r["executed"] / GRAPHILE_WORKER
        });
        ratio(
            "best raw claim holding 64 rows (one loop or split) ÷ 41 000/s",
            "",
            &|r| held_64(r) / GRAPHILE_WORKER,
        );
    }
    if let Some(prefetch) = prefetch {
        ratio(
            &format!("Workers at prefetch {prefetch} ÷ (2)"),
            "",
            &|r| r["executed_prefetch"] / r["claim"],
        );
        if engine == Engine::Postgres {
            ratio(
                &format!("Workers at prefetch {prefetch} ÷ 41 000/s"),
                "",
                &|r| r["executed_prefetch"] / GRAPHILE_WORKER,
            );
        }
    }
    let mut latency = |what: &str, target: &str, key: &str| {
        let values: Vec<f64> = rounds.iter().map(|r| r[key]).collect();
        rows.push(vec![
            what.to_owned(),
            time(median(values.clone())),
            target.to_owned(),
            values.into_iter().map(time).collect::<Vec<_>>().join(" / "),
        ]);
    };
    let target = match engine {
        Engine::Sqlite => "≤ 5 ms",
        Engine::Postgres => "~2 ms",
    };
    latency("enqueue_now → start, p50", target, "lat_now");
    latency("enqueue → start, p50", target, "lat_deferred");
    // Only PostgreSQL's workers hear other processes' pushes (`LISTEN`);
    // SQLite's find them at their next poll.
    let target = match engine {
        Engine::Sqlite => "",
        Engine::Postgres => "~2 ms",
    };
    latency(
        "enqueue_now from another queue → start, p50",
        target,
        "lat_other",
    );
    print_table(&[e, "median", "target", "per round"], &rows);
}

/// Each latency mode's medians over rounds of p50 and p99, its largest
/// latency, and how many of its jobs never started.
fn print_latency(rounds: &[Vec<LatencyRun>]) {
    let mut rows = Vec::new();
    for key in keys(rounds) {
        let runs: Vec<&LatencyRun> = runs_of(rounds, key).collect();
        let per_round: Vec<String> = runs.iter().map(|run| time(run.p(0.5))).collect();
        rows.push(vec![
            key.to_owned(),
            time(median(runs.iter().map(|run| run.p(0.5)).collect())),
            time(median(runs.iter().map(|run| run.p(0.99)).collect())),
            time(runs.iter().map(|run| run.p(1.0)).fold(f64::NAN, f64::max)),
            format!(
                "{} ({})",
                runs.iter().map(|run| run.latencies.len()).sum::<usize>(),
                runs.iter().map(|run| run.missing).sum::<usize>()
            ),
            per_round.join(" / "),
        ]);
    }
    print_table(
        &[
            "enqueue → start",
            "p50",
            "p99",
            "max",
            "jobs (never started)",
            "p50 per round",
        ],
        &rows,
    );
}

/// The fastest raw claim arrangement that holds no more rows at once than a
/// worker at the default prefetch: one loop, or its rows split.
fn held_64(round: &HashMap<&str, f64>) -> f64 {
    SPLIT_KEYS
        .iter()
        .filter_map(|key| round.get(key))
        .fold(round["one_loop_claim"], |best, rate| best.max(*rate))
}
