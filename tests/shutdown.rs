//! The supervisor's lifecycle: its `Stats` snapshot, `wait_idle`, a graceful
//! `shutdown` within the grace period (refusing, waiting, cancelling,
//! aborting, and counting every task exactly), and dropping it without
//! `shutdown`.
//!
//! Grace periods run on tokio's paused clock, so "after 5 s" is virtual time
//! and the tests take no real time.

mod support;

use std::future::{pending, Future};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_background::{BackgroundTasks, ShutdownReport, Supervisor};

use support::{
    abandon, app, assert_counts, counts, explode, finish, millis, request, secs, send, serve,
    stats, until, within, App, Events, Gate,
};

/// A shared slot for a handle a handler keeps, as code that outlives the
/// request might.
type Kept = Arc<Mutex<Option<BackgroundTasks>>>;

fn kept(slot: &Kept) -> BackgroundTasks {
    slot.lock()
        .unwrap()
        .clone()
        .expect("the handler kept its handle")
}

/// Polls `future` once, in this task's context: `true` if it is still pending.
async fn is_pending<F: Future + Unpin>(future: &mut F) -> bool {
    tokio::select! {
        biased;
        _ = future => false,
        () = std::future::ready(()) => true,
    }
}

/// A supervisor whose `shutdown` waits up to `grace`, firing the
/// cancellation token `cleanup` before the end.
fn supervisor_with_grace(grace: Duration, cleanup: Duration) -> Supervisor {
    Supervisor::builder()
        .grace_period(grace)
        .cleanup_period(cleanup)
        .build()
}

/// An app whose every request queues one task that runs until `release` is
/// notified.
fn app_with_tasks_held_until(supervisor: &Supervisor, release: &Arc<Notify>) -> App {
    let release = Arc::clone(release);
    app(supervisor, move |_, tasks| {
        let release = release.clone();
        tasks.add(async move { release.notified().await });
    })
}

/// A task that never ends on its own and ignores the cancellation token; it
/// records `dropped` in `events` when its future is dropped (aborted).
fn never_ending_task(events: &Events, dropped: &'static str) -> impl Future<Output = ()> {
    let guard = events.on_drop(dropped);
    async move {
        let _guard = guard;
        pending::<()>().await;
    }
}

/// Asserts that `shutdown` returned when the grace period ended: not before,
/// and within a second after (virtual time).
#[track_caller]
fn assert_returned_at_the_end_of_the_grace_period(report: &ShutdownReport, grace: Duration) {
    assert!(
        report.elapsed >= grace && report.elapsed < grace + secs(1),
        "elapsed {:?} (virtual time)",
        report.elapsed
    );
}

// ---------------------------------------------------------------------------
// Stats and wait_idle
// ---------------------------------------------------------------------------

/// `stats()` follows a task from waiting (response not ended) to running
/// (handed off) to completed, and every snapshot adds up.
#[tokio::test]
async fn stats_follow_a_task_from_waiting_to_running_to_completed() {
    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let release = Arc::new(Notify::new());
    let mut app = app_with_tasks_held_until(&supervisor, &release);

    let response = send(&mut app, request(Method::POST, "/orders")).await;
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 1;
        s.waiting = 1;
    });

    finish(response).await;
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 1;
        s.running = 1;
    });

    release.notify_one();
    within("the task to finish", supervisor.wait_idle()).await;
    let completed = supervisor.stats();
    assert_counts(completed.clone(), "", |s| {
        s.submitted = 1;
        s.completed = 1;
    });
    assert_eq!(
        monitor.stats(),
        completed,
        "a Monitor reads the same counters"
    );
}

/// `wait_idle` resolves only once every handed-off task has finished, so a
/// test can assert on the tasks' effects right after it, without sleeping.
#[tokio::test]
async fn wait_idle_resolves_after_handed_off_tasks_finish() {
    let supervisor = Supervisor::new();
    let done = Arc::new(AtomicUsize::new(0));
    let mut app = app(&supervisor, {
        let done = done.clone();
        move |_, tasks| {
            for _ in 0..3 {
                let done = done.clone();
                tasks.add(async move {
                    for _ in 0..5 {
                        tokio::task::yield_now().await;
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
    });

    serve(&mut app, request(Method::POST, "/orders")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;

    assert_eq!(done.load(Ordering::SeqCst), 3);
    assert_eq!(supervisor.stats().completed, 3);
}

/// `wait_idle` stays pending while a task runs, however long that takes, and
/// resolves when it ends.
#[tokio::test(start_paused = true)]
async fn wait_idle_does_not_resolve_while_a_task_is_running() {
    let supervisor = Supervisor::new();
    let release = Arc::new(Notify::new());
    let mut app = app_with_tasks_held_until(&supervisor, &release);
    serve(&mut app, request(Method::POST, "/orders")).await;

    let an_hour = tokio::time::timeout(secs(3600), supervisor.wait_idle()).await;
    assert!(
        an_hour.is_err(),
        "wait_idle resolved while a task was running"
    );

    release.notify_one();
    within("the task to finish", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().completed, 1);
}

/// `wait_idle` waits only for handed-off tasks: tasks still queued on an
/// unfinished response do not keep it pending.
#[tokio::test]
async fn wait_idle_does_not_wait_for_tasks_whose_response_has_not_ended() {
    let supervisor = Supervisor::new();
    let mut app = app(&supervisor, |_, tasks| tasks.add(async {}));

    let response = send(&mut app, request(Method::GET, "/")).await;
    within("wait_idle with nothing handed off", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().waiting, 1);

    finish(response).await;
    within("the task to finish", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().completed, 1);
}

/// `wait_idle` is cancel safe: dropping a waiting future, even one already
/// woken but not yet polled, neither starves the other waiters nor breaks
/// later waits.
#[tokio::test]
async fn wait_idle_is_cancel_safe() {
    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let release = Arc::new(Notify::new());
    let mut app = app_with_tasks_held_until(&supervisor, &release);
    serve(&mut app, request(Method::POST, "/orders")).await;

    // Two waiters, each polled once: registered, and pending.
    let mut first = Box::pin(monitor.wait_idle());
    let mut second = Box::pin(supervisor.wait_idle());
    assert!(is_pending(&mut first).await);
    assert!(is_pending(&mut second).await);

    // Wakes both waiters; the first is then dropped without seeing it.
    release.notify_one();
    until("the task to finish", || monitor.stats().running == 0).await;
    drop(first);

    within("the remaining waiter", second).await;
    within("a later wait", monitor.wait_idle()).await;

    // A wait cancelled while the set is busy does not disturb the next one.
    serve(&mut app, request(Method::POST, "/orders")).await;
    let cancelled = tokio::time::timeout(millis(1), supervisor.wait_idle()).await;
    assert!(cancelled.is_err(), "the task was still running");
    release.notify_one();
    within("the second task", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().completed, 2);
}

// ---------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------

/// `shutdown` waits for a running task that finishes within the grace
/// period, returns as soon as it has, and reports it completed, nothing
/// aborted.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_tasks_that_finish_within_the_grace_period() {
    let supervisor = supervisor_with_grace(secs(10), secs(1));
    let events = Events::default();
    let mut app = app(&supervisor, {
        let events = events.clone();
        move |_, tasks| {
            let events = events.clone();
            tasks.add(async move {
                tokio::time::sleep(secs(3)).await;
                events.record("e-mail sent");
            });
        }
    });
    serve(&mut app, request(Method::POST, "/signup")).await;

    let began = Instant::now();
    let report = within("shutdown", supervisor.shutdown()).await;

    let sent = events.when("e-mail sent").expect("the task ran to its end");
    assert!(sent - began >= secs(3));
    assert_eq!(
        counts(report.stats.clone()),
        stats(|s| {
            s.submitted = 1;
            s.completed = 1;
        })
    );
    assert!(!report.aborted);
    assert!(report.is_complete());
    // Returned when the task ended, before the cleanup period began (at 9 s).
    assert!(
        report.elapsed >= secs(3) && report.elapsed < secs(9),
        "elapsed {:?}",
        report.elapsed
    );
}

/// Once `shutdown` has begun, every task offered is refused and counted:
/// added through a kept clone of a handle, queued by a request handled after
/// shutdown began, or queued by a request whose response was still in
/// flight. None of them runs.
#[tokio::test(start_paused = true)]
async fn shutdown_refuses_tasks_offered_after_it_began() {
    let supervisor = supervisor_with_grace(secs(10), secs(1));
    let monitor = supervisor.monitor();
    let events = Events::default();
    let release = Arc::new(Notify::new());
    let slot = Kept::default();
    let mut app = app(&supervisor, {
        let (events, release, slot) = (events.clone(), release.clone(), slot.clone());
        move |request, tasks| {
            let events = events.clone();
            if request.uri().path() == "/slow" {
                // Keeps shutdown busy while the test offers more tasks.
                let release = release.clone();
                *slot.lock().unwrap() = Some(tasks.clone());
                tasks.add(async move {
                    release.notified().await;
                    events.record("slow task ran");
                });
            } else {
                tasks.add(async move { events.record("refused task ran") });
            }
        }
    });
    serve(&mut app, request(Method::POST, "/slow")).await;
    let in_flight = send(&mut app, request(Method::POST, "/in-flight")).await;
    assert_eq!(monitor.stats().waiting, 1);

    let shutdown = tokio::spawn(supervisor.shutdown());
    until("shutdown to begin", || monitor.is_closed()).await;

    let handle = kept(&slot);
    handle.add(async {});
    assert_eq!(monitor.stats().refused, 1, "added through a kept handle");

    serve(&mut app, request(Method::POST, "/late")).await;
    assert_eq!(monitor.stats().refused, 2, "queued by a later request");

    finish(in_flight).await;
    assert_eq!(monitor.stats().refused, 3, "queued by an in-flight request");
    assert_eq!(monitor.stats().waiting, 0);

    release.notify_one();
    let report = within("shutdown", shutdown).await.unwrap();
    assert_eq!(
        counts(report.stats.clone()),
        stats(|s| {
            s.submitted = 4;
            s.completed = 1;
            s.refused = 3;
        })
    );
    assert!(!report.aborted);
    assert_eq!(events.count("slow task ran"), 1);
    assert_eq!(events.count("refused task ran"), 0);
}

/// Tasks still running when the cleanup period begins are asked to stop: one
/// watching the cancellation token stops cleanly in the cleanup period and
/// counts by what it returned (completed); one ignoring it is aborted when
/// the grace period ends and counts as cancelled; shutdown returns after the
/// grace period.
#[tokio::test(start_paused = true)]
async fn tasks_outliving_the_grace_period_are_asked_to_stop_then_aborted() {
    let grace = secs(5);
    let cleanup = secs(1);
    let supervisor = supervisor_with_grace(grace, cleanup);
    let events = Events::default();
    let mut app = app(&supervisor, {
        let events = events.clone();
        move |_, tasks| {
            let token = tasks.cancellation_token();
            let cooperative = events.clone();
            tasks.add(async move {
                token.cancelled().await;
                cooperative.record("cancellation seen");
                tokio::time::sleep(millis(200)).await; // flush what it has
                cooperative.record("cleaned up");
            });
            tasks.add(never_ending_task(&events, "stubborn task dropped"));
        }
    });
    serve(&mut app, request(Method::POST, "/import")).await;

    let began = Instant::now();
    let report = within("shutdown", supervisor.shutdown()).await;

    let seen = events
        .when("cancellation seen")
        .expect("the token was cancelled");
    assert!(
        seen - began >= grace - cleanup && seen - began < grace,
        "cancelled at {:?}, the cleanup period begins at {:?}",
        seen - began,
        grace - cleanup
    );
    let cleaned = events
        .when("cleaned up")
        .expect("the cooperative task cleaned up");
    assert!(cleaned - began < grace);
    let dropped = events
        .when("stubborn task dropped")
        .expect("the stubborn task was aborted");
    assert!(
        dropped - began >= grace,
        "aborted before the grace period ended"
    );

    assert_eq!(
        counts(report.stats.clone()),
        stats(|s| {
            s.submitted = 2;
            s.completed = 1; // the cooperative task returned
            s.cancelled = 1; // the stubborn task was aborted
        })
    );
    assert!(report.aborted);
    assert!(!report.is_complete());
    assert_returned_at_the_end_of_the_grace_period(&report, grace);
}

/// A blocking closure still running when the grace period ends is counted
/// cancelled and shutdown returns without it; the closure finishes later on
/// its own thread and is not counted again.
#[tokio::test(start_paused = true)]
async fn a_blocking_task_outliving_the_grace_period_is_cancelled_and_shutdown_returns() {
    let grace = secs(2);
    let supervisor = supervisor_with_grace(grace, millis(500));
    let monitor = supervisor.monitor();
    let started = Arc::new(Notify::new());
    let finished = Arc::new(Notify::new());
    let gate = Gate::default();
    let mut app = app(&supervisor, {
        let (started, finished, gate) = (started.clone(), finished.clone(), gate.clone());
        move |_, tasks| {
            let (started, finished, gate) = (started.clone(), finished.clone(), gate.clone());
            tasks.add_blocking(move || {
                started.notify_one();
                gate.wait(); // ignores the cancellation token
                finished.notify_one();
            });
        }
    });
    serve(&mut app, request(Method::POST, "/report")).await;
    within("the blocking task to start", started.notified()).await;

    let shutdown = tokio::spawn(supervisor.shutdown());
    // A running blocking closure stops tokio's paused clock from advancing by
    // itself, so move it by hand, far enough for any grace period to end.
    for _ in 0..100 {
        if shutdown.is_finished() {
            break;
        }
        tokio::time::advance(millis(100)).await;
    }
    assert!(
        shutdown.is_finished(),
        "shutdown waited for the blocking task"
    );
    let report = shutdown.await.unwrap();

    assert_eq!(
        counts(report.stats.clone()),
        stats(|s| {
            s.submitted = 1;
            s.cancelled = 1;
        })
    );
    assert!(report.aborted);
    assert_returned_at_the_end_of_the_grace_period(&report, grace);

    // The closure still runs, so it still holds its blocking slot.
    assert_eq!(report.stats.lanes[1].running, 1, "{:?}", report.stats);

    gate.open();
    within("the closure to finish on its thread", finished.notified()).await;
    within("the closure to give its slot back", async {
        while monitor.stats().lanes[1].running > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        counts(monitor.stats()),
        counts(report.stats.clone()),
        "counted once, as cancelled"
    );
}

/// The shutdown report's counts are exact: in one mixed run each task ends in
/// exactly one counter (completed, failed, panicked, cancelled, discarded,
/// refused), and `submitted == accounted()`.
#[tokio::test(start_paused = true)]
async fn the_shutdown_report_counts_every_task_exactly() {
    let supervisor = supervisor_with_grace(secs(5), secs(1));
    let monitor = supervisor.monitor();
    let slot = Kept::default();
    let mut app = app(&supervisor, {
        let slot = slot.clone();
        move |request, tasks| match request.uri().path() {
            "/work" => {
                tasks.add(async {}); // completed
                tasks.add_blocking(|| ()); // completed
                tasks.add(async { Err::<(), _>("smtp down") }); // failed
                tasks.add(async { explode("template missing") }); // panicked
                tasks.add(pending::<()>()); // cancelled: ignores the token
                *slot.lock().unwrap() = Some(tasks.clone());
            }
            _ => tasks.add(async {}), // discarded: no response
        }
    });

    serve(&mut app, request(Method::POST, "/work")).await;
    abandon(&mut app, request(Method::POST, "/timed-out")).await;

    let shutdown = tokio::spawn(supervisor.shutdown());
    until("shutdown to begin", || monitor.is_closed()).await;
    kept(&slot).add(async {}); // refused

    let report = within("shutdown", shutdown).await.unwrap();
    let s = report.stats;
    assert_eq!(s.completed, 2, "completed");
    assert_eq!(s.failed, 1, "failed");
    assert_eq!(s.panicked, 1, "panicked");
    assert_eq!(s.cancelled, 1, "cancelled");
    assert_eq!(s.discarded, 1, "discarded");
    assert_eq!(s.discard_reasons.no_response, 1, "discarded: no response");
    assert_eq!(s.refused, 1, "refused");
    assert_eq!((s.waiting, s.running), (0, 0));
    assert_eq!(s.submitted, 7);
    assert_eq!(s.submitted, s.accounted());
    assert!(report.aborted);
    assert_eq!(monitor.stats(), s, "nothing moves after the report");
}

// ---------------------------------------------------------------------------
// Without shutdown
// ---------------------------------------------------------------------------

/// Dropping the supervisor without `shutdown` aborts running tasks at once
/// (their futures are dropped), counts them cancelled, and refuses every
/// later task.
#[tokio::test]
async fn dropping_the_supervisor_aborts_running_tasks_and_refuses_new_ones() {
    let supervisor = Supervisor::new();
    let monitor = supervisor.monitor();
    let token = monitor.cancellation_token();
    let events = Events::default();
    let slot = Kept::default();
    let mut app = app(&supervisor, {
        let (events, slot) = (events.clone(), slot.clone());
        move |_, tasks| {
            tasks.add(never_ending_task(&events, "task dropped"));
            *slot.lock().unwrap() = Some(tasks.clone());
        }
    });
    serve(&mut app, request(Method::POST, "/jobs")).await;
    assert_eq!(monitor.stats().running, 1);

    drop(supervisor);
    assert!(monitor.is_closed());
    assert!(token.is_cancelled());
    within("the aborted task to be counted", monitor.wait_idle()).await;
    assert_eq!(events.count("task dropped"), 1);
    assert_eq!(
        counts(monitor.stats()),
        stats(|s| {
            s.submitted = 1;
            s.cancelled = 1;
        })
    );

    kept(&slot).add(async {});
    serve(&mut app, request(Method::POST, "/jobs")).await;
    let after = monitor.stats();
    assert_eq!(after.refused, 2, "a kept handle and a later request");
    assert_eq!((after.running, after.cancelled), (0, 1));
    assert_eq!(after.submitted, after.accounted());
}

/// Dropping the `shutdown` future before it completes drops the supervisor,
/// which aborts the remaining tasks at once rather than leaving them running.
#[tokio::test(start_paused = true)]
async fn dropping_the_shutdown_future_aborts_what_is_left() {
    let supervisor = Supervisor::builder().grace_period(secs(30)).build();
    let monitor = supervisor.monitor();
    let events = Events::default();
    let mut app = app(&supervisor, {
        let events = events.clone();
        move |_, tasks| tasks.add(never_ending_task(&events, "task dropped"))
    });
    serve(&mut app, request(Method::POST, "/jobs")).await;

    let gave_up = tokio::time::timeout(secs(1), supervisor.shutdown()).await;
    assert!(gave_up.is_err(), "shutdown finished with a task running");

    within("the aborted task to be counted", monitor.wait_idle()).await;
    assert_eq!(events.count("task dropped"), 1);
    assert_eq!(monitor.stats().cancelled, 1);
    assert_eq!(monitor.stats().running, 0);
}

// ---------------------------------------------------------------------------
// Residents: application-lifespan work no request started
// ---------------------------------------------------------------------------

/// A resident that stops when shutdown begins is waited for, and shutdown
/// returns as soon as it has (not at the end of the grace period); it is
/// not a task, so nothing is counted.
#[tokio::test(start_paused = true)]
async fn a_resident_that_stops_when_told_is_waited_for() {
    let supervisor = Supervisor::builder().grace_period(secs(10)).build();
    let events = Events::default();
    let resident = events.clone();
    supervisor.spawn_resident(|shutdown| async move {
        shutdown.closing().await;
        // Finishing what it holds takes a moment.
        tokio::time::sleep(millis(300)).await;
        resident.record("resident returned");
    });
    tokio::task::yield_now().await;

    let started = Instant::now();
    let report = within("shutdown", supervisor.shutdown()).await;
    assert_eq!(events.count("resident returned"), 1);
    assert!(!report.aborted, "{report}");
    assert_eq!(
        started.elapsed(),
        millis(300),
        "returns when the resident does"
    );
    assert_eq!(counts(report.stats), stats(|_| {}));
}

/// A resident that ignores `closing` is told `cancelled` when the cleanup
/// period begins, and one that ignores that too is aborted (dropped) at the
/// end of the grace period.
#[tokio::test(start_paused = true)]
async fn a_resident_is_cancelled_then_aborted_with_the_grace_period() {
    let supervisor = Supervisor::builder()
        .grace_period(secs(10))
        .cleanup_period(secs(2))
        .build();
    let events = Events::default();
    let (heeds, ignores) = (events.clone(), events.clone());
    supervisor.spawn_resident(|shutdown| async move {
        shutdown.cancelled().await;
        heeds.record("gave back its work");
    });
    supervisor.spawn_resident(|_shutdown| async move {
        let _dropped = ignores.on_drop("stubborn resident dropped");
        pending::<()>().await;
    });
    tokio::task::yield_now().await;

    let started = Instant::now();
    let report = within("shutdown", supervisor.shutdown()).await;
    assert_eq!(
        events.when("gave back its work"),
        Some(started + secs(8)),
        "told at the start of the cleanup period"
    );
    assert_eq!(events.count("stubborn resident dropped"), 1);
    assert!(report.aborted, "{report}");
}

/// Work no request started, added through `Supervisor::tasks`, starts at
/// once, is counted like a request's tasks, and reaches the failure hook
/// without a request's method or path.
#[tokio::test]
async fn tasks_added_without_a_request_start_at_once_and_are_counted() {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let supervisor = Supervisor::builder()
        .on_failure({
            let failures = Arc::clone(&failures);
            move |failure| {
                let seen = (failure.method().cloned(), failure.path().map(str::to_owned));
                failures.lock().unwrap().push((seen, failure.to_string()));
            }
        })
        .build();
    let tasks = supervisor.tasks();
    let runs = Arc::new(AtomicUsize::new(0));

    tasks.add(support::counting(&runs));
    tasks.add(async { Err::<(), _>("cache unreachable") });
    within("the tasks to end", supervisor.wait_idle()).await;

    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_counts(supervisor.stats(), "two tasks, one failed", |s| {
        s.submitted = 2;
        s.completed = 1;
        s.failed = 1;
    });
    assert_eq!(
        *failures.lock().unwrap(),
        [(
            (None, None),
            "background task failed: cache unreachable".to_owned()
        )]
    );
}

/// Shutdown drains the tasks added without a request within the grace
/// period, and refuses (and counts) those added after it began.
#[tokio::test(start_paused = true)]
async fn shutdown_drains_and_then_refuses_tasks_added_without_a_request() {
    let supervisor = supervisor_with_grace(secs(30), secs(1));
    let (tasks, monitor) = (supervisor.tasks(), supervisor.monitor());
    let events = Events::default();
    let finished = events.clone();
    tasks.add(async move {
        tokio::time::sleep(secs(5)).await;
        finished.record("finished");
    });

    let report = supervisor.shutdown().await;

    assert_eq!(events.count("finished"), 1);
    assert!(!report.aborted, "{report}");
    assert_eq!(
        tasks.try_add(async {}),
        Err(tower_background::AddError::ShuttingDown)
    );
    tasks.add(async {});
    assert_counts(report.stats, "drained, nothing cancelled", |s| {
        s.submitted = 1;
        s.completed = 1;
    });
    assert_counts(monitor.stats(), "the later add refused", |s| {
        s.submitted = 2;
        s.completed = 1;
        s.refused = 1;
    });
}

/// A supervisor on a runtime of its own that is dropped first, as a static
/// supervisor's is at exit: tokio drops the running tasks, each counted as
/// cancelled, and the tasks queued behind them in a lane are counted as
/// cancelled too, one after another (a queue of tens of thousands once
/// overflowed the stack, each dropped task starting the next inside its own
/// drop).
#[test]
fn a_long_lane_queue_is_counted_when_the_runtime_is_dropped_first() {
    a_long_queue_is_counted_when_the_runtime_is_dropped_first(|task| task);
}

/// The same with the tasks queued for one key rather than for a lane.
#[test]
fn a_long_key_queue_is_counted_when_the_runtime_is_dropped_first() {
    a_long_queue_is_counted_when_the_runtime_is_dropped_first(|task| task.key("one"));
}

fn a_long_queue_is_counted_when_the_runtime_is_dropped_first(
    queue: impl Fn(tower_background::Task) -> tower_background::Task,
) {
    const QUEUED: usize = 50_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let supervisor = Supervisor::builder()
        .runtime(runtime.handle().clone())
        .max_running(1)
        .max_queued(QUEUED + 10)
        .build();
    let tasks = supervisor.tasks();
    tasks.add(queue(tower_background::Task::new(pending::<()>())));
    for _ in 0..QUEUED {
        tasks.add(queue(tower_background::Task::new(async {})));
    }
    runtime.block_on(tokio::task::yield_now());
    drop(runtime);
    let stats = supervisor.stats();
    assert_eq!(stats.cancelled, QUEUED as u64 + 1, "{stats:?}");
    assert_eq!(stats.submitted, stats.accounted(), "{stats:?}");
    assert_eq!((stats.running, stats.queued), (0, 0), "{stats:?}");
}
