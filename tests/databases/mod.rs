//! A fresh, empty database per test, on either engine, for the suites that
//! run on real databases (`durable`, `tracked_sql`): a SQLite file in a
//! temporary directory, or a new PostgreSQL database (`CREATE DATABASE`
//! with a unique name on the server `DATABASE_URL` names), dropped at the
//! end — so that tests running at the same time never see each other's
//! rows. Without `DATABASE_URL`, [`Db::postgres`] prints
//! "skipped: DATABASE_URL not set" and the test passes.
//!
//! [`on_each_engine!`] runs a scenario on both, within a bound. Each suite
//! adds its own helpers in an `impl Db` block of its own.

// Each suite uses its own subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{ConnectOptions, Connection};
use tempfile::TempDir;
use tower_background::durable::JobQueue;

/// The longest a whole scenario may take before it fails as hung. Not a
/// speed check: every scenario normally ends in a few seconds.
pub(crate) const SCENARIO_BOUND: Duration = Duration::from_secs(120);

/// Runs each named scenario (`async fn NAME(db: Db)`) on both engines, as
/// the tests `NAME::sqlite` and `NAME::postgres`, each [`bounded`]. The
/// PostgreSQL one needs `DATABASE_URL`; without it, it says so on one line
/// and passes.
macro_rules! on_each_engine {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = crate::databases::Db::sqlite().await;
                crate::databases::bounded(super::$scenario(db)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = crate::databases::Db::postgres().await {
                    crate::databases::bounded(super::$scenario(db)).await;
                }
            }
        }
    )*};
}
pub(crate) use on_each_engine;

/// Fails the test if `scenario` has not ended within [`SCENARIO_BOUND`].
pub(crate) async fn bounded<F: Future<Output = ()>>(scenario: F) {
    tokio::time::timeout(SCENARIO_BOUND, scenario)
        .await
        .expect("the scenario hung (did not end within SCENARIO_BOUND)");
}

/// The two engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

/// A fresh, empty database private to one test. A PostgreSQL database is
/// dropped when this is (even if the test failed).
#[derive(Debug)]
pub(crate) struct Db {
    engine: Engine,
    url: String,
    /// A directory private to this test (the SQLite file, the test's files).
    dir: TempDir,
    /// PostgreSQL: the server's URL and the database to drop at the end.
    created: Option<(String, String)>,
}

impl Db {
    /// Async like [`postgres`](Self::postgres), so that a test calls both
    /// the same way.
    pub(crate) async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = dir.path().join("test.db").display().to_string();
        Self {
            engine: Engine::Sqlite,
            url,
            dir,
            created: None,
        }
    }

    /// `None` (after printing "skipped: DATABASE_URL not set") when there is
    /// no PostgreSQL server to test against.
    pub(crate) async fn postgres() -> Option<Self> {
        let server = match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => url,
            Ok(url) if !url.is_empty() => {
                println!("skipped: DATABASE_URL is not a PostgreSQL URL");
                return None;
            }
            _ => {
                println!("skipped: DATABASE_URL not set");
                return None;
            }
        };
        let name = unique_name();
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .expect("DATABASE_URL is set but its PostgreSQL server cannot be reached");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE for the test");
        let _ = admin.close().await;
        Some(Self {
            engine: Engine::Postgres,
            url: with_database(&server, &name),
            dir: tempfile::tempdir().expect("a temporary directory"),
            created: Some((server, name)),
        })
    }

    pub(crate) fn engine(&self) -> Engine {
        self.engine
    }

    /// The URL (or path) [`JobQueue::connect`] takes.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// This test's private directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file path in this test's private directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new queue (a pool of its own) on this database.
    pub(crate) async fn queue(&self) -> JobQueue {
        JobQueue::connect(&self.url)
            .await
            .expect("the test database opens")
    }

    /// A connection of the test's own to the SQLite file.
    pub(crate) async fn sqlite_connection(&self) -> sqlx::SqliteConnection {
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&self.url)
            .connect()
            .await
            .expect("open the SQLite file")
    }

    /// A connection of the test's own to the PostgreSQL database.
    pub(crate) async fn postgres_connection(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some((server, name)) = self.created.take() else {
            return;
        };
        // `Drop` cannot await, and may run inside the test's runtime: drop
        // the database from a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("note: could not drop the test database (left on the server)");
        }
    }
}

/// A database name no other test (in this run or another) uses, starting
/// with the suite's name (`tb_durable_…`, `tb_tracked_sql_…`) so that one
/// left on a server says where it came from.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!(
        "tb_{}_{}_{nanos}_{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A PostgreSQL URL split where the tests change it:
/// `{scheme}://{userinfo@}{host:port}/{database}{?query}`.
pub(crate) struct PgUrl<'a> {
    /// `postgres://user:password@`
    pub(crate) before_host: &'a str,
    /// `host:port` (or `host`)
    pub(crate) host: &'a str,
    /// `?sslmode=...`, or empty
    pub(crate) query: &'a str,
}

impl<'a> PgUrl<'a> {
    pub(crate) fn parse(url: &'a str) -> Self {
        let (base, query) = match url.find('?') {
            Some(at) => url.split_at(at),
            None => (url, ""),
        };
        let authority_start = base.find("://").map_or(0, |at| at + 3);
        let authority_end = base[authority_start..]
            .find('/')
            .map_or(base.len(), |at| authority_start + at);
        let host_start = base[authority_start..authority_end]
            .rfind('@')
            .map_or(authority_start, |at| authority_start + at + 1);
        Self {
            before_host: &base[..host_start],
            host: &base[host_start..authority_end],
            query,
        }
    }
}

/// `url` naming database `name` instead.
fn with_database(url: &str, name: &str) -> String {
    let url = PgUrl::parse(url);
    format!("{}{}/{name}{}", url.before_host, url.host, url.query)
}
