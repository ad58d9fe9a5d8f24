//! Client disconnects: some clients drop the connection in the middle of a
//! streamed body, some as soon as the response head arrives, some before
//! any response (while the handler is still working). Under the default
//! policy the first two kinds' tasks run; under `OnDisconnect::Skip` they
//! are discarded as `client_disconnected`. Without a response there is
//! nothing to hand off under either policy: `no_response`. The test knows
//! which requests it cut short, so every counter is predicted exactly.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_background::{OnDisconnect, Supervisor};

use crate::harness::{
    accounted, add_recording_tasks, id_of, mix, scaled, settled, shut_down_and_check_outcomes,
    summary, Client, Clients, Ledger, Outcome, Server,
};
use crate::support::{background_tasks, within, Chunks, Then};

/// Tasks per request: one or two, task `k` of request `id` being
/// `id * MAX_TASKS + k` in the ledger.
const MAX_TASKS: u64 = 2;

/// Each chunk of a streamed response, as an event stream would send it.
const TICK: &[u8] = b"event: tick\n\n";

/// What the client does with request `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Reads the whole streamed body (three chunks).
    ReadsAll,
    /// Reads the head and the first chunk of a stream that has not ended,
    /// then closes the connection.
    LeavesMidBody,
    /// Closes the connection as soon as the response head arrives.
    LeavesAfterHead,
    /// Closes the connection while the handler, having queued its tasks, is
    /// still working on the response.
    LeavesBeforeResponse,
}

fn plan(id: u64) -> Plan {
    match mix(id, 1) % 20 {
        0..=9 => Plan::ReadsAll,
        10..=13 => Plan::LeavesMidBody,
        14..=16 => Plan::LeavesAfterHead,
        _ => Plan::LeavesBeforeResponse,
    }
}

fn tasks_of(id: u64) -> u64 {
    1 + mix(id, 2) % MAX_TASKS
}

/// What becomes of request `id`'s tasks under `policy`.
fn outcome(id: u64, policy: OnDisconnect) -> Outcome {
    match plan(id) {
        Plan::ReadsAll => Outcome::Completed,
        Plan::LeavesMidBody | Plan::LeavesAfterHead if policy == OnDisconnect::Run => {
            Outcome::Completed
        }
        Plan::LeavesMidBody | Plan::LeavesAfterHead => Outcome::ClientDisconnected,
        Plan::LeavesBeforeResponse => Outcome::NoResponse,
    }
}

/// The handler: queues the request's tasks, then streams three chunks, or
/// one chunk and then nothing (the client will leave mid-stream), or tells
/// the client it has queued them and never answers.
async fn handle(
    request: Request<Incoming>,
    ledger: Ledger,
    queued: Arc<[Notify]>,
    requests: u64,
) -> Result<Response<Chunks>, Infallible> {
    let id = id_of(&request);
    add_recording_tasks(
        background_tasks(&request),
        &ledger,
        id,
        tasks_of(id),
        MAX_TASKS,
    );
    let chunk = Bytes::from_static(TICK);
    let body = match plan(id) {
        Plan::ReadsAll => Chunks::new(chunk, 3, Then::End).0,
        Plan::LeavesMidBody | Plan::LeavesAfterHead => Chunks::new(chunk, 1, Then::Hang).0,
        Plan::LeavesBeforeResponse => {
            queued[(id / requests) as usize].notify_one();
            std::future::pending::<()>().await;
            unreachable!("the client leaves first")
        }
    };
    Ok(Response::new(body))
}

async fn scenario(policy: OnDisconnect) {
    let clients = scaled(50, 200) as u64;
    let requests = scaled(40, 100) as u64;
    let total = clients * requests;

    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let ledger = Ledger::new((total * MAX_TASKS) as usize);
    let queued: Arc<[Notify]> = (0..clients).map(|_| Notify::new()).collect();
    let service = ServiceBuilder::new()
        .layer(supervisor.layer().on_disconnect(policy))
        .service_fn({
            let (ledger, queued) = (ledger.clone(), Arc::clone(&queued));
            move |request| handle(request, ledger.clone(), Arc::clone(&queued), requests)
        });
    let server = Server::start(service).await;

    let started = Instant::now();
    let load = Clients::spawn(clients, |client| {
        let (addr, queued) = (server.addr(), Arc::clone(&queued));
        async move {
            let mut connection = None;
            for i in 0..requests {
                let id = client * requests + i;
                let path = format!("/stream/{id}");
                if connection.is_none() {
                    connection = Some(Client::connect(addr).await.expect("connect"));
                }
                let open = connection.as_mut().expect("connected");
                match plan(id) {
                    Plan::ReadsAll => {
                        let (status, body) = open.fetch(&path).await.expect("a whole response");
                        assert_eq!(status, StatusCode::OK);
                        assert_eq!(body.len(), 3 * TICK.len(), "request {id}");
                    }
                    Plan::LeavesMidBody => {
                        let mut body = open.get(&path).await.expect("a head").into_body();
                        let first = within("the first chunk", body.frame()).await;
                        assert!(first.expect("a frame").is_ok(), "request {id}");
                        drop((body, connection.take()));
                    }
                    Plan::LeavesAfterHead => {
                        let response = open.get(&path).await.expect("a head");
                        drop((response, connection.take()));
                    }
                    Plan::LeavesBeforeResponse => {
                        let answer = open.get(&path);
                        let queued = within(
                            "the handler to queue its tasks",
                            queued[client as usize].notified(),
                        );
                        tokio::select! {
                            response = answer => panic!("request {id} was answered: {response:?}"),
                            () = queued => {}
                        }
                        drop(connection.take());
                    }
                }
            }
        }
    });
    load.finish("the clients").await;
    let settled_stats = settled(&monitor).await;
    let elapsed = started.elapsed();
    let connections = server.connections();
    drop(server);

    let mut per_plan = [0_u64; 4];
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

    summary(
        &format!("client disconnects, {policy:?}"),
        &format!(
            "{clients} clients × {requests} requests = {total} requests over {connections} connections; \
             cut short: {} mid-body, {} after the head, {} before the response; {}; \
             tasks run exactly once: {ran}; {elapsed:.1?}",
            per_plan[Plan::LeavesMidBody as usize],
            per_plan[Plan::LeavesAfterHead as usize],
            per_plan[Plan::LeavesBeforeResponse as usize],
            accounted(&report.stats),
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_clients_tasks_run_under_the_default_policy() {
    scenario(OnDisconnect::Run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_clients_tasks_are_discarded_and_counted_under_skip() {
    scenario(OnDisconnect::Skip).await;
}
