//! Handler faults: handlers that queue tasks and then time out (tower's
//! `TimeoutLayer` outside our layer), panic while being called or while
//! their future runs (caught by tower-http's `CatchPanicLayer` outside our
//! layer), return an error (turned into a `500` by a `map_result` outside
//! our layer), or answer `503`. No response left our layer for the first
//! four, so their tasks are discarded as `no_response`; the `503`'s run
//! under the default policy and are discarded as `server_error` under
//! `OnServerError::Skip`. Every client keeps its one keep-alive connection
//! through all of it: the server keeps serving.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::timeout::error::Elapsed;
use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;
use tower_background::layer::ResponseBody;
use tower_background::{OnServerError, Supervisor};
use tower_http::catch_panic::CatchPanicLayer;

use crate::harness::{
    accounted, add_recording_tasks, fetch_on_keep_alive_connections, id_of, inject_panic, mix,
    quiet_injected_panics, scaled, settled, shut_down_and_check_outcomes, summary, BoxError,
    Ledger, Outcome, Server,
};
use crate::support::background_tasks;

/// Tasks per request: one to three.
const MAX_TASKS: u64 = 3;

/// How long the `TimeoutLayer` gives a handler. Handlers that answer do so
/// on their first poll, which tower's `Timeout` looks at before its timer,
/// so only the handlers that never answer ever time out, however loaded
/// the machine.
const HANDLER_TIMEOUT: Duration = Duration::from_millis(100);

/// What the handler of request `id` does after queuing its tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Answers `200`.
    Answers,
    /// Answers `503 Service Unavailable`.
    AnswersServerError,
    /// Never answers: the `TimeoutLayer` gives up on it (`504`).
    TimesOut,
    /// Returns `Err` (`500` from the error mapping).
    Fails,
    /// Panics inside `Service::call`, before returning a future (`500` from
    /// `CatchPanicLayer`).
    PanicsInCall,
    /// Panics inside its future, after an `.await` (`500` from
    /// `CatchPanicLayer`).
    PanicsInFuture,
}

fn plan(id: u64) -> Plan {
    match mix(id, 1) % 12 {
        0..=4 => Plan::Answers,
        5 => Plan::AnswersServerError,
        6 | 7 => Plan::TimesOut,
        8 | 9 => Plan::Fails,
        10 => Plan::PanicsInCall,
        _ => Plan::PanicsInFuture,
    }
}

fn tasks_of(id: u64) -> u64 {
    1 + mix(id, 2) % MAX_TASKS
}

/// What becomes of request `id`'s tasks under `policy`.
fn outcome(id: u64, policy: OnServerError) -> Outcome {
    match plan(id) {
        Plan::Answers => Outcome::Completed,
        Plan::AnswersServerError if policy == OnServerError::Run => Outcome::Completed,
        Plan::AnswersServerError => Outcome::ServerError,
        _ => Outcome::NoResponse,
    }
}

/// What the client sees for request `id`.
fn status(id: u64) -> StatusCode {
    match plan(id) {
        Plan::Answers => StatusCode::OK,
        Plan::AnswersServerError => StatusCode::SERVICE_UNAVAILABLE,
        Plan::TimesOut => StatusCode::GATEWAY_TIMEOUT,
        Plan::Fails | Plan::PanicsInCall | Plan::PanicsInFuture => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

type Inner = Response<Full<Bytes>>;

/// The service's `call`: queues the request's tasks (before any fault, as a
/// handler that does its work then fails would), then misbehaves as planned.
fn call(
    request: Request<Incoming>,
    ledger: &Ledger,
) -> impl std::future::Future<Output = Result<Inner, BoxError>> + Send {
    let id = id_of(&request);
    add_recording_tasks(
        background_tasks(&request),
        ledger,
        id,
        tasks_of(id),
        MAX_TASKS,
    );
    if plan(id) == Plan::PanicsInCall {
        inject_panic("handler panicked in call");
    }
    async move {
        let mut response = Response::new(Full::new(Bytes::from(id.to_string())));
        match plan(id) {
            Plan::Answers | Plan::PanicsInCall => {}
            Plan::AnswersServerError => {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Plan::TimesOut => std::future::pending().await,
            Plan::Fails => return Err(format!("request {id}: injected handler error").into()),
            Plan::PanicsInFuture => {
                tokio::task::yield_now().await;
                inject_panic("handler panicked in its future");
            }
        }
        Ok(response)
    }
}

type Answer = Response<Either<ResponseBody<Full<Bytes>>, Full<Bytes>>>;

/// Outside our layer and the timeout: turns an error into a response, as
/// axum's `HandleErrorLayer` would.
fn answer_errors(
    result: Result<Response<ResponseBody<Full<Bytes>>>, BoxError>,
) -> Result<Answer, BoxError> {
    Ok(match result {
        Ok(response) => response.map(Either::Left),
        Err(error) => {
            let status = if error.is::<Elapsed>() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            let mut response =
                Response::new(Either::Right(Full::new(Bytes::from(error.to_string()))));
            *response.status_mut() = status;
            response
        }
    })
}

async fn scenario(policy: OnServerError) {
    quiet_injected_panics();
    let clients = scaled(20, 100) as u64;
    let requests = scaled(30, 100) as u64;
    let total = clients * requests;

    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let ledger = Ledger::new((total * MAX_TASKS) as usize);
    let service = ServiceBuilder::new()
        .layer(CatchPanicLayer::new())
        .map_result(answer_errors)
        .layer(TimeoutLayer::new(HANDLER_TIMEOUT))
        .layer(supervisor.layer().on_server_error(policy))
        .service_fn({
            let ledger = ledger.clone();
            move |request| call(request, &ledger)
        });
    let server = Server::start(service).await;

    let started = Instant::now();
    fetch_on_keep_alive_connections(
        server.addr(),
        clients,
        requests,
        "/faults",
        |id, got, body| {
            assert_eq!(got, status(id), "request {id} ({:?})", plan(id));
            if matches!(plan(id), Plan::Answers | Plan::AnswersServerError) {
                assert_eq!(body, id.to_string());
            }
        },
    )
    .await;
    let settled_stats = settled(&monitor).await;
    let elapsed = started.elapsed();
    server.assert_one_connection_per_client(clients);
    drop(server);

    let mut per_plan = [0_u64; 6];
    for id in 0..total {
        per_plan[plan(id) as usize] += 1;
    }
    let (report, ran) = shut_down_and_check_outcomes(
        supervisor,
        &settled_stats,
        &ledger,
        (total, MAX_TASKS),
        |id| (tasks_of(id), outcome(id, policy)),
        &format!("policy {policy:?}"),
    )
    .await;

    let count = |plan: Plan| per_plan[plan as usize];
    summary(
        &format!("handler faults, {policy:?}"),
        &format!(
            "{clients} keep-alive connections × {requests} requests = {total} requests: \
             {} answered 200, {} answered 503, {} timed out, {} returned Err, \
             {} panicked in call, {} panicked in the future; {}; \
             tasks run exactly once: {ran}; connections kept: {clients}/{clients}; {elapsed:.1?}",
            count(Plan::Answers),
            count(Plan::AnswersServerError),
            count(Plan::TimesOut),
            count(Plan::Fails),
            count(Plan::PanicsInCall),
            count(Plan::PanicsInFuture),
            accounted(&report.stats),
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_handlers_tasks_are_discarded_and_counted_and_the_server_keeps_serving() {
    scenario(OnServerError::Run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_skip_a_server_errors_tasks_are_discarded_too() {
    scenario(OnServerError::Skip).await;
}
