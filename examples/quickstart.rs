//! An axum server that sends its welcome e-mails in the background.
//!
//! `POST /signup?email=…` answers `201 Created` at once and queues two
//! tasks: a ~1 s async one (sending the welcome e-mail) and a short blocking
//! one (rendering a PDF report, on tokio's blocking pool). Both start only
//! after the response has been sent. `POST /export` queues a 20 s task, long
//! enough to outlive a short grace period. `GET /stats` shows the
//! supervisor's counters. Ctrl-C (`SIGINT`) or `SIGTERM` stops the HTTP server first
//! (open connections get at most 10 s), then gives the background tasks their
//! grace period, and prints the report.
//!
//! # Running it
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! `PORT` (default 3000) sets the port on 127.0.0.1, `GRACE_SECS`
//! (default 15, the crate's default) the grace period, and `RUST_LOG` (default `info`) the log
//! filter.
//!
//! In another terminal:
//!
//! ```text
//! # 201 at once; the e-mail is "sent" a second later, in the server's log
//! curl -i -X POST 'http://127.0.0.1:3000/signup?email=ada@example.com'
//!
//! # {"submitted":2,"waiting":0,"queued":0,"running":1,"completed":1,...}
//! curl -s http://127.0.0.1:3000/stats
//!
//! # 400 with a JSON body saying what is wrong
//! curl -i -X POST 'http://127.0.0.1:3000/signup'
//! curl -i -X POST 'http://127.0.0.1:3000/signup?email=ada'
//! ```
//!
//! Then press Ctrl-C in the server's terminal: it waits for the running
//! tasks (at most `GRACE_SECS`) and prints what became of them. To watch a
//! shutdown wait, start it with `GRACE_SECS=7`, `POST /export`, and send
//! `SIGTERM`: it names the export every 5 s, aborts it at 7 s, and the
//! report lists it.

use std::error::Error;
use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_background::{BackgroundTasks, Monitor, Stats, Supervisor, Task};

mod support;

use support::serve_axum;

#[tokio::main]
async fn main() -> ExitCode {
    support::main(run).await
}

async fn run(port: u16, grace_period: Duration) -> Result<(), Box<dyn Error>> {
    let background = Supervisor::builder().grace_period(grace_period).build();

    let app = Router::new()
        .route("/signup", post(signup))
        .route("/export", post(export))
        .route("/stats", get(stats))
        .with_state(background.monitor())
        .layer(background.layer());

    // Serves until SIGINT or SIGTERM, then drains HTTP (at most 10 s) before
    // shutting the supervisor down: see `serve_axum` for why in that order.
    serve_axum(port, app, background).await
}

#[derive(Deserialize)]
struct Signup {
    email: String,
}

async fn signup(
    tasks: BackgroundTasks,
    // Taking the `Result` lets us answer a bad query with JSON rather than
    // axum's plain-text rejection.
    query: Result<Query<Signup>, QueryRejection>,
) -> Response {
    let email = match query {
        Ok(Query(Signup { email })) => email,
        Err(rejection) => return bad_request("invalid_query", rejection.body_text()),
    };
    if !matches!(email.split_once('@'), Some((user, domain)) if !user.is_empty() && !domain.is_empty())
    {
        return bad_request(
            "invalid_email",
            format!("{email:?} is not an e-mail address (expected user@domain)"),
        );
    }

    // Neither task starts until the 201 below has been sent. A name is what
    // logs, failures and the shutdown's report call a task.
    let to = email.clone();
    let welcome = Task::new(async move {
        tokio::time::sleep(Duration::from_secs(1)).await; // the SMTP round trip
        println!("sent the welcome e-mail to {to}");
    });
    tasks.add(welcome.name("welcome-email"));
    let to = email.clone();
    // Blocking or CPU-heavy work goes to tokio's blocking pool
    // (`add_blocking`, or `Task::blocking`) instead of stalling a worker
    // thread.
    let report = Task::blocking(move || {
        std::thread::sleep(Duration::from_millis(50));
        println!("rendered the PDF report for {to}");
    });
    tasks.add(report.name("pdf-report"));

    let body = json!({ "email": email, "queued": ["welcome e-mail", "PDF report"] });
    (StatusCode::CREATED, Json(body)).into_response()
}

/// Queues a task that takes 20 s: longer than a short `GRACE_SECS`, to
/// watch shutdown wait for it, name it, and abort it.
async fn export(tasks: BackgroundTasks) -> (StatusCode, Json<serde_json::Value>) {
    let export = Task::new(async {
        tokio::time::sleep(Duration::from_secs(20)).await;
        println!("exported the data");
    });
    tasks.add(export.name("export"));
    (StatusCode::ACCEPTED, Json(json!({ "queued": ["export"] })))
}

async fn stats(State(monitor): State<Monitor>) -> Json<Stats> {
    Json(monitor.stats())
}

fn bad_request(error: &str, message: impl Display) -> Response {
    let body = json!({ "error": error, "message": message.to_string() });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}
