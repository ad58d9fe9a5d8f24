//! Races between `add` and the hand-off: several threads add tasks through
//! clones of one request's handle while another thread ends the response
//! body (or drops it, under either policy), all released by one barrier,
//! many times over; and the same with `Supervisor::shutdown` racing them.
//!
//! A task added in the race lands before the hand-off (queued, then handed
//! off with the rest) or after it (started at once), or is discarded or
//! refused with the request; it is never stranded in a queue nobody will
//! empty, and never run twice. After every round nothing is left waiting;
//! at the end every task ran exactly once or was counted as not run, and
//! `submitted == accounted()`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll};
use std::thread;

use bytes::Bytes;
use futures_util::task::noop_waker_ref;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};
use tower_background::layer::ResponseBody;
use tower_background::{BackgroundTasks, OnDisconnect, Supervisor};

use crate::harness::{scaled, summary, Ledger};
use crate::support::{counts, stats};

/// Threads adding at once, and tasks each adds.
const ADDERS: u64 = 3;
const ADDS: u64 = 20;
/// Tasks per round: the handler's one, then the adders'.
const PER_ROUND: u64 = 1 + ADDERS * ADDS;

/// How a round's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Polled once: `Full` sends its one frame and reports its end.
    Read,
    /// Dropped unread under the default policy: the tasks run.
    DroppedUnderRun,
    /// Dropped unread under `OnDisconnect::Skip`: the tasks are discarded.
    DroppedUnderSkip,
}

const ENDS: [End; 3] = [End::Read, End::DroppedUnderRun, End::DroppedUnderSkip];

type Body_ = ResponseBody<Full<Bytes>>;

/// Sends a request through the layer to a handler that queues one task;
/// returns the unread response body and the request's handle.
fn respond(
    runtime: &tokio::runtime::Runtime,
    supervisor: &Supervisor,
    policy: OnDisconnect,
    ledger: &Ledger,
    first: u64,
) -> (Body_, BackgroundTasks) {
    let kept = Arc::new(Mutex::new(None));
    let handler = {
        let (ledger, kept) = (ledger.clone(), Arc::clone(&kept));
        service_fn(move |request: Request<()>| {
            let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
            let ledger = ledger.clone();
            tasks.add(async move { ledger.record(first) });
            *kept.lock().unwrap() = Some(tasks.clone());
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x")))) }
        })
    };
    let service = supervisor.layer().on_disconnect(policy).layer(handler);
    let response = runtime.block_on(service.oneshot(Request::new(()))).unwrap();
    let handle = kept.lock().unwrap().take().expect("the handler ran");
    (response.into_body(), handle)
}

/// Runs `ADDERS` threads adding through clones of `handle` and one thread
/// that runs `end` once `after` of their tasks are in, all released at
/// once; returns when all are done. With `0 < after < ADDERS * ADDS`, the
/// end falls in the middle of the adds.
fn race(
    handle: &BackgroundTasks,
    ledger: &Ledger,
    first: u64,
    after: u64,
    end: impl FnOnce() + Send,
) {
    let start = Barrier::new(ADDERS as usize + 1);
    let added = AtomicU64::new(0);
    thread::scope(|scope| {
        for adder in 0..ADDERS {
            let (handle, ledger, start, added) = (handle.clone(), ledger.clone(), &start, &added);
            scope.spawn(move || {
                start.wait();
                for j in 0..ADDS {
                    let (ledger, id) = (ledger.clone(), first + 1 + adder * ADDS + j);
                    handle.add(async move { ledger.record(id) });
                    added.fetch_add(1, Ordering::SeqCst);
                    // A little work between adds, as a handler would do,
                    // so the end can fall between them.
                    for _ in 0..1_000 {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let (start, added) = (&start, &added);
        scope.spawn(move || {
            start.wait();
            while added.load(Ordering::SeqCst) < after {
                thread::yield_now();
            }
            end();
        });
    });
}

fn end_body(mut body: Body_) {
    let mut cx = Context::from_waker(noop_waker_ref());
    let frame = std::pin::Pin::new(&mut body).poll_frame(&mut cx);
    assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
    assert!(
        body.is_end_stream(),
        "`Full` has ended: the tasks are handed off"
    );
}

#[test]
fn adds_racing_the_hand_off_are_each_run_or_discarded_exactly_once() {
    let rounds = scaled(1500, 15_000) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let supervisor = runtime.block_on(async { Supervisor::new() });
    let monitor = supervisor.monitor();
    let ledger = Ledger::new((rounds * PER_ROUND) as usize);
    let mut mid_adds = 0;

    for round in 0..rounds {
        let end = ENDS[(round % 3) as usize];
        let policy = match end {
            End::DroppedUnderSkip => OnDisconnect::Skip,
            _ => OnDisconnect::Run,
        };
        let first = round * PER_ROUND;
        let (body, handle) = respond(&runtime, &supervisor, policy, &ledger, first);
        let after = round % (ADDERS * ADDS);
        // How many tasks were queued when the body ended: 1 < n < PER_ROUND
        // means the end fell in the middle of the adds.
        let queued_at_end = AtomicU64::new(0);
        race(&handle, &ledger, first, after, || {
            queued_at_end.store(monitor.stats().waiting, Ordering::SeqCst);
            match end {
                End::Read => end_body(body),
                _ => drop(body),
            }
        });
        let queued_at_end = queued_at_end.into_inner();
        mid_adds += u64::from(queued_at_end > 1 && queued_at_end < PER_ROUND);
        let stats = monitor.stats();
        assert_eq!(
            stats.waiting, 0,
            "round {round} ({end:?}) left tasks stranded: {stats:?}"
        );
    }
    runtime.block_on(monitor.wait_idle());

    let run = |round: u64| ENDS[(round % 3) as usize] != End::DroppedUnderSkip;
    let ran = ledger.assert_each(|id| u32::from(run(id / PER_ROUND)));
    let discarded = rounds * PER_ROUND - ran;
    let expected = stats(|s| {
        s.submitted = rounds * PER_ROUND;
        s.completed = ran;
        s.discarded = discarded;
        s.discard_reasons.client_disconnected = discarded;
    });
    assert_eq!(counts(monitor.stats()), expected);
    let report = runtime.block_on(supervisor.shutdown());
    assert_eq!(counts(report.stats.clone()), expected);

    summary(
        "add racing the hand-off",
        &format!(
            "{rounds} rounds × ({ADDERS} threads × {ADDS} adds + 1 queued) = {} tasks, the body \
             ended or dropped on a 5th thread (mid-adds in {mid_adds} rounds); {}; none stranded \
             after any round; run exactly once: {ran}",
            rounds * PER_ROUND,
            crate::harness::accounted(&report.stats),
        ),
    );
}

#[test]
fn adds_racing_shutdown_are_each_run_or_refused_exactly_once() {
    let rounds = scaled(300, 3000) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ledger = Ledger::new((rounds * PER_ROUND) as usize);
    let (mut completed, mut refused, mut split) = (0, 0, 0);

    for round in 0..rounds {
        let supervisor = runtime.block_on(async { Supervisor::new() });
        let monitor = supervisor.monitor();
        let first = round * PER_ROUND;
        let (body, handle) = respond(&runtime, &supervisor, OnDisconnect::Run, &ledger, first);
        let after = round % (ADDERS * ADDS);
        // The adders add while, on another thread, the body ends and
        // shutdown begins (in either order): a task that got in before the
        // close runs, the rest are refused.
        let shutdown = Mutex::new(None);
        race(&handle, &ledger, first, after, || {
            // Polled once here, `shutdown` closes the set at once, on this
            // thread; the runtime does the rest.
            let begin_shutdown = || {
                let _runtime = runtime.enter();
                let mut shutdown_future = Box::pin(supervisor.shutdown());
                let mut cx = Context::from_waker(noop_waker_ref());
                let first = shutdown_future.as_mut().poll(&mut cx);
                runtime.spawn(async move {
                    match first {
                        Poll::Ready(report) => report,
                        Poll::Pending => shutdown_future.await,
                    }
                })
            };
            let finishing = if round % 2 == 0 {
                end_body(body);
                begin_shutdown()
            } else {
                let finishing = begin_shutdown();
                end_body(body);
                finishing
            };
            *shutdown.lock().unwrap() = Some(finishing);
        });
        let finishing = shutdown.into_inner().unwrap().expect("shutdown began");
        // The report may be taken while refused adds are still arriving;
        // the counters are read once all threads are done.
        runtime.block_on(finishing).unwrap();
        runtime.block_on(monitor.wait_idle());
        let stats = monitor.stats();
        assert_eq!(stats.submitted, PER_ROUND, "round {round}");
        assert_eq!(
            stats.submitted,
            stats.completed + stats.refused,
            "round {round}: {stats:?}"
        );
        assert_eq!(stats.submitted, stats.accounted(), "round {round}");
        let ran = (first..first + PER_ROUND)
            .filter(|&id| ledger.get(id) == 1)
            .count() as u64;
        assert_eq!(ran, stats.completed, "round {round}: ran vs completed");
        completed += stats.completed;
        refused += stats.refused;
        split += u64::from(stats.completed > 0 && stats.refused > 0);
    }
    let ran = ledger.assert_each(|id| ledger.get(id).min(1));
    assert_eq!(ran, completed);

    summary(
        "add racing shutdown",
        &format!(
            "{rounds} rounds × {PER_ROUND} tasks = {}, shutdown beginning on the thread that \
             ends the body (before or after) mid-adds; rounds split between run and refused: \
             {split}; \
             accepted {} = completed {completed} + refused {refused}; run exactly once: {ran}",
            rounds * PER_ROUND,
            completed + refused,
        ),
    );
}
