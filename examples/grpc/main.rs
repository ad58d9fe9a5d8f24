//! A tonic gRPC server whose methods queue background work, with the same
//! layer as any other Tower server.
//!
//! The `Newsletter` service of [`newsletter.proto`](newsletter.proto),
//! compiled at build time by build.rs with protox (pure Rust: no `protoc` to
//! install):
//!
//! - `Subscribe` (unary): answers at once, then sends the welcome e-mail in
//!   the background.
//! - `Archive` (server streaming): streams the newest issues; that the
//!   subscriber read them is recorded in the background.
//!
//! The layer goes on tonic's server with
//! `Server::builder().layer(supervisor.layer())`, and the handlers take their
//! `BackgroundTasks` from `tonic::Request::extensions()`. A gRPC response
//! ends with its `grpc-status` trailer, so the tasks start after the last
//! message *and* the trailer have been sent. Ctrl-C (`SIGINT`) or `SIGTERM`
//! lets the open calls finish (at most 10 s), then gives the tasks their
//! grace period and prints the report.
//!
//! # Running it
//!
//! It is the workspace member `grpc-example` (its build script compiles the
//! proto), run from the repository root:
//!
//! ```text
//! cargo run -p grpc-example --example grpc
//! ```
//!
//! `PORT` (default 3000) and `GRACE_SECS` (default 15) work as in the
//! quickstart. In another terminal, the same example as a tonic client calls
//! both methods and prints what it gets:
//!
//! ```text
//! cargo run -p grpc-example --example grpc -- client
//! ```
//!
//! The server's terminal then shows the tasks' output, after the calls have
//! ended. With [grpcurl](https://github.com/fullstorydev/grpcurl) instead:
//!
//! ```text
//! grpcurl -plaintext -import-path examples/grpc -proto newsletter.proto \
//!   -d '{"email": "ada@example.com"}' 127.0.0.1:3000 newsletter.Newsletter/Subscribe
//! grpcurl -plaintext -import-path examples/grpc -proto newsletter.proto \
//!   -d '{"email": "ada@example.com", "count": 2}' 127.0.0.1:3000 newsletter.Newsletter/Archive
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tower_background::Supervisor;

mod newsletter;
#[path = "../support/mod.rs"]
mod support;

use newsletter::proto::newsletter_client::NewsletterClient;
use newsletter::proto::newsletter_server::NewsletterServer;
use newsletter::proto::{ArchiveRequest, SubscribeRequest};
use newsletter::Newsletter;
use support::{shutdown_signal, HTTP_DRAIN};

#[tokio::main]
async fn main() -> ExitCode {
    support::main(|port, grace_period| async move {
        match std::env::args().nth(1).as_deref() {
            None => serve(port, grace_period).await,
            Some("client") => client(port).await,
            Some(other) => Err(support::bad_setting(format!(
                "unknown argument {other:?}: none serves, `client` calls the server"
            ))),
        }
    })
    .await
}

/// Serves the `Newsletter` service on 127.0.0.1:`port` (HTTP/2 without TLS)
/// until `SIGINT` or `SIGTERM`; then, as `support::serve_axum` does, drains
/// the calls in flight before shutting the supervisor down, so that their
/// tasks are handed off and not refused.
async fn serve(port: u16, grace_period: Duration) -> Result<(), Box<dyn Error>> {
    let background = Supervisor::builder().grace_period(grace_period).build();

    // Installed before serving, so that a failure shows up at start-up.
    let signal =
        shutdown_signal().map_err(|error| format!("cannot listen for signals: {error}"))?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|error| format!("cannot listen on 127.0.0.1:{port}: {error}"))?;
    println!("gRPC server listening on http://{}", listener.local_addr()?);

    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::builder()
        .layer(background.layer())
        .add_service(NewsletterServer::new(Newsletter))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = stopped.await;
        });
    let mut server = std::pin::pin!(server);
    let served = tokio::select! {
        served = &mut server => served, // only on an I/O error
        () = signal => {
            let _ = stop.send(());
            tokio::time::timeout(HTTP_DRAIN, server).await.unwrap_or_else(|_| {
                eprintln!("calls still open after {HTTP_DRAIN:?}; shutting down anyway");
                Ok(())
            })
        }
    };

    let report = background.shutdown().await;
    println!("{report}");
    Ok(served?)
}

/// Calls both methods of the server on 127.0.0.1:`port` and prints what
/// comes back.
async fn client(port: u16) -> Result<(), Box<dyn Error>> {
    let address = format!("http://127.0.0.1:{port}");
    let mut client = NewsletterClient::connect(address.clone())
        .await
        .map_err(|error| format!("cannot connect to {address}: {error}"))?;
    let email = "ada@example.com".to_owned();

    let reply = client
        .subscribe(SubscribeRequest {
            email: email.clone(),
        })
        .await?
        .into_inner();
    println!("subscribed {}; queued: {:?}", reply.email, reply.queued);

    let mut issues = client
        .archive(ArchiveRequest { email, count: 2 })
        .await?
        .into_inner();
    while let Some(issue) = issues.message().await? {
        println!("issue {}: {}", issue.number, issue.title);
    }
    println!("the archive ended with grpc-status 0 (OK)");
    Ok(())
}
