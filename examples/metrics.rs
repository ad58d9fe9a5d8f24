//! An axum server whose background tasks are measured, and that serves the
//! measurements in Prometheus' text format.
//!
//! `POST /signup?email=…` answers `201 Created` at once and queues two named
//! tasks: `welcome-email` (~1 s, in the `email` lane, at most 2 at a time)
//! and `pdf-report` (a short blocking one). `GET /metrics` renders what the
//! `metrics` feature recorded: `background_tasks_total` by lane, name and
//! outcome, the lanes' `running`, `queued` and `limit` gauges, and the
//! `wait` and `run` histograms.
//!
//! # Running it
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```
//!
//! `PORT` (default 3000) sets the port on 127.0.0.1, `GRACE_SECS` the grace
//! period, `RUST_LOG` (default `info`) the log filter. In another terminal:
//!
//! ```text
//! for i in 1 2 3; do curl -s -X POST "http://127.0.0.1:3000/signup?email=ada$i@example.com"; done
//! # background_tasks_queued{lane="email"} 1, then 0 a second later
//! curl -s http://127.0.0.1:3000/metrics | grep '^background_task'
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tower_background::{BackgroundTasks, Supervisor, Task};

mod support;

use support::serve_axum;

/// Histogram buckets, in seconds, for the wait and run times: without them
/// the exporter renders summaries (quantiles), which cannot be added up
/// across servers.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the exporter drops histogram samples it has already folded
/// into its buckets (its "upkeep"), which it leaves to the application.
const UPKEEP: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    support::main(run).await
}

async fn run(port: u16, grace_period: Duration) -> Result<(), Box<dyn Error>> {
    // The recorder first: the supervisor registers its lane gauges when it
    // is built, with the recorder installed at that moment.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    let background = Supervisor::builder()
        .grace_period(grace_period)
        .lane("email", 2) // the mail provider allows 2 connections
        .build();

    let app = Router::new()
        .route("/signup", post(signup))
        .route("/metrics", get(render))
        .with_state(prometheus)
        .layer(background.layer());

    serve_axum(port, app, background).await
}

#[derive(Deserialize)]
struct Signup {
    email: String,
}

async fn signup(tasks: BackgroundTasks, Query(Signup { email }): Query<Signup>) -> StatusCode {
    // The names are the `name` label: chosen in code, never from the
    // request, so the number of series stays bounded.
    let welcome = Task::new(async move {
        tokio::time::sleep(Duration::from_secs(1)).await; // the SMTP round trip
        tracing::info!(%email, "sent the welcome e-mail");
    });
    tasks.add(welcome.name("welcome-email").lane("email"));
    let report = Task::blocking(|| std::thread::sleep(Duration::from_millis(50)));
    tasks.add(report.name("pdf-report"));
    StatusCode::CREATED
}

/// What a Prometheus server scrapes.
async fn render(State(prometheus): State<PrometheusHandle>) -> String {
    prometheus.render()
}
