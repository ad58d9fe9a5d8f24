//! Groups of steps added with `add`: a sequential group runs its steps
//! one after another (async and blocking, mixed) and stops at the first that
//! fails or panics, the rest counted as skipped; a concurrent group starts
//! every step together and ends when all have ended, letting the others run
//! on after a failure unless it is `fail_fast`. Either way the group is one
//! task: queued until the response has ended, counted once.
//!
//! Most tests run on tokio's paused clock, so a step that "takes a second"
//! takes no real time, and a group that hangs fails the test at once.

mod support;

use std::sync::Arc;

use http::Method;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tower_background::{BackgroundTasks, Group, Supervisor};

use support::{
    app, assert_counts, counts, explode, finish, request, secs, send, serve, stats, until, within,
    App, AsyncGate, Events, Gate,
};

/// An app whose handler calls `add` with the events its tasks record into
/// and the request's handle.
fn app_recording<A>(supervisor: &Supervisor, events: &Events, add: A) -> App
where
    A: Fn(&Events, &BackgroundTasks) + Clone + Send + 'static,
{
    let events = events.clone();
    app(supervisor, move |_, tasks| add(&events, tasks))
}

/// `N` clones of `events`, one for each step that records into it.
fn clones<const N: usize>(events: &Events) -> [Events; N] {
    std::array::from_fn(|_| events.clone())
}

/// Serves one `POST /signup` through [`app_recording`], reading the whole
/// response, then waits until every task it queued has finished.
async fn sign_up_and_wait_idle<A>(supervisor: &Supervisor, events: &Events, add: A)
where
    A: Fn(&Events, &BackgroundTasks) + Clone + Send + 'static,
{
    let mut app = app_recording(supervisor, events, add);
    serve(&mut app, request(Method::POST, "/signup")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;
}

/// Steps of a sequential group run one at a time in the order they were
/// added, async and blocking mixed, even when an earlier step takes longer.
#[tokio::test(start_paused = true)]
async fn sequential_steps_run_one_after_another_in_the_order_added() {
    let supervisor = Supervisor::new();
    let events = Events::default();
    sign_up_and_wait_idle(&supervisor, &events, |events, tasks| {
        let [a, b, c, d] = clones(events);
        tasks.add(
            Group::sequential()
                .step(async move {
                    tokio::time::sleep(secs(1)).await;
                    a.record("1: async, after a second");
                })
                .blocking_step(move || b.record("2: blocking"))
                .step(async move {
                    tokio::task::yield_now().await;
                    c.record("3: async");
                })
                .blocking_step(move || d.record("4: blocking")),
        );
    })
    .await;

    assert_eq!(
        events.names(),
        [
            "1: async, after a second",
            "2: blocking",
            "3: async",
            "4: blocking"
        ]
    );
    assert_counts(supervisor.stats(), "four steps, one task", |s| {
        s.submitted = 1;
        s.completed = 1;
    });
}

/// A group is queued like any task: none of its steps runs before the
/// response body has ended, however long that takes.
#[tokio::test(start_paused = true)]
async fn a_group_starts_only_after_the_response_body_ended() {
    let supervisor = Supervisor::new();
    let events = Events::default();
    let mut app = app_recording(&supervisor, &events, |events, tasks| {
        let [a, b] = clones(events);
        tasks.add(
            Group::concurrent()
                .step(async move { a.record("async step") })
                .blocking_step(move || b.record("blocking step")),
        );
    });

    let response = send(&mut app, request(Method::POST, "/signup")).await;
    tokio::time::sleep(secs(5)).await;
    assert!(events.names().is_empty(), "ran before the body ended");
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 1;
        s.waiting = 1;
    });

    finish(response).await;
    within("the group to finish", supervisor.wait_idle()).await;
    assert_eq!(events.count("async step"), 1);
    assert_eq!(events.count("blocking step"), 1);
    assert_eq!(supervisor.stats().completed, 1);
}

/// A step that returns `Err` stops a sequential group: the steps after it
/// never run and are counted as skipped, and the group counts as one failed
/// task.
#[tokio::test(start_paused = true)]
async fn a_failing_step_stops_a_sequential_group_and_the_rest_are_skipped() {
    let supervisor = Supervisor::new();
    let events = Events::default();
    sign_up_and_wait_idle(&supervisor, &events, |events, tasks| {
        let [a, b, c, d] = clones(events);
        tasks.add(
            Group::sequential()
                .step(async move { a.record("1") })
                .step(async move {
                    b.record("2: fails");
                    Err::<(), _>("smtp down")
                })
                .step(async move { c.record("3") })
                .blocking_step(move || d.record("4")),
        );
    })
    .await;

    assert_eq!(events.names(), ["1", "2: fails"]);
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 1;
        s.failed = 1;
        s.skipped = 2;
    });
}

/// A step that panics, blocking or async, stops a sequential group the same
/// way: the later steps never run, they are counted as skipped, and each
/// group counts as one panicked task.
#[tokio::test(start_paused = true)]
async fn a_panicking_step_stops_a_sequential_group_and_the_rest_are_skipped() {
    let supervisor = Supervisor::new();
    let events = Events::default();
    sign_up_and_wait_idle(&supervisor, &events, |events, tasks| {
        let [a, b, c] = clones(events);
        tasks.add(
            Group::sequential()
                .step(async move { a.record("blocking group: 1") })
                .blocking_step(move || {
                    b.record("blocking group: 2 panics");
                    explode("disk full");
                })
                .blocking_step(move || c.record("blocking group: 3")),
        );
        let [d, e] = clones(events);
        tasks.add(
            Group::sequential()
                .step(async move {
                    d.record("async group: 1 panics");
                    explode("template missing");
                })
                .step(async move { e.record("async group: 2") }),
        );
    })
    .await;

    let mut ran = events.names();
    ran.sort_unstable();
    assert_eq!(
        ran,
        [
            "async group: 1 panics",
            "blocking group: 1",
            "blocking group: 2 panics"
        ]
    );
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 2;
        s.panicked = 2;
        s.skipped = 2;
    });
}

/// The async steps of a concurrent group all run at once: each waits at a
/// barrier that opens only when every one of them has reached it (run one
/// after another, the first would wait forever). The group ends only when
/// its last step has.
#[tokio::test(start_paused = true)]
async fn the_steps_of_a_concurrent_group_all_run_at_once() {
    const STEPS: usize = 4;
    let supervisor = Supervisor::new();
    let events = Events::default();
    let barrier = Arc::new(Barrier::new(STEPS));
    let last = AsyncGate::default();
    let mut app = app_recording(&supervisor, &events, {
        let (barrier, last) = (barrier.clone(), last.clone());
        move |events, tasks| {
            let mut group = Group::concurrent();
            for _ in 0..STEPS {
                let (events, barrier) = (events.clone(), barrier.clone());
                group = group.step(async move {
                    barrier.wait().await;
                    events.record("through the barrier");
                });
            }
            let [events, blocking] = clones(events);
            let last = last.clone();
            group = group
                .blocking_step(move || blocking.record("blocking step"))
                .step(async move {
                    last.pass().await;
                    events.record("last step");
                });
            tasks.add(group);
        }
    });

    serve(&mut app, request(Method::POST, "/signup")).await;
    let through = || events.count("through the barrier") == STEPS;
    within("every step to pass the barrier", async {
        while !through() || events.count("blocking step") == 0 {
            tokio::time::sleep(secs(1)).await;
        }
    })
    .await;
    assert_eq!(
        counts(supervisor.stats()),
        stats(|s| {
            s.submitted = 1;
            s.running = 1;
        }),
        "the group runs until its last step ends"
    );

    last.open();
    within("the group to finish", supervisor.wait_idle()).await;
    assert_eq!(events.count("last step"), 1);
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 1;
        s.completed = 1;
    });
}

/// Without `fail_fast`, a step of a concurrent group that fails does not
/// stop the others: they run to their end, nothing is skipped, and the group
/// counts as one failed task.
#[tokio::test(start_paused = true)]
async fn without_fail_fast_a_failing_step_does_not_stop_the_others() {
    let supervisor = Supervisor::new();
    let events = Events::default();
    sign_up_and_wait_idle(&supervisor, &events, |events, tasks| {
        let [a, b, c] = clones(events);
        tasks.add(
            Group::concurrent()
                .step(async move {
                    a.record("fails at once");
                    Err::<(), _>("smtp down")
                })
                .step(async move {
                    tokio::time::sleep(secs(1)).await;
                    b.record("async step done");
                })
                .blocking_step(move || c.record("blocking step done")),
        );
    })
    .await;

    let failed = events.when("fails at once").expect("the failing step ran");
    let done = events
        .when("async step done")
        .expect("the other step ran on");
    assert!(done > failed, "the other step ended after the failure");
    assert_eq!(events.count("blocking step done"), 1);
    assert_counts(supervisor.stats(), "nothing skipped", |s| {
        s.submitted = 1;
        s.failed = 1;
    });
}

/// With `fail_fast`, the first step of a concurrent group to fail drops the
/// others at once (they never finish) and they are counted as skipped.
#[tokio::test(start_paused = true)]
async fn with_fail_fast_the_other_steps_are_dropped_and_counted_as_skipped() {
    let supervisor = Supervisor::new();
    let events = Events::default();
    let mut app = app_recording(&supervisor, &events, |events, tasks| {
        let mut group = Group::concurrent().fail_fast();
        let failing = events.clone();
        group = group.step(async move {
            tokio::time::sleep(secs(1)).await;
            failing.record("failed");
            Err::<(), _>("smtp down")
        });
        for (dropped, done) in [("b dropped", "b done"), ("c dropped", "c done")] {
            let (events, guard) = (events.clone(), events.on_drop(dropped));
            group = group.step(async move {
                let _guard = guard;
                tokio::time::sleep(secs(10)).await;
                events.record(done);
            });
        }
        tasks.add(group);
    });

    serve(&mut app, request(Method::POST, "/signup")).await;
    let began = Instant::now();
    within("the group to finish", supervisor.wait_idle()).await;

    assert_eq!(events.count("b done") + events.count("c done"), 0);
    let failed = events.when("failed").expect("the failing step ran");
    for dropped in ["b dropped", "c dropped"] {
        let at = events.when(dropped).expect("the other step was dropped");
        assert!(
            at >= failed && at - began < secs(10),
            "{dropped} {:?} after the group started",
            at - began
        );
    }
    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 1;
        s.failed = 1;
        s.skipped = 2;
    });
}

/// A group whose blocking step waits for a slot in a full blocking lane is
/// still one running task, and the stats add up while it waits: the waiting
/// step is neither a queued task nor taken off the others' counts.
#[tokio::test]
async fn a_group_waiting_for_a_blocking_slot_is_counted_as_running() {
    let supervisor = Supervisor::builder().blocking_limit(1).build();
    let events = Events::default();
    let gate = Gate::default();
    let _opened = gate.opened_on_drop(); // also if the test fails
    let (started, mut blocking_started) = tokio::sync::mpsc::unbounded_channel();
    let mut app = app(&supervisor, {
        let (events, gate) = (events.clone(), gate.clone());
        move |request, tasks| match request.uri().path() {
            "/hold" => {
                let (gate, started) = (gate.clone(), started.clone());
                tasks.add_blocking(move || {
                    let _ = started.send(());
                    gate.wait();
                });
            }
            "/group" => {
                let [a, b] = clones(&events);
                tasks.add(
                    Group::sequential()
                        .step(async move { a.record("async step") })
                        .blocking_step(move || b.record("blocking step")),
                );
            }
            _ => tasks.add(async {}),
        }
    });

    serve(&mut app, request(Method::POST, "/hold")).await;
    within("the blocking task to start", blocking_started.recv()).await;
    serve(&mut app, request(Method::POST, "/group")).await;
    until("the group's blocking step to wait for a slot", || {
        supervisor.stats().lanes[1].queued == 1
    })
    .await;
    assert_eq!(events.names(), ["async step"]);
    let unfinished = send(&mut app, request(Method::POST, "/later")).await;

    assert_counts(supervisor.stats(), "{during:?}", |s| {
        s.submitted = 3;
        s.waiting = 1; // the task of the unfinished response
        s.running = 2; // the blocking task and the group
    });

    gate.open();
    finish(unfinished).await;
    within("everything to finish", supervisor.wait_idle()).await;
    assert_eq!(events.names(), ["async step", "blocking step"]);
    let after = supervisor.stats();
    assert_eq!(after.completed, 3);
    assert_eq!(after.submitted, after.accounted());
}

/// A group with a blocking step, put in the blocking lane, does not wait
/// for a slot it holds itself: with one blocking slot, it still runs.
#[tokio::test]
async fn a_group_with_a_blocking_step_in_the_blocking_lane_runs() {
    let supervisor = Supervisor::builder().blocking_limit(1).build();
    let tasks = supervisor.tasks();
    let group = Group::sequential().step(async {}).blocking_step(|| {});
    tasks.add(tower_background::Task::from(group).lane("blocking"));
    within("the group ends", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().completed, 1);
}
