//! For tests that need PostgreSQL: a queue on a database of its own,
//! created on the server `DATABASE_URL` names and dropped afterwards.

use sqlx::Connection;

use super::JobQueue;

/// A database created for one test.
pub(crate) struct ScratchDatabase {
    admin: sqlx::PgConnection,
    name: String,
}

impl ScratchDatabase {
    /// Creates a database named after `test` and opens a queue on it, or
    /// says why not and returns `None` when `DATABASE_URL` names no
    /// PostgreSQL server.
    pub(crate) async fn queue(test: &str) -> Option<(Self, JobQueue)> {
        let Ok(server) = std::env::var("DATABASE_URL") else {
            println!("skipped: DATABASE_URL not set");
            return None;
        };
        if !server.starts_with("postgres") {
            println!("skipped: DATABASE_URL is not a PostgreSQL URL");
            return None;
        }
        let admin = sqlx::PgConnection::connect(&server).await.unwrap();
        let mut database = Self {
            admin,
            name: format!("tb_{test}_{}", std::process::id()),
        };
        database.drop_if_exists().await;
        let create = format!("CREATE DATABASE {}", database.name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut database.admin)
            .await
            .unwrap();
        let (base, _) = server.rsplit_once('/').unwrap();
        let queue = JobQueue::postgres(&format!("{base}/{}", database.name))
            .await
            .unwrap();
        Some((database, queue))
    }

    /// Closes `queue` and drops the database.
    pub(crate) async fn remove(mut self, queue: JobQueue) {
        pool(&queue).close().await;
        drop(queue);
        self.drop_if_exists().await;
    }

    async fn drop_if_exists(&mut self) {
        let drop_it = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop_it))
            .execute(&mut self.admin)
            .await
            .unwrap();
    }
}

/// The pool of a PostgreSQL queue.
// With one engine enabled, matching the queue's engine cannot fail.
#[allow(irrefutable_let_patterns)]
pub(crate) fn pool(queue: &JobQueue) -> &sqlx::PgPool {
    let super::engine::Engine::Postgres(pool) = &queue.engine else {
        unreachable!("a PostgreSQL queue")
    };
    pool
}
