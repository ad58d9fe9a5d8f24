//! Background tasks over a real HTTP/2 connection: hyper-util's `auto`
//! server (HTTP/2 only, without TLS) on `127.0.0.1:0` and hyper's `http2`
//! client. Every stream is a request of its own: its tasks are handed off at
//! its own end, trailers included, whatever the connection's other streams
//! do and however long the connection stays open; a stream the client resets
//! is a disconnect.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use support::{within, ChannelBody, Chunk};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tower::{service_fn, Layer, Service};
use tower_background::{BackgroundTasks, OnDisconnect, Supervisor};

/// An HTTP/2-only server on an ephemeral port, counting the connections it
/// accepts. Stops accepting when dropped.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    accept_loop: JoinHandle<()>,
}

impl Server {
    async fn start<S, B>(service: S) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let accept_loop = tokio::spawn(async move {
            let mut http = auto::Builder::new(TokioExecutor::new());
            http = http.http2_only();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let connection = http
                    .serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service.clone()),
                    )
                    .into_owned();
                tokio::spawn(connection);
            }
        });
        Self {
            addr,
            accepted,
            accept_loop,
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// One HTTP/2 client connection (prior knowledge); every request is a
/// stream on it. Dropping it closes the connection.
struct Client {
    sender: SendRequest<Empty<Bytes>>,
    connection: JoinHandle<hyper::Result<()>>,
}

impl Client {
    async fn connect(server: &Server) -> Self {
        let stream = within("connect", TcpStream::connect(server.addr))
            .await
            .unwrap();
        let (sender, connection) = within(
            "handshake",
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
        )
        .await
        .unwrap();
        Self {
            sender,
            connection: tokio::spawn(connection),
        }
    }

    /// Opens a stream with `GET path` and returns its response head.
    async fn get(&mut self, path: &str) -> Response<Incoming> {
        within("the response head", self.sender.send_request(request(path)))
            .await
            .unwrap()
    }

    /// Whether the connection is still open.
    fn is_open(&self) -> bool {
        !self.connection.is_finished() && !self.sender.is_closed()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

/// Reads one frame and returns its data; `None` at the end of the body.
async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    let frame = within("a frame", body.frame()).await?;
    Some(frame.unwrap().into_data().expect("a data frame"))
}

async fn read_to_end(response: Response<Incoming>) -> Bytes {
    within("the whole body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes()
}

/// Reads what is left of `body` and asserts that it is nothing but the end
/// of the stream (hyper ends a stream whose body ran out with an empty
/// `DATA` frame).
async fn assert_ended(body: Incoming, what: &str) {
    let rest = within("the end of the stream", body.collect()).await;
    assert_eq!(rest.unwrap().to_bytes(), "", "{what} ended");
}

async fn send(chunks: &mpsc::Sender<Chunk>, text: &'static str) {
    chunks
        .send(Ok(Bytes::from_static(text.as_bytes())))
        .await
        .expect("the body is still alive");
}

/// The paths whose tasks have run, in the order they ran.
#[derive(Clone, Default)]
struct Ran(Arc<Mutex<Vec<String>>>);

impl Ran {
    /// A task that records `path` when it runs.
    fn task(&self, path: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (ran, path) = (self.clone(), path.to_owned());
        async move { ran.0.lock().unwrap().push(path) }
    }

    fn paths(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A handler that queues one task per request, recording the request's path
/// in `ran`, and answers each path with the body set for it in `bodies`.
fn streaming_handler<B>(
    ran: &Ran,
    bodies: HashMap<&'static str, B>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<B>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<B>, Infallible>>,
> + Clone
       + Send
       + 'static
where
    B: Send + 'static,
{
    let bodies = Arc::new(Mutex::new(bodies));
    let ran = ran.clone();
    service_fn(move |request: Request<Incoming>| {
        let path = request.uri().path();
        let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
        tasks.add(ran.task(path));
        let body = bodies
            .lock()
            .unwrap()
            .remove(path)
            .expect("one request per path");
        std::future::ready(Ok(Response::new(body)))
    })
}

/// Asserts that the tasks of exactly the streams `paths` have run, in that
/// order, and that `waiting` tasks are still queued on streams that have not
/// ended.
async fn assert_ran(supervisor: &Supervisor, ran: &Ran, paths: &[&str], waiting: u64) {
    // A handed-off task counts as running until it has finished, so
    // `wait_idle` waits for it; a task still waiting for its stream does not
    // count.
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(ran.paths(), paths);
    let stats = supervisor.stats();
    assert_eq!(stats.waiting, waiting, "{stats:?}");
    assert_eq!(stats.completed, paths.len() as u64, "{stats:?}");
}

/// Three streams open at once on one connection: each one's task starts
/// when that stream ends, in the order they end, not when the first or the
/// last does.
#[tokio::test]
async fn streams_on_one_connection_hand_off_at_their_own_ends() {
    let supervisor = Supervisor::new();
    let ran = Ran::default();
    let mut senders = HashMap::new();
    let mut bodies = HashMap::new();
    for path in ["/a", "/b", "/c"] {
        let (chunks, body) = ChannelBody::new();
        senders.insert(path, chunks);
        bodies.insert(path, body);
    }
    let handler = streaming_handler(&ran, bodies);
    let server = Server::start(supervisor.layer().layer(handler)).await;
    let mut client = Client::connect(&server).await;

    let mut streams = HashMap::new();
    for path in ["/a", "/b", "/c"] {
        let mut body = client.get(path).await.into_body();
        send(&senders[path], "first").await;
        assert_eq!(next_data(&mut body).await.unwrap(), "first");
        streams.insert(path, body);
    }
    assert_eq!(server.connections(), 1, "three streams on one connection");
    assert_ran(&supervisor, &ran, &[], 3).await;

    for (ends, ran_so_far) in [
        ("/b", &["/b"][..]),
        ("/c", &["/b", "/c"]),
        ("/a", &["/b", "/c", "/a"]),
    ] {
        drop(senders.remove(ends));
        assert_ended(streams.remove(ends).unwrap(), ends).await;
        assert_ran(&supervisor, &ran, ran_so_far, 3 - ran_so_far.len() as u64).await;
    }
    assert!(client.is_open());
}

/// A task runs to its end while the connection it came from stays open and
/// idle; and while it runs, the next stream on that connection is answered
/// in full.
#[tokio::test]
async fn an_open_connection_holds_no_task_back() {
    let supervisor = Supervisor::new();
    let ran = Ran::default();
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());

    let (record, on_start, on_release) = (ran.clone(), started.clone(), release.clone());
    let handler = service_fn(move |request: Request<Incoming>| {
        let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
        let path = request.uri().path();
        let ran = record.task(path);
        let waits = (path == "/waits").then(|| (on_start.clone(), on_release.clone()));
        tasks.add(async move {
            if let Some((started, release)) = waits {
                started.notify_one();
                release.notified().await;
            }
            ran.await;
        });
        let body = Full::new(Bytes::copy_from_slice(path.as_bytes()));
        std::future::ready(Ok::<_, Infallible>(Response::new(body)))
    });
    let server = Server::start(supervisor.layer().layer(handler)).await;
    let mut client = Client::connect(&server).await;

    let first = client.get("/runs").await;
    assert_eq!(read_to_end(first).await, "/runs");
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(ran.paths(), ["/runs"], "ran with the connection open");
    assert!(client.is_open());

    let waits = client.get("/waits").await;
    assert_eq!(read_to_end(waits).await, "/waits");
    within("the task to start", started.notified()).await;
    let next = client.get("/next").await;
    assert_eq!(read_to_end(next).await, "/next");
    assert!(
        !ran.paths().contains(&"/waits".to_owned()),
        "/next was answered while /waits's task ran"
    );

    release.notify_one();
    within("wait_idle", supervisor.wait_idle()).await;
    let mut paths = ran.paths();
    paths.sort();
    assert_eq!(paths, ["/next", "/runs", "/waits"]);
    assert_eq!(server.connections(), 1);
    assert!(client.is_open());
}

/// Two streams on one connection, part-way through; the client resets `/a`
/// (drops its body: `RST_STREAM`) and `/b` carries on.
async fn reset_one_of_two_streams(supervisor: &Supervisor, policy: OnDisconnect, ran: &Ran) {
    let (a_chunks, a_body) = ChannelBody::new();
    let (b_chunks, b_body) = ChannelBody::new();
    let handler = streaming_handler(ran, HashMap::from([("/a", a_body), ("/b", b_body)]));
    let server = Server::start(supervisor.layer().on_disconnect(policy).layer(handler)).await;
    let mut client = Client::connect(&server).await;

    let mut a = client.get("/a").await.into_body();
    let mut b = client.get("/b").await.into_body();
    send(&a_chunks, "one").await;
    assert_eq!(next_data(&mut a).await.unwrap(), "one");

    drop(a);
    within("the server to drop /a's body", a_chunks.closed()).await;
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(supervisor.stats().waiting, 1, "/b is still waiting");

    send(&b_chunks, "two").await;
    drop(b_chunks);
    assert_eq!(next_data(&mut b).await.unwrap(), "two");
    assert_ended(b, "/b").await;
    within("wait_idle", supervisor.wait_idle()).await;
    assert!(
        client.is_open(),
        "a reset closes the stream, not the connection"
    );
}

/// By default a stream the client resets mid-body still runs its task.
#[tokio::test]
async fn a_stream_reset_by_the_client_still_runs_its_tasks() {
    let supervisor = Supervisor::new();
    let ran = Ran::default();
    reset_one_of_two_streams(&supervisor, OnDisconnect::Run, &ran).await;

    assert_eq!(ran.paths(), ["/a", "/b"]);
    let stats = supervisor.stats();
    assert_eq!((stats.completed, stats.discarded), (2, 0), "{stats:?}");
}

/// Under `OnDisconnect::Skip` the reset stream's task is discarded as
/// `client_disconnected`; the other stream's runs.
#[tokio::test]
async fn a_stream_reset_by_the_client_discards_its_tasks_under_skip() {
    let supervisor = Supervisor::new();
    let ran = Ran::default();
    reset_one_of_two_streams(&supervisor, OnDisconnect::Skip, &ran).await;

    assert_eq!(ran.paths(), ["/b"]);
    let stats = supervisor.stats();
    assert_eq!((stats.completed, stats.discarded), (1, 1), "{stats:?}");
    assert_eq!(stats.discard_reasons.client_disconnected, 1, "{stats:?}");
}

/// A client that gives up on a stream before the response exists (drops
/// its response future: `RST_STREAM`) makes the server drop the handler's
/// future: no response, so the task is discarded as `no_response`, under
/// either policy.
#[tokio::test]
async fn a_stream_reset_before_the_response_discards_its_tasks() {
    for policy in [OnDisconnect::Run, OnDisconnect::Skip] {
        let supervisor = Supervisor::new();
        let (entered, mut handler_entered) = mpsc::unbounded_channel();
        let handler = service_fn(move |request: Request<Incoming>| {
            let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
            tasks.add(async {});
            // Dropped with the handler's future, which never completes.
            let (alive, dropped) = oneshot::channel::<()>();
            entered.send(dropped).unwrap();
            async move {
                let _alive = alive;
                std::future::pending::<Result<Response<Empty<Bytes>>, Infallible>>().await
            }
        });
        let server = Server::start(supervisor.layer().on_disconnect(policy).layer(handler)).await;
        let mut client = Client::connect(&server).await;

        let response = client.sender.send_request(request("/slow"));
        let dropped = tokio::select! {
            dropped = handler_entered.recv() => dropped.unwrap(),
            _ = response => panic!("the handler never answers"),
        };
        // `select!` dropped the response future: the stream is reset.
        let _ = within("the server to drop the handler", dropped).await;
        within("wait_idle", supervisor.wait_idle()).await;
        let stats = supervisor.stats();
        assert_eq!(stats.discarded, 1, "{policy:?}: {stats:?}");
        assert_eq!(
            stats.discard_reasons.no_response, 1,
            "{policy:?}: {stats:?}"
        );
        assert!(client.is_open());
    }
}

/// A response body of data then trailers, fed by the test.
/// `says_when_it_ends` makes `is_end_stream` true after the trailers, as
/// tonic's body does; without it the body never says so, as
/// `http_body_util::StreamBody` does not, and HTTP/2 stops polling it after
/// the trailers all the same.
struct TrailersBody {
    frames: mpsc::Receiver<Frame<Bytes>>,
    says_when_it_ends: bool,
    sent_trailers: bool,
}

impl TrailersBody {
    fn new(says_when_it_ends: bool) -> (mpsc::Sender<Frame<Bytes>>, Self) {
        let (sender, frames) = mpsc::channel(8);
        let body = Self {
            frames,
            says_when_it_ends,
            sent_trailers: false,
        };
        (sender, body)
    }
}

impl Body for TrailersBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(this.frames.poll_recv(cx));
        this.sent_trailers |= frame.as_ref().is_some_and(Frame::is_trailers);
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.says_when_it_ends && self.sent_trailers
    }
}

fn trailers() -> HeaderMap {
    HeaderMap::from_iter([(
        http::header::HeaderName::from_static("checksum"),
        HeaderValue::from_static("abc"),
    )])
}

/// A response whose body ends with trailers: its task waits while the data
/// has been read and the trailers have not been sent, and runs once they
/// have, even under `OnDisconnect::Skip` (the trailers are the end, not a
/// disconnect).
async fn trailers_end_the_stream(says_when_it_ends: bool) {
    let supervisor = Supervisor::new();
    let ran = Ran::default();
    let (frames, body) = TrailersBody::new(says_when_it_ends);
    let handler = streaming_handler(&ran, HashMap::from([("/trailers", body)]));
    let layer = supervisor.layer().on_disconnect(OnDisconnect::Skip);
    let server = Server::start(layer.layer(handler)).await;
    let mut client = Client::connect(&server).await;

    let mut body = client.get("/trailers").await.into_body();
    frames
        .send(Frame::data(Bytes::from_static(b"data")))
        .await
        .unwrap();
    assert_eq!(next_data(&mut body).await.unwrap(), "data");
    assert_ran(&supervisor, &ran, &[], 1).await;

    frames.send(Frame::trailers(trailers())).await.unwrap();
    let frame = within("the trailers", body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_trailers().unwrap(), trailers());
    assert_ran(&supervisor, &ran, &["/trailers"], 0).await;
    assert_eq!(supervisor.stats().discarded, 0);
    assert!(client.is_open());
}

#[tokio::test]
async fn trailers_hand_off_after_the_trailers() {
    trailers_end_the_stream(true).await;
}

/// hyper's HTTP/2 server sends the trailers and drops the body without
/// polling it again: the trailers must count as its end even when the body
/// does not say so.
#[tokio::test]
async fn trailers_end_a_body_that_does_not_say_it_has_ended() {
    trailers_end_the_stream(false).await;
}
