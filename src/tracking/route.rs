//! [`TaskRegistry::route`]: one call turns an async function into a route
//! that starts it (`POST`) and reports on it (`GET ?task_id=`).

use std::future::Future;
use std::sync::Arc;

use axum::extract::{OriginalUri, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::handle::BackgroundTasks;

use super::args::read_args;
use super::error::TrackingError;
use super::id::TaskId;
use super::idempotency::IdempotencyKey;
use super::lock::Lock;
use super::output::IntoTaskResult;
use super::prefer::RespondAsync;
use super::query::TaskIdQuery;
use super::record::TaskRecord;
use super::registry::{Started, TaskRegistry};
use super::signature::Signature;
use super::spec::TaskSpec;
use super::store::TaskStore;

/// What a tracked route's two handlers share.
struct Route<St, F> {
    registry: TaskRegistry<St>,
    name: Box<str>,
    signature: Signature,
    lock: Lock,
    task: F,
}

impl<St: TaskStore> TaskRegistry<St> {
    /// A route that runs `task` as a tracked background task: apidaora's
    /// `@route.background(path, lock=…)` in one call.
    ///
    /// `task` is an async function of one argument, deserialized from the
    /// request; `name` names the task (its [signature](Signature::of_task)
    /// is derived from it, so keep it stable across releases); `lock` says
    /// whether it may run twice at once.
    ///
    /// | request | response |
    /// |---|---|
    /// | `POST` with the arguments in the query string (`?name=Me`) or as a JSON body | `202 Accepted`, the task's JSON (`task_id`, `start_time`, `status: "running"`, `signature`, `args_signature`), `Location: <path>?task_id=<id>`; the task starts once this response has been sent |
    /// | the same while a task holding the lock runs | `303 See Other`, `Location: <path>?task_id=<running id>`, `x-task-lock: signature` or `args-signature` |
    /// | `POST` with an `Idempotency-Key` this route's task was started with, same arguments, while its record is kept | `303 See Other`, `Location: <path>?task_id=<that task's id>`; nothing starts |
    /// | the same key with other arguments | `422 {"error":"idempotency-key-reused",…}` |
    /// | an `Idempotency-Key` that is empty, longer than 255 characters, not visible ASCII, or given twice | `400 {"error":"invalid-idempotency-key",…}` |
    /// | `POST` with `Prefer: respond-async` | as without it (a start never waits), and the `202` says `Preference-Applied: respond-async` |
    /// | `GET ?task_id=<id>` | `200 OK`, the task's JSON; once it has ended, with `end_time` and `result` (or `error`) |
    /// | bad arguments, a body that is not JSON or is too large | `400`, `415`, `413`, JSON saying what is wrong |
    /// | `GET` with no, or a malformed, `task_id` | `400 {"error":"missing-task-id",…}`, `400 {"error":"invalid-task-id"}` |
    /// | `GET` with an unknown or expired id, or another route's task | `404 {"error":"task-not-found"}` |
    /// | `POST` while the store is full of running tasks | `503` with `Retry-After` |
    ///
    /// The route takes the request's [`BackgroundTasks`], so it must sit
    /// behind [`Supervisor::layer`](crate::Supervisor::layer) (without it,
    /// the `POST` answers `500` naming the missing layer). The body limit is
    /// axum's `DefaultBodyLimit` (2 MB unless set on the router). See
    /// [`TaskRegistry::start`] for what is recorded when the task ends,
    /// and the [module docs](super#http-contract) for the idempotency key.
    ///
    /// # Example
    ///
    /// ```
    /// use axum::Router;
    /// use tower_background::tracking::{Lock, TaskRegistry};
    /// use tower_background::Supervisor;
    ///
    /// #[derive(serde::Deserialize, serde::Serialize)]
    /// struct Hello {
    ///     name: String,
    /// }
    ///
    /// async fn hello_task(args: Hello) -> String {
    ///     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    ///     format!("Hello {}!", args.name)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let supervisor = Supervisor::new();
    /// let registry = TaskRegistry::new();
    /// let app: Router = Router::new()
    ///     // POST /hello-single?name=Me, then GET /hello-single?task_id=…
    ///     .route("/hello-single", registry.route("hello_task", Lock::Signature, hello_task))
    ///     .layer(supervisor.layer());
    /// # drop(app);
    /// # }
    /// ```
    pub fn route<S, F, A, Fut>(&self, name: &str, lock: Lock, task: F) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(A) -> Fut + Clone + Send + Sync + 'static,
        A: DeserializeOwned + Serialize + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoTaskResult,
    {
        let route = Arc::new(Route {
            registry: self.clone(),
            name: name.into(),
            signature: Signature::of_task(name),
            lock,
            task,
        });
        let starts = Arc::clone(&route);
        post(move |tasks: BackgroundTasks, request: Request| async move {
            starts.start(tasks, request).await
        })
        .get(move |TaskIdQuery(task_id): TaskIdQuery| async move { route.report(task_id).await })
        // Every answer of the route is JSON, this one too; axum adds the
        // `Allow` header to it.
        .fallback(|method: Method| async move {
            TrackingError::MethodNotAllowed(method.to_string())
        })
    }
}

impl<St, F> Route<St, F>
where
    St: TaskStore,
{
    async fn start<A, Fut>(&self, tasks: BackgroundTasks, request: Request) -> Response
    where
        F: Fn(A) -> Fut,
        A: DeserializeOwned + Serialize,
        Fut: Future + Send + 'static,
        Fut::Output: IntoTaskResult,
    {
        let path = match request.extensions().get::<OriginalUri>() {
            Some(OriginalUri(original)) => original.path(),
            None => request.uri().path(),
        }
        .to_owned();
        let RespondAsync(respond_async) = RespondAsync::from_headers(request.headers());
        let started = async {
            // Checked before the body is read: a bad key costs nothing.
            let key = IdempotencyKey::from_headers(request.headers())?;
            let args: A = read_args(request).await?;
            let mut spec = TaskSpec::new(&self.name, self.lock, &args)?;
            if let Some(key) = key {
                spec = spec.with_idempotency_key(key, &args)?;
            }
            self.registry.start(&tasks, &spec, (self.task)(args)).await
        };
        match started.await {
            Ok(started @ Started::Accepted(_)) if respond_async => {
                let mut response = started.into_response_at(&path);
                let (name, value) = RespondAsync::applied();
                response.headers_mut().insert(name, value);
                response
            }
            Ok(started) => started.into_response_at(&path),
            Err(error) => error.into_response(),
        }
    }

    /// The task's record, if it is one of this route's tasks.
    async fn report(&self, task_id: TaskId) -> Result<TaskRecord, TrackingError> {
        let record = self.registry.get(task_id).await?;
        if record.signature != self.signature {
            return Err(TrackingError::TaskNotFound);
        }
        Ok(record)
    }
}
