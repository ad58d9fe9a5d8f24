//! Slow readers: streamed responses (256 × 1 KiB, produced only as the
//! server asks for them) read by clients with small socket buffers. Some
//! read slowly to the end; some read a little, then stop reading and hold
//! the connection open, until the server's idle timeout (no byte moved for
//! 2 s) closes it.
//!
//! - Tasks wait for the end of the body: while the readers are mid-body,
//!   every task is still waiting and none has done anything; a slow
//!   reader's task checks, when it starts, that its body had ended.
//! - Memory stays bounded: waiting tasks never exceed open slow responses ×
//!   tasks per request, and the server never runs ahead of a reader by more
//!   than a fraction of the body (back-pressure reaches the body).
//! - The idle timeout releases the stalled readers' tasks under the policy:
//!   run by default, discarded as `client_disconnected` under
//!   `OnDisconnect::Skip`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_background::{OnDisconnect, Supervisor};

use crate::harness::{
    accounted, id_of, scaled, settled, shut_down_as_settled, summary, Client, Clients, Ledger,
    Peaks, Server, ServerConfig,
};
use crate::support::{background_tasks, eventually, stats, within, Chunks, Progress, Then};

const CHUNK: usize = 1024;
const CHUNKS: usize = 256;
const BODY: u64 = (CHUNK * CHUNKS) as u64;
/// Tasks per request: one async, one blocking.
const TASKS: u64 = 2;
/// Socket buffers on both sides (the kernel doubles them): small, so that a
/// reader that does not read stops the server within a few KiB.
const SOCKET_BUFFER: u32 = 4096;
/// Long enough that a slow reader, or one waiting a moment at the test's
/// barrier, is never taken for a stalled one on a busy machine.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// A slow reader's pause after each frame it reads.
const PAUSE: Duration = Duration::from_millis(5);

async fn scenario(policy: OnDisconnect) {
    // Requests `0..slow` are read slowly to the end; as many others stall.
    let (slow, stalled) = (scaled(8, 32) as u64, scaled(8, 32) as u64);
    let total = slow + stalled;
    let is_slow = move |id: u64| id < slow;

    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let ledger = Ledger::new((total * TASKS) as usize);
    let bodies: Arc<[OnceLock<Arc<Progress>>]> = (0..total).map(|_| OnceLock::new()).collect();
    let early = Arc::new(AtomicU64::new(0));
    let service = ServiceBuilder::new()
        .layer(supervisor.layer().on_disconnect(policy))
        .service_fn({
            let (ledger, bodies, early) = (ledger.clone(), Arc::clone(&bodies), Arc::clone(&early));
            move |request: Request<Incoming>| {
                let id = id_of(&request);
                let (body, progress) =
                    Chunks::new(Bytes::from(vec![b'x'; CHUNK]), CHUNKS, Then::End);
                let tasks = background_tasks(&request);
                // A slow reader's task may start only once its body has ended.
                let check = {
                    let (progress, early, slow) =
                        (Arc::clone(&progress), Arc::clone(&early), is_slow(id));
                    move || {
                        if slow && !progress.has_ended() {
                            early.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                };
                let (first, second) = (ledger.clone(), ledger.clone());
                let check_too = check.clone();
                tasks.add(async move {
                    check();
                    first.record(id * TASKS);
                });
                tasks.add_blocking(move || {
                    check_too();
                    second.record(id * TASKS + 1);
                });
                assert!(
                    bodies[id as usize].set(progress).is_ok(),
                    "one request per id"
                );
                async move { Ok::<_, Infallible>(Response::new(body)) }
            }
        });
    let config = ServerConfig {
        idle_timeout: Some(IDLE_TIMEOUT),
        send_buffer: Some(SOCKET_BUFFER),
    };
    let server = Server::start_with(config, service).await;
    let peaks = Peaks::watch(&monitor);

    let started = Instant::now();
    let mid_body = Arc::new(Barrier::new(total as usize + 1));
    let checked = Arc::new(Barrier::new(total as usize + 1));
    let cut_off = CancellationToken::new();
    let ahead = Arc::new(AtomicU64::new(0));
    let readers = Clients::spawn(total, |id| {
        let (addr, bodies, ahead) = (server.addr(), Arc::clone(&bodies), Arc::clone(&ahead));
        let (mid_body, checked, cut_off) =
            (Arc::clone(&mid_body), Arc::clone(&checked), cut_off.clone());
        async move {
            let mut client = Client::connect_with(addr, Some(SOCKET_BUFFER))
                .await
                .expect("connect");
            let mut body = client
                .get(&format!("/slow/{id}"))
                .await
                .unwrap()
                .into_body();
            let mut read = 0;
            let frame = within("the first frame", body.frame()).await;
            read += frame.unwrap().unwrap().into_data().unwrap().len() as u64;
            mid_body.wait().await;
            checked.wait().await;

            if !is_slow(id) {
                // Stalled: reads nothing more. Once the server has cut the
                // connection, reading on ends in an error, short of the end.
                cut_off.cancelled().await;
                let rest = within("the cut body", body.collect()).await;
                assert!(rest.is_err(), "request {id}: the body ended normally");
                return;
            }
            let progress = bodies[id as usize].get().expect("handled");
            while let Some(frame) = within("a frame", body.frame()).await {
                read += frame.unwrap().into_data().unwrap().len() as u64;
                let produced = progress.produced.load(Ordering::SeqCst);
                ahead.fetch_max(produced.saturating_sub(read), Ordering::SeqCst);
                tokio::time::sleep(PAUSE).await;
            }
            assert_eq!(read, BODY, "request {id}");
            drop(client);
        }
    });

    // Every reader is mid-body: nothing has been handed off or run, and no
    // body has been produced to its end.
    within("the readers to be mid-body", mid_body.wait()).await;
    let mid = monitor.stats();
    let most_produced = bodies
        .iter()
        .map(|body| body.get().expect("handled").produced.load(Ordering::SeqCst))
        .max()
        .unwrap_or(0);
    assert!(
        bodies.iter().all(|body| !body.get().unwrap().has_ended()),
        "a body was produced to its end while its reader was still at the start"
    );
    assert_eq!((mid.waiting, mid.running), (total * TASKS, 0), "{mid:?}");
    assert_eq!(ledger.assert_each(|_| 0), 0, "a task ran mid-body");
    checked.wait().await;

    // The idle timeout cuts the stalled readers off.
    eventually("the idle timeout to close the stalled connections", || {
        server.closed_idle() as u64 == stalled
    })
    .await;
    cut_off.cancel();
    readers.finish("the readers").await;
    let settled_stats = settled(&monitor).await;
    let elapsed = started.elapsed();
    let (max_waiting, _) = peaks.stop().await;
    assert_eq!(
        server.closed_idle() as u64,
        stalled,
        "no slow reader was cut off"
    );
    drop(server);

    let stalled_run = policy == OnDisconnect::Run;
    let expected = stats(|s| {
        s.submitted = total * TASKS;
        s.completed = (slow + if stalled_run { stalled } else { 0 }) * TASKS;
        if !stalled_run {
            s.discarded = stalled * TASKS;
            s.discard_reasons.client_disconnected = stalled * TASKS;
        }
    });
    assert_eq!(
        early.load(Ordering::SeqCst),
        0,
        "a task started before its body ended"
    );
    assert!(
        max_waiting <= total * TASKS,
        "{max_waiting} tasks waiting with {total} responses open"
    );
    let max_ahead = ahead.load(Ordering::SeqCst);
    assert!(
        max_ahead <= BODY / 2,
        "the server ran {max_ahead} bytes ahead of a slow reader"
    );
    let report = shut_down_as_settled(
        supervisor,
        &settled_stats,
        &expected,
        &format!("policy {policy:?}"),
    )
    .await;
    let ran = ledger.assert_each(|task| u32::from(is_slow(task / TASKS) || stalled_run));

    summary(
        &format!("slow readers, {policy:?}"),
        &format!(
            "{total} streamed responses of {} KiB ({} read slowly to the end, {stalled} stalled \
             and cut off by the {IDLE_TIMEOUT:?} idle timeout); mid-body: {} waiting, 0 running, \
             at most {} KiB of any body produced; peak waiting {max_waiting} (bound {}); \
             server at most {} KiB ahead of a slow reader; {}; tasks started before their \
             body ended: 0; tasks run exactly once: {ran}; {elapsed:.1?}",
            BODY / 1024,
            slow,
            mid.waiting,
            most_produced / 1024,
            total * TASKS,
            max_ahead / 1024,
            accounted(&report.stats),
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_hold_tasks_until_the_end_and_idle_cut_offs_run_them() {
    scenario(OnDisconnect::Run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_cut_off_by_the_idle_timeout_are_discarded_under_skip() {
    scenario(OnDisconnect::Skip).await;
}
