//! [`Engine`]: the database a [`JobQueue`](super::JobQueue) and its
//! [`Workers`](super::Workers) talk to, one variant per enabled backend.

/// The database behind a [`JobQueue`](super::JobQueue).
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    #[cfg(feature = "sqlite")]
    Sqlite(apalis_sqlite::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(apalis_postgres::PgPool),
}
