//! A tracked route flooded (feature `tracking`): a real axum server on
//! `127.0.0.1:0`, a tracked route (`Lock::None`) over a `MemoryStore` of
//! capacity 64, and many keep-alive clients posting starts as fast as they
//! can, with malformed requests interleaved (bad and unknown task ids,
//! broken and oversized JSON).
//!
//! Two phases on the same server and store:
//!
//! 1. **Gate closed.** Every accepted task waits at a gate, so the store
//!    fills with running tasks: exactly `capacity` starts are answered `202`,
//!    every other start `503` + `Retry-After` + `registry-full`. Then the gate
//!    opens and every accepted task is seen `finished` over HTTP.
//! 2. **Gate open.** Tasks end as fast as they start; the store evicts ended
//!    records (the oldest ended first) to take new starts, so most starts are
//!    accepted, and the rest are `503`.
//!
//! Throughout, every answer is one of the expected statuses with its JSON
//! error, the store's `len()` (sampled every millisecond) never exceeds its
//! capacity, and at the end the supervisor's `submitted == accounted()`,
//! with accepted `202`s == completed tasks == side effects, each exactly
//! once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_background::tracking::{Lock, MemoryStore, TaskId, TaskRegistry};
use tower_background::Supervisor;

use crate::harness::{
    accounted, mix, scaled, settled, shut_down_as_settled, summary, BoxError, Client, Clients,
    Ledger, Server,
};
use crate::support::{stats, within, AsyncGate};

/// The store's capacity: at most this many records, running or ended.
const CAPACITY: usize = 64;

/// The route's body limit; the oversized requests send more.
const BODY_LIMIT: usize = 256;

#[derive(serde::Deserialize, serde::Serialize)]
struct Flood {
    /// The request id, so the task can record its side effect and the
    /// test can check its result.
    id: u64,
}

/// What request `id` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `POST /flood?id=…`.
    StartQuery,
    /// `POST /flood` with `{"id":…}`.
    StartJson,
    /// `GET /flood?task_id=nope` → `400 invalid-task-id`.
    BadId,
    /// `GET /flood?task_id=<fresh uuid>` → `404 task-not-found`.
    UnknownId,
    /// `POST /flood` with `{"id":` → `400 invalid-arguments`.
    BrokenJson,
    /// `POST /flood` with a JSON body over the limit → `413 payload-too-large`.
    Oversized,
}

fn kind(id: u64) -> Kind {
    match mix(id, 70) % 16 {
        0 => Kind::BadId,
        1 => Kind::UnknownId,
        2 => Kind::BrokenJson,
        3 => Kind::Oversized,
        n if n % 2 == 0 => Kind::StartQuery,
        _ => Kind::StartJson,
    }
}

/// One keep-alive HTTP/1.1 connection whose requests may carry JSON.
struct JsonClient(Client<Full<Bytes>>);

impl JsonClient {
    async fn connect(addr: SocketAddr) -> Result<Self, BoxError> {
        Ok(Self(Client::connect_sending(addr).await?))
    }

    /// Sends the request and reads the whole answer.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        json: Option<String>,
    ) -> Result<Answer, BoxError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        if json.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .expect("a valid request");
        let response = self.0.send(request).await?;
        let (parts, body) = response.into_parts();
        let body = within("the whole body", body.collect()).await?.to_bytes();
        let is_json = parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|value| value == "application/json");
        let retry_after = parts
            .headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        Ok(Answer {
            status: parts.status,
            is_json,
            retry_after,
            body,
        })
    }
}

struct Answer {
    status: StatusCode,
    is_json: bool,
    retry_after: Option<u64>,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        assert!(self.is_json, "not application/json: {:?}", self.body);
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// What one flood saw.
#[derive(Default)]
struct Tally {
    /// `(request id, task id)` of every `202`.
    accepted: Vec<(u64, TaskId)>,
    full: u64,
    malformed: u64,
}

/// `clients` keep-alive connections × `requests` each, request ids from
/// `first`. Checks every answer as it comes.
async fn flood(addr: SocketAddr, first: u64, clients: u64, requests: u64) -> Tally {
    let load = Clients::spawn(clients, |client| async move {
        let mut connection = JsonClient::connect(addr).await.expect("connect");
        let mut tally = Tally::default();
        for i in 0..requests {
            let id = first + client * requests + i;
            let kind = kind(id);
            let (method, path, json) = match kind {
                Kind::StartQuery => (Method::POST, format!("/flood?id={id}"), None),
                Kind::StartJson => (
                    Method::POST,
                    "/flood".to_owned(),
                    Some(format!(r#"{{"id":{id}}}"#)),
                ),
                Kind::BadId => (Method::GET, "/flood?task_id=nope".to_owned(), None),
                Kind::UnknownId => (
                    Method::GET,
                    format!("/flood?task_id={}", TaskId::new()),
                    None,
                ),
                Kind::BrokenJson => (Method::POST, "/flood".to_owned(), Some("{\"id\":".into())),
                Kind::Oversized => (
                    Method::POST,
                    "/flood".to_owned(),
                    Some(format!(
                        r#"{{"id":{id},"pad":"{}"}}"#,
                        "x".repeat(4 * BODY_LIMIT)
                    )),
                ),
            };
            let answer = connection
                .send(method, &path, json)
                .await
                .unwrap_or_else(|error| panic!("request {id} ({kind:?}): {error}"));
            let expected = match kind {
                Kind::StartQuery | Kind::StartJson => {
                    if answer.status == StatusCode::ACCEPTED {
                        let json = answer.json();
                        assert_eq!(json["status"], "running", "request {id}");
                        let task_id = json["task_id"].as_str().unwrap().parse().unwrap();
                        tally.accepted.push((id, task_id));
                    } else {
                        assert_eq!(
                            answer.status,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "request {id}: {:?}",
                            answer.body
                        );
                        assert_eq!(answer.error(), "registry-full", "request {id}");
                        assert!(answer.retry_after.is_some(), "request {id}: Retry-After");
                        tally.full += 1;
                    }
                    continue;
                }
                Kind::BadId => (StatusCode::BAD_REQUEST, "invalid-task-id"),
                Kind::UnknownId => (StatusCode::NOT_FOUND, "task-not-found"),
                Kind::BrokenJson => (StatusCode::BAD_REQUEST, "invalid-arguments"),
                Kind::Oversized => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            };
            assert_eq!(
                (answer.status, answer.error().as_str()),
                expected,
                "request {id} ({kind:?}): {:?}",
                answer.body
            );
            tally.malformed += 1;
        }
        tally
    });
    let mut total = Tally::default();
    for tally in load.finish("the clients").await {
        total.accepted.extend(tally.accepted);
        total.full += tally.full;
        total.malformed += tally.malformed;
    }
    total
}

/// Samples the store's `len()` every millisecond, keeping the largest.
fn sample_len(registry: &TaskRegistry, stop: oneshot::Receiver<()>) -> JoinHandle<usize> {
    let registry = registry.clone();
    tokio::spawn(async move {
        let mut stop = stop;
        let mut peak = 0;
        loop {
            peak = peak.max(registry.store().len());
            tokio::select! {
                _ = &mut stop => return peak,
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    })
}

/// 20 connections × 100 requests per phase by default (2 000 + 2 000);
/// 100 × 200 per phase under `RELIABILITY_SCALE=full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_tracked_route_answers_202_or_503_and_memory_stays_flat() {
    let clients = scaled(20, 100) as u64;
    let requests = scaled(100, 200) as u64;
    let per_phase = clients * requests;

    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let registry = TaskRegistry::builder()
        .store(
            MemoryStore::builder()
                .capacity(CAPACITY)
                .ttl(Duration::from_secs(600))
                .build(),
        )
        .build();
    let ledger = Ledger::new((2 * per_phase) as usize);
    let gate = AsyncGate::default();
    let running_now = Arc::new(AtomicUsize::new(0));
    let route = {
        let (ledger, gate, running_now) = (ledger.clone(), gate.clone(), Arc::clone(&running_now));
        registry.route("flood_task", Lock::None, move |args: Flood| {
            let (ledger, gate, running_now) = (ledger.clone(), gate.clone(), running_now.clone());
            async move {
                running_now.fetch_add(1, Ordering::SeqCst);
                gate.pass().await;
                ledger.record(args.id);
                running_now.fetch_sub(1, Ordering::SeqCst);
                format!("done {}", args.id)
            }
        })
    };
    let router = Router::new()
        .route("/flood", route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(supervisor.layer());
    let server = Server::start(router).await;
    let (stop_sampling, stopped) = oneshot::channel();
    let sampler = sample_len(&registry, stopped);
    let started = Instant::now();

    // Phase 1: the gate is closed, nothing ends: exactly `CAPACITY` starts
    // fit, every other one is refused.
    let closed = flood(server.addr(), 0, clients, requests).await;
    assert_eq!(
        closed.accepted.len(),
        CAPACITY,
        "a full store takes no more"
    );
    assert_eq!(registry.store().len(), CAPACITY);
    assert_eq!(registry.store().running(), CAPACITY);
    let held = monitor.stats();
    assert_eq!(held.submitted, CAPACITY as u64, "{held:?}");
    assert_eq!(held.running, CAPACITY as u64, "{held:?}");
    let phase_one = started.elapsed();

    // Open the gate: every accepted task finishes, as a client sees it.
    gate.open();
    let mut client = JsonClient::connect(server.addr()).await.expect("connect");
    for (id, task_id) in &closed.accepted {
        let deadline = Instant::now() + crate::support::BOUND;
        loop {
            let answer = client
                .send(Method::GET, &format!("/flood?task_id={task_id}"), None)
                .await
                .expect("GET");
            assert_eq!(answer.status, StatusCode::OK, "task of request {id}");
            let record = answer.json();
            if record["status"] == "finished" {
                assert_eq!(record["result"], format!("done {id}"));
                break;
            }
            assert_eq!(record["status"], "running", "{record}");
            assert!(
                Instant::now() < deadline,
                "task of request {id} never ended"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    drop(client);

    // Phase 2: the gate is open; ended records make room for new starts.
    let open = flood(server.addr(), per_phase, clients, requests).await;
    let elapsed = started.elapsed();
    let settled_stats = settled(&monitor).await;
    let _ = stop_sampling.send(());
    let peak_len = within("the sampler", sampler).await.unwrap();
    assert!(peak_len <= CAPACITY, "the store grew to {peak_len}");
    assert!(registry.store().len() <= CAPACITY);
    assert_eq!(registry.store().running(), 0);
    assert_eq!(running_now.load(Ordering::SeqCst), 0);
    let connections = server.connections();
    drop(server);

    let accepted = (closed.accepted.len() + open.accepted.len()) as u64;
    let full = closed.full + open.full;
    let malformed = closed.malformed + open.malformed;
    assert_eq!(
        accepted + full + malformed,
        2 * per_phase,
        "every request answered"
    );
    let expected = stats(|s| {
        s.submitted = accepted;
        s.completed = accepted;
    });
    let report = shut_down_as_settled(supervisor, &settled_stats, &expected, "tracked flood").await;
    assert!(report.is_complete() && !report.aborted);

    // Each accepted start ran exactly once; nothing else ran.
    let ids: HashSet<u64> = closed
        .accepted
        .iter()
        .chain(&open.accepted)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids.len() as u64, accepted, "one 202 per request");
    let once = ledger.assert_each(|id| u32::from(ids.contains(&id)));
    assert_eq!(once, accepted);

    let of_kind = |wanted: &[Kind]| {
        (0..2 * per_phase)
            .filter(|id| wanted.contains(&kind(*id)))
            .count()
    };
    let starts = of_kind(&[Kind::StartQuery, Kind::StartJson]);
    let malformed_kinds = format!(
        "bad id {} / unknown id {} / broken JSON {} / oversized {}",
        of_kind(&[Kind::BadId]),
        of_kind(&[Kind::UnknownId]),
        of_kind(&[Kind::BrokenJson]),
        of_kind(&[Kind::Oversized]),
    );
    summary(
        "tracked flood",
        &format!(
            "{clients} keep-alive connections × {requests} requests × 2 phases = {} requests \
             ({starts} starts, {malformed} malformed: {malformed_kinds}, each with its \
             JSON error) over {connections} connections in \
             {elapsed:.1?} (gate closed {phase_one:.1?}); gate closed: {} × 202, {} × 503 \
             registry-full; gate open: {} × 202, {} × 503; store len peak {peak_len} \
             (capacity {CAPACITY}); {}; side effects exactly once {once}/{accepted}",
            accepted + full + malformed,
            closed.accepted.len(),
            closed.full,
            open.accepted.len(),
            open.full,
            accounted(&report.stats),
        ),
    );
}
