//! Per-key order: tasks with the same `Task::key` run one at a time, in the
//! order they were handed off; different keys run side by side. A task
//! waiting for its key is pending: bounded by `max_queued`, drained and
//! aborted at shutdown like any queued task.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use tower_background::{AddError, Supervisor, Task};

use support::{app, assert_counts, request, secs, serve, within, AsyncGate, Peak};

/// Each request `/{key}/{n}` queues one task of that key, which records
/// `n` when it starts, sleeps, and leaves its key's section.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_of_one_key_run_one_at_a_time_in_hand_off_order() {
    let supervisor = Supervisor::new();
    let started = Arc::new(Mutex::new(Vec::new()));
    let (alice, bob, everyone) = (Peak::default(), Peak::default(), Peak::default());
    let mut app = app(&supervisor, {
        let (started, alice, bob, everyone) = (
            started.clone(),
            alice.clone(),
            bob.clone(),
            everyone.clone(),
        );
        move |request, tasks| {
            let path = request.uri().path().to_owned();
            let (key, n) = path[1..].split_once('/').unwrap();
            let (key, n): (String, u32) = (key.to_owned(), n.parse().unwrap());
            let customer = format!("customer:{key}");
            let peak = if key == "alice" {
                alice.clone()
            } else {
                bob.clone()
            };
            let (started, everyone) = (started.clone(), everyone.clone());
            let task = Task::new(async move {
                let _mine = peak.enter();
                let _all = everyone.enter();
                started.lock().unwrap().push((key.clone(), n));
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
            tasks.add(task.key(customer));
        }
    });

    for n in 0..5 {
        serve(&mut app, request(Method::POST, &format!("/alice/{n}"))).await;
        serve(&mut app, request(Method::POST, &format!("/bob/{n}"))).await;
    }
    within("the tasks to end", supervisor.wait_idle()).await;

    assert_eq!(
        (alice.most(), bob.most()),
        (1, 1),
        "a key ran two tasks at once"
    );
    assert_eq!(
        everyone.most(),
        2,
        "different keys did not run side by side"
    );
    let started = started.lock().unwrap().clone();
    for key in ["alice", "bob"] {
        let order: Vec<u32> = started
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            order,
            [0, 1, 2, 3, 4],
            "{key}'s tasks out of hand-off order"
        );
    }
    assert_counts(supervisor.stats(), "every task ran", |s| {
        s.submitted = 10;
        s.completed = 10;
    });
}

/// Tasks waiting for a held key are pending: counted as queued, limited by
/// `max_queued` (past it, `try_add` says the queue is full), and cancelled
/// at shutdown's abort with the key's holder.
#[tokio::test(start_paused = true)]
async fn a_key_s_waiters_are_bounded_and_aborted_at_shutdown() {
    let supervisor = Supervisor::builder()
        .max_queued(3)
        .grace_period(secs(5))
        .cleanup_period(secs(1))
        .build();
    let gate = AsyncGate::default();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut app = app(&supervisor, {
        let (gate, refused) = (gate.clone(), refused.clone());
        move |_, tasks| {
            let gate = gate.clone();
            let held = Task::new(async move { gate.pass().await }).key("report:7");
            if let Err(error) = tasks.try_add(held) {
                refused.lock().unwrap().push(error);
            }
        }
    });

    for _ in 0..5 {
        serve(&mut app, request(Method::POST, "/report/7")).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = supervisor.stats();
    assert_eq!((stats.running, stats.queued), (1, 3), "{stats:?}");
    assert_eq!(
        *refused.lock().unwrap(),
        [AddError::QueueFull { limit: 3 }],
        "the fifth task fit in a full queue"
    );

    let report = supervisor.shutdown().await;
    assert!(report.aborted);
    assert_eq!(report.cancelled_while_queued, 3, "{report}");
    assert_counts(report.stats, "the holder and its waiters cancelled", |s| {
        s.submitted = 4;
        s.cancelled = 4;
    });
}

/// When the key's holder ends, the next waiter starts; once none is left,
/// a new task of the key starts at once.
#[tokio::test(start_paused = true)]
async fn a_key_passes_to_its_next_waiter_and_is_free_after_the_last() {
    let supervisor = Supervisor::new();
    let first = AsyncGate::default();
    let mut app = app(&supervisor, {
        let first = first.clone();
        move |request, tasks| {
            let first = first.clone();
            let work = request.uri().path() == "/first";
            tasks.add(
                Task::new(async move {
                    if work {
                        first.pass().await;
                    }
                })
                .key("k"),
            );
        }
    });
    serve(&mut app, request(Method::POST, "/first")).await;
    serve(&mut app, request(Method::POST, "/second")).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        supervisor.stats().queued,
        1,
        "the second did not wait for the key"
    );

    first.open();
    within("both to end", supervisor.wait_idle()).await;
    serve(&mut app, request(Method::POST, "/third")).await;
    within("the third to end", supervisor.wait_idle()).await;
    assert_counts(supervisor.stats(), "all three ran", |s| {
        s.submitted = 3;
        s.completed = 3;
    });
}
