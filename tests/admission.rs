//! Admission control: a global limit on running tasks with a bounded queue
//! behind it (`max_running`, `max_queued`), a full queue reported to the
//! handler by `try_add` (a `503` with `Retry-After` under axum) and counted
//! for plain `add`, a blocking lane with its own limit, named lanes, per-task
//! timeouts and retries, and tasks still queued at the end of shutdown's
//! grace period. After each scenario every submitted task is accounted for.
//!
//! Limits are checked from inside the tasks (how many are running at once)
//! as well as in the stats; timeouts, retries and grace periods run on
//! tokio's paused clock.

mod support;

use std::future::pending;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::Method;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_background::{AddError, Retry, Stats, Supervisor, Task};

use support::{
    app, assert_counts, counts, explode, finish, millis, request, secs, send, serve, stats, until,
    within, AsyncGate, Events, Gate, Peak,
};

/// What handlers saw from `try_add`, in order.
type Results = Arc<Mutex<Vec<Result<(), AddError>>>>;

fn taken(results: &Results) -> Vec<Result<(), AddError>> {
    std::mem::take(&mut *results.lock().unwrap())
}

fn lane<'a>(stats: &'a Stats, name: &str) -> &'a tower_background::LaneStats {
    stats
        .lanes
        .iter()
        .find(|lane| lane.name == name)
        .unwrap_or_else(|| panic!("no lane {name:?} in {:?}", stats.lanes))
}

// ---------------------------------------------------------------------------
// The global limit
// ---------------------------------------------------------------------------

/// With `max_running(8)`, 10 000 tasks from 100 requests never run more than
/// 8 at once (seen from inside the tasks and in the lane's high-water mark),
/// the rest wait in the queue, and all of them complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_limit_is_never_exceeded_by_ten_thousand_tasks() {
    const LIMIT: usize = 8;
    const REQUESTS: usize = 100;
    const PER_REQUEST: usize = 100;
    const TASKS: usize = REQUESTS * PER_REQUEST;
    let supervisor = Supervisor::builder().max_running(LIMIT).build();
    let peak = Peak::default();
    let gate = AsyncGate::default();
    let (entered, mut entries) = mpsc::unbounded_channel();
    let done = Arc::new(AtomicUsize::new(0));
    let mut app = app(&supervisor, {
        let (peak, gate, done) = (peak.clone(), gate.clone(), done.clone());
        move |_, tasks| {
            for _ in 0..PER_REQUEST {
                let (peak, gate, done) = (peak.clone(), gate.clone(), done.clone());
                let entered = entered.clone();
                tasks.add(async move {
                    let _inside = peak.enter();
                    let _ = entered.send(());
                    gate.pass().await;
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
    });

    for _ in 0..REQUESTS {
        serve(&mut app, request(Method::POST, "/import")).await;
    }
    // The first tasks hold their slots at the gate; the others wait.
    let held = supervisor.stats();
    assert_counts(held.clone(), "", |s| {
        s.submitted = TASKS as u64;
        s.running = LIMIT as u64;
        s.queued = (TASKS - LIMIT) as u64;
    });
    assert_eq!(
        (
            lane(&held, "default").running,
            lane(&held, "default").queued
        ),
        (LIMIT as u64, (TASKS - LIMIT) as u64)
    );
    for _ in 0..LIMIT {
        within("a task to start", entries.recv()).await;
    }
    assert_eq!(peak.now(), LIMIT);

    gate.open();
    within("every task to finish", supervisor.wait_idle()).await;

    assert_eq!(done.load(Ordering::SeqCst), TASKS);
    assert!(peak.most() <= LIMIT, "{} ran at once", peak.most());
    let after = supervisor.stats();
    assert!(lane(&after, "default").high_water <= LIMIT as u64);
    assert_eq!(
        counts(after.clone()),
        stats(|s| {
            s.submitted = TASKS as u64;
            s.completed = TASKS as u64;
        })
    );
    assert_eq!(after.submitted, after.accounted());
}

// ---------------------------------------------------------------------------
// A full queue
// ---------------------------------------------------------------------------

/// With `max_queued(3)` and three tasks waiting for their response,
/// `try_add` returns `QueueFull { limit: 3 }` and is not counted, a plain
/// `add` is counted as rejected (not submitted), never runs, and turns the
/// request's response into a `503` with `Retry-After` and a JSON error; once
/// the waiting tasks have run, adding works again.
#[tokio::test]
async fn a_full_queue_is_reported_by_try_add_and_counted_for_add() {
    let supervisor = Supervisor::builder().max_queued(3).build();
    let events = Events::default();
    let results = Results::default();
    let mut app = app(&supervisor, {
        let (events, results) = (events.clone(), results.clone());
        move |request, tasks| {
            let events = events.clone();
            match request.uri().path() {
                "/hold" => {
                    for _ in 0..3 {
                        let events = events.clone();
                        tasks.add(async move { events.record("held task ran") });
                    }
                }
                "/more" => {
                    let tried = events.clone();
                    let result = tasks.try_add(async move { tried.record("tried task ran") });
                    results.lock().unwrap().push(result);
                    tasks.add(async move { events.record("rejected task ran") });
                }
                _ => {
                    let result = tasks.try_add(async move { events.record("later task ran") });
                    results.lock().unwrap().push(result);
                }
            }
        }
    });

    let held = send(&mut app, request(Method::POST, "/hold")).await;
    let more = send(&mut app, request(Method::POST, "/more")).await;
    assert_eq!(more.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(more.headers()[http::header::RETRY_AFTER], "1");
    assert_eq!(
        more.headers()[http::header::CONTENT_TYPE],
        "application/json"
    );
    assert_eq!(
        finish(more).await,
        r#"{"error":"background-queue-full","message":"the background task queue is full (3 tasks waiting)"}"#
    );

    let refused = taken(&results);
    assert_eq!(refused, [Err(AddError::QueueFull { limit: 3 })]);
    assert_eq!(
        refused[0].as_ref().unwrap_err().retry_after(),
        Some(secs(1))
    );
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 3;
        s.waiting = 3;
        s.rejected = 1;
    });

    finish(held).await;
    within("the held tasks to finish", supervisor.wait_idle()).await;
    serve(&mut app, request(Method::POST, "/later")).await;
    within("the later task to finish", supervisor.wait_idle()).await;

    assert_eq!(taken(&results), [Ok(())]);
    assert_eq!(events.count("held task ran"), 3);
    assert_eq!(events.count("later task ran"), 1);
    assert_eq!(events.count("tried task ran"), 0);
    assert_eq!(events.count("rejected task ran"), 0);
    let after = supervisor.stats();
    assert_counts(after.clone(), "", |s| {
        s.submitted = 4;
        s.completed = 4;
        s.rejected = 1;
    });
}

/// Tasks handed off but waiting for a slot in a full lane fill the queue
/// too: with `max_running(1)`, `max_queued(2)`, one task running and two
/// queued, `try_add` is refused until the lane drains.
#[tokio::test]
async fn tasks_waiting_for_a_slot_fill_the_queue() {
    let supervisor = Supervisor::builder().max_running(1).max_queued(2).build();
    let gate = AsyncGate::default();
    let results = Results::default();
    let mut app = app(&supervisor, {
        let (gate, results) = (gate.clone(), results.clone());
        move |request, tasks| match request.uri().path() {
            "/slow" => {
                let gate = gate.clone();
                tasks.add(async move { gate.pass().await });
            }
            "/two" => {
                tasks.add(async {});
                tasks.add(async {});
            }
            _ => results.lock().unwrap().push(tasks.try_add(async {})),
        }
    });

    serve(&mut app, request(Method::POST, "/slow")).await;
    serve(&mut app, request(Method::POST, "/two")).await;
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 3;
        s.running = 1;
        s.queued = 2;
    });
    serve(&mut app, request(Method::POST, "/try")).await;
    assert_eq!(taken(&results), [Err(AddError::QueueFull { limit: 2 })]);

    gate.open();
    within("the lane to drain", supervisor.wait_idle()).await;
    serve(&mut app, request(Method::POST, "/try")).await;
    within("the last task to finish", supervisor.wait_idle()).await;

    assert_eq!(taken(&results), [Ok(())]);
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 4;
        s.completed = 4;
    });
}

/// Under axum, a handler that returns `Result<_, AddError>` answers a full
/// queue with `503`, `Retry-After: 1` and a JSON body naming the error, and
/// `202` again once the queue has drained.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_a_json_error() {
    use axum::body::Body;
    use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
    use axum::http::StatusCode;
    use axum::response::Response;
    use axum::routing::post;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_background::BackgroundTasks;

    async fn hold(tasks: BackgroundTasks) -> &'static str {
        tasks.add(async {});
        "held"
    }

    async fn export(tasks: BackgroundTasks) -> Result<StatusCode, AddError> {
        tasks.try_add(async {})?;
        Ok(StatusCode::ACCEPTED)
    }

    async fn call(router: &Router, uri: &str) -> Response {
        let request = http::Request::post(uri).body(Body::empty()).unwrap();
        within("the response", router.clone().oneshot(request))
            .await
            .unwrap()
    }

    async fn body(response: Response) -> bytes::Bytes {
        within("the body", response.into_body().collect())
            .await
            .unwrap()
            .to_bytes()
    }

    let supervisor = Supervisor::builder().max_queued(1).build();
    let router = Router::new()
        .route("/hold", post(hold))
        .route("/export", post(export))
        .layer(supervisor.layer());

    // Its body unread, this response keeps its task waiting: the queue is full.
    let held = call(&router, "/hold").await;
    let refused = call(&router, "/export").await;

    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()[RETRY_AFTER], "1");
    assert_eq!(refused.headers()[CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body(refused).await).unwrap();
    assert_eq!(json["error"], "background-queue-full");
    assert!(json["message"].is_string(), "{json}");

    body(held).await;
    within("the held task to finish", supervisor.wait_idle()).await;
    let accepted = call(&router, "/export").await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    body(accepted).await;
    within("the export to finish", supervisor.wait_idle()).await;

    assert_counts(
        supervisor.stats(),
        "the refused try_add is neither submitted nor rejected",
        |s| {
            s.submitted = 2;
            s.completed = 2;
        },
    );
}

// ---------------------------------------------------------------------------
// Lanes
// ---------------------------------------------------------------------------

/// With `blocking_limit(2)`, ten blocking tasks stuck at a gate run two at a
/// time, and meanwhile async tasks (whose own lane allows only two) keep
/// running and completing; once the gate opens all ten complete.
#[tokio::test]
async fn the_blocking_lane_limit_holds_while_async_tasks_keep_running() {
    const BLOCKING: usize = 10;
    const ASYNC: usize = 5;
    let supervisor = Supervisor::builder()
        .max_running(2)
        .blocking_limit(2)
        .build();
    let peak = Peak::default();
    let gate = Gate::default();
    let _opened = gate.opened_on_drop(); // also if the test fails
    let (entered, mut entries) = mpsc::unbounded_channel();
    let (finished, mut async_done) = mpsc::unbounded_channel();
    let mut app = app(&supervisor, {
        let (peak, gate) = (peak.clone(), gate.clone());
        move |request, tasks| {
            if request.uri().path() == "/reports" {
                for _ in 0..BLOCKING {
                    let (peak, gate, entered) = (peak.clone(), gate.clone(), entered.clone());
                    tasks.add_blocking(move || {
                        let _inside = peak.enter();
                        let _ = entered.send(());
                        gate.wait();
                    });
                }
            } else {
                for _ in 0..ASYNC {
                    let finished = finished.clone();
                    tasks.add(async move {
                        tokio::task::yield_now().await;
                        let _ = finished.send(());
                    });
                }
            }
        }
    });

    serve(&mut app, request(Method::POST, "/reports")).await;
    let held = supervisor.stats();
    let blocking = lane(&held, "blocking");
    assert_eq!(
        (blocking.limit, blocking.running, blocking.queued),
        (Some(2), 2, 8)
    );
    assert_eq!((held.running, held.queued), (2, 8));
    for _ in 0..2 {
        within("a blocking task to start", entries.recv()).await;
    }

    serve(&mut app, request(Method::POST, "/ping")).await;
    for _ in 0..ASYNC {
        within("an async task to finish", async_done.recv()).await;
    }
    assert_eq!(peak.now(), 2, "the blocking tasks were stuck all along");
    within("the async tasks to be counted", async {
        while supervisor.stats().completed < ASYNC as u64 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    gate.open();
    within("every task to finish", supervisor.wait_idle()).await;
    assert!(
        peak.most() <= 2,
        "{} blocking tasks ran at once",
        peak.most()
    );
    let after = supervisor.stats();
    assert!(lane(&after, "blocking").high_water <= 2);
    assert_eq!(
        counts(after.clone()),
        stats(|s| {
            s.submitted = (BLOCKING + ASYNC) as u64;
            s.completed = (BLOCKING + ASYNC) as u64;
        })
    );
    assert_eq!(after.submitted, after.accounted());
}

/// A blocking task that timed out still holds its slot in the blocking lane
/// while its closure runs on (it cannot be stopped), so timed-out closures
/// cannot pile up past `blocking_limit` on tokio's blocking pool.
#[tokio::test]
async fn a_timed_out_blocking_task_keeps_its_slot_until_its_closure_returns() {
    let supervisor = Supervisor::builder().blocking_limit(1).build();
    let peak = Peak::default();
    let gate = Gate::default();
    let _opened = gate.opened_on_drop(); // also if the test fails
    let mut app = app(&supervisor, {
        let (peak, gate) = (peak.clone(), gate.clone());
        move |_, tasks| {
            for _ in 0..2 {
                let (peak, gate) = (peak.clone(), gate.clone());
                tasks.add(
                    Task::blocking(move || {
                        let _inside = peak.enter();
                        gate.wait();
                    })
                    .timeout(millis(10)),
                );
            }
        }
    });

    serve(&mut app, request(Method::POST, "/reports")).await;
    within("the first task to time out", async {
        while supervisor.stats().timed_out == 0 {
            tokio::time::sleep(millis(1)).await;
        }
    })
    .await;
    let during = supervisor.stats();
    let blocking = lane(&during, "blocking");
    assert_eq!(
        (blocking.running, blocking.queued, peak.now()),
        (1, 1, 1),
        "the timed-out closure still runs, so the second task must wait: {during:?}"
    );

    gate.open();
    within("both tasks to end", supervisor.wait_idle()).await;
    within("both closures to return", async {
        while peak.now() > 0 {
            tokio::time::sleep(millis(1)).await;
        }
    })
    .await;
    assert!(
        peak.most() <= 1,
        "{} blocking closures at once",
        peak.most()
    );
    let after = supervisor.stats();
    assert_eq!(after.submitted, 2);
    assert_eq!(after.submitted, after.accounted());
}

/// A blocking closure gives its slot back the moment it returns, and the
/// next closure starts on the blocking pool at once; its task is counted as
/// ended only when the runtime polls it again. On a busy runtime,
/// `Stats::running` can therefore exceed `blocking_limit` for a while (the
/// load benchmark's variant 7 saw 43–82 with a limit of 16), while the
/// lane's own `running` (its slots) never does.
#[tokio::test]
async fn returned_blocking_closures_stay_running_until_polled_but_free_their_slot() {
    let supervisor = Supervisor::builder().blocking_limit(1).build();
    let peak = Peak::default();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut app = app(&supervisor, {
        let (peak, ran) = (peak.clone(), Arc::clone(&ran));
        move |_, tasks| {
            for _ in 0..4 {
                let (peak, ran) = (peak.clone(), Arc::clone(&ran));
                tasks.add_blocking(move || {
                    let _inside = peak.enter();
                    ran.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
    });
    serve(&mut app, request(Method::POST, "/reports")).await;

    // Keep this test's only worker thread busy (a current-thread runtime):
    // the closures run one after another on the blocking pool, and no task
    // is polled in the meantime.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ran.load(Ordering::SeqCst) < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let busy = supervisor.stats();
    let blocking = lane(&busy, "blocking");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        4,
        "all four closures ran: {busy:?}"
    );
    assert_eq!(
        (busy.running, busy.completed),
        (4, 0),
        "no task was polled since its closure returned: {busy:?}"
    );
    assert_eq!(
        (blocking.running, blocking.high_water, peak.most()),
        (0, 1, 1),
        "the lane's slots never exceeded its limit: {busy:?}"
    );

    within("the tasks to be counted", supervisor.wait_idle()).await;
    let after = supervisor.stats();
    assert_eq!((after.running, after.completed), (0, 4), "{after:?}");
    assert_eq!(after.submitted, after.accounted());
}

/// Tasks added with `Task::lane("email")` run at most two at a time
/// (the lane's limit), while tasks of the default lane are not held back by
/// it.
#[tokio::test]
async fn a_named_lane_limits_its_tasks_and_leaves_the_default_lane_alone() {
    const EMAILS: usize = 6;
    const OTHERS: usize = 5;
    let supervisor = Supervisor::builder().lane("email", 2).build();
    let (emails, others) = (Peak::default(), Peak::default());
    let gate = AsyncGate::default();
    let mut app = app(&supervisor, {
        let (emails, others, gate) = (emails.clone(), others.clone(), gate.clone());
        move |_, tasks| {
            for _ in 0..EMAILS {
                let (emails, gate) = (emails.clone(), gate.clone());
                tasks.add(
                    Task::new(async move {
                        let _inside = emails.enter();
                        gate.pass().await;
                    })
                    .lane("email"),
                );
            }
            for _ in 0..OTHERS {
                let (others, gate) = (others.clone(), gate.clone());
                tasks.add(async move {
                    let _inside = others.enter();
                    gate.pass().await;
                });
            }
        }
    });

    serve(&mut app, request(Method::POST, "/newsletter")).await;
    until("the tasks to reach the gate", || {
        emails.now() == 2 && others.now() == OTHERS
    })
    .await;
    let held = supervisor.stats();
    let email = lane(&held, "email");
    assert_eq!((email.limit, email.running, email.queued), (Some(2), 2, 4));
    assert_eq!(lane(&held, "default").running, OTHERS as u64);
    assert_eq!(held.submitted, held.accounted());

    gate.open();
    within("every task to finish", supervisor.wait_idle()).await;
    assert_eq!(emails.most(), 2, "e-mails at once");
    assert_eq!(others.most(), OTHERS, "default-lane tasks at once");
    let after = supervisor.stats();
    assert_eq!(lane(&after, "email").high_water, 2);
    assert_eq!(
        counts(after.clone()),
        stats(|s| {
            s.submitted = (EMAILS + OTHERS) as u64;
            s.completed = (EMAILS + OTHERS) as u64;
        })
    );
    assert_eq!(after.submitted, after.accounted());
}

/// A lane name that was not configured is an error: `try_add` returns
/// `UnknownLane("nope")`, a plain `add` is counted as rejected and makes the
/// response a `500` with a JSON error (retrying will not help); neither is
/// submitted or runs.
#[tokio::test]
async fn an_unknown_lane_is_an_error_for_try_add_and_a_rejection_for_add() {
    let supervisor = Supervisor::builder().lane("email", 2).build();
    let events = Events::default();
    let results = Results::default();
    let mut app = app(&supervisor, {
        let (events, results) = (events.clone(), results.clone());
        move |_, tasks| {
            let (tried, added) = (events.clone(), events.clone());
            let result = tasks.try_add(Task::new(async move { tried.record("ran") }).lane("nope"));
            results.lock().unwrap().push(result);
            tasks.add(Task::new(async move { added.record("ran") }).lane("nope"));
        }
    });

    let response = send(&mut app, request(Method::POST, "/newsletter")).await;
    assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!response.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(
        finish(response).await,
        r#"{"error":"unknown-lane","message":"no background lane is named \"nope\""}"#
    );
    within("nothing to run", supervisor.wait_idle()).await;

    assert_eq!(
        taken(&results),
        [Err(AddError::UnknownLane("nope".to_owned()))]
    );
    assert_eq!(events.count("ran"), 0);
    let after = supervisor.stats();
    assert_eq!(counts(after.clone()), stats(|s| s.rejected = 1));
    assert_eq!(after.submitted, after.accounted());
}

// ---------------------------------------------------------------------------
// Timeouts and retries
// ---------------------------------------------------------------------------

/// A task with a 1 s timeout that would take 10 s is dropped after 1 s and
/// counted as timed out.
#[tokio::test(start_paused = true)]
async fn a_task_past_its_timeout_is_dropped_and_counted_timed_out() {
    let supervisor = Supervisor::new();
    let events = Events::default();
    let mut app = app(&supervisor, {
        let events = events.clone();
        move |_, tasks| {
            let (finished, guard) = (events.clone(), events.on_drop("dropped"));
            tasks.add(
                Task::new(async move {
                    let _guard = guard;
                    tokio::time::sleep(secs(10)).await;
                    finished.record("finished");
                })
                .timeout(secs(1)),
            );
        }
    });

    serve(&mut app, request(Method::POST, "/slow")).await;
    let began = Instant::now();
    within("the task to time out", supervisor.wait_idle()).await;

    assert_eq!(events.count("finished"), 0);
    let dropped = events.when("dropped").expect("the task was dropped");
    assert!(
        dropped - began >= secs(1) && dropped - began < secs(10),
        "dropped {:?} after it started",
        dropped - began
    );
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 1;
        s.timed_out = 1;
    });
}

/// Runs one `Task::retrying` with `three_attempts()` and `timeout`, each attempt
/// recorded as "attempt" and then doing what `attempt(n)` (n from 1) does;
/// returns the stats and when each attempt started.
async fn retried<F, Fut>(timeout: Option<std::time::Duration>, attempt: F) -> (Stats, Vec<Instant>)
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), &'static str>> + Send + 'static,
{
    let supervisor = Supervisor::new();
    let events = Events::default();
    let mut app = app(&supervisor, {
        let events = events.clone();
        move |_, tasks| {
            let (events, attempt) = (events.clone(), attempt.clone());
            let made = AtomicUsize::new(0);
            let task = Task::retrying(three_attempts(), move || {
                let n = made.fetch_add(1, Ordering::SeqCst) + 1;
                events.record("attempt");
                attempt(n)
            });
            tasks.add(match timeout {
                Some(limit) => task.timeout(limit),
                None => task,
            });
        }
    });
    serve(&mut app, request(Method::POST, "/notify")).await;
    within("the task's attempts to end", supervisor.wait_idle()).await;
    let stats = supervisor.stats();
    assert_eq!(stats.submitted, stats.accounted());
    (stats, events.times("attempt"))
}

/// Three attempts at most, no jitter: 100 ms before the second, 200 ms
/// before the third.
fn three_attempts() -> Retry {
    Retry::exponential(3).without_jitter()
}

/// The gaps between consecutive attempts.
fn gaps(attempts: &[Instant]) -> Vec<std::time::Duration> {
    attempts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// A task whose first two attempts fail and third succeeds is retried twice,
/// with exponential back-off, and counted once, as completed.
#[tokio::test(start_paused = true)]
async fn a_task_that_fails_twice_then_succeeds_completes_after_three_attempts() {
    let (after, attempts) = retried(None, |n| async move {
        if n < 3 {
            Err("smtp down")
        } else {
            Ok(())
        }
    })
    .await;

    assert_eq!(attempts.len(), 3);
    let gaps = gaps(&attempts);
    assert!(gaps[0] >= millis(100) && gaps[0] < millis(200), "{gaps:?}");
    assert!(gaps[1] >= millis(200) && gaps[1] < millis(400), "{gaps:?}");
    assert_eq!(
        counts(after),
        stats(|s| {
            s.submitted = 1;
            s.completed = 1;
            s.retried = 2;
        })
    );
}

/// A task whose every attempt fails makes three attempts and is counted once,
/// as failed, with two retries.
#[tokio::test(start_paused = true)]
async fn a_task_that_always_fails_is_retried_then_counted_failed_once() {
    let (after, attempts) = retried(None, |_| async { Err("smtp down") }).await;

    assert_eq!(attempts.len(), 3);
    assert_eq!(
        counts(after),
        stats(|s| {
            s.submitted = 1;
            s.failed = 1;
            s.retried = 2;
        })
    );
}

/// With a timeout, each attempt that runs past it is retried: three attempts
/// that all time out count once, as timed out, with two retries.
#[tokio::test(start_paused = true)]
async fn a_task_that_times_out_every_attempt_is_retried_then_counted_timed_out_once() {
    let (after, attempts) = retried(Some(secs(1)), |_| async {
        tokio::time::sleep(secs(10)).await;
        Ok(())
    })
    .await;

    assert_eq!(attempts.len(), 3);
    for gap in gaps(&attempts) {
        assert!(gap >= secs(1) && gap < secs(10), "an attempt ran {gap:?}");
    }
    assert_eq!(
        counts(after),
        stats(|s| {
            s.submitted = 1;
            s.timed_out = 1;
            s.retried = 2;
        })
    );
}

/// An attempt that panics is never retried: one attempt, counted as
/// panicked, no retries.
#[tokio::test(start_paused = true)]
async fn a_panicking_attempt_is_not_retried() {
    let (after, attempts) = retried(None, |_| async {
        explode("template missing");
        Ok(())
    })
    .await;

    assert_eq!(attempts.len(), 1);
    assert_eq!(
        counts(after),
        stats(|s| {
            s.submitted = 1;
            s.panicked = 1;
        })
    );
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

/// Tasks still waiting for a slot when the grace period ends never run: they
/// are counted as cancelled, like the running task that was aborted.
#[tokio::test(start_paused = true)]
async fn tasks_still_queued_when_the_grace_period_ends_are_cancelled_and_never_run() {
    let supervisor = Supervisor::builder()
        .max_running(1)
        .grace_period(secs(5))
        .cleanup_period(secs(1))
        .build();
    let monitor = supervisor.monitor();
    let events = Events::default();
    let mut app = app(&supervisor, {
        let events = events.clone();
        move |_, tasks| {
            let guard = events.on_drop("running task dropped");
            tasks.add(async move {
                let _guard = guard;
                pending::<()>().await; // ignores the cancellation token
            });
            for _ in 0..3 {
                let events = events.clone();
                tasks.add(async move { events.record("queued task ran") });
            }
        }
    });

    serve(&mut app, request(Method::POST, "/import")).await;
    let held = supervisor.stats();
    assert_eq!((held.running, held.queued), (1, 3));

    let report = within("shutdown", supervisor.shutdown()).await;

    assert!(report.aborted);
    assert_eq!(events.count("running task dropped"), 1);
    assert_eq!(events.count("queued task ran"), 0);
    assert_eq!(
        counts(report.stats.clone()),
        stats(|s| {
            s.submitted = 4;
            s.cancelled = 4;
        })
    );
    assert_eq!(report.stats.submitted, report.stats.accounted());
    let settled = monitor.stats();
    assert_eq!((settled.running, settled.queued), (0, 0));
    assert_eq!(lane(&settled, "default").queued, 0);
}
