//! A group of background steps, run one after another and then together.
//!
//! This mirrors the backgrounder documentation's `Tasks([...])` and
//! `Tasks([...], as_group=True)`: after an account is created, an async step
//! sends the notification (`send_email_notification("Account created")`) and
//! a blocking step writes `Notification sent @ <time>` to `log.txt`.
//!
//! | backgrounder | tower-background |
//! |---|---|
//! | `Tasks([...])` | [`Group::sequential()`]: each step starts when the one before it has completed; the first that fails stops the group |
//! | `Tasks([...], as_group=True)` | [`Group::concurrent()`]: all steps start together; the group ends when the last one ends |
//! | `Task(send_email_notification, ...)` | [`Group::step`] with an async block |
//! | `Task(write_in_file)` | [`Group::blocking_step`]: on tokio's blocking pool, within the blocking lane's limit |
//!
//! Either way the group is one background task: it starts only once the
//! response has been sent, and is counted once in the supervisor's stats.
//!
//! The program needs no server: it drives an axum `Router` in-process with
//! `tower::ServiceExt::oneshot`, the way a test would, once per kind of
//! group, and prints a numbered timeline of what ran when. It finishes by
//! itself in about two seconds.
//!
//! # Running it
//!
//! ```text
//! cargo run --example groups
//! ```
//!
//! ```text
//! log file: /tmp/log.txt
//!
//! == Group::sequential(): one step after another ==
//!  1  +0.000s  handler: group added, answering 201 Created
//!  2  +0.000s  response (201 Created) read to its end: the group is handed off
//!  3  +0.000s  send_email_notification  start
//!  4  +0.000s  send_email_notification  "Account created"
//!  5  +0.501s  send_email_notification  end
//!  6  +0.501s  write_in_file            start
//!  7  +0.801s  write_in_file            end
//!  8  +0.802s  group finished
//!
//! == Group::concurrent(): all steps at once ==
//!  1  +0.000s  handler: group added, answering 201 Created
//!  2  +0.000s  response (201 Created) read to its end: the group is handed off
//!  3  +0.000s  send_email_notification  start
//!  4  +0.000s  send_email_notification  "Account created"
//!  5  +0.000s  write_in_file            start
//!  6  +0.301s  write_in_file            end
//!  7  +0.501s  send_email_notification  end
//!  8  +0.502s  group finished
//!
//! /tmp/log.txt holds: "Notification sent @ 2026-11-21 05:59:13 UTC"
//! background tasks after 17.676µs: 2 completed
//! ```
//!
//! The blocking step sleeps 300 ms after writing the file so that the
//! overlap shows. `log.txt` goes to [`std::env::temp_dir`] (`TMPDIR` on
//! Unix). A step that fails (say `log.txt` cannot be written: try
//! `TMPDIR=/nonexistent`) is logged at `ERROR` and its group counted as
//! failed; the program then exits with status 1. `RUST_LOG` (default `warn`)
//! sets the log filter.

use std::error::Error;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use tower::ServiceExt;
use tower_background::{BackgroundTasks, Group, Supervisor};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();

    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let background = Supervisor::new();
    let timeline = Timeline::new(std::env::temp_dir().join("log.txt"));
    println!("log file: {}", timeline.log_file.display());

    let app = Router::new()
        .route("/accounts/sequential", post(create_account_sequential))
        .route("/accounts/concurrent", post(create_account_concurrent))
        .with_state(timeline.clone())
        .layer(background.layer());

    for (title, uri) in [
        (
            "Group::sequential(): one step after another",
            "/accounts/sequential",
        ),
        (
            "Group::concurrent(): all steps at once",
            "/accounts/concurrent",
        ),
    ] {
        println!("\n== {title} ==");
        timeline.restart();

        let request = Request::post(uri).body(Body::empty())?;
        let response = app.clone().oneshot(request).await?;
        // The response is here, but the group has not started: it waits for
        // the response body to end.
        let status = response.status();
        to_bytes(response.into_body(), usize::MAX).await?;
        timeline.record(&format!(
            "response ({status}) read to its end: the group is handed off"
        ));

        // Wait for the group, as a test would, instead of sleeping.
        background.wait_idle().await;
        timeline.record("group finished");
    }

    let path = timeline.log_file.display();
    match fs::read_to_string(&*timeline.log_file) {
        Ok(content) => println!("\n{path} holds: {content:?}"),
        Err(error) => println!("\n{path} cannot be read: {error}"),
    }

    // Each group counts as one task, whatever its number of steps.
    let report = background.shutdown().await;
    println!("{report}");
    if report.stats.completed == 2 {
        Ok(())
    } else {
        Err("a group failed: see the error logged above".into())
    }
}

async fn create_account_sequential(
    State(timeline): State<Timeline>,
    tasks: BackgroundTasks,
) -> StatusCode {
    tasks.add(notify(Group::sequential(), &timeline));
    timeline.record("handler: group added, answering 201 Created");
    StatusCode::CREATED
}

async fn create_account_concurrent(
    State(timeline): State<Timeline>,
    tasks: BackgroundTasks,
) -> StatusCode {
    tasks.add(notify(Group::concurrent(), &timeline));
    timeline.record("handler: group added, answering 201 Created");
    StatusCode::CREATED
}

/// The two steps of the backgrounder example, added to `group`.
fn notify(group: Group, timeline: &Timeline) -> Group {
    let email = timeline.clone();
    let file = timeline.clone();
    group
        .step(async move {
            email.record("send_email_notification  start");
            send_email_notification(&email, "Account created").await;
            email.record("send_email_notification  end");
        })
        .blocking_step(move || -> io::Result<()> {
            file.record("write_in_file            start");
            // An I/O error ends the step with `Err`: the group is counted as
            // failed and the error is logged, never a panic.
            let written = write_in_file(&file.log_file);
            // Stands in for slower blocking work, so the overlap shows.
            std::thread::sleep(Duration::from_millis(300));
            file.record("write_in_file            end");
            written
        })
}

/// Sends an e-mail notification (here: prints it, after a pretend SMTP round
/// trip).
async fn send_email_notification(timeline: &Timeline, message: &str) {
    timeline.record(&format!("send_email_notification  {message:?}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Writes `Notification sent @ <UTC time>` to `path`, replacing what was
/// there (Python's `open("log.txt", mode="w")`).
fn write_in_file(path: &Path) -> io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(io::Error::other)?;
    fs::write(path, format!("Notification sent @ {}", utc(now.as_secs())))
        .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))
}

/// `seconds` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`, without a
/// date crate: Howard Hinnant's `civil_from_days`.
fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let time = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// Numbered, timed lines, shared by the handler, the steps (on any thread)
/// and `main`.
#[derive(Clone, Debug)]
struct Timeline {
    start: Arc<Mutex<Instant>>,
    line: Arc<AtomicUsize>,
    log_file: Arc<Path>,
}

impl Timeline {
    fn new(log_file: PathBuf) -> Self {
        Self {
            start: Arc::new(Mutex::new(Instant::now())),
            line: Arc::new(AtomicUsize::new(0)),
            log_file: Arc::from(log_file),
        }
    }

    fn restart(&self) {
        *self.start.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.line.store(0, Ordering::SeqCst);
    }

    fn record(&self, what: &str) {
        let start = *self.start.lock().unwrap_or_else(PoisonError::into_inner);
        let line = self.line.fetch_add(1, Ordering::SeqCst) + 1;
        println!("{line:>2}  +{:.3}s  {what}", start.elapsed().as_secs_f64());
    }
}
