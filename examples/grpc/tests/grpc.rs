//! The gRPC example's `Newsletter` service on tonic's server behind
//! `BackgroundTaskLayer`, called by tonic's client over a real HTTP/2
//! connection: the tasks a method queues start only after its response has
//! ended, the last message *and* the `grpc-status` trailer.
//!
//! To see the moment between the two, a layer inside ours holds each
//! response's trailers until the test lets them go.

#[path = "../newsletter.rs"]
mod newsletter;
// The behaviour tests' shared helpers, from the crate's own `tests/`.
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use support::within;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tower::ServiceBuilder;
use tower_background::{Stats, Supervisor};

use newsletter::proto::newsletter_client::NewsletterClient;
use newsletter::proto::newsletter_server::NewsletterServer;
use newsletter::proto::{ArchiveRequest, SubscribeRequest};
use newsletter::Newsletter;

/// The example's service on `127.0.0.1:0`. Stops serving when dropped.
struct GrpcServer {
    addr: SocketAddr,
    serving: JoinHandle<()>,
}

impl GrpcServer {
    /// The service behind `supervisor.layer()`, and inside it a layer that
    /// holds every response's trailers at the [`Trailers`] the test gets.
    async fn start(supervisor: &Supervisor) -> (Self, Trailers) {
        let (trailers, gate) = Trailers::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let layers = ServiceBuilder::new()
            .layer(supervisor.layer())
            .map_response(move |response: http::Response<tonic::body::Body>| {
                response.map(|body| HeldTrailers::relay(body, gate.clone()))
            });
        let server = Server::builder()
            .layer(layers)
            .add_service(NewsletterServer::new(Newsletter))
            .serve_with_incoming(TcpIncoming::from(listener));
        let serving = tokio::spawn(async move { server.await.expect("the gRPC server") });
        (Self { addr, serving }, trailers)
    }

    /// The service without `BackgroundTaskLayer`, as if it were forgotten.
    async fn start_without_the_layer() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::builder()
            .add_service(NewsletterServer::new(Newsletter))
            .serve_with_incoming(TcpIncoming::from(listener));
        let serving = tokio::spawn(async move { server.await.expect("the gRPC server") });
        Self { addr, serving }
    }

    async fn client(&self) -> NewsletterClient<Channel> {
        let address = format!("http://{}", self.addr);
        within("connect", NewsletterClient::connect(address))
            .await
            .expect("a connection to the server")
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// The test's side of the layer that holds trailers: it hears when a
/// response has sent its last message and reached its trailers, and lets
/// the trailers go.
struct Trailers {
    reached: mpsc::UnboundedReceiver<()>,
    release: Arc<Semaphore>,
}

/// The layer's side of [`Trailers`].
#[derive(Clone)]
struct Gate {
    reached: mpsc::UnboundedSender<()>,
    release: Arc<Semaphore>,
}

impl Trailers {
    fn new() -> (Self, Gate) {
        let (tell, reached) = mpsc::unbounded_channel();
        let release = Arc::new(Semaphore::new(0));
        let gate = Gate {
            reached: tell,
            release: Arc::clone(&release),
        };
        (Self { reached, release }, gate)
    }

    /// Waits until a response has reached its trailers.
    async fn reached(&mut self) {
        within("a response to reach its trailers", self.reached.recv())
            .await
            .expect("the server is running");
    }

    /// Lets one held response send its trailers.
    fn release(&self) {
        self.release.add_permits(1);
    }
}

/// A response body that passes tonic's frames on, holding the trailers at
/// the [`Gate`]. A task reads tonic's body, so that the frames before the
/// trailers reach the client while the trailers wait.
struct HeldTrailers {
    frames: mpsc::Receiver<Result<Frame<Bytes>, Status>>,
    /// Set once the trailers (always the last frame) have been yielded, as
    /// tonic's own body does.
    ended: bool,
}

impl HeldTrailers {
    fn relay(mut body: tonic::body::Body, gate: Gate) -> Self {
        let (send, frames) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                if frame.as_ref().is_ok_and(Frame::is_trailers) {
                    let _ = gate.reached.send(());
                    match gate.release.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return,
                    }
                }
                if send.send(frame).await.is_err() {
                    return;
                }
            }
        });
        Self {
            frames,
            ended: false,
        }
    }
}

impl Body for HeldTrailers {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = ready!(this.frames.poll_recv(cx));
        this.ended = match &frame {
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) | None => true,
        };
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// Asserts that `supervisor` has `waiting` tasks queued on responses that
/// have not ended, and that none has been handed off.
async fn assert_waiting(supervisor: &Supervisor, waiting: u64) {
    // A handed-off task counts as running until it has finished, so
    // `wait_idle` would wait for it: afterwards, `completed` shows it.
    within("wait_idle", supervisor.wait_idle()).await;
    let stats = supervisor.stats();
    assert_eq!(stats.waiting, waiting, "{stats:?}");
    assert_eq!(stats.submitted, waiting, "tasks left the queue: {stats:?}");
    assert_eq!(stats.completed, 0, "a task ran too early: {stats:?}");
}

/// Waits for the handed-off tasks and returns the counters.
async fn settled(supervisor: &Supervisor) -> Stats {
    within("wait_idle", supervisor.wait_idle()).await;
    supervisor.stats()
}

/// `Subscribe`'s welcome e-mail waits while the reply's trailers do, and is
/// sent once they have gone out and the call has returned.
#[tokio::test]
async fn unary_call_tasks_start_after_the_grpc_status_trailer() {
    let supervisor = Supervisor::new();
    let (server, mut trailers) = GrpcServer::start(&supervisor).await;
    let mut client = server.client().await;

    let call = tokio::spawn(async move {
        client
            .subscribe(SubscribeRequest {
                email: "ada@example.com".to_owned(),
            })
            .await
    });
    trailers.reached().await;
    assert_waiting(&supervisor, 1).await;
    assert!(!call.is_finished(), "a unary call ends with its trailers");

    trailers.release();
    let reply = within("the reply", call).await.unwrap().unwrap();
    assert_eq!(reply.get_ref().email, "ada@example.com");
    assert_eq!(reply.get_ref().queued, ["welcome e-mail"]);
    let stats = settled(&supervisor).await;
    assert_eq!((stats.completed, stats.waiting), (1, 0), "{stats:?}");
}

/// `Archive`'s task waits while the client holds every message of the
/// stream but not yet its `grpc-status` trailer, and runs once the trailer
/// has been sent.
#[tokio::test]
async fn streaming_call_tasks_start_after_the_last_message_and_the_trailer() {
    let supervisor = Supervisor::new();
    let (server, mut trailers) = GrpcServer::start(&supervisor).await;
    let mut client = server.client().await;

    let request = ArchiveRequest {
        email: "ada@example.com".to_owned(),
        count: 3,
    };
    let mut issues = within("the response head", client.archive(request))
        .await
        .unwrap()
        .into_inner();
    let mut numbers = Vec::new();
    for _ in 0..3 {
        let issue = within("an issue", issues.message()).await.unwrap();
        numbers.push(issue.expect("three issues").number);
    }
    assert_eq!(numbers, [3, 2, 1], "newest first");
    trailers.reached().await;
    assert_waiting(&supervisor, 1).await;

    trailers.release();
    let end = within("the end of the stream", issues.message()).await;
    assert!(matches!(end, Ok(None)), "the stream ends with OK: {end:?}");
    let status = within("the trailers", issues.trailers()).await.unwrap();
    assert!(status.is_some(), "the trailers came");
    let stats = settled(&supervisor).await;
    assert_eq!((stats.completed, stats.waiting), (1, 0), "{stats:?}");
}

/// A call the handler refuses (`INVALID_ARGUMENT`) queued nothing.
#[tokio::test]
async fn a_refused_call_queues_nothing() {
    let supervisor = Supervisor::new();
    let (server, trailers) = GrpcServer::start(&supervisor).await;
    let mut client = server.client().await;
    // Let the trailers go, should the status travel in them.
    trailers.release();

    let request = SubscribeRequest {
        email: "ada".to_owned(),
    };
    let status = within("the status", client.subscribe(request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(settled(&supervisor).await.submitted, 0);
}

/// Without the layer, a call fails with `INTERNAL` and a message that names
/// the layer to add.
#[tokio::test]
async fn a_missing_layer_is_an_internal_error_that_names_it() {
    let server = GrpcServer::start_without_the_layer().await;
    let mut client = server.client().await;

    let request = SubscribeRequest {
        email: "ada@example.com".to_owned(),
    };
    let status = within("the status", client.subscribe(request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("BackgroundTaskLayer"),
        "{status:?}"
    );
}
