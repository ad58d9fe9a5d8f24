//! Durable jobs against in-process background tasks: enqueue throughput
//! (jobs/s) and enqueue→start latency, SQLite and PostgreSQL, in one run.
//!
//! Not a criterion benchmark (`harness = false`): the modes are interleaved
//! round after round so that all of them see the same moments of a noisy
//! machine; the tables show medians over rounds, and each ratio is taken
//! within a round, then its median.
//!
//! # Throughput
//!
//! P producers (1 and 16), each a tokio task sending requests one after the
//! other through the real layer (`tower::ServiceExt::oneshot`, the response
//! body read to its end), N requests in all. Each handler does one of:
//!
//! - `add`: `tasks.add` of a trivial task (the in-process baseline);
//! - `enqueue_now`: `queue.push(&job).await` (the job is in the
//!   database when the handler returns);
//! - `enqueue`: `queue.enqueue(&tasks, job)` (returns at once; a task pushes the job
//!   after the response, retrying until it is stored).
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
//! K jobs enqueued one every W / K (an open loop: each request is its own
//! tokio task) over a window W, to an idle queue with in-process workers
//! started fresh for each run (4 jobs at a time). The latency of a job is
//! the time from just before the handler's enqueue call to the moment the
//! job's handler starts (for `add`: the task's first poll).
//!
//! An idle apalis 1.0 worker on a SQL backend fetches again only when
//! something wakes it: one of its jobs completing, its heartbeat timer
//! (30 s by default), or a poll strategy (`PollWith`). `Workers` uses its
//! own strategy (`src/durable/wake_up.rs`): a `DEFAULT_POLL_INTERVAL`
//! (100 ms) tick and, on PostgreSQL, `LISTEN` on apalis's insert trigger.
//! The modes:
//!
//! - `Workers (defaults)`: `Workers::new(&queue).register::<J>().spawn(..)`,
//!   what the crate does, with `enqueue_now` and with `enqueue`;
//! - prototypes of other wake-ups, apalis workers built here as
//!   `workers.rs` builds its own (queue, heartbeat, concurrency): SQLite's
//!   `SqliteStorage::connect_with_callback` (an update hook on the pool's
//!   connections; those jobs are pushed through that pool, as
//!   `JobQueue::push` pushes), a possible next step; and apalis's own
//!   `PostgresStorage::with_pubsub`, which loses wake-ups (kept to show it).
//!   The bench's first runs also had its prototype of `WakeUp`; once the
//!   crate adopted it, it is what `Workers` measures.
//!
//! All of these run with W = 1 s, interleaved, every round. Then, once per
//! round, a sparse run: K jobs over a long window (`--quick`: 10 s, else
//! 30 s, the default heartbeat), `Workers` and pubsub all at once, each on its own queue (their latencies are tens of milliseconds
//! or more, which a little contention cannot move). It shows whether a
//! worker ever misses its wake-up and falls back to its heartbeat.
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
//!
//! # SQLite
//!
//! `JobQueue::sqlite` on a file in a temporary directory. apalis-sqlite's
//! `setup` sets WAL and `synchronous = OFF`, but through `execute(&pool)`:
//! `synchronous` is a per-connection setting, so it holds on the one pooled
//! connection that ran it; the bench prints what each connection of a pool
//! opened the same way reports.
//!
//! # Running it
//!
//! ```text
//! cargo bench -p benches --bench durable              # 5 rounds, about 6 min
//! cargo bench -p benches --bench durable -- --quick   # 1 round, under a minute
//! ```
//!
//! Other options (after `--`): `--rounds N`, `--jobs N` (per throughput
//! run), `--latency-jobs K`, `--no-slow` (skip the sparse runs),
//! `--json PATH`. Prints Markdown tables to stdout (progress to stderr) and
//! writes JSON to `$CARGO_TARGET_DIR/durable-bench.json` (default
//! `target/durable-bench.json`). Run without `--bench` (as `cargo test
//! --benches` does) it makes one small pass and writes no JSON. Every wait
//! is bounded; everything stops by itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use apalis::prelude::{WorkerBuilder, WorkerBuilderExt, WorkerError};
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::time::{sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_background::durable::{
    Job, JobFailure, JobQueue, Workers, DEFAULT_HEARTBEAT, DEFAULT_POLL_INTERVAL,
};
use tower_background::Supervisor;

mod support;
use support::requests::{ok, tasks_of};
use support::{parse, Flags, Mode};

/// Jobs each worker runs at once (`Workers`' default).
const CONCURRENCY: usize = 4;
/// The window over which the fast latency modes enqueue their jobs.
const FAST_WINDOW: Duration = Duration::from_secs(1);
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
    SlowNow = "bench_slow_now",
    SlowNotified = "bench_slow_notified",
    FastNow = "bench_fast_now",
    FastDeferred = "bench_fast_deferred",
    Hooked = "bench_hooked",
    Notified = "bench_notified",
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
    slow: bool,
    slow_window: Duration,
    json: Option<PathBuf>,
}

impl Config {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mode = Mode::from_args(&args);
        let mut config = match mode {
            Mode::Smoke => Self::preset(mode, 1, 64, 8, false, 0),
            Mode::Quick => Self::preset(mode, 1, 400, 30, true, 10),
            Mode::Full => Self::preset(mode, 5, 2000, 60, true, 30),
        };
        if mode.measures() {
            config.json = Some(support::default_json_path("durable-bench.json"));
        }
        let mut flags = Flags::new("durable", args);
        while let Some(flag) = flags.next() {
            match flag.as_str() {
                "--rounds" => config.rounds = parse(&flags.value("--rounds")),
                "--jobs" => config.jobs = parse(&flags.value("--jobs")),
                "--latency-jobs" => config.latency_jobs = parse(&flags.value("--latency-jobs")),
                "--no-slow" => config.slow = false,
                "--json" => config.json = Some(PathBuf::from(flags.value("--json"))),
                other => flags.ignore(other),
            }
        }
        config.rounds = config.rounds.clamp(1, 50);
        config.jobs = config.jobs.clamp(16, 100_000);
        config.latency_jobs = config.latency_jobs.clamp(2, 10_000);
        config
    }

    fn preset(
        mode: Mode,
        rounds: usize,
        jobs: usize,
        latency_jobs: usize,
        slow: bool,
        slow_window_s: u64,
    ) -> Self {
        Self {
            mode,
            rounds,
            jobs,
            latency_jobs,
            slow,
            slow_window: Duration::from_secs(slow_window_s),
            json: None,
        }
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

/// An engine's queue, plus a pool of our own for counting and deleting rows
/// and for the prototypes' workers.
struct Database {
    engine: Engine,
    queue: JobQueue,
    url: String,
    admin: Admin,
}

enum Admin {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Database {
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
}

async fn open_sqlite(dir: &Path) -> Database {
    let path = dir.join("jobs.db");
    let queue = JobQueue::sqlite(&path).await.expect("the SQLite queue");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(5));
    let admin = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .expect("the SQLite admin pool");
    Database {
        engine: Engine::Sqlite,
        queue,
        url: format!("sqlite://{}", path.display()),
        admin: Admin::Sqlite(admin),
    }
}

async fn open_postgres(url: &str) -> Result<Database, String> {
    let queue = JobQueue::postgres(url)
        .await
        .map_err(|error| format!("JobQueue::postgres: {error}"))?;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .map_err(|error| format!("connecting: {error}"))?;
    Ok(Database {
        engine: Engine::Postgres,
        queue,
        url: url.to_owned(),
        admin: Admin::Postgres(admin),
    })
}

/// What `PRAGMA synchronous` and `journal_mode` report on each connection of
/// a pool set up the way apalis-sqlite's own examples do it (`connect_with`,
/// then `setup` on that pool), four connections held at once: the reason
/// `JobQueue::sqlite` runs `setup` on a connection of its own (its unit test
/// checks that every connection of its pool keeps `FULL`).
async fn sqlite_pragmas(dir: &Path) -> Value {
    let path = dir.join("pragmas.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .expect("a pool");
    apalis_sqlite::SqliteStorage::setup(&pool)
        .await
        .expect("setup");
    let mut held = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut conn = pool.acquire().await.expect("a connection");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .expect("PRAGMA synchronous");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .expect("PRAGMA journal_mode");
        seen.push(json!({
            "synchronous": match synchronous { 0 => "OFF", 1 => "NORMAL", 2 => "FULL", 3 => "EXTRA", _ => "?" },
            "journal_mode": journal,
        }));
        held.push(conn);
    }
    drop(held);
    pool.close().await;
    Value::Array(seen)
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
// Latency.

/// How a latency mode's workers learn of new jobs.
#[derive(Clone, Copy, Debug)]
enum Wake {
    /// In-process tasks: no worker.
    Task,
    /// `Workers::spawn` with its defaults (what the crate does).
    Workers,
    /// Prototype: SQLite update hook (`connect_with_callback`).
    SqliteHook,
    /// Prototype: PostgreSQL `LISTEN`/`NOTIFY` (`with_pubsub`).
    Pubsub,
}

#[derive(Clone, Debug)]
struct LatencyRun {
    key: String,
    /// Sorted latencies, µs.
    latencies: Vec<f64>,
    missing: usize,
    window: Duration,
}

impl LatencyRun {
    fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies, q)
    }
}

fn latency_key(engine: Option<Engine>, path: Call, wake: Wake) -> String {
    let wake = match wake {
        Wake::Task => "task".to_owned(),
        Wake::Workers => "Workers (defaults)".to_owned(),
        Wake::SqliteHook => "update hook".to_owned(),
        Wake::Pubsub => "pubsub".to_owned(),
    };
    // The update hook's jobs are pushed through the hooked pool directly.
    let path = match wake.as_str() {
        "update hook" => "push",
        _ => path.key(),
    };
    format!("{}/{path}/{wake}", engine.map_or("task", Engine::key))
}

async fn latency<J: Probe>(
    database: Option<&Database>,
    path: Call,
    wake: Wake,
    jobs: usize,
    window: Duration,
) -> LatencyRun {
    let mut key = latency_key(database.map(|d| d.engine), path, wake);
    if window > FAST_WINDOW {
        key += &format!(", {} s window", window.as_secs());
    }
    let supervisor = Arc::new(Supervisor::new());
    let stop = CancellationToken::new();
    let mut prototype = None;
    let mut hooked_pool = None;
    let run_name = format!("bench-{}-{}", J::NAME, next_seq());
    match (wake, database) {
        (Wake::Task, _) => {}
        (Wake::Workers, Some(database)) => {
            Workers::new(&database.queue)
                .register::<J>()
                .name(run_name)
                .spawn(&supervisor);
        }
        (wake, Some(database)) => {
            let (handle, pool) = spawn_prototype::<J>(database, wake, &run_name, stop.clone());
            prototype = Some(handle);
            hooked_pool = pool;
        }
        (_, None) => unreachable!("workers need a database"),
    }
    sleep(SETTLE).await;

    let gap = window / jobs as u32;
    let t0 = tokio::time::Instant::now();
    let mut seqs = Vec::with_capacity(jobs);
    let mut requests = Vec::with_capacity(jobs);
    let service = service::<J>(&supervisor, database.map(|d| &d.queue), path);
    for i in 0..jobs {
        sleep_until(t0 + gap * i as u32).await;
        let seq = next_seq();
        seqs.push(seq);
        let mut service = service.clone();
        let hooked_pool = hooked_pool.clone();
        requests.push(tokio::spawn(async move {
            match hooked_pool {
                Some(pool) => {
                    enqueued(seq);
                    push_direct::<J>(&pool, seq).await;
                }
                None => {
                    let mut request = Request::new(());
                    request.extensions_mut().insert(Seq(seq));
                    send(&mut service, request).await;
                }
            }
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

    stop.cancel();
    if let Some(handle) = prototype {
        let _ = tokio::time::timeout(STOP_TIMEOUT, handle).await;
    }
    let supervisor = Arc::into_inner(supervisor).expect("the requests are done");
    let _ = tokio::time::timeout(STOP_TIMEOUT, supervisor.shutdown()).await;
    if let Some(database) = database {
        database.delete(J::NAME).await;
    }
    LatencyRun {
        key,
        latencies,
        missing,
        window,
    }
}

/// Starts an apalis worker for `J` configured as `src/durable/workers.rs`
/// configures its own (queue, heartbeat, concurrency), plus the wake-up
/// strategy `wake`. Returns the worker's task and, for the update hook, the
/// pool the jobs must be pushed through.
fn spawn_prototype<J: Probe>(
    database: &Database,
    wake: Wake,
    name: &str,
    stop: CancellationToken,
) -> (tokio::task::JoinHandle<()>, Option<sqlx::SqlitePool>) {
    let handler = |job: J| async move { job.run().await };
    let stopped = async move {
        stop.cancelled().await;
        Ok::<(), WorkerError>(())
    };
    let name = name.to_owned();
    match (wake, &database.admin) {
        (Wake::SqliteHook, Admin::Sqlite(_)) => {
            let (pool, listener) =
                apalis_sqlite::SqliteStorage::connect_with_callback(&database.url)
                    .expect("a hooked pool");
            let config = apalis_sqlite::Config::default()
                .queue(J::NAME)
                .heartbeat_interval(DEFAULT_HEARTBEAT);
            let storage = apalis_sqlite::SqliteStorage::<J>::new(&pool)
                .with_config(config)
                .with_callback(listener);
            let worker = WorkerBuilder::new(name)
                .backend(storage)
                .concurrency(CONCURRENCY)
                .build(handler);
            let handle = tokio::spawn(boxed(worker.run_until(stopped)));
            (handle, Some(pool))
        }
        (Wake::Pubsub, Admin::Postgres(pool)) => {
            let config = apalis_postgres::Config::default()
                .queue(J::NAME)
                .heartbeat_interval(DEFAULT_HEARTBEAT);
            let storage = apalis_postgres::PostgresStorage::<J>::new(pool)
                .with_config(config)
                .with_pubsub();
            let worker = WorkerBuilder::new(name)
                .backend(storage)
                .concurrency(CONCURRENCY)
                .build(handler);
            let handle = tokio::spawn(boxed(worker.run_until(stopped)));
            (handle, None)
        }
        (wake, _) => panic!("no prototype {wake:?} for {}", database.engine.key()),
    }
}

/// A worker's run as a boxed `Send` future whose result is ignored (as in
/// `workers.rs`, boxing settles the handler's lifetimes for `tokio::spawn`).
fn boxed(
    run: impl Future<Output = Result<(), WorkerError>> + Send + 'static,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let run: Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>> = Box::pin(run);
    Box::pin(async move {
        let _ = run.await;
    })
}

/// Pushes `J` number `seq` through `pool` as `JobQueue::push` does.
async fn push_direct<J: Probe>(pool: &sqlx::SqlitePool, seq: u64) {
    let args = serde_json::to_vec(&J::with_seq(seq)).expect("JSON");
    let task = TaskBuilder::new(args)
        .task_id(TaskId::from_string(ulid::Ulid::generate().to_string()))
        .max_attempts(J::MAX_ATTEMPTS as usize)
        .build();
    let mut conn = pool.acquire().await.expect("a connection");
    apalis_sqlite::queries::push_tasks(&mut *conn, J::NAME, &[task])
        .await
        .expect("push");
}

// ---------------------------------------------------------------------------
// Statistics and output.

/// The `q`-quantile of sorted values by nearest rank; NaN when there are
/// none, which the tables show as "—".
fn percentile(sorted: &[f64], q: f64) -> f64 {
    support::percentile(sorted, q).unwrap_or(f64::NAN)
}

/// The median of the finite values, the lower of the middle two for an
/// even count. Not `support::median`, which keeps NaN and averages the
/// middle two: this one leaves out a round with no figure (NaN), and
/// either change would move the durable tables' figures.
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
    let mut postgres_note = String::new();
    let postgres_url = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            postgres_note = "DATABASE_URL".to_owned();
            Some(url)
        }
        _ => match PgServer::start() {
            Ok((started, url)) => {
                postgres_note = "a private server started by the bench".to_owned();
                server = Some(started);
                Some(url)
            }
            Err(why) => {
                println!("PostgreSQL skipped: {why}");
                None
            }
        },
    };

    let (sqlite, postgres, pragmas) = runtime.block_on(async {
        let sqlite = open_sqlite(dir.path()).await;
        let postgres = match &postgres_url {
            Some(url) => match open_postgres(url).await {
                Ok(database) => Some(database),
                Err(why) => {
                    println!("PostgreSQL skipped: {why}");
                    None
                }
            },
            None => None,
        };
        (sqlite, postgres, sqlite_pragmas(dir.path()).await)
    });
    let databases: Vec<&Database> = std::iter::once(&sqlite).chain(postgres.as_ref()).collect();
    eprintln!(
        "durable ({} mode): {} round(s), {} jobs per throughput run, {} per latency run; \
         engines: {}; {} cores; SQLite pragmas per pooled connection: {pragmas}",
        config.mode,
        config.rounds,
        config.jobs,
        config.latency_jobs,
        databases
            .iter()
            .map(|d| d.engine.key())
            .collect::<Vec<_>>()
            .join(", "),
        cores,
    );

    let started = Instant::now();
    let mut throughput_rounds: Vec<Vec<ThroughputRun>> = Vec::new();
    let mut latency_rounds: Vec<Vec<LatencyRun>> = Vec::new();
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
            let w = FAST_WINDOW;
            let now = Call::EnqueueNow;
            let later = Call::Enqueue;
            let mut runs = vec![latency::<Filler>(None, Call::Add, Wake::Task, k, w).await];
            runs.push(latency::<FastNow>(Some(&sqlite), now, Wake::Workers, k, w).await);
            runs.push(latency::<FastDeferred>(Some(&sqlite), later, Wake::Workers, k, w).await);
            runs.push(latency::<Hooked>(Some(&sqlite), now, Wake::SqliteHook, k, w).await);
            if let Some(pg) = &postgres {
                runs.push(latency::<FastNow>(Some(pg), now, Wake::Workers, k, w).await);
                runs.push(latency::<FastDeferred>(Some(pg), later, Wake::Workers, k, w).await);
                runs.push(latency::<Notified>(Some(pg), now, Wake::Pubsub, k, w).await);
            }
            if config.slow {
                // Sparse jobs over a long window, every wake-up at once
                // (each on its own queue): does a worker ever miss one?
                let w = config.slow_window;
                let sqlite_runs = latency::<SlowNow>(Some(&sqlite), now, Wake::Workers, k, w);
                let postgres_runs = async {
                    match &postgres {
                        Some(pg) => {
                            let (a, b) = tokio::join!(
                                latency::<SlowNow>(Some(pg), now, Wake::Workers, k, w),
                                latency::<SlowNotified>(Some(pg), now, Wake::Pubsub, k, w),
                            );
                            vec![a, b]
                        }
                        None => Vec::new(),
                    }
                };
                let (sqlite_run, more) = tokio::join!(sqlite_runs, postgres_runs);
                runs.push(sqlite_run);
                runs.extend(more);
            }
            for run in &runs {
                eprintln!(
                    "round {round} latency {:<36} p50 {:>9}  p99 {:>9}  max {:>9}  ({} jobs over {:?}, {} never started)",
                    run.key,
                    time(run.p(0.5)),
                    time(run.p(0.99)),
                    time(run.p(1.0)),
                    run.latencies.len(),
                    run.window,
                    run.missing,
                );
            }
            latency_rounds.push(runs);
        }
    });
    let elapsed = started.elapsed();
    drop(postgres);
    drop(sqlite);
    drop(runtime);
    drop(server);

    let summary = summarise(&throughput_rounds, &latency_rounds);
    print_markdown(&config, &summary, &pragmas, &postgres_note, cores, elapsed);
    let missing: usize = latency_rounds.iter().flatten().map(|r| r.missing).sum();

    if let Some(path) = &config.json {
        let document = json!({
            "benchmark": "durable",
            "mode": config.mode.name(),
            "unix_time": support::unix_time(),
            "cores": cores,
            "config": {
                "rounds": config.rounds,
                "jobs_per_throughput_run": config.jobs,
                "jobs_per_latency_run": config.latency_jobs,
                "worker_concurrency": CONCURRENCY,
                "default_heartbeat_s": DEFAULT_HEARTBEAT.as_secs_f64(),
                "poll_interval_ms": DEFAULT_POLL_INTERVAL.as_secs_f64() * 1e3,
                "slow_window_s": config.slow_window.as_secs_f64(),
                "postgres": postgres_note,
            },
            "sqlite_pragmas_per_connection": pragmas,
            "elapsed_s": elapsed.as_secs_f64(),
            "throughput": summary.throughput,
            "latency": summary.latency,
            "ratios": summary.ratios,
        });
        support::write_json(path, &document);
    }
    if config.mode == Mode::Smoke {
        assert_eq!(missing, 0, "jobs never started in the smoke pass");
        eprintln!(
            "durable: smoke pass ok (run with `cargo bench -p benches --bench durable` to measure)"
        );
    } else if missing > 0 {
        eprintln!("durable: {missing} job(s) never started; see above");
    }
}

struct Summary {
    throughput: Vec<Value>,
    latency: Vec<Value>,
    ratios: Vec<Value>,
}

fn summarise(throughput: &[Vec<ThroughputRun>], latency: &[Vec<LatencyRun>]) -> Summary {
    let keys = |first: Option<&Vec<String>>| first.cloned().unwrap_or_default();
    let throughput_keys = keys(
        throughput
            .first()
            .map(|r| r.iter().map(|m| m.key.clone()).collect())
            .as_ref(),
    );
    let find = |round: &Vec<ThroughputRun>, key: &str| round.iter().find(|m| m.key == key).cloned();
    let throughput_rows = throughput_keys
        .iter()
        .map(|key| {
            let runs: Vec<ThroughputRun> = throughput.iter().filter_map(|r| find(r, key)).collect();
            json!({
                "key": key,
                "accepted_per_s": median(runs.iter().map(|m| m.accepted_per_s).collect()),
                "settled_per_s": median(runs.iter().filter_map(|m| m.settled_per_s).collect()),
                "accepted_per_s_per_round": runs.iter().map(|m| m.accepted_per_s).collect::<Vec<_>>(),
                "settled_per_s_per_round": runs.iter().map(|m| m.settled_per_s).collect::<Vec<_>>(),
                "push_retries": runs.iter().map(|m| m.push_retries).sum::<u64>(),
            })
        })
        .collect();
    // Each durable mode ÷ `add` with the same producers, within a round.
    let ratios = throughput_keys
        .iter()
        .filter(|key| !key.starts_with("task/"))
        .filter_map(|key| {
            let producers = key.rsplit('/').next()?;
            let baseline = format!("task/add/{producers}");
            let per_round: Vec<f64> = throughput
                .iter()
                .filter_map(|r| {
                    Some(find(r, key)?.accepted_per_s / find(r, &baseline)?.accepted_per_s)
                })
                .collect();
            Some(json!({
                "what": format!("accepted/s, {key} ÷ {baseline}"),
                "median": median(per_round.clone()),
                "per_round": per_round,
            }))
        })
        .collect();
    let latency_keys: Vec<String> = latency
        .first()
        .map(|r| r.iter().map(|m| m.key.clone()).collect())
        .unwrap_or_default();
    let latency_rows = latency_keys
        .iter()
        .map(|key| {
            let runs: Vec<&LatencyRun> = latency
                .iter()
                .filter_map(|r| r.iter().find(|m| &m.key == key))
                .collect();
            let pooled = {
                let mut all: Vec<f64> = runs
                    .iter()
                    .flat_map(|m| m.latencies.iter().copied())
                    .collect();
                all.sort_by(f64::total_cmp);
                all
            };
            json!({
                "key": key,
                "p50_us": median(runs.iter().map(|m| m.p(0.5)).collect()),
                "p99_us": median(runs.iter().map(|m| m.p(0.99)).collect()),
                "max_us": runs.iter().map(|m| m.p(1.0)).fold(f64::NAN, f64::max),
                "pooled_p50_us": percentile(&pooled, 0.5),
                "pooled_p99_us": percentile(&pooled, 0.99),
                "p50_us_per_round": runs.iter().map(|m| m.p(0.5)).collect::<Vec<_>>(),
                "p99_us_per_round": runs.iter().map(|m| m.p(0.99)).collect::<Vec<_>>(),
                "jobs": runs.iter().map(|m| m.latencies.len()).sum::<usize>(),
                "never_started": runs.iter().map(|m| m.missing).sum::<usize>(),
                "window_s": runs.first().map_or(0.0, |m| m.window.as_secs_f64()),
            })
        })
        .collect();
    Summary {
        throughput: throughput_rows,
        latency: latency_rows,
        ratios,
    }
}

fn print_markdown(
    config: &Config,
    summary: &Summary,
    pragmas: &Value,
    postgres: &str,
    cores: usize,
    elapsed: Duration,
) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!();
    println!(
        "Durable jobs, {} mode: {} round(s), {} jobs per throughput run, {} per latency run; \
         {} cores; PostgreSQL: {}; medians over rounds ({:.0} s in all).",
        config.mode,
        config.rounds,
        config.jobs,
        config.latency_jobs,
        cores,
        if postgres.is_empty() {
            "skipped"
        } else {
            postgres
        },
        elapsed.as_secs_f64(),
    );
    println!();
    println!(
        "SQLite pragmas per pooled connection after apalis's setup on that pool \
         (not JobQueue::sqlite's pool): {pragmas}"
    );
    println!();
    println!("| mode (engine/path/producers) | accepted/s | stored/s (`enqueue`), done/s (`add`) | push retries | accepted/s per round |");
    println!("|---|---|---|---|---|");
    for row in &summary.throughput {
        let per_round =
            support::per_round_cell(&row["accepted_per_s_per_round"], |x| format!("{x:.0}"));
        let settled = f(&row["settled_per_s"]);
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            row["key"].as_str().unwrap_or(""),
            f(&row["accepted_per_s"]),
            if settled.is_finite() {
                format!("{settled:.0}")
            } else {
                "—".to_owned()
            },
            row["push_retries"],
            per_round,
        );
    }
    println!();
    println!("| ratio (median of per-round ratios) | median | per round |");
    println!("|---|---|---|");
    for ratio in &summary.ratios {
        let per_round = support::per_round_cell(&ratio["per_round"], |x| format!("{x:.4}"));
        println!(
            "| {} | **{:.4}** | {} |",
            ratio["what"].as_str().unwrap_or(""),
            f(&ratio["median"]),
            per_round,
        );
    }
    println!();
    println!("| latency mode (engine/path/wake-up) | p50 | p99 | max | jobs (never started) | window | p50 per round |");
    println!("|---|---|---|---|---|---|---|");
    for row in &summary.latency {
        let per_round = support::per_round_cell(&row["p50_us_per_round"], time);
        println!(
            "| {} | {} | {} | {} | {} ({}) | {:.0} s | {} |",
            row["key"].as_str().unwrap_or(""),
            time(f(&row["p50_us"])),
            time(f(&row["p99_us"])),
            time(f(&row["max_us"])),
            row["jobs"],
            row["never_started"],
            f(&row["window_s"]),
            per_round,
        );
    }
}
