//! Background tasks over real connections: a hyper 1 HTTP/1.1 server on
//! `127.0.0.1:0` and a hyper client. Tasks start when the server has sent
//! the body (or lost the client), and run detached from the connection.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::{assert_still_queued, counting, within, ChannelBody};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_background::{BackgroundTasks, OnDisconnect, Supervisor};

/// A hyper HTTP/1.1 server on an ephemeral port, counting the connections it
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
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = service.clone();
                let service =
                    hyper::service::service_fn(move |request| service.clone().oneshot(request));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
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

/// One HTTP/1.1 client connection. Dropping it closes the socket.
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
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await
        .unwrap();
        Self {
            sender,
            connection: tokio::spawn(connection),
        }
    }

    /// Sends `GET path` on this connection and returns the response head.
    async fn get(&mut self, path: &str) -> Response<Incoming> {
        let request = Request::get(path)
            .header(HOST, "localhost")
            .body(Empty::new())
            .unwrap();
        within("the connection to be ready", self.sender.ready())
            .await
            .unwrap();
        within("the response head", self.sender.send_request(request))
            .await
            .unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

async fn read_to_end(response: Response<Incoming>) -> Bytes {
    within("the whole body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes()
}

async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    let frame = within("a frame", body.frame()).await?;
    Some(frame.unwrap().into_data().unwrap())
}

/// On one keep-alive connection, a second request is answered in full while
/// the first request's task is still running: tasks do not hold the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_is_not_held_by_a_running_task() {
    let supervisor = Supervisor::new();
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));

    let (on_start, on_release, done) = (started.clone(), release.clone(), finished.clone());
    let handler = service_fn(move |request: Request<Incoming>| {
        let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
        if request.uri().path() == "/first" {
            let (started, release, finished) = (on_start.clone(), on_release.clone(), done.clone());
            tasks.add(async move {
                started.notify_one();
                release.notified().await;
                finished.store(true, Ordering::SeqCst);
            });
        }
        let body = Full::new(Bytes::copy_from_slice(request.uri().path().as_bytes()));
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let server = Server::start(supervisor.layer().layer(handler)).await;
    let mut client = Client::connect(&server).await;

    let first = client.get("/first").await;
    assert_eq!(read_to_end(first).await, "/first");
    within("the first task to start", started.notified()).await;

    let second = client.get("/second").await;
    assert_eq!(read_to_end(second).await, "/second");
    assert_eq!(server.connections(), 1, "both requests on one connection");
    assert!(!finished.load(Ordering::SeqCst));
    assert_eq!(supervisor.stats().running, 1);

    release.notify_one();
    within("wait_idle", supervisor.wait_idle()).await;
    assert!(finished.load(Ordering::SeqCst));
    assert_eq!(supervisor.stats().completed, 1);
}

/// A server and handler whose single response streams a [`ChannelBody`]
/// the test feeds, with one counting task queued.
async fn streaming_server(
    supervisor: &Supervisor,
    on_disconnect: OnDisconnect,
    runs: &Arc<AtomicUsize>,
) -> (Server, mpsc::Sender<support::Chunk>) {
    let (chunks, body) = ChannelBody::new();
    let body = Arc::new(Mutex::new(Some(body)));
    let runs = Arc::clone(runs);
    let handler = service_fn(move |request: Request<Incoming>| {
        let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
        tasks.add(counting(&runs));
        let body = body.lock().unwrap().take().expect("one request");
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let layer = supervisor.layer().on_disconnect(on_disconnect);
    (Server::start(layer.layer(handler)).await, chunks)
}

async fn send(chunks: &mpsc::Sender<support::Chunk>, text: &'static str) {
    chunks
        .send(Ok(Bytes::from_static(text.as_bytes())))
        .await
        .expect("the body is still alive");
}

/// A response streamed over a real connection, part-way through: the client
/// has read its first chunk, "one", and the server is waiting for more.
struct MidStream {
    /// Kept alive for as long as the test runs.
    _server: Server,
    client: Client,
    chunks: mpsc::Sender<support::Chunk>,
    body: Incoming,
}

impl MidStream {
    /// Starts a [`streaming_server`], requests its stream on a new connection
    /// and reads the first chunk.
    async fn start(
        supervisor: &Supervisor,
        on_disconnect: OnDisconnect,
        runs: &Arc<AtomicUsize>,
    ) -> Self {
        let (server, chunks) = streaming_server(supervisor, on_disconnect, runs).await;
        let mut client = Client::connect(&server).await;

        let mut body = client.get("/stream").await.into_body();
        send(&chunks, "one").await;
        assert_eq!(next_data(&mut body).await.unwrap(), "one");
        Self {
            _server: server,
            client,
            chunks,
            body,
        }
    }

    /// Closes the connection mid-stream and waits until the server has
    /// dropped the body.
    async fn disconnect(self) {
        drop((self.body, self.client));
        within("the server to drop the body", self.chunks.closed()).await;
    }
}

/// A streamed response's task waits while the client reads the chunks, and
/// runs once the client has read the last one.
#[tokio::test]
async fn streamed_response_task_starts_after_the_last_chunk() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let MidStream {
        _server,
        client: _client,
        chunks,
        mut body,
    } = MidStream::start(&supervisor, OnDisconnect::Run, &runs).await;
    assert_still_queued(&supervisor, &runs, 1).await;

    send(&chunks, "two").await;
    drop(chunks);
    assert_eq!(next_data(&mut body).await.unwrap(), "two");
    assert_eq!(next_data(&mut body).await, None);
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(supervisor.stats().completed, 1);
}

/// A client that drops the connection mid-stream: the server drops the
/// body, and by default the task still runs.
#[tokio::test]
async fn client_disconnecting_mid_stream_still_runs_the_task() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let stream = MidStream::start(&supervisor, OnDisconnect::Run, &runs).await;
    assert_still_queued(&supervisor, &runs, 1).await;

    stream.disconnect().await;
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(supervisor.stats().discarded, 0);
}

/// The same disconnect under `OnDisconnect::Skip` discards the task as
/// `client_disconnected`.
#[tokio::test]
async fn client_disconnecting_mid_stream_discards_the_task_under_skip() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let stream = MidStream::start(&supervisor, OnDisconnect::Skip, &runs).await;

    stream.disconnect().await;
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let stats = supervisor.stats();
    assert_eq!(stats.discard_reasons.client_disconnected, 1, "{stats:?}");
}

/// A streamed body whose length the handler set (a download): the server
/// stops polling it once it has written that many bytes, though the body
/// never said it had ended. That last byte is its end: under
/// `OnDisconnect::Skip` the task runs, the connection still open.
#[tokio::test]
async fn a_streamed_body_with_a_content_length_ends_at_its_last_byte() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let (chunks, body) = ChannelBody::new();
    let body = Arc::new(Mutex::new(Some(body)));
    let counter = Arc::clone(&runs);
    let handler = service_fn(move |request: Request<Incoming>| {
        let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
        tasks.add(counting(&counter));
        let body = body.lock().unwrap().take().expect("one request");
        async move {
            let mut response = Response::new(body);
            response.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static("6"),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let layer = supervisor.layer().on_disconnect(OnDisconnect::Skip);
    let server = Server::start(layer.layer(handler)).await;
    let mut client = Client::connect(&server).await;

    let response = client.get("/download").await;
    send(&chunks, "one").await;
    send(&chunks, "two").await;
    assert_eq!(read_to_end(response).await, "onetwo");
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = supervisor.stats();
    assert_eq!((stats.completed, stats.discarded), (1, 0), "{stats:?}");
    // The body's channel stays open until now: it never ended on its own.
    drop((chunks, client));
}
