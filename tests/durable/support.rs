//! What every durable-job scenario shares: a fresh database of either engine
//! per test ([`Db`], from [`crate::databases`], with this suite's helpers),
//! the macro that runs a scenario on both (from there too), bounded waits,
//! a way to take the database away from a queue (and give it back), a log
//! capture, and the test-only job [`Slow`].

// Each scenario uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::{ConnectOptions, Connection};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tower_background::durable::{Job, JobFailure, JobId, JobQueue};

use crate::databases::PgUrl;

/// The longest a wait inside a scenario may take before it fails as hung
/// (a condition, SQLite's busy timeout). Not a speed check. A whole
/// scenario is bounded by [`crate::databases::SCENARIO_BOUND`].
pub(crate) const BOUND: Duration = Duration::from_secs(90);

/// How often a test looks at the queue or at a job's log.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// The workers' heartbeat in these tests: the shortest apalis-sqlite counts
/// (whole seconds), so a killed worker's jobs are taken back after 2 s.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// Waits until `condition` holds, checking every [`POLL`]; panics with
/// `what` after [`BOUND`].
pub(crate) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) use crate::databases::{bounded, on_each_engine, Db, Engine};

/// What only this suite asks of a test's database: see
/// [`crate::databases`] for the database itself.
impl Db {
    /// A label unique to this test (for in-process ledgers).
    pub(crate) fn label(&self) -> String {
        self.dir().display().to_string()
    }

    /// How many jobs the database holds, whatever their state.
    pub(crate) async fn stored_jobs(&self) -> i64 {
        match self.engine() {
            Engine::Sqlite => {
                let mut conn = self.sqlite_connection().await;
                sqlx::query_scalar("SELECT COUNT(*) FROM Jobs")
                    .fetch_one(&mut conn)
                    .await
            }
            Engine::Postgres => {
                let mut conn = self.postgres_connection().await;
                sqlx::query_scalar("SELECT COUNT(*) FROM apalis.jobs")
                    .fetch_one(&mut conn)
                    .await
            }
        }
        .expect("count the jobs")
    }

    /// Every job the database holds, whatever its state or type: its id
    /// and its arguments (the job's JSON), to tell jobs apart by payload.
    pub(crate) async fn stored_args(&self) -> Vec<(JobId, serde_json::Value)> {
        let rows: Vec<(String, Vec<u8>)> = match self.engine() {
            Engine::Sqlite => {
                let mut conn = self.sqlite_connection().await;
                sqlx::query_as("SELECT id, CAST(job AS BLOB) FROM Jobs")
                    .fetch_all(&mut conn)
                    .await
            }
            Engine::Postgres => {
                let mut conn = self.postgres_connection().await;
                sqlx::query_as("SELECT id, job FROM apalis.jobs")
                    .fetch_all(&mut conn)
                    .await
            }
        }
        .expect("list the jobs");
        rows.into_iter()
            .map(|(id, args)| {
                (
                    id.parse().expect("a job id"),
                    serde_json::from_slice(&args).expect("a job's JSON"),
                )
            })
            .collect()
    }

    /// Job `id`'s status in apalis's table (`Pending`, `Queued`, `Running`,
    /// `Done`, `Failed`, `Killed`).
    pub(crate) async fn status(&self, id: JobId) -> String {
        match self.engine() {
            Engine::Sqlite => {
                let mut conn = self.sqlite_connection().await;
                sqlx::query_scalar("SELECT status FROM Jobs WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_one(&mut conn)
                    .await
            }
            Engine::Postgres => {
                let mut conn = self.postgres_connection().await;
                sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_one(&mut conn)
                    .await
            }
        }
        .expect("the job's status")
    }

    /// A queue, and an [`Outage`] that can take its database away.
    ///
    /// - PostgreSQL: the queue connects through a TCP proxy on
    ///   `127.0.0.1`; the outage stops the proxy (open connections are cut,
    ///   new ones refused, as when the server or the network goes down) and
    ///   restarts it on the same port. Only this queue loses the database:
    ///   workers on [`queue`](Self::queue) keep theirs, as a worker on
    ///   another machine would.
    /// - SQLite has no server to lose: the file is local. What makes a push
    ///   fail for real is another writer holding the database lock past the
    ///   5 s busy timeout (a long transaction, a stuck process, a backup),
    ///   so the outage is another connection's `BEGIN EXCLUSIVE`, ended by
    ///   `ROLLBACK`. It blocks every writer on the file, workers included.
    pub(crate) async fn cuttable_queue(&self) -> (JobQueue, Outage) {
        match self.engine() {
            Engine::Sqlite => (
                self.queue().await,
                Outage::Lock(self.url().to_owned(), None),
            ),
            Engine::Postgres => {
                let proxy = Proxy::start(server_address(self.url()).await).await;
                let url = with_address(self.url(), proxy.address);
                let queue = JobQueue::connect(&url)
                    .await
                    .expect("the test database opens through the proxy");
                (queue, Outage::Proxy(proxy))
            }
        }
    }
}

/// `url` with its host and port replaced by `address`.
fn with_address(url: &str, address: SocketAddr) -> String {
    let parsed = PgUrl::parse(url);
    let rest = &url[parsed.before_host.len() + parsed.host.len()..];
    format!("{}{address}{rest}", parsed.before_host)
}

/// The TCP address of the server `url` names (port 5432 if none is given).
async fn server_address(url: &str) -> SocketAddr {
    let host = PgUrl::parse(url).host;
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    tokio::net::lookup_host(&host)
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .unwrap_or_else(|| {
            panic!("DATABASE_URL must name a TCP host for these tests, not {host:?}")
        })
}

/// What [`Db::cuttable_queue`] can take away.
#[derive(Debug)]
pub(crate) enum Outage {
    /// PostgreSQL: the proxy the queue connects through.
    Proxy(Proxy),
    /// SQLite: the file, and the connection holding the exclusive lock
    /// while the outage lasts.
    Lock(String, Option<sqlx::SqliteConnection>),
}

impl Outage {
    /// Takes the database away.
    pub(crate) async fn begin(&mut self) {
        match self {
            Self::Proxy(proxy) => proxy.stop().await,
            Self::Lock(path, lock) => {
                let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&*path)
                    .busy_timeout(BOUND)
                    .connect()
                    .await
                    .expect("open the SQLite file");
                sqlx::raw_sql("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .expect("take the exclusive lock");
                *lock = Some(conn);
            }
        }
    }

    /// Gives the database back.
    pub(crate) async fn end(&mut self) {
        match self {
            Self::Proxy(proxy) => proxy.start_again().await,
            Self::Lock(_, lock) => {
                let mut conn = lock.take().expect("the outage had begun");
                sqlx::raw_sql("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("release the lock");
                let _ = conn.close().await;
            }
        }
    }
}

/// A TCP proxy on `127.0.0.1` in front of the PostgreSQL server, that can
/// be stopped (the database "goes down" for whoever connects through it)
/// and started again on the same port.
#[derive(Debug)]
pub(crate) struct Proxy {
    address: SocketAddr,
    target: SocketAddr,
    serving: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let mut proxy = Self {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            target,
            serving: None,
        };
        proxy.start_again().await;
        proxy
    }

    /// Listens again (on the same port once it has one) and forwards.
    async fn start_again(&mut self) {
        assert!(self.serving.is_none(), "the proxy is already running");
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.address).expect("bind the proxy's port");
        let listener = socket.listen(128).expect("listen");
        self.address = listener.local_addr().expect("the proxy's address");
        self.serving = Some(tokio::spawn(forward(listener, self.target)));
    }

    /// Stops listening and cuts every open connection.
    async fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
            // The listener and the connections are dropped once the task is.
            let _ = serving.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }
}

/// Accepts connections on `listener` and forwards each to `target`. The
/// connections live in a `JoinSet` owned by this task: aborting the task
/// closes them all.
async fn forward(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// A test-only job that records every run and is slow the first time: it
/// appends this process's id to `log` as a line when it starts, then, on
/// its first run only, sleeps `first_run_ms` without watching any
/// cancellation (the job a worker is killed in the middle of, or that
/// outlives a shutdown's grace period). Its output is which run this was
/// (1, 2, ...), so a test sees a second delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Slow {
    pub(crate) log: PathBuf,
    pub(crate) first_run_ms: u64,
}

impl Slow {
    /// A job whose first run outlasts any test.
    pub(crate) fn stuck(log: PathBuf) -> Self {
        Self {
            log,
            first_run_ms: 10 * 60 * 1000,
        }
    }
}

impl Job for Slow {
    const NAME: &'static str = "slow";
    type Output = usize;

    async fn run(self) -> Result<usize, JobFailure> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(file, "{}", std::process::id())?;
        drop(file);
        let run = runs(&self.log).len();
        if run == 1 {
            tokio::time::sleep(Duration::from_millis(self.first_run_ms)).await;
        }
        Ok(run)
    }
}

/// The process ids of the runs [`Slow`] recorded in `log`, in order.
pub(crate) fn runs(log: &Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect()
}

/// A `tracing` subscriber for the current thread that keeps what is
/// logged, for a test that checks a log line (run it on a current-thread
/// runtime so the tasks log on this thread).
#[derive(Clone, Debug, Default)]
pub(crate) struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Captures this thread's `WARN` and `ERROR` events until the guard is
    /// dropped.
    pub(crate) fn install(&self) -> tracing::subscriber::DefaultGuard {
        let capture = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || capture.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything captured so far.
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
