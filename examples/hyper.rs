//! The quickstart on plain hyper 1 and hyper-util, without axum.
//!
//! An accept loop serves each connection with hyper's HTTP/1 server; the
//! service is `BackgroundTaskLayer` around a `service_fn`, wrapped in
//! `TowerToHyperService`, and the handler takes its `BackgroundTasks` from
//! the request's extensions.
//!
//! - `POST /signup?email=…`: `201 Created` at once, then a ~1 s async task
//!   (the welcome e-mail) and a short blocking one (a PDF report).
//! - `GET /stats`: the supervisor's counters, as JSON.
//! - Anything else: `404` with a JSON body.
//!
//! On Ctrl-C (`SIGINT`) or `SIGTERM` it stops accepting, lets open
//! connections finish (at most 10 s, with hyper-util's `GracefulShutdown`),
//! then shuts the supervisor down (at most `GRACE_SECS`) and prints the
//! report.
//!
//! # Running it
//!
//! ```text
//! cargo run --example hyper
//! ```
//!
//! `PORT` (default 3000) and `GRACE_SECS` (default 15) work as in the
//! quickstart. Then:
//!
//! ```text
//! curl -i -X POST 'http://127.0.0.1:3000/signup?email=ada@example.com'
//! curl -s http://127.0.0.1:3000/stats
//! curl -i -X POST 'http://127.0.0.1:3000/signup?email=ada'
//! ```
//!
//! and Ctrl-C.

use std::convert::Infallible;
use std::error::Error;
use std::fmt::Display;
use std::pin::pin;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_background::{BackgroundTasks, Monitor, Supervisor};

mod support;

use support::{shutdown_signal, HTTP_DRAIN};

#[tokio::main]
async fn main() -> ExitCode {
    support::main(run).await
}

async fn run(port: u16, grace_period: Duration) -> Result<(), Box<dyn Error>> {
    let background = Supervisor::builder().grace_period(grace_period).build();
    let monitor = background.monitor();
    let service = ServiceBuilder::new()
        .layer(background.layer())
        .service_fn(move |request| handle(request, monitor.clone()));

    let mut signal =
        pin!(shutdown_signal().map_err(|error| format!("cannot listen for signals: {error}"))?);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|error| format!("cannot listen on 127.0.0.1:{port}: {error}"))?;
    println!("listening on http://{}", listener.local_addr()?);

    let http = hyper::server::conn::http1::Builder::new();
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically out of file descriptors: back off a little
                    // rather than spin.
                    eprintln!("accept error: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        );
        // `watch` lets `graceful.shutdown()` below close the connection once
        // its current request is answered.
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("connection from {peer}: {error}");
            }
        });
    }

    // Stop accepting, then drain HTTP before shutting the supervisor down:
    // the requests still in flight hand their tasks off as their responses
    // end, and a supervisor already shut down would refuse them. Kubernetes
    // sends `SIGKILL` 30 s after `SIGTERM`; the drain and the grace period
    // share that budget.
    drop(listener);
    if tokio::time::timeout(HTTP_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("connections still open after {HTTP_DRAIN:?}; shutting down anyway");
    }

    let report = background.shutdown().await;
    println!("{report}");
    Ok(())
}

async fn handle(
    request: Request<Incoming>,
    monitor: Monitor,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::POST, "/signup") => signup(&request),
        (&Method::GET, "/stats") => json_response(StatusCode::OK, &monitor.stats()),
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {} {}", request.method(), request.uri().path()),
        ),
    };
    Ok(response)
}

fn signup(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    // Put there by `BackgroundTaskLayer`; missing only if the layer is.
    let Some(tasks) = request.extensions().get::<BackgroundTasks>() else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "missing_layer",
            "BackgroundTaskLayer is not installed",
        );
    };
    let email = match email_param(request.uri().query()) {
        Ok(email) => email,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, "invalid_email", message),
    };

    // Neither task starts until the 201 below has been sent.
    let to = email.clone();
    tasks.add(async move {
        tokio::time::sleep(Duration::from_secs(1)).await; // the SMTP round trip
        println!("sent the welcome e-mail to {to}");
    });
    let to = email.clone();
    tasks.add_blocking(move || {
        std::thread::sleep(Duration::from_millis(50)); // CPU-heavy rendering
        println!("rendered the PDF report for {to}");
    });

    let body = json!({ "email": email, "queued": ["welcome e-mail", "PDF report"] });
    json_response(StatusCode::CREATED, &body)
}

/// The `email` parameter of a query string such as
/// `email=ada%40example.com`, checked to look like `user@domain`.
fn email_param(query: Option<&str>) -> Result<String, String> {
    let raw = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("email="))
        .ok_or("missing query parameter `email`")?;
    let email = percent_decode(raw)
        .ok_or_else(|| format!("`email={raw}` is not valid percent-encoded UTF-8"))?;
    match email.split_once('@') {
        Some((user, domain)) if !user.is_empty() && !domain.is_empty() => Ok(email),
        _ => Err(format!(
            "{email:?} is not an e-mail address (expected user@domain)"
        )),
    }
}

/// Decodes `%XX` escapes and `+` (a space in a query string); `None` if an
/// escape is malformed or the result is not UTF-8.
fn percent_decode(input: &str) -> Option<String> {
    let mut bytes = input.bytes();
    let mut decoded = Vec::with_capacity(input.len());
    while let Some(byte) = bytes.next() {
        decoded.push(match byte {
            b'+' => b' ',
            b'%' => {
                let high = char::from(bytes.next()?).to_digit(16)?;
                let low = char::from(bytes.next()?).to_digit(16)?;
                (high * 16 + low) as u8
            }
            byte => byte,
        });
    }
    String::from_utf8(decoded).ok()
}

fn error_response(status: StatusCode, error: &str, message: impl Display) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "error": error, "message": message.to_string() }),
    )
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    // Serializing these plain structs cannot fail; if it ever did, answer
    // 500 rather than panic.
    let (status, body) = match serde_json::to_vec(body) {
        Ok(body) => (status, Bytes::from(body)),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(
                br#"{"error":"internal","message":"cannot serialize the response"}"#,
            ),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
