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

impl Engine {
    /// Whether the pool holds a connection no one is using: one may be had
    /// without waiting (unless another task takes it first).
    pub(crate) fn has_idle_connection(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => pool.num_idle() > 0,
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => pool.num_idle() > 0,
        }
    }
}
