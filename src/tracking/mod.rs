//! Tracked tasks (feature `tracking`): background tasks with an id, a
//! status and a result that clients can ask for over HTTP, and optional
//! locks so that a task runs once at a time — apidaora's background routes,
//! without their races and unbounded memory.
//!
//! # Example
//!
//! One call makes a route: `POST /hello-single?name=Me` answers `202
//! Accepted` with a task id and starts the task once the response has been
//! sent; a second `POST` while it runs answers `303 See Other` to the
//! running task; `GET /hello-single?task_id=…` reports it.
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use axum::Router;
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_background::tracking::{Lock, TaskRegistry};
//! use tower_background::Supervisor;
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Hello {
//!     name: String,
//! }
//!
//! async fn hello_task(args: Hello) -> String {
//!     format!("Hello {}!", args.name)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let supervisor = Supervisor::new();
//! let registry = TaskRegistry::new();
//! let app = Router::new()
//!     .route("/hello-single", registry.route("hello_task", Lock::Signature, hello_task))
//!     .layer(supervisor.layer());
//!
//! let start = Request::post("/hello-single?name=Me").body(Body::empty()).unwrap();
//! let response = app.clone().oneshot(start).await.unwrap();
//! assert_eq!(response.status(), StatusCode::ACCEPTED);
//! let location = response.headers()["location"].to_str().unwrap().to_owned();
//! response.into_body().collect().await.unwrap(); // sent: the task starts
//! supervisor.wait_idle().await;
//!
//! let status = Request::get(location).body(Body::empty()).unwrap();
//! let response = app.oneshot(status).await.unwrap();
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(record["status"], "finished");
//! assert_eq!(record["result"], "Hello Me!");
//! assert_eq!(record["signature"], "36f992696100");
//! # }
//! ```
//!
//! # How it fits together
//!
//! - A [`TaskRegistry`] lives beside the [`Supervisor`](crate::Supervisor).
//!   It records tracked tasks in a [`TaskStore`]: the [`MemoryStore`] by
//!   default; `SqlStore` (features `sqlite` or `postgres`), in the database
//!   of a durable `JobQueue`, shared by every server that uses it; or your
//!   own.
//! - A tracked task is started with
//!   [`BackgroundTasks::add`](crate::BackgroundTasks::add) on the request's
//!   handle, so it is an ordinary background task: it starts after the
//!   response has been sent, is counted in [`Stats`](crate::Stats), and is
//!   drained (then cancelled) at shutdown like any other. The registry only
//!   adds the record.
//! - [`TaskRegistry::route`] makes a whole route; [`TaskRegistry::start`],
//!   [`TaskRegistry::get`], [`TaskIdQuery`], [`Started::into_response_at`],
//!   [`IdempotencyKey`], [`RespondAsync`] and [`TrackingError`] are the
//!   pieces for routes of your own.
//!
//! # Guarantees
//!
//! | | |
//! |---|---|
//! | **atomic locks** | taking a [`Lock`] and registering the task are one step of the store: of any number of concurrent starts, exactly one starts, the others get its id |
//! | **idempotent starts** | a start's `Idempotency-Key` is checked in that same step: a key starts at most one task per route while that task's record is kept |
//! | **locks always released** | however the task ends: finished, failed (an `Err`), panicked, or cancelled (aborted at shutdown, refused, discarded with its request); with a store shared by several servers, also when the server running it dies (its lease lapses). A store that does not answer at once (`SqlStore`) records a cancelled task's end on a tokio task of its own: call [`TaskRegistry::flush`] after the supervisor's shutdown so that those writes are done before the runtime ends |
//! | **bounded** | ended records are kept for a TTL ([`DEFAULT_TTL`], 1 h), at most a capacity of records ([`DEFAULT_CAPACITY`], 10 000) are kept, the oldest ended first to go; a store full of running tasks refuses starts (`503` + `Retry-After`); an idempotency key (at most [`MAX_IDEMPOTENCY_KEY_LEN`], 255 characters) lives and goes with its task's record, so keys never outnumber records |
//! | **stable signatures** | 12 hex digits derived from the task's name and its arguments' canonical JSON ([`Signature`]): the same on every machine and run |
//! | **JSON errors** | every error of a tracked route is JSON ([`TrackingError`]); no input makes it panic |
//!
//! What is lost on a crash: with the [`MemoryStore`], everything — records,
//! locks and the tasks themselves. With `SqlStore`, only the tasks that
//! were running in the crashed process: their records stay, and when their
//! lease lapses (30 s unless set) they show as `failed`, abandoned, and
//! their locks are free again.
//!
//! # Several servers
//!
//! To share records and locks between servers, keep them in the database
//! of a durable `JobQueue` with `SqlStore` (features `sqlite` or
//! `postgres`): a task started by a `POST` on one server is reported by
//! `GET ?task_id=` on any other, and a lock holds across all of them. The
//! task itself runs on the server that accepted it.
//!
//! ```no_run
//! # #[cfg(feature = "durable")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_background::durable::JobQueue;
//! use tower_background::tracking::{SqlStore, TaskRegistry};
//!
//! let queue = JobQueue::from_env("tasks.db").await?; // $DATABASE_URL, else SQLite
//! let registry = TaskRegistry::builder()
//!     .store(SqlStore::new(&queue).await?)
//!     .build();
//! # drop(registry);
//! # Ok(())
//! # }
//! ```
//!
//! # HTTP contract
//!
//! The field names are apidaora's. Times are RFC 3339, UTC, to the
//! millisecond, always with its three digits (`…:00.000Z`).
//! `args_signature` is `null` unless the task locks per arguments
//! ([`Lock::Args`]), as in apidaora.
//!
//! ```text
//! POST /hello-single?name=Me
//! 202 Accepted
//! location: /hello-single?task_id=4ee301eb-6487-48a0-b6ed-e5f576accfc2
//! {"task_id":"4ee301eb-…","start_time":"2026-05-01T09:30:00.123Z","status":"running","signature":"36f992696100","args_signature":null}
//!
//! POST /hello-single?name=Me
//! 303 See Other
//! location: /hello-single?task_id=4ee301eb-6487-48a0-b6ed-e5f576accfc2
//! x-task-lock: signature
//!
//! GET /hello-single?task_id=4ee301eb-6487-48a0-b6ed-e5f576accfc2
//! 200 OK
//! {"task_id":"4ee301eb-…","start_time":"…","status":"finished","signature":"36f992696100","args_signature":null,"end_time":"2026-05-01T09:30:01.125Z","result":"Hello Me!"}
//! ```
//!
//! # HTTP's own words: `Idempotency-Key` and `Prefer: respond-async`
//!
//! Beside apidaora's lock, which stays as it is, a tracked route speaks
//! two standard headers.
//!
//! **`Idempotency-Key`** (IETF httpapi draft "The Idempotency-Key HTTP
//! Header Field"). A client that may send a start twice — a retry after a
//! timeout, a double click — names it with a key of its own (a UUID, say),
//! and the route starts it at most once:
//!
//! ```text
//! POST /hello-single?name=Me             idempotency-key: "8e03978e-40d5-43e8-bc93-6894a57f9324"
//! 202 Accepted                           location: /hello-single?task_id=4ee301eb-…
//!
//! POST /hello-single?name=Me             idempotency-key: "8e03978e-40d5-43e8-bc93-6894a57f9324"
//! 303 See Other                          location: /hello-single?task_id=4ee301eb-…   (the same task, running or ended)
//!
//! POST /hello-single?name=You            idempotency-key: "8e03978e-40d5-43e8-bc93-6894a57f9324"
//! 422 Unprocessable Content              {"error":"idempotency-key-reused","message":"…"}
//!
//! POST /hello-single?name=Me             idempotency-key: two words
//! 400 Bad Request                        {"error":"invalid-idempotency-key","message":"…"}
//! ```
//!
//! - **Scope**: a key belongs to its route's task (its
//!   [signature](Signature::of_task)): the same key sent to two routes is
//!   two keys. It is not scoped per client: clients should make keys
//!   unguessable (random UUIDs, as the draft advises). A handler of your
//!   own passes the key to [`TaskSpec::with_idempotency_key`], and may
//!   build it from the user's id and the header to scope it per user.
//! - **Same request**: the same arguments by value, compared by their
//!   [args signature](Signature::of_args), whether they came as a query
//!   string or as JSON.
//! - **Lifetime**: a key is remembered exactly as long as the record of the
//!   task it started — while it runs, then for the TTL, unless the capacity
//!   evicts it sooner — in the same store (so shared by every server with
//!   `SqlStore`). Keys never outnumber records: a flood of distinct keys is
//!   a flood of starts, bounded like any other. A task that was cancelled
//!   (its start refused with a `503`, discarded with its request, stopped
//!   by a shutdown) gives its key up: the client's retry with that key
//!   starts the task, as the `503` invited it to.
//! - **Form**: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] (255) visible ASCII
//!   characters, as the draft's quoted string or bare; the header given
//!   twice is a `400` too.
//! - The key is checked before the lock: a repeated key is sent to its own
//!   task (without `x-task-lock`), even while another task holds the lock.
//!
//! **`Prefer: respond-async`** (RFC 7240). A start never waits for its task
//! (the task starts after the response has been sent), so a tracked route
//! always answers in the `202` form; to a request that prefers
//! `respond-async` it adds `Preference-Applied: respond-async`. A route of
//! your own that *can* wait for a result (the `?wait=true` routes of
//! `examples/distributed.rs`) reads the preference with the
//! [`RespondAsync`] extractor and answers `202` instead of waiting.
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use axum::Router;
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_background::tracking::{Lock, TaskRegistry};
//! use tower_background::Supervisor;
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Hello {
//!     name: String,
//! }
//!
//! async fn hello_task(args: Hello) -> String {
//!     format!("Hello {}!", args.name)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let supervisor = Supervisor::new();
//! let registry = TaskRegistry::new();
//! let app = Router::new()
//!     .route("/hello", registry.route("hello_task", Lock::None, hello_task))
//!     .layer(supervisor.layer());
//! let start = |name: &str| {
//!     Request::post(format!("/hello?name={name}"))
//!         .header("idempotency-key", "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
//!         .header("prefer", "respond-async")
//!         .body(Body::empty())
//!         .unwrap()
//! };
//!
//! let first = app.clone().oneshot(start("Me")).await.unwrap();
//! assert_eq!(first.status(), StatusCode::ACCEPTED);
//! assert_eq!(first.headers()["preference-applied"], "respond-async");
//! let location = first.headers()["location"].clone();
//! first.into_body().collect().await.unwrap(); // sent: the task starts
//!
//! let again = app.clone().oneshot(start("Me")).await.unwrap();
//! assert_eq!(again.status(), StatusCode::SEE_OTHER);
//! assert_eq!(again.headers()["location"], location); // the same task
//!
//! let other = app.oneshot(start("You")).await.unwrap();
//! assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
//!
//! supervisor.wait_idle().await;
//! assert_eq!(supervisor.stats().completed, 1); // it ran once
//! # }
//! ```
//!
//! # Minimum Rust version
//!
//! 1.75, like the crate, with dependency versions that support it (the
//! repository's `Cargo.lock` pins newer ones: axum 0.8.0 to 0.8.4, `time`
//! up to 0.3.41 and `uuid` up to 1.18 build on 1.75).

mod args;
mod error;
mod id;
mod idempotency;
mod lock;
mod memory;
mod output;
mod prefer;
mod query;
mod record;
mod recorder;
mod registry;
mod response;
mod route;
mod signature;
mod spec;
#[cfg(feature = "durable")]
mod sql_store;
mod store;
mod timestamp;

pub use error::{ParseIdempotencyKeyError, SignatureError, StoreError, TrackingError};
pub use id::{ParseTaskIdError, TaskId};
pub use idempotency::{
    Idempotency, IdempotencyKey, IDEMPOTENCY_KEY_HEADER, MAX_IDEMPOTENCY_KEY_LEN,
};
pub use lock::{Lock, LockKey, LOCK_HEADER};
pub use memory::{MemoryStore, MemoryStoreBuilder, DEFAULT_CAPACITY, DEFAULT_TTL};
pub use output::IntoTaskResult;
pub use prefer::{RespondAsync, PREFERENCE_APPLIED_HEADER};
pub use query::TaskIdQuery;
pub use record::{TaskError, TaskOutcome, TaskRecord, TaskStatus};
pub use registry::{Started, TaskRegistry, TaskRegistryBuilder, DEFAULT_RETRY_AFTER};
pub use signature::{ParseSignatureError, Signature};
pub use spec::TaskSpec;
#[cfg(feature = "durable")]
pub use sql_store::{SqlStore, SqlStoreBuilder, DEFAULT_LEASE};
pub use store::{Admission, TaskStore};

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn what_handlers_share_is_send_sync_and_clone() {
        is_send_sync_clone::<TaskRegistry>();
        is_send_sync_clone::<TaskRecord>();
        is_send_sync_clone::<TaskSpec>();
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<MemoryStore>();
        is_send_sync::<TrackingError>();
        #[cfg(feature = "durable")]
        is_send_sync::<SqlStore>();
    }
}
