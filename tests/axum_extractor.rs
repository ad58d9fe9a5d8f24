//! The axum extractor (feature `axum`): `BackgroundTasks` and
//! `Option<BackgroundTasks>` as handler arguments on a `Router` with
//! `.layer(supervisor.layer())` or with the layer around it, and the `500`
//! that names the missing layer.
#![cfg(feature = "axum")]

mod support;

use std::sync::Mutex;

use axum::body::Body;
use axum::extract::Query;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::ServiceExt;
use tower_background::{BackgroundTasks, Supervisor};

use support::within;

async fn record_visit(tasks: BackgroundTasks) -> StatusCode {
    tasks.add(async {});
    StatusCode::NO_CONTENT
}

async fn maybe_record_visit(tasks: Option<BackgroundTasks>) -> &'static str {
    match tasks {
        Some(tasks) => {
            tasks.add(async {});
            "some"
        }
        None => "none",
    }
}

fn routes() -> Router {
    Router::new()
        .route("/visit", post(record_visit))
        .route("/maybe", get(maybe_record_visit))
}

async fn call(router: Router, method: &str, uri: &str) -> Response {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    within("the response", router.oneshot(request))
        .await
        .unwrap()
}

/// Reads the body to its end (which hands the request's tasks off).
async fn body(response: Response) -> Bytes {
    within("the body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes()
}

/// A handler taking `BackgroundTasks` works on a `Router` with the layer: it
/// answers, and its task runs once the body has been read.
#[tokio::test]
async fn the_extractor_works_behind_the_layer() {
    let supervisor = Supervisor::new();
    let router = routes().layer(supervisor.layer());

    let response = call(router, "POST", "/visit").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    body(response).await;
    within("the task to finish", supervisor.wait_idle()).await;

    assert_eq!(supervisor.stats().completed, 1);
}

/// Without the layer the extractor rejects the request with a `500` whose
/// JSON body says `missing-background-task-layer` and names the layer to
/// add.
#[tokio::test]
async fn without_the_layer_the_extractor_answers_500_naming_the_layer() {
    let response = call(routes(), "POST", "/visit").await;

    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
    assert_eq!(json["error"], "missing-background-task-layer");
    let message = json["message"].as_str().expect("a message string");
    assert!(message.contains("BackgroundTaskLayer"), "{message}");
}

/// `Option<BackgroundTasks>` is `None` without the layer (the handler still
/// runs) and `Some` with it.
#[tokio::test]
async fn the_optional_extractor_is_none_without_the_layer_and_some_with_it() {
    let without = call(routes(), "GET", "/maybe").await;
    assert_eq!(without.status(), StatusCode::OK);
    assert_eq!(body(without).await, "none");

    let supervisor = Supervisor::new();
    let with = call(routes().layer(supervisor.layer()), "GET", "/maybe").await;
    assert_eq!(with.status(), StatusCode::OK);
    assert_eq!(body(with).await, "some");
    within("the task to finish", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().completed, 1);
}

// The handler from the issue, as written there. Only this test uses these.
static WELCOME_EMAILS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static PDF_REPORTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Deserialize)]
struct Signup {
    email: String,
}

async fn signup(tasks: BackgroundTasks, Query(q): Query<Signup>) -> StatusCode {
    let email = q.email.clone();
    tasks.add(async move { send_welcome_email(&q.email).await });
    tasks.add_blocking(move || render_pdf_report(&email));
    StatusCode::CREATED
}

async fn send_welcome_email(to: &str) -> Result<(), std::io::Error> {
    tokio::task::yield_now().await;
    WELCOME_EMAILS.lock().unwrap().push(to.to_owned());
    Ok(())
}

fn render_pdf_report(email: &str) {
    PDF_REPORTS
        .lock()
        .unwrap()
        .push(format!("report for {email}"));
}

/// The issue's `signup` handler compiles and works: `201` at once, nothing
/// started before the body has been read, both tasks done after `wait_idle`.
#[tokio::test]
async fn the_signup_handler_from_the_issue_works() {
    let supervisor = Supervisor::new();
    let router = Router::new()
        .route("/signup", post(signup))
        .layer(supervisor.layer());

    let response = call(router, "POST", "/signup?email=ada%40example.com").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(supervisor.stats().waiting, 2, "queued, not started");
    assert!(WELCOME_EMAILS.lock().unwrap().is_empty());

    body(response).await;
    within("the tasks to finish", supervisor.wait_idle()).await;

    assert_eq!(*WELCOME_EMAILS.lock().unwrap(), ["ada@example.com"]);
    assert_eq!(*PDF_REPORTS.lock().unwrap(), ["report for ada@example.com"]);
    let report = within("shutdown", supervisor.shutdown()).await;
    assert_eq!(report.stats.completed, 2);
    assert!(report.is_complete());
}

/// The layer can also wrap the whole router, served as is by `axum::serve`
/// (what the `BackgroundTaskLayer` docs suggest on a hot path): handlers
/// extract the handle the same way, their tasks run after the response, and
/// a request that matches no route (`404`) queues nothing.
#[tokio::test]
async fn the_layer_around_the_whole_router_serves_over_tcp() {
    use axum::ServiceExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceBuilder;

    let supervisor = Supervisor::new();
    // As in the `BackgroundTaskLayer` docs.
    let app = ServiceBuilder::new()
        .map_response(|response: axum::http::Response<_>| response.map(Body::new))
        .layer(supervisor.layer())
        .service(routes().with_state(()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            ServiceExt::<Request<Body>>::into_make_service(app),
        )
        .await
    });

    let exchange = |request: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let visit =
        "POST /visit HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let response = within("the visit", exchange(visit)).await;
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
    let missing = "GET /nowhere HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let response = within("the 404", exchange(missing)).await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    within("the task to finish", supervisor.wait_idle()).await;
    let stats = supervisor.stats();
    assert_eq!((stats.submitted, stats.completed), (1, 1), "{stats:?}");
    server.abort();
}
