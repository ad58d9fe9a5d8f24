//! Failures are contained and visible: a task that returns `Err` or panics
//! harms neither the other tasks nor the server, is counted as `failed` or
//! `panicked`, is passed to the `on_failure` hook with the method and path of
//! the request that queued it, and is logged at `ERROR`.

mod support;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use tower_background::{BackgroundTasks, FailureKind, Stats, Supervisor, Task};

use support::{
    app, assert_counts, capture_logs, counts, explode, finish, request, send, serve, stats, within,
};

/// What a request to `/explode` queues besides its sibling task: one task
/// that fails and one that panics.
fn add_a_failing_and_a_panicking_task(tasks: &BackgroundTasks) {
    tasks.add(async { Err::<(), _>("smtp down") });
    tasks.add(async { explode("template missing") });
}

/// The counts once the three tasks of an `/explode` request have ended.
fn counts_after_an_explode_request() -> Stats {
    stats(|s| {
        s.submitted = 3;
        s.completed = 1;
        s.failed = 1;
        s.panicked = 1;
    })
}

/// A failing and a panicking task leave their sibling task and the server
/// unharmed: the sibling completes, and the next request through the same
/// service is answered and its task runs.
#[tokio::test]
async fn failing_and_panicking_tasks_harm_neither_other_tasks_nor_the_server() {
    let _logs = capture_logs();
    let supervisor = Supervisor::new();
    let done = Arc::new(AtomicUsize::new(0));
    let mut app = app(&supervisor, {
        let done = done.clone();
        move |request, tasks| {
            if request.uri().path() == "/explode" {
                add_a_failing_and_a_panicking_task(tasks);
            }
            let done = done.clone();
            tasks.add(async move {
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
    });

    serve(&mut app, request(Method::POST, "/explode")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;
    assert_eq!(done.load(Ordering::SeqCst), 1, "the sibling task ran");
    assert_eq!(
        counts(supervisor.stats()),
        counts_after_an_explode_request()
    );

    let response = send(&mut app, request(Method::GET, "/next")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(finish(response).await, "ok");
    within("the next task to finish", supervisor.wait_idle()).await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        2,
        "the next request's task ran"
    );
    assert_eq!(supervisor.stats().completed, 2);
}

/// Errors are counted as `failed` and panics as `panicked`, for async tasks
/// and blocking closures alike; `Ok` values count as completed.
#[tokio::test]
async fn failures_are_counted_as_failed_or_panicked() {
    let _logs = capture_logs();
    let supervisor = Supervisor::new();
    let mut app = app(&supervisor, |_, tasks| {
        tasks.add(async { Err::<(), _>(io::Error::other("disk full")) });
        tasks.add(async { explode("async boom") });
        tasks.add(async { Ok::<_, String>(42) });
        tasks.add_blocking(|| Err::<(), _>("bad row"));
        tasks.add_blocking(|| explode("blocking boom"));
        tasks.add_blocking(|| Ok::<_, String>("rendered"));
    });

    serve(&mut app, request(Method::POST, "/import")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;

    assert_counts(supervisor.stats(), "", |s| {
        s.submitted = 6;
        s.completed = 2;
        s.failed = 2;
        s.panicked = 2;
    });
}

/// The `on_failure` hook is called once per failed or panicked task with
/// its kind, its message, and the method and path of the request that
/// queued it; successful tasks do not call it.
#[tokio::test]
async fn the_failure_hook_is_told_kind_message_method_and_path() {
    let _logs = capture_logs();
    type Seen = Vec<(FailureKind, String, Method, String)>;
    let seen = Arc::new(Mutex::new(Seen::new()));
    let supervisor = Supervisor::builder()
        .on_failure({
            let seen = seen.clone();
            move |failure| {
                seen.lock().unwrap().push((
                    failure.kind(),
                    failure.message().to_owned(),
                    failure.method().cloned().expect("a request's task"),
                    failure.path().expect("a request's task").to_owned(),
                ));
            }
        })
        .build();
    let mut app = app(&supervisor, |request, tasks| match request.uri().path() {
        "/signup" => tasks.add(async { Err::<(), _>("smtp down") }),
        "/accounts/7" => {
            tasks.add(async { explode("no row 7") });
            tasks.add(async { panic_with_static_str() });
            tasks.add_blocking(panic_with_a_number);
        }
        _ => tasks.add(async {}),
    });

    serve(&mut app, request(Method::POST, "/signup")).await;
    serve(&mut app, request(Method::DELETE, "/accounts/7")).await;
    serve(&mut app, request(Method::GET, "/healthy")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;

    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        seen,
        [
            (
                FailureKind::Panic,
                "<non-string panic payload>".to_owned(),
                Method::DELETE,
                "/accounts/7".to_owned(),
            ),
            (
                FailureKind::Panic,
                "lock poisoned".to_owned(),
                Method::DELETE,
                "/accounts/7".to_owned(),
            ),
            (
                FailureKind::Panic,
                "no row 7".to_owned(),
                Method::DELETE,
                "/accounts/7".to_owned(),
            ),
            (
                FailureKind::Error,
                "smtp down".to_owned(),
                Method::POST,
                "/signup".to_owned(),
            ),
        ]
    );
}

/// Panics with a `&'static str` payload (`explode` panics with a `String`).
fn panic_with_static_str() {
    std::panic::panic_any("lock poisoned");
}

/// Panics with a payload that is not a string.
fn panic_with_a_number() {
    std::panic::panic_any(42_u32);
}

/// A hook that panics is contained too: it is still called for every
/// failure, every task is still counted, the set still goes idle, and later
/// tasks still run.
#[tokio::test]
async fn a_panicking_failure_hook_does_not_break_counting() {
    let (logs, _default) = capture_logs();
    let calls = Arc::new(AtomicUsize::new(0));
    let supervisor = Supervisor::builder()
        .on_failure({
            let calls = calls.clone();
            move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                explode("the hook itself is broken");
            }
        })
        .build();
    let mut app = app(&supervisor, |request, tasks| {
        if request.uri().path() == "/explode" {
            add_a_failing_and_a_panicking_task(tasks);
        }
        tasks.add(async {});
    });

    serve(&mut app, request(Method::POST, "/explode")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        counts(supervisor.stats()),
        counts_after_an_explode_request()
    );

    let line = logs
        .line_containing("on_failure hook panicked")
        .unwrap_or_else(|| panic!("the hook's panic was not logged:\n{}", logs.text()));
    assert!(line.contains("ERROR"), "not at ERROR: {line}");

    serve(&mut app, request(Method::GET, "/next")).await;
    within("the next task to finish", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().completed, 2);
}

/// A failure is logged at `ERROR` with the request's method and path and the
/// error's (or panic's) message.
#[tokio::test]
async fn failures_are_logged_at_error_with_method_and_path() {
    let (logs, _default) = capture_logs();
    let supervisor = Supervisor::new();
    let mut app = app(&supervisor, |_, tasks| {
        tasks.add(async { Err::<(), _>("payment gateway timed out") });
        tasks.add(async { explode("invoice renderer crashed") });
    });
    serve(&mut app, request(Method::PUT, "/invoices/42")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;

    for message in ["payment gateway timed out", "invoice renderer crashed"] {
        let line = logs
            .line_containing(message)
            .unwrap_or_else(|| panic!("no log line for {message:?} in:\n{}", logs.text()));
        assert!(line.contains("ERROR"), "not at ERROR: {line}");
        assert!(line.contains("PUT"), "no method: {line}");
        assert!(line.contains("/invoices/42"), "no path: {line}");
    }
}

/// A task's name reaches its failure log line, the `on_failure` hook and
/// `TaskFailure`'s text; an unnamed task is known by its request alone.
#[tokio::test]
async fn a_named_task_is_named_in_its_failure_log_and_hook() {
    let (logs, _default) = capture_logs();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let supervisor = Supervisor::builder()
        .on_failure({
            let seen = seen.clone();
            move |failure| {
                let text = failure.to_string();
                seen.lock().unwrap().push((failure.name(), text));
            }
        })
        .build();
    let mut app = app(&supervisor, |_, tasks| {
        tasks.add(Task::new(async { Err::<(), _>("smtp down") }).name("welcome-email"));
        tasks.add(async { Err::<(), _>("no template") });
    });

    serve(&mut app, request(Method::POST, "/signup")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;

    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                None,
                "background task of POST /signup failed: no template".to_owned()
            ),
            (
                Some("welcome-email"),
                "background task welcome-email of POST /signup failed: smtp down".to_owned()
            ),
        ]
    );
    let line = logs
        .line_containing("smtp down")
        .unwrap_or_else(|| panic!("no log line for the failure in:\n{}", logs.text()));
    assert!(line.contains("welcome-email"), "no task name: {line}");
    let unnamed = logs.line_containing("no template").unwrap();
    assert!(
        !unnamed.contains("task.name"),
        "a name for an unnamed task: {unnamed}"
    );
}
