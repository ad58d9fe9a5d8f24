//! What every scenario of the reliability suite runs on: a real hyper
//! HTTP/1.1 server on `127.0.0.1:0` with a graceful stop and an optional idle
//! timeout, a real hyper client per connection and many of them at once, a
//! ledger of task side effects, the counts a plan predicts, the scale knob,
//! and the summary line each scenario prints. What is not specific to these
//! scenarios (bounded waits, stats snapshots, streaming bodies, the handle
//! from a request's extensions) comes from the shared `tests/support`.

use std::env;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tower::Service;
use tower_background::{BackgroundTasks, Monitor, ShutdownReport, Stats, Supervisor};

use crate::support::{counts, eventually, stats, within};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------
// Scale
// ---------------------------------------------------------------------------

/// `RELIABILITY_SCALE=full` runs every scenario at the size the issue asks
/// for (the load scenario: 200 connections × 500 requests); anything else,
/// or nothing, runs the smaller default that keeps `cargo test` quick on a
/// 2-core machine in debug mode. Same code, same assertions: only counts
/// change.
pub(crate) fn full_scale() -> bool {
    env::var("RELIABILITY_SCALE").is_ok_and(|scale| scale == "full")
}

/// `default` normally, `full` under `RELIABILITY_SCALE=full`.
pub(crate) fn scaled(default: usize, full: usize) -> usize {
    if full_scale() {
        full
    } else {
        default
    }
}

/// A deterministic, well-mixed hash (SplitMix64's finaliser): what request
/// `id` does is a function of `id`, so the server and the checks agree
/// without sharing state.
pub(crate) fn mix(id: u64, salt: u64) -> u64 {
    let mut z = id
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The request id in a path such as `/load/42`: its last segment.
pub(crate) fn id_of<B>(request: &Request<B>) -> u64 {
    let path = request.uri().path();
    path.rsplit('/')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no request id in {path}"))
}

/// Queues `count` tasks for request `id` that do nothing but record their
/// run, task `k` in ledger slot `id * per_request + k`; each is async or
/// blocking as `mix(id, 10 + k)` picks, so that both kinds meet every fault.
pub(crate) fn add_recording_tasks(
    tasks: &BackgroundTasks,
    ledger: &Ledger,
    id: u64,
    count: u64,
    per_request: u64,
) {
    for k in 0..count {
        let (ledger, task) = (ledger.clone(), id * per_request + k);
        if mix(id, 10 + k) % 2 == 0 {
            tasks.add(async move { ledger.record(task) });
        } else {
            tasks.add_blocking(move || ledger.record(task));
        }
    }
}

// ---------------------------------------------------------------------------
// Settling
// ---------------------------------------------------------------------------

/// Waits until no task is waiting for its response or running: every body
/// the server held has ended or been dropped, and every handed-off task has
/// finished. Then the counters no longer move, and must add up.
pub(crate) async fn settled(monitor: &Monitor) -> Stats {
    eventually("every response to end or be dropped", || {
        monitor.stats().waiting == 0
    })
    .await;
    within("wait_idle", monitor.wait_idle()).await;
    let stats = monitor.stats();
    assert_eq!(stats.waiting, 0, "{stats:?}");
    stats
}

// ---------------------------------------------------------------------------
// Injected panics
// ---------------------------------------------------------------------------

/// The message every panic the suite injects starts with.
const INJECTED: &str = "injected panic";

/// Panics on purpose, with a message that [`quiet_injected_panics`] keeps
/// out of the test output. Returns `()` (not `!`) so that tasks calling it
/// have an ordinary output type.
pub(crate) fn inject_panic(what: &str) {
    panic!("{INJECTED}: {what}");
}

/// Stops the default panic hook from printing the panics the suite injects
/// on purpose (hundreds of them, each with a backtrace under
/// `RUST_BACKTRACE=1`), and only those: every other panic, such as a
/// failing assertion, is printed as usual. The counters prove the injected
/// ones were caught.
pub(crate) fn quiet_injected_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            if !message.is_some_and(|message| message.starts_with(INJECTED)) {
                default(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------
// Side effects
// ---------------------------------------------------------------------------

/// One counter per task id: a task adds one to its own slot when it does
/// its work, so "exactly once" is every expected slot at 1, every other at 0.
#[derive(Clone)]
pub(crate) struct Ledger(Arc<[AtomicU32]>);

impl Ledger {
    pub(crate) fn new(slots: usize) -> Self {
        Self((0..slots).map(|_| AtomicU32::new(0)).collect())
    }

    /// The task `id` did its work.
    pub(crate) fn record(&self, id: u64) {
        self.0[usize::try_from(id).expect("a small id")].fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn get(&self, id: u64) -> u32 {
        self.0[usize::try_from(id).expect("a small id")].load(Ordering::SeqCst)
    }

    /// Asserts that each slot holds what `expected` says (1 or 0), and
    /// returns how many hold 1.
    pub(crate) fn assert_each(&self, expected: impl Fn(u64) -> u32) -> u64 {
        let mut wrong = Vec::new();
        let mut ones = 0;
        for (id, slot) in self.0.iter().enumerate() {
            let id = id as u64;
            let got = slot.load(Ordering::SeqCst);
            ones += u64::from(got == 1);
            if got != expected(id) {
                wrong.push((id, got, expected(id)));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} task(s) with the wrong number of runs (id, runs, expected), first ones: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        ones
    }

    /// [`Self::assert_each`] for a ledger of up to `per_request` tasks a
    /// request, task `k` of request `id` in slot `id * per_request + k`:
    /// `runs(id, k)` says whether that task did its work once, or never.
    pub(crate) fn assert_each_task(
        &self,
        per_request: u64,
        runs: impl Fn(u64, u64) -> bool,
    ) -> u64 {
        self.assert_each(|slot| u32::from(runs(slot / per_request, slot % per_request)))
    }
}

// ---------------------------------------------------------------------------
// Predicted counts
// ---------------------------------------------------------------------------

/// What became of every task of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    /// Discarded as `no_response`.
    NoResponse,
    /// Discarded as `client_disconnected`.
    ClientDisconnected,
    /// Discarded as `server_error`.
    ServerError,
}

/// The counts that requests `0..requests` must settle at when all the tasks
/// of a request share one fate: `plan(id)` says how many tasks request `id`
/// queued, and what became of them.
fn expected_counts(requests: u64, plan: impl Fn(u64) -> (u64, Outcome)) -> Stats {
    stats(|s| {
        for id in 0..requests {
            let (n, outcome) = plan(id);
            s.submitted += n;
            match outcome {
                Outcome::Completed => s.completed += n,
                Outcome::NoResponse => s.discard_reasons.no_response += n,
                Outcome::ClientDisconnected => s.discard_reasons.client_disconnected += n,
                Outcome::ServerError => s.discard_reasons.server_error += n,
            }
            if outcome != Outcome::Completed {
                s.discarded += n;
            }
        }
    })
}

/// Asserts that a settled scenario counted what its plan says, then shuts
/// the supervisor down and asserts that the report counts the same: nothing
/// moved once the scenario had settled.
pub(crate) async fn shut_down_as_settled(
    supervisor: Supervisor,
    settled: &Stats,
    expected: &Stats,
    context: &str,
) -> ShutdownReport {
    assert_eq!(counts(settled.clone()), *expected, "{context}");
    let report = within("shutdown", supervisor.shutdown()).await;
    assert_eq!(
        counts(report.stats.clone()),
        *expected,
        "{context}: nothing moved after the scenario settled"
    );
    report
}

/// The end of a scenario whose request `id` queued `plan(id).0` tasks with
/// [`add_recording_tasks`] (`per_request` slots a request), all of which met
/// `plan(id).1`: asserts the settled counts and shuts the supervisor down
/// ([`shut_down_as_settled`]), then asserts that each completed task did its
/// work exactly once and no other task did. Returns the report and how many
/// tasks did their work.
pub(crate) async fn shut_down_and_check_outcomes(
    supervisor: Supervisor,
    settled: &Stats,
    ledger: &Ledger,
    (requests, per_request): (u64, u64),
    plan: impl Fn(u64) -> (u64, Outcome),
    context: &str,
) -> (ShutdownReport, u64) {
    let expected = expected_counts(requests, &plan);
    let report = shut_down_as_settled(supervisor, settled, &expected, context).await;
    let ran = ledger.assert_each_task(per_request, |id, k| {
        let (tasks, outcome) = plan(id);
        k < tasks && outcome == Outcome::Completed
    });
    assert_eq!(ran, expected.completed, "{context}");
    (report, ran)
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// How the test server treats its connections.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ServerConfig {
    /// Close a connection on which nothing was read or written for this
    /// long (a server's idle timeout; also covers a stalled reader, since a
    /// write that the reader does not drain makes no progress).
    pub(crate) idle_timeout: Option<Duration>,
    /// `SO_SNDBUF` for the accepted sockets (set on the listener, which
    /// they inherit), to make back-pressure from a slow reader reach the
    /// response body quickly.
    pub(crate) send_buffer: Option<u32>,
}

/// A hyper HTTP/1.1 server on `127.0.0.1:0`, each connection watched by
/// hyper-util's `GracefulShutdown`.
pub(crate) struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed_idle: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    accept_loop: Option<JoinHandle<GracefulShutdown>>,
}

/// What [`Server::shutdown`] saw.
#[derive(Debug)]
pub(crate) struct Drained {
    pub(crate) elapsed: Duration,
    /// Every connection closed within the drain bound.
    pub(crate) complete: bool,
}

impl Server {
    pub(crate) async fn start<S, B>(service: S) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Self::start_with(ServerConfig::default(), service).await
    }

    pub(crate) async fn start_with<S, B>(config: ServerConfig, service: S) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = config.send_buffer {
            socket.set_send_buffer_size(size).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_idle = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();

        let (count, idle_closes) = (Arc::clone(&accepted), Arc::clone(&closed_idle));
        let accept_loop = tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new();
            let graceful = GracefulShutdown::new();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => break,
                };
                count.fetch_add(1, Ordering::SeqCst);
                let activity = Activity::new();
                let io = Watched {
                    io: stream,
                    activity: Arc::clone(&activity),
                };
                let connection =
                    graceful.watch(http.serve_connection(
                        TokioIo::new(io),
                        TowerToHyperService::new(service.clone()),
                    ));
                let idle_closes = Arc::clone(&idle_closes);
                tokio::spawn(async move {
                    match config.idle_timeout {
                        None => drop(connection.await),
                        Some(limit) => tokio::select! {
                            _ = connection => {}
                            () = activity.idle_for(limit) => {
                                // Dropping the connection drops the response
                                // body it was writing, as a server's idle
                                // timeout does.
                                idle_closes.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
            // The listener is dropped here: new connections are refused.
            graceful
        });
        Self {
            addr,
            accepted,
            closed_idle,
            stop: Some(stop),
            accept_loop: Some(accept_loop),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Asserts that each of `clients` clients kept the one keep-alive
    /// connection it opened: the server never closed one on them.
    pub(crate) fn assert_one_connection_per_client(&self, clients: u64) {
        assert_eq!(
            self.connections() as u64,
            clients,
            "every client kept its one keep-alive connection"
        );
    }

    /// Connections the idle timeout closed.
    pub(crate) fn closed_idle(&self) -> usize {
        self.closed_idle.load(Ordering::SeqCst)
    }

    /// Shuts down a server whose clients are all done: their keep-alive
    /// connections are idle and close at once, so the drain must complete.
    pub(crate) async fn shut_down_idle(self) {
        let drained = self.shutdown(Duration::from_secs(5)).await;
        assert!(
            drained.complete,
            "idle keep-alive connections close at once"
        );
    }

    /// The SIGTERM-equivalent: stops accepting, lets every connection finish
    /// the request it is serving (hyper's graceful shutdown; idle keep-alive
    /// connections close at once), and waits for them for at most `drain`.
    pub(crate) async fn shutdown(mut self, drain: Duration) -> Drained {
        let started = Instant::now();
        let _ = self.stop.take().expect("shut down once").send(());
        let accept_loop = self.accept_loop.take().expect("shut down once");
        let graceful = within("the accept loop to stop", accept_loop)
            .await
            .expect("the accept loop does not panic");
        let complete = tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_ok();
        Drained {
            elapsed: started.elapsed(),
            complete,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(accept_loop) = &self.accept_loop {
            accept_loop.abort();
        }
    }
}

/// When a connection last made progress, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// Resolves once nothing has been read or written for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let idle = self.opened.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A socket that records when bytes last moved either way.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn progress<T>(
        &self,
        polled: Poll<io::Result<T>>,
        moved: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(value)) = &polled {
            if moved(value) {
                self.activity.touch();
            }
        }
        polled
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.progress(polled, |()| read > 0)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(polled, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(polled, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// One keep-alive HTTP/1.1 client connection (hyper's low-level client, so
/// the test decides exactly when a connection is opened and dropped) whose
/// requests carry bodies of type `B`. Dropping it closes the socket.
pub(crate) struct Client<B = Empty<Bytes>> {
    sender: SendRequest<B>,
    connection: JoinHandle<()>,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self, BoxError> {
        Self::connect_with(addr, None).await
    }

    /// Connects with `SO_RCVBUF` set to `receive_buffer`, so that a reader
    /// that stops reading holds the server back quickly.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        receive_buffer: Option<u32>,
    ) -> Result<Self, BoxError> {
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        Self::handshake(socket, addr).await
    }

    /// Sends `GET path` on this connection and returns the response head;
    /// the body is the caller's to read or drop.
    pub(crate) async fn get(&mut self, path: &str) -> Result<Response<Incoming>, BoxError> {
        let request = Request::get(path)
            .header(HOST, "localhost")
            .body(Empty::new())
            .expect("a valid request");
        self.send(request).await
    }

    /// Sends `GET path` and reads the whole response.
    pub(crate) async fn fetch(&mut self, path: &str) -> Result<(StatusCode, Bytes), BoxError> {
        let response = self.get(path).await?;
        let status = response.status();
        let body = within("the whole body", response.into_body().collect()).await?;
        Ok((status, body.to_bytes()))
    }
}

impl<B> Client<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A connection whose requests carry bodies of type `B` (the tracked
    /// flood's JSON bodies, a scenario of the `tracking` feature).
    #[cfg_attr(not(feature = "tracking"), allow(dead_code))]
    pub(crate) async fn connect_sending(addr: SocketAddr) -> Result<Self, BoxError> {
        Self::handshake(TcpSocket::new_v4()?, addr).await
    }

    async fn handshake(socket: TcpSocket, addr: SocketAddr) -> Result<Self, BoxError> {
        let stream = within("connect", socket.connect(addr)).await?;
        let (sender, connection) = within(
            "the handshake",
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await?;
        let connection = tokio::spawn(async move {
            // The connection's own error shows up in the request's result.
            let _ = connection.await;
        });
        Ok(Self { sender, connection })
    }

    /// Sends `request` on this connection and returns the response head.
    pub(crate) async fn send(
        &mut self,
        request: Request<B>,
    ) -> Result<Response<Incoming>, BoxError> {
        within("the connection to be ready", self.sender.ready()).await?;
        Ok(within("the response head", self.sender.send_request(request)).await?)
    }
}

impl<B> Drop for Client<B> {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Clients running at once, one tokio task each.
pub(crate) struct Clients<T>(JoinSet<T>);

impl<T: Send + 'static> Clients<T> {
    /// Starts `count` clients, `client(n)` being the `n`th.
    pub(crate) fn spawn<F>(count: u64, mut client: impl FnMut(u64) -> F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut running = JoinSet::new();
        for n in 0..count {
            running.spawn(client(n));
        }
        Self(running)
    }

    /// Waits for every client, each wait bounded (a hang names `what`); a
    /// client that panicked fails the test. Returns what each one returned,
    /// in the order they finished.
    pub(crate) async fn finish(mut self, what: &str) -> Vec<T> {
        let mut returned = Vec::new();
        while let Some(client) = within(what, self.0.join_next()).await {
            returned.push(client.expect("a client failed"));
        }
        returned
    }
}

/// The load most scenarios put on the server: `clients` keep-alive
/// connections to `addr`, opened at once, each sending `requests` `GET`s in
/// turn. Request `id = client * requests + i` asks for `{route}/{id}`, and
/// `check(id, status, body)` looks at its whole answer. Returns once every
/// client is done; a failed request or check fails the test.
pub(crate) async fn fetch_on_keep_alive_connections<C>(
    addr: SocketAddr,
    clients: u64,
    requests: u64,
    route: &'static str,
    check: C,
) where
    C: Fn(u64, StatusCode, Bytes) + Clone + Send + 'static,
{
    Clients::spawn(clients, |client| {
        let check = check.clone();
        async move {
            let mut connection = Client::connect(addr).await.expect("connect");
            for i in 0..requests {
                let id = client * requests + i;
                let path = format!("{route}/{id}");
                let (status, body) = connection
                    .fetch(&path)
                    .await
                    .unwrap_or_else(|error| panic!("request {id} ({path}): {error}"));
                check(id, status, body);
            }
        }
    })
    .finish("the clients")
    .await;
}

// ---------------------------------------------------------------------------
// Watching the counters
// ---------------------------------------------------------------------------

/// Samples a supervisor's counters every few milliseconds while a scenario
/// runs, keeping the largest `waiting` and `running` seen.
pub(crate) struct Peaks {
    stop: oneshot::Sender<()>,
    sampler: JoinHandle<(u64, u64)>,
}

impl Peaks {
    pub(crate) fn watch(monitor: &Monitor) -> Self {
        let monitor = monitor.clone();
        let (stop, mut stopped) = oneshot::channel();
        let sampler = tokio::spawn(async move {
            let (mut waiting, mut running) = (0, 0);
            loop {
                let stats = monitor.stats();
                waiting = waiting.max(stats.waiting);
                running = running.max(stats.running);
                tokio::select! {
                    _ = &mut stopped => return (waiting, running),
                    () = tokio::time::sleep(Duration::from_millis(2)) => {}
                }
            }
        });
        Self { stop, sampler }
    }

    /// The largest `(waiting, running)` seen.
    pub(crate) async fn stop(self) -> (u64, u64) {
        let _ = self.stop.send(());
        within("the sampler", self.sampler).await.unwrap()
    }
}

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

/// Asserts the accounting identity on a settled snapshot and formats it as
/// `accepted N = completed a + failed b + …` (only the non-zero outcomes).
pub(crate) fn accounted(stats: &Stats) -> String {
    assert_eq!(
        stats.submitted,
        stats.accounted(),
        "accepted != accounted: {stats:?}"
    );
    let reasons = &stats.discard_reasons;
    let parts = [
        ("waiting", stats.waiting),
        ("running", stats.running),
        ("completed", stats.completed),
        ("failed", stats.failed),
        ("panicked", stats.panicked),
        ("cancelled", stats.cancelled),
        ("discarded/no_response", reasons.no_response),
        ("discarded/client_disconnected", reasons.client_disconnected),
        ("discarded/server_error", reasons.server_error),
        ("refused", stats.refused),
    ];
    let outcomes: Vec<String> = parts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
    let outcomes = if outcomes.is_empty() {
        "0".to_owned()
    } else {
        outcomes.join(" + ")
    };
    format!("accepted {} = {outcomes}", stats.submitted)
}

/// Prints the scenario's summary line (seen with `--nocapture`).
pub(crate) fn summary(scenario: &str, line: &str) {
    println!("[reliability] {scenario}: {line}");
}
