//! Tracked tasks (feature `tracking`): the apidaora transcript over real
//! HTTP, atomic locks under 100 concurrent starts, per-argument locks,
//! retention (TTL, capacity, a store full of running tasks), every way a
//! task ends (finished, failed, panicked, aborted at shutdown, discarded,
//! refused), the JSON errors, fixed signatures, and HTTP's own words:
//! `Idempotency-Key` and `Prefer: respond-async`.
#![cfg(feature = "tracking")]

mod support;

use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::{service_fn, Layer, ServiceExt};
use tower_background::tracking::{
    Lock, MemoryStore, RespondAsync, Signature, TaskId, TaskRecord, TaskRegistry, TaskSpec,
    TaskStatus, LOCK_HEADER,
};
use tower_background::{BackgroundTasks, Supervisor};

use support::{within, AsyncGate};

// ---------------------------------------------------------------------------
// The task under test and its route.

#[derive(Deserialize, Serialize)]
struct Hello {
    name: String,
}

/// apidaora's `hello_task`, waiting at `gate` instead of sleeping 1 s. The
/// names `boom` (panic), `fail` (error) and `never` (never ends) pick the
/// other endings.
fn hello_route(
    registry: &TaskRegistry,
    lock: Lock,
    gate: &AsyncGate,
) -> axum::routing::MethodRouter {
    let gate = gate.clone();
    registry.route("hello_task", lock, move |args: Hello| {
        let gate = gate.clone();
        async move {
            gate.pass().await;
            match args.name.as_str() {
                "boom" => panic!("boom went the task"),
                "fail" => Err("the task failed on purpose".to_owned()),
                "never" => std::future::pending().await,
                name => Ok(format!("Hello {name}!")),
            }
        }
    })
}

fn hello_app(
    supervisor: &Supervisor,
    registry: &TaskRegistry,
    lock: Lock,
    gate: &AsyncGate,
) -> Router {
    Router::new()
        .route("/hello-single", hello_route(registry, lock, gate))
        .layer(supervisor.layer())
}

/// Waits until the task's record says it has ended, as a client polling
/// the status URL would. Bounded by `within`; the pause between polls lets
/// paused-clock tests' time auto-advance, so a hang fails there too.
async fn ended(registry: &TaskRegistry, task_id: TaskId) -> TaskRecord {
    within("the task to end", async {
        loop {
            match registry.get(task_id).await {
                Ok(record) if record.status.is_done() => return record,
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Responses, from a real server or in-process.

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    async fn read<B>(response: Response<B>) -> Self
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        let body = within("the body", body.collect()).await.unwrap().to_bytes();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> &str {
        match self.headers.get(name) {
            Some(value) => value.to_str().unwrap(),
            None => panic!("no {name} header in {:?}", self.headers),
        }
    }

    fn task_id(&self) -> TaskId {
        self.json()["task_id"].as_str().unwrap().parse().unwrap()
    }
}

fn request(method: Method, uri: &str, json_body: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::builder().method(method).uri(uri);
    let body = match json_body {
        Some(body) => {
            request = request.header(CONTENT_TYPE, "application/json");
            Bytes::from(body.to_owned())
        }
        None => Bytes::new(),
    };
    request.body(Full::new(body)).unwrap()
}

/// Sends a request through `app` in-process and reads the whole response
/// (which hands the request's tasks off).
async fn call(app: &Router, method: Method, uri: &str) -> Reply {
    call_with(app, request(method, uri, None)).await
}

async fn call_with(app: &Router, request: Request<Full<Bytes>>) -> Reply {
    let response = within("the response", app.clone().oneshot(request.map(Body::new))).await;
    match response {
        Ok(response) => Reply::read(response).await,
        Err(never) => match never {},
    }
}

/// `axum::serve` on `127.0.0.1:0`, stopped when dropped.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        Self {
            addr,
            stop: Some(stop),
            serving: tokio::spawn(serve.into_future()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.serving.abort();
    }
}

/// A real HTTP/1.1 client (hyper-util's pooled client).
#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
}

impl Http {
    fn new(server: &Server) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr: server.addr,
        }
    }

    async fn send(&self, method: Method, path: &str, json_body: Option<&str>) -> Reply {
        let uri = format!("http://{}{path}", self.addr);
        let request = request(method, &uri, json_body);
        let response = within("the response", self.client.request(request))
            .await
            .unwrap();
        Reply::read(response).await
    }

    async fn post(&self, path: &str) -> Reply {
        self.send(Method::POST, path, None).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }
}

/// The fields of a running task's JSON, as apidaora shows them.
const RUNNING_FIELDS: [&str; 5] = [
    "args_signature",
    "signature",
    "start_time",
    "status",
    "task_id",
];

fn fields(json: &Value) -> Vec<&str> {
    let mut fields: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    fields
}

fn is_rfc3339_utc(text: &str) -> bool {
    text.len() >= 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T'
}

// ---------------------------------------------------------------------------
// The reference transcript and the lock.

/// apidaora's curl session, replayed over real HTTP: 202, then 303 with the
/// lock header, then `running`, then `finished` with the result, then a new
/// 202.
#[tokio::test]
async fn the_reference_transcript_over_http() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    let server = Server::start(hello_app(&supervisor, &registry, Lock::Signature, &gate)).await;
    let http = Http::new(&server);

    let accepted = http.post("/hello-single?name=Me").await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    assert_eq!(accepted.header("content-type"), "application/json");
    let task = accepted.json();
    assert_eq!(fields(&task), RUNNING_FIELDS);
    assert_eq!(task["status"], "running");
    assert_eq!(task["signature"], "36f992696100");
    assert_eq!(task["args_signature"], Value::Null);
    assert!(
        is_rfc3339_utc(task["start_time"].as_str().unwrap()),
        "{task}"
    );
    let id = accepted.task_id();
    let status_url = format!("/hello-single?task_id={id}");
    assert_eq!(accepted.header("location"), status_url);

    let locked = http.post("/hello-single?name=Me").await;
    assert_eq!(locked.status, StatusCode::SEE_OTHER);
    assert_eq!(locked.header("location"), status_url);
    assert_eq!(locked.header(LOCK_HEADER), "signature");

    let running = http.get(&status_url).await;
    assert_eq!(running.status, StatusCode::OK);
    assert_eq!(running.json(), task);

    gate.open();
    ended(&registry, id).await;
    let finished = http.get(&status_url).await;
    assert_eq!(finished.status, StatusCode::OK);
    let finished = finished.json();
    assert_eq!(finished["status"], "finished");
    assert_eq!(finished["result"], "Hello Me!");
    assert!(is_rfc3339_utc(finished["end_time"].as_str().unwrap()));
    assert_eq!(finished["start_time"], task["start_time"]);
    assert_eq!(finished.get("error"), None);

    let again = http.post("/hello-single?name=Me").await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_ne!(again.task_id(), id);

    ended(&registry, again.task_id()).await;
    let report = supervisor.shutdown().await;
    assert_eq!(report.stats.completed, 2);
}

/// Of 100 concurrent starts, exactly one starts; the 99 others are sent to
/// it. (A check-then-set lock lets several through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_100_concurrent_posts_exactly_one_starts() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    let server = Server::start(hello_app(&supervisor, &registry, Lock::Signature, &gate)).await;
    let http = Http::new(&server);

    let posts: Vec<_> = (0..100)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { http.post("/hello-single?name=Me").await })
        })
        .collect();
    let mut replies = Vec::new();
    for post in posts {
        replies.push(post.await.unwrap());
    }

    let accepted: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .collect();
    assert_eq!(accepted.len(), 1, "exactly one start");
    let location = accepted[0].header("location");
    let locked: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::SEE_OTHER)
        .collect();
    assert_eq!(locked.len(), 99);
    for reply in locked {
        assert_eq!(reply.header("location"), location);
        assert_eq!(reply.header(LOCK_HEADER), "signature");
    }

    gate.open();
    let record = ended(&registry, accepted[0].task_id()).await;
    assert_eq!(record.status, TaskStatus::Finished);
    assert_eq!(supervisor.shutdown().await.stats.completed, 1);
}

/// The lock per arguments lets different arguments run together and sends
/// the same arguments to the running task; the args signature depends on
/// the values only, whether they came as a query or as JSON.
#[tokio::test]
async fn the_args_lock_blocks_only_the_same_arguments() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    let app = hello_app(&supervisor, &registry, Lock::Args, &gate);

    let me = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(me.status, StatusCode::ACCEPTED);
    assert_eq!(me.json()["args_signature"], "487a69db8177");
    let you = call(&app, Method::POST, "/hello-single?name=You").await;
    assert_eq!(
        you.status,
        StatusCode::ACCEPTED,
        "other arguments run alongside"
    );
    assert_eq!(you.json()["args_signature"], "328bc39c850b");

    let json = request(Method::POST, "/hello-single", Some(r#"{"name":"Me"}"#));
    let me_again = call_with(&app, json).await;
    assert_eq!(me_again.status, StatusCode::SEE_OTHER);
    assert_eq!(me_again.header(LOCK_HEADER), "args-signature");
    assert_eq!(
        me_again.header("location"),
        format!("/hello-single?task_id={}", me.task_id())
    );

    gate.open();
    ended(&registry, me.task_id()).await;
    ended(&registry, you.task_id()).await;
    let after = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(after.status, StatusCode::ACCEPTED, "the lock was released");
}

// ---------------------------------------------------------------------------
// Retention.

/// An ended task's record answers for the TTL, then `404`.
#[tokio::test(start_paused = true)]
async fn ended_records_expire_after_the_ttl() {
    let supervisor = Supervisor::new();
    let store = MemoryStore::builder().ttl(Duration::from_secs(60)).build();
    let registry = TaskRegistry::builder().store(store).build();
    let gate = AsyncGate::default();
    gate.open();
    let app = hello_app(&supervisor, &registry, Lock::Signature, &gate);

    let accepted = call(&app, Method::POST, "/hello-single?name=Me").await;
    ended(&registry, accepted.task_id()).await;
    let status_url = accepted.header("location").to_owned();

    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(
        call(&app, Method::GET, &status_url).await.status,
        StatusCode::OK
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let gone = call(&app, Method::GET, &status_url).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.json(), json!({ "error": "task-not-found" }));
    assert!(registry.store().is_empty());
}

/// Past the capacity the record that ended first goes first, and memory
/// never holds more than the capacity.
#[tokio::test(start_paused = true)]
async fn past_the_capacity_the_oldest_ended_record_goes_first() {
    let supervisor = Supervisor::new();
    let store = MemoryStore::builder().capacity(2).build();
    let registry = TaskRegistry::builder().store(store).build();
    let gate = AsyncGate::default();
    gate.open();
    let app = hello_app(&supervisor, &registry, Lock::None, &gate);

    let mut ids = Vec::new();
    for _ in 0..5 {
        let accepted = call(&app, Method::POST, "/hello-single?name=Me").await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED);
        ids.push(accepted.task_id());
        ended(&registry, accepted.task_id()).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(registry.store().len() <= 2);
    }
    for (i, id) in ids.iter().enumerate() {
        let status = call(&app, Method::GET, &format!("/hello-single?task_id={id}"))
            .await
            .status;
        let expected = if i < 3 {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "task {i}");
    }
}

/// A store full of running tasks refuses a start with `503` and
/// `Retry-After`, and takes starts again once one has ended.
#[tokio::test]
async fn a_store_full_of_running_tasks_answers_503_with_retry_after() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::builder()
        .store(MemoryStore::builder().capacity(2).build())
        .retry_after(Duration::from_millis(1500))
        .build();
    let gate = AsyncGate::default();
    let app = hello_app(&supervisor, &registry, Lock::None, &gate);

    let first = call(&app, Method::POST, "/hello-single?name=Me").await;
    let second = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );

    let full = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.header(RETRY_AFTER.as_str()), "2");
    assert_eq!(full.json()["error"], "registry-full");
    assert_eq!(registry.store().len(), 2);

    gate.open();
    ended(&registry, first.task_id()).await;
    let after = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(after.status, StatusCode::ACCEPTED);
}

// ---------------------------------------------------------------------------
// Every way a task ends releases its lock.

/// A panicking task is `failed` with the panic's message, the supervisor
/// counts the panic, and the lock is released.
#[tokio::test]
async fn a_panicking_task_is_failed_and_releases_the_lock() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    gate.open();
    let app = hello_app(&supervisor, &registry, Lock::Signature, &gate);

    let accepted = call(&app, Method::POST, "/hello-single?name=boom").await;
    let record = ended(&registry, accepted.task_id()).await;
    assert_eq!(record.status, TaskStatus::Failed);
    let message = &record.error.as_ref().unwrap().message;
    assert_eq!(message, "the task panicked: boom went the task");
    assert_eq!(record.result, None);
    within("the supervisor", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().panicked, 1);

    let status = call(&app, Method::GET, accepted.header("location"))
        .await
        .json();
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"], json!({ "message": message }));

    let after = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(after.status, StatusCode::ACCEPTED, "the lock was released");
}

/// A task that returns `Err` is `failed` with the error's text, counted as
/// failed by the supervisor, and releases the lock.
#[tokio::test]
async fn a_failing_task_is_failed_and_releases_the_lock() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    gate.open();
    let app = hello_app(&supervisor, &registry, Lock::Signature, &gate);

    let accepted = call(&app, Method::POST, "/hello-single?name=fail").await;
    let record = ended(&registry, accepted.task_id()).await;
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.error.unwrap().message, "the task failed on purpose");
    within("the supervisor", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().failed, 1);
    let after = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(after.status, StatusCode::ACCEPTED);
}

/// A task still running when shutdown's grace period ends is aborted,
/// recorded as `cancelled`, and its lock released for the next server.
#[tokio::test(start_paused = true)]
async fn a_task_aborted_at_shutdown_is_cancelled_and_releases_the_lock() {
    let supervisor = Supervisor::builder()
        .grace_period(Duration::from_secs(2))
        .build();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    gate.open();
    let app = hello_app(&supervisor, &registry, Lock::Signature, &gate);

    let accepted = call(&app, Method::POST, "/hello-single?name=never").await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    support::until("the task to start", || supervisor.stats().running == 1).await;

    let report = within("shutdown", supervisor.shutdown()).await;
    assert!(report.aborted);
    assert_eq!(report.stats.cancelled, 1);
    let record = ended(&registry, accepted.task_id()).await;
    assert_eq!(record.status, TaskStatus::Cancelled);
    assert!(record.end_time.is_some());

    // The next server (same registry) may start the task again.
    let next = Supervisor::new();
    let app = hello_app(&next, &registry, Lock::Signature, &gate);
    let after = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(after.status, StatusCode::ACCEPTED, "the lock was released");
}

/// A start whose request produced no response (the inner service failed)
/// has its task discarded: recorded `cancelled` at once, lock released.
#[tokio::test]
async fn a_task_discarded_with_its_request_is_cancelled_and_releases_the_lock() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let spec = TaskSpec::new("hello_task", Lock::Signature, &()).unwrap();
    let (started, ids) = oneshot::channel();
    let started = Arc::new(std::sync::Mutex::new(Some(started)));
    let starter = registry.clone();
    let inner = service_fn(move |request: Request<()>| {
        let (registry, spec, started) = (starter.clone(), spec.clone(), started.clone());
        async move {
            let tasks = request
                .extensions()
                .get::<BackgroundTasks>()
                .unwrap()
                .clone();
            let start = registry.start(&tasks, &spec, async { "never runs" }).await;
            let task_id = start.unwrap().task_id();
            let _ = started.lock().unwrap().take().unwrap().send(task_id);
            Err::<Response<Full<Bytes>>, _>("the handler failed after starting the task")
        }
    });
    let app = supervisor.layer().layer(inner);

    assert!(within("the call", app.oneshot(Request::new(())))
        .await
        .is_err());
    let task_id = ids.await.unwrap();
    let record = registry.get(task_id).await.unwrap();
    assert_eq!(
        record.status,
        TaskStatus::Cancelled,
        "recorded as it was dropped"
    );
    assert_eq!(supervisor.stats().discarded, 1);

    let gate = AsyncGate::default();
    gate.open();
    let app = hello_app(&supervisor, &registry, Lock::Signature, &gate);
    let after = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(after.status, StatusCode::ACCEPTED, "the lock was released");
}

/// A start after shutdown began is answered `503` with `Retry-After`, not
/// `202`: its task is refused, its record is not left running, and it
/// holds no lock.
#[tokio::test]
async fn a_task_refused_after_shutdown_began_is_cancelled() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    gate.open();
    let app = hello_app(&supervisor, &registry, Lock::Signature, &gate);
    let report = supervisor.shutdown().await;
    assert_eq!(report.stats.submitted, 0);

    // The supervisor no longer takes tasks: the start is answered 503 with
    // Retry-After (not a 202 for a task that can never run) ...
    let refused = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["error"], "shutting-down");
    assert_eq!(refused.headers["retry-after"], "5");
    // ... its record is not left running, and it holds no lock: a second
    // start is refused the same way, not redirected to the first.
    assert_eq!(registry.store().running(), 0);
    let again = call(&app, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(
        again.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not locked by a refused task"
    );
}

// ---------------------------------------------------------------------------
// Errors are JSON.

/// Malformed, missing, unknown and other routes' ids.
#[tokio::test]
async fn bad_and_unknown_ids() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    gate.open();
    let other = registry.route("other_task", Lock::None, |(): ()| async { "other" });
    let app = Router::new()
        .route(
            "/hello-single",
            hello_route(&registry, Lock::Signature, &gate),
        )
        .route("/other", other)
        .layer(supervisor.layer());

    for bad in ["nope", "4ee301eb648748a0b6ede5f576accfc2", "%FF", ""] {
        let reply = call(&app, Method::GET, &format!("/hello-single?task_id={bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(
            reply.json(),
            json!({ "error": "invalid-task-id" }),
            "{bad:?}"
        );
    }

    let missing = call(&app, Method::GET, "/hello-single").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["error"], "missing-task-id");

    let unknown = call(
        &app,
        Method::GET,
        &format!("/hello-single?task_id={}", TaskId::new()),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json(), json!({ "error": "task-not-found" }));

    let others = call(&app, Method::POST, "/other").await;
    assert_eq!(others.status, StatusCode::ACCEPTED);
    let elsewhere = format!("/hello-single?task_id={}", others.task_id());
    assert_eq!(
        call(&app, Method::GET, &elsewhere).await.status,
        StatusCode::NOT_FOUND
    );
}

/// Bad arguments, a body that is not JSON, one too large, and a route
/// without the supervisor's layer, a method other than `GET` and `POST`:
/// JSON errors, never plain text.
#[tokio::test]
async fn bad_arguments_are_json_errors() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    let app =
        hello_app(&supervisor, &registry, Lock::Signature, &gate).layer(DefaultBodyLimit::max(64));

    let missing = call(&app, Method::POST, "/hello-single").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["error"], "invalid-arguments");
    assert!(missing.json()["message"].as_str().unwrap().contains("name"));

    let broken = call_with(
        &app,
        request(Method::POST, "/hello-single", Some("{\"name\":")),
    )
    .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert_eq!(broken.json()["error"], "invalid-arguments");

    let mut text = request(Method::POST, "/hello-single", Some("name=Me"));
    text.headers_mut()
        .insert(CONTENT_TYPE, "text/plain".parse().unwrap());
    let text = call_with(&app, text).await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(text.json()["error"], "unsupported-media-type");

    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(100));
    let big = call_with(&app, request(Method::POST, "/hello-single", Some(&big))).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.json()["error"], "payload-too-large");

    assert!(
        registry.store().is_empty(),
        "no bad request registered a task"
    );

    let no_layer = Router::new().route("/hello-single", hello_route(&registry, Lock::None, &gate));
    let reply = call(&no_layer, Method::POST, "/hello-single?name=Me").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json()["error"], "missing-background-task-layer");

    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let reply = call(&app, method.clone(), "/hello-single?name=Me").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(reply.json()["error"], "method-not-allowed", "{method}");
        assert_eq!(reply.header("allow"), "POST,GET,HEAD", "{method}");
    }
    assert!(registry.store().is_empty());
}

// ---------------------------------------------------------------------------
// Signatures.

/// Signatures are fixed values: the first 12 hex digits of the SHA-256 of
/// the canonical JSON (computed independently with Python's `hashlib` and
/// `json.dumps(…, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`),
/// whatever order the keys were given in.
#[tokio::test]
async fn signatures_are_stable() {
    assert_eq!(Signature::of_task("hello_task").to_string(), "36f992696100");
    let sorted = json!({ "a": [{ "x": 1, "y": 2 }], "b": 1, "c": { "e": null, "é": "ü" } });
    let shuffled: Value =
        serde_json::from_str(r#"{"c":{"é":"ü","e":null},"b":1,"a":[{"y":2,"x":1}]}"#).unwrap();
    assert_eq!(
        Signature::of_args("report", &sorted).unwrap().to_string(),
        "9a7f316f2c25"
    );
    assert_eq!(
        Signature::of_args("report", &shuffled).unwrap().to_string(),
        "9a7f316f2c25"
    );

    // Over HTTP: a query string and a JSON body in another order sign alike.
    #[derive(Deserialize, Serialize)]
    struct Greeting {
        name: String,
        times: u32,
    }
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let route = registry.route("hello_task", Lock::Args, |args: Greeting| async move {
        args.name.repeat(args.times as usize)
    });
    let app = Router::new()
        .route("/greet", route)
        .layer(supervisor.layer());
    let query = call(&app, Method::POST, "/greet?times=2&name=Me").await;
    ended(&registry, query.task_id()).await;
    let body = request(Method::POST, "/greet", Some(r#"{"times":2,"name":"Me"}"#));
    let body = call_with(&app, body).await;
    for reply in [&query, &body] {
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert_eq!(reply.json()["signature"], "36f992696100");
        assert_eq!(reply.json()["args_signature"], "72af39583b47");
    }
}

/// A task that takes no arguments (`()`) needs none, and its result may be
/// any `Serialize` value.
#[tokio::test]
async fn unit_arguments_and_structured_results() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let route = registry.route("stats", Lock::None, |(): ()| async {
        Ok::<_, Infallible>(json!({ "users": 3, "names": ["a", "b"] }))
    });
    let app = Router::new()
        .route("/stats", route)
        .layer(supervisor.layer());
    let accepted = call(&app, Method::POST, "/stats").await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let record = ended(&registry, accepted.task_id()).await;
    assert_eq!(
        record.result,
        Some(json!({ "users": 3, "names": ["a", "b"] }))
    );
}

// ---------------------------------------------------------------------------
// HTTP's own words: Idempotency-Key and Prefer: respond-async.

/// A `POST` of `uri` (and of `json_body`, if any) with `headers`, each
/// value as raw bytes.
fn post_with(
    uri: &str,
    json_body: Option<&str>,
    headers: &[(&str, &[u8])],
) -> Request<Full<Bytes>> {
    let mut request = request(Method::POST, uri, json_body);
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    request
}

const KEY: &[u8] = b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\"";

/// `hello_task` at `/hello-single`, counting how many times it ran.
fn counted_app(
    supervisor: &Supervisor,
    registry: &TaskRegistry,
    lock: Lock,
    gate: &AsyncGate,
) -> (Router, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let (gate, counter) = (gate.clone(), Arc::clone(&runs));
    let route = registry.route("hello_task", lock, move |args: Hello| {
        let (gate, counter) = (gate.clone(), Arc::clone(&counter));
        // Counted when it runs: a start that is refused drops it unpolled.
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            gate.pass().await;
            format!("Hello {}!", args.name)
        }
    });
    let app = Router::new()
        .route("/hello-single", route)
        .layer(supervisor.layer());
    (app, runs)
}

/// A repeated `Idempotency-Key` is sent (`303`) to the task it started,
/// while the task runs and after it ended; the same key quoted or bare,
/// and the same arguments as a query or as JSON, are the same request.
/// The task runs once. (Without a lock, so the key alone does this.)
#[tokio::test]
async fn a_repeated_idempotency_key_answers_303_to_the_same_task_which_runs_once() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    let (app, runs) = counted_app(&supervisor, &registry, Lock::None, &gate);

    let key = [("idempotency-key", KEY)];
    let first = call_with(&app, post_with("/hello-single?name=Me", None, &key)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let status_url = format!("/hello-single?task_id={}", first.task_id());
    assert_eq!(first.header("location"), status_url);

    let bare = [(
        "idempotency-key",
        &b"8e03978e-40d5-43e8-bc93-6894a57f9324"[..],
    )];
    let json = Some(r#"{"name":"Me"}"#);
    for repeat in [
        post_with("/hello-single?name=Me", None, &key),
        post_with("/hello-single?name=Me", None, &bare),
        post_with("/hello-single", json, &key),
    ] {
        let reply = call_with(&app, repeat).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER);
        assert_eq!(reply.header("location"), status_url);
        assert!(reply.headers.get(LOCK_HEADER).is_none(), "not a lock's 303");
        assert!(reply.body.is_empty());
    }

    gate.open();
    let record = ended(&registry, first.task_id()).await;
    assert_eq!(record.result, Some(json!("Hello Me!")));
    let after = call_with(&app, post_with("/hello-single?name=Me", None, &key)).await;
    assert_eq!(
        after.status,
        StatusCode::SEE_OTHER,
        "an ended task keeps its key"
    );
    assert_eq!(after.header("location"), status_url);

    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(registry.store().len(), 1);
    assert_eq!(supervisor.shutdown().await.stats.completed, 1);
}

/// A start refused with a `503` (the supervisor's queue full) invites a
/// retry; the retry with the same `Idempotency-Key` starts the task,
/// rather than being sent to the cancelled record of the refused start.
#[tokio::test]
async fn a_retry_after_a_503_with_the_same_key_starts_the_task() {
    let supervisor = Supervisor::builder().max_queued(1).build();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    gate.open();
    let (app, runs) = counted_app(&supervisor, &registry, Lock::None, &gate);

    // Holds the supervisor's one queued place until its body is read.
    let held = within(
        "the first response",
        app.clone()
            .oneshot(post_with("/hello-single?name=First", None, &[]).map(Body::new)),
    )
    .await
    .unwrap();
    assert_eq!(held.status(), StatusCode::ACCEPTED);

    let key = [("idempotency-key", KEY)];
    let refused = call_with(&app, post_with("/hello-single?name=Me", None, &key)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers.contains_key("retry-after"));

    drop(held);
    supervisor.wait_idle().await;
    let retried = call_with(&app, post_with("/hello-single?name=Me", None, &key)).await;
    assert_eq!(retried.status, StatusCode::ACCEPTED, "{:?}", retried.body);
    let record = ended(&registry, retried.task_id()).await;
    assert_eq!(record.result, Some(json!("Hello Me!")));
    let again = call_with(&app, post_with("/hello-single?name=Me", None, &key)).await;
    assert_eq!(
        again.status,
        StatusCode::SEE_OTHER,
        "the retry's task has the key now"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the first task and the retry's ran; the refused start never did"
    );
}

/// The same key with other arguments is a `422` with a JSON error, and
/// starts nothing.
#[tokio::test]
async fn an_idempotency_key_reused_with_other_arguments_is_422() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    let (app, runs) = counted_app(&supervisor, &registry, Lock::None, &gate);

    let key = [("idempotency-key", KEY)];
    let first = call_with(&app, post_with("/hello-single?name=Me", None, &key)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let other = call_with(&app, post_with("/hello-single?name=You", None, &key)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.header("content-type"), "application/json");
    assert_eq!(other.json()["error"], "idempotency-key-reused");
    assert!(other.json()["message"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));

    gate.open();
    ended(&registry, first.task_id()).await;
    let still = call_with(&app, post_with("/hello-single?name=You", None, &key)).await;
    assert_eq!(
        still.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "after it ended too"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(registry.store().len(), 1);
}

/// An empty key, one too long, one with a space, a control or non-ASCII
/// byte, a broken quoted string, or the header twice: `400` with a JSON
/// error, and nothing starts. 255 characters is a key.
#[tokio::test]
async fn malformed_idempotency_keys_are_400() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    let (app, runs) = counted_app(&supervisor, &registry, Lock::None, &gate);

    let too_long = "k".repeat(256);
    let bad: [&[&[u8]]; 8] = [
        &[b""],
        &[b"\"\""],
        &[too_long.as_bytes()],
        &[b"two words"],
        &[b"tab\tkey"],
        &[b"caf\xc3\xa9"],
        &[b"\"open"],
        &[b"k1", b"k1"],
    ];
    for values in bad {
        let headers: Vec<_> = values
            .iter()
            .map(|value| ("idempotency-key", *value))
            .collect();
        let reply = call_with(&app, post_with("/hello-single?name=Me", None, &headers)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{values:?}");
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(
            reply.json()["error"],
            "invalid-idempotency-key",
            "{values:?}"
        );
        assert!(reply.json()["message"].is_string());
    }
    assert!(registry.store().is_empty());
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    let longest = "k".repeat(255);
    let key = [("idempotency-key", longest.as_bytes())];
    let reply = call_with(&app, post_with("/hello-single?name=Me", None, &key)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
}

/// A key belongs to its route's task: the same key on two routes starts
/// one task on each, and each repeat is sent to its own route's task.
#[tokio::test]
async fn the_same_key_on_two_routes_is_two_keys() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();
    let other = registry.route("other_task", Lock::None, |args: Hello| async move {
        format!("Other {}!", args.name)
    });
    let app = Router::new()
        .route("/hello-single", hello_route(&registry, Lock::None, &gate))
        .route("/other", other)
        .layer(supervisor.layer());

    let key = [("idempotency-key", KEY)];
    let hello = call_with(&app, post_with("/hello-single?name=Me", None, &key)).await;
    let other = call_with(&app, post_with("/other?name=Me", None, &key)).await;
    assert_eq!(hello.status, StatusCode::ACCEPTED);
    assert_eq!(
        other.status,
        StatusCode::ACCEPTED,
        "not the other route's key"
    );
    assert_ne!(hello.task_id(), other.task_id());

    for (path, first) in [("/hello-single", &hello), ("/other", &other)] {
        let again = call_with(&app, post_with(&format!("{path}?name=Me"), None, &key)).await;
        assert_eq!(again.status, StatusCode::SEE_OTHER);
        assert_eq!(
            again.header("location"),
            format!("{path}?task_id={}", first.task_id())
        );
    }
    assert_eq!(registry.store().len(), 2);
}

/// Keys are bounded by the records: a key is forgotten with the record of
/// its task (evicted past the capacity, or expired after the TTL), so a
/// flood of distinct keys never holds more than the capacity.
#[tokio::test(start_paused = true)]
async fn idempotency_keys_go_with_their_records() {
    let supervisor = Supervisor::new();
    let store = MemoryStore::builder()
        .capacity(2)
        .ttl(Duration::from_secs(60))
        .build();
    let registry = TaskRegistry::builder().store(store).build();
    let gate = AsyncGate::default();
    gate.open();
    let (app, runs) = counted_app(&supervisor, &registry, Lock::None, &gate);

    let post = |key: String| {
        post_with(
            "/hello-single?name=Me",
            None,
            &[("idempotency-key", key.as_bytes())],
        )
    };
    let mut ids = Vec::new();
    for i in 0..10 {
        let reply = call_with(&app, post(format!("key-{i}"))).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        ids.push(reply.task_id());
        ended(&registry, reply.task_id()).await;
        assert!(registry.store().len() <= 2);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 10);

    // key-9's record is kept: sent to it. key-0's was evicted: a new task.
    let kept = call_with(&app, post("key-9".to_owned())).await;
    assert_eq!(kept.status, StatusCode::SEE_OTHER);
    let evicted = call_with(&app, post("key-0".to_owned())).await;
    assert_eq!(evicted.status, StatusCode::ACCEPTED);
    assert!(!ids.contains(&evicted.task_id()));
    ended(&registry, evicted.task_id()).await;

    // Past the TTL every record is gone, and every key with it.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(registry.store().is_empty());
    let expired = call_with(&app, post("key-0".to_owned())).await;
    assert_eq!(expired.status, StatusCode::ACCEPTED);
    ended(&registry, expired.task_id()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 12);
}

#[derive(Deserialize)]
struct Wait {
    #[serde(default)]
    wait: bool,
}

/// `Prefer: respond-async`: a route that can wait for its result (as the
/// `?wait=true` routes of `examples/distributed.rs`) answers in its `202`
/// form instead, with `Preference-Applied`; a tracked route, which never
/// waits, says the preference was applied on its `202`.
#[tokio::test]
async fn prefer_respond_async_gets_the_202_form() {
    let supervisor = Supervisor::new();
    let registry = TaskRegistry::new();
    let gate = AsyncGate::default();

    // The distributed example's shape: `?wait=true` waits for the result
    // (here: until the test opens the gate), unless asked not to.
    let waited = gate.clone();
    let submit =
        move |RespondAsync(respond_async): RespondAsync,
              axum::extract::Query(Wait { wait }): axum::extract::Query<Wait>| {
            let gate = waited.clone();
            async move {
                if wait && !respond_async {
                    gate.pass().await;
                    return (StatusCode::CREATED, "the result").into_response();
                }
                let mut response = StatusCode::ACCEPTED.into_response();
                if respond_async {
                    let (name, value) = RespondAsync::applied();
                    response.headers_mut().insert(name, value);
                }
                response
            }
        };
    let app = Router::new()
        .route("/job", axum::routing::post(submit))
        .route(
            "/hello-single",
            hello_route(&registry, Lock::Signature, &gate),
        )
        .layer(supervisor.layer());
    let prefer = [("prefer", &b"wait=10, respond-async"[..])];

    // The gate is closed: only an answer that does not wait comes back.
    let preferred = call_with(&app, post_with("/job?wait=true", None, &prefer)).await;
    assert_eq!(preferred.status, StatusCode::ACCEPTED);
    assert_eq!(preferred.header("preference-applied"), "respond-async");

    let tracked = call_with(&app, post_with("/hello-single?name=Me", None, &prefer)).await;
    assert_eq!(tracked.status, StatusCode::ACCEPTED);
    assert_eq!(tracked.header("preference-applied"), "respond-async");
    let plain = call_with(&app, post_with("/hello-single?name=Me", None, &[])).await;
    assert_eq!(plain.status, StatusCode::SEE_OTHER, "locked by the first");
    assert!(plain.headers.get("preference-applied").is_none());

    // Without the preference, `?wait=true` waits for its result.
    let waiting = tokio::spawn({
        let app = app.clone();
        async move { call_with(&app, post_with("/job?wait=true", None, &[])).await }
    });
    gate.open();
    let waited = within("the waiting route", waiting).await.unwrap();
    assert_eq!(waited.status, StatusCode::CREATED);
    assert!(waited.headers.get("preference-applied").is_none());
    ended(&registry, tracked.task_id()).await;
}
