//! PostgreSQL: workers look their jobs up by id whatever the table's
//! statistics say. A queue that drains between bursts is often analyzed
//! while it holds no row; PostgreSQL then takes the job table for a one-row
//! table until the next analyze. apalis's own claim and acknowledgement,
//! planned for one row, walk the whole primary key once per batch (a
//! worker that ran thousands of jobs a second ran a few hundred).
//!
//! The test leaves the table with pages but statistics of zero rows, pushes
//! a burst, runs it, and counts the primary-key entries read meanwhile
//! (`pg_stat_user_indexes`): by id, a few per job; walked per batch, the
//! whole burst per batch. It counts reads, not time.

use sqlx::Connection;
use tower_background::durable::Workers;
use tower_background::Supervisor;

use crate::jobs::Add;
use crate::support::{bounded, wait_until, Db, HEARTBEAT, POLL};

/// Jobs in the burst: many batches of the default prefetch (16).
const JOBS: i64 = 2_000;

/// Primary-key entries the burst may read per job: its claim, its
/// acknowledgement and its start each look it up once, and the count
/// includes other statements' look-ups. A walk per batch reads about
/// `JOBS / 16` times more.
const READS_PER_JOB: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    bounded(a_burst_after_an_empty_analyze_is_read_by_id(db)).await;
}

async fn a_burst_after_an_empty_analyze_is_read_by_id(db: Db) {
    let queue = db.queue().await;
    let mut connection = db.postgres_connection().await;
    // Rows that come and go, then statistics taken with none left: what
    // autovacuum records of a queue that has just drained. Autovacuum is
    // off for the table so that it cannot correct them mid-test.
    sqlx::raw_sql(
        "ALTER TABLE apalis.jobs SET (autovacuum_enabled = false); \
         INSERT INTO apalis.jobs (id, job_type, job) \
             SELECT 'gone-' || g, 'gone', '\\x00' FROM generate_series(1, 2000) AS g; \
         DELETE FROM apalis.jobs;",
    )
    .execute(&mut connection)
    .await
    .expect("rows that come and go");
    sqlx::raw_sql("VACUUM (TRUNCATE false, ANALYZE) apalis.jobs")
        .execute(&mut connection)
        .await
        .expect("statistics of an empty table");
    let (rows, pages): (f32, i32) = sqlx::query_as(
        "SELECT reltuples, relpages FROM pg_class WHERE oid = 'apalis.jobs'::regclass",
    )
    .fetch_one(&mut connection)
    .await
    .expect("the table's statistics");
    assert!(
        rows == 0.0 && pages > 0,
        "the statistics must say no row on {pages} pages, not {rows}"
    );

    let jobs: Vec<Add> = (0..JOBS).map(|x| Add { x, y: 0 }).collect();
    queue.push_all(&jobs).await.expect("push the burst");
    let before = primary_key_reads(&mut connection).await;

    let supervisor = Supervisor::new();
    Workers::new(&queue)
        .register::<Add>()
        .heartbeat(HEARTBEAT)
        .spawn(&supervisor);
    wait_until("the burst has run", || {
        queue.stats().succeeded == JOBS as u64
    })
    .await;
    assert!(supervisor.shutdown().await.is_complete());

    // A backend reports its reads when it ends, if not before: close the
    // queue's connections and wait until they are gone.
    drop(queue);
    while other_connections(&mut connection).await > 0 {
        tokio::time::sleep(POLL).await;
    }
    let read = primary_key_reads(&mut connection).await - before;
    let _ = connection.close().await;
    println!("{JOBS} jobs read {read} primary-key entries");
    assert!(
        read <= READS_PER_JOB * JOBS,
        "{JOBS} jobs read {read} primary-key entries: a walk of the key per batch"
    );
}

/// Entries read from the job table's primary key since the server started.
async fn primary_key_reads(connection: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT idx_tup_read FROM pg_stat_user_indexes \
         WHERE schemaname = 'apalis' AND indexrelname = 'jobs_pkey'",
    )
    .fetch_one(connection)
    .await
    .expect("the primary key's reads")
}

/// Connections to this database other than `connection`.
async fn other_connections(connection: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(connection)
    .await
    .expect("count the connections")
}
