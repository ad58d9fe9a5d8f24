//! Tracked tasks over HTTP: apidaora's `@route.background('/hello-single',
//! lock=True)` example, in Rust.
//!
//! `POST /hello-single?name=Me` answers `202 Accepted` with a task id and
//! starts a task that sleeps 1 s and returns `"Hello Me!"`. The route has
//! the signature lock on: a second `POST` while the task runs answers
//! `303 See Other` to the running task, with `x-task-lock: signature`.
//! `GET /hello-single?task_id=…` reports the task: `running`, then
//! `finished` with its result. Ctrl-C (`SIGINT`) or `SIGTERM` stops the HTTP
//! server first (open connections get at most 10 s), then gives the
//! background tasks their grace period, and prints the report.
//!
//! # Running it
//!
//! ```text
//! cargo run --example tracked --features tracking
//! ```
//!
//! `PORT` (default 3000) sets the port on 127.0.0.1, `GRACE_SECS`
//! (default 15, the crate's default) the grace period, and `RUST_LOG`
//! (default `info`) the log filter.
//!
//! Built with `sqlite` or `postgres` too, and with `DATABASE_URL` set
//! (`sqlite://tasks.db`, `postgres://…`), it keeps records and locks in
//! that database (`SqlStore`): run two servers on one database, `POST` to
//! one and `GET` the task from the other, and the lock holds across both.
//!
//! ```text
//! DATABASE_URL=sqlite://tasks.db PORT=3000 cargo run --example tracked --features tracking,sqlite
//! DATABASE_URL=sqlite://tasks.db PORT=3001 cargo run --example tracked --features tracking,sqlite
//! ```
//!
//! In another terminal:
//!
//! ```text
//! curl -i -X POST 'http://127.0.0.1:3000/hello-single?name=Me'   # 202, a task id
//! curl -i -X POST 'http://127.0.0.1:3000/hello-single?name=Me'   # 303 to the running task
//! curl -i 'http://127.0.0.1:3000/hello-single?task_id=<id>'      # running
//! sleep 1
//! curl -i 'http://127.0.0.1:3000/hello-single?task_id=<id>'      # finished, "Hello Me!"
//! curl -i -X POST 'http://127.0.0.1:3000/hello-single?name=Me'   # 202, a new task
//! ```
//!
//! With an `Idempotency-Key` a start happens at most once, for as long as
//! its task's record is kept; `Prefer: respond-async` is answered with
//! `preference-applied: respond-async` on the `202`:
//!
//! ```text
//! curl -i -X POST 'http://127.0.0.1:3000/hello-single?name=Me' -H 'idempotency-key: 8e03978e' -H 'prefer: respond-async'   # 202
//! sleep 1
//! curl -i -X POST 'http://127.0.0.1:3000/hello-single?name=Me' -H 'idempotency-key: 8e03978e'   # 303 to that task, finished
//! curl -i -X POST 'http://127.0.0.1:3000/hello-single?name=You' -H 'idempotency-key: 8e03978e'  # 422 idempotency-key-reused
//! curl -i -X POST 'http://127.0.0.1:3000/hello-single?name=Me' -H 'idempotency-key: two words'  # 400 invalid-idempotency-key
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use tower_background::tracking::{Lock, TaskRegistry, TaskStore};
use tower_background::Supervisor;

mod support;

use support::serve_axum;

/// The task's arguments, from the query string (`?name=Me`) or a JSON body.
#[derive(Deserialize, Serialize)]
struct Hello {
    name: String,
}

/// The task: one second of work, then a greeting, kept as the task's result.
async fn hello_task(args: Hello) -> String {
    tokio::time::sleep(Duration::from_secs(1)).await;
    format!("Hello {}!", args.name)
}

#[tokio::main]
async fn main() -> ExitCode {
    support::main(run).await
}

async fn run(port: u16, grace_period: Duration) -> Result<(), Box<dyn Error>> {
    #[cfg(feature = "durable")]
    if let Ok(url) = std::env::var(tower_background::durable::DATABASE_URL) {
        use tower_background::durable::JobQueue;
        use tower_background::tracking::SqlStore;

        let queue = JobQueue::connect(&url).await?;
        tracing::info!(engine = queue.engine(), "records and locks in the database");
        let store = SqlStore::new(&queue).await?;
        let registry = TaskRegistry::builder().store(store).build();
        return serve(port, grace_period, registry).await;
    }
    // Records for an hour (at most 10 000 of them): the defaults.
    serve(port, grace_period, TaskRegistry::new()).await
}

async fn serve<S: TaskStore>(
    port: u16,
    grace_period: Duration,
    registry: TaskRegistry<S>,
) -> Result<(), Box<dyn Error>> {
    let background = Supervisor::builder().grace_period(grace_period).build();
    let app = Router::new()
        .route(
            "/hello-single",
            registry.route("hello_task", Lock::Signature, hello_task),
        )
        .layer(background.layer());

    // Serves until SIGINT or SIGTERM, then drains HTTP (at most 10 s), then
    // the background tasks within their grace period. A task still running
    // when that ends is recorded as `cancelled`, and its lock released:
    // `flush` waits for those writes (a database's take a moment) before
    // the runtime ends with `main`.
    let served = serve_axum(port, app, background).await;
    registry.flush().await;
    served
}
