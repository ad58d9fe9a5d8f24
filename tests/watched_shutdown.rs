//! What an operator reads while `shutdown` waits: its progress lines and
//! its report, naming the tasks that hold it up.
//!
//! In a file of its own: tracing caches per call site, for every thread,
//! whether anyone listens, so a test that reads logs must not share its
//! binary with tests that run the same call sites without a subscriber.

mod support;

use std::future::pending;

use http::Method;
use tower_background::{Supervisor, Task};

use support::{app, capture_logs, request, secs, serve};

/// While it waits, shutdown logs how many tasks are left and the oldest by
/// name, request and age (when it begins and every 5 s); its report lists
/// the tasks it had to abort, oldest first.
#[tokio::test(start_paused = true)]
async fn shutdown_logs_what_it_waits_for_and_reports_what_it_aborted() {
    let (logs, _default) = capture_logs();
    let supervisor = Supervisor::builder()
        .grace_period(secs(12))
        .cleanup_period(secs(1))
        .build();
    let mut app = app(&supervisor, |request, tasks| match request.uri().path() {
        "/report" => tasks.add(Task::new(pending::<()>()).name("report")),
        "/export" => tasks.add(pending::<()>()),
        _ => tasks.add(tokio::time::sleep(secs(7))),
    });
    serve(&mut app, request(Method::POST, "/report")).await;
    tokio::time::sleep(secs(1)).await;
    serve(&mut app, request(Method::GET, "/export")).await;
    serve(&mut app, request(Method::POST, "/quick")).await;
    tokio::time::sleep(secs(1)).await;

    let report = supervisor.shutdown().await;

    let text = logs.text();
    let line = |needle: &str| {
        text.lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let begun = line("shutting down");
    assert_eq!(begun.len(), 1, "{text}");
    assert!(begun[0].contains("running=3"), "{}", begun[0]);
    assert!(
        begun[0].contains("oldest=report (POST /report, 2s), GET /export (1s)"),
        "{}",
        begun[0]
    );
    let waiting = line("still waiting");
    assert_eq!(waiting.len(), 2, "at 5 s and 10 s:\n{text}");
    assert!(waiting[0].contains("running=3"), "{}", waiting[0]);
    assert!(waiting[1].contains("running=2"), "{}", waiting[1]);
    assert!(
        waiting[1].contains("oldest=report (POST /report, 12s), GET /export (11s)"),
        "{}",
        waiting[1]
    );

    assert!(report.aborted);
    let aborted: Vec<_> = report
        .aborted_tasks
        .iter()
        .map(|task| (task.name, task.request.as_deref(), task.age))
        .collect();
    assert_eq!(
        aborted,
        [
            (Some("report"), Some("POST /report"), secs(14)),
            (None, Some("GET /export"), secs(13)),
        ]
    );
    assert_eq!(report.aborted_tasks_unlisted, 0);
    assert!(
        report
            .to_string()
            .ends_with("; aborted: report (POST /report, 14s), GET /export (13s)"),
        "{report}"
    );
}
