//! Helpers shared by the behaviour tests: a handler behind the real
//! `BackgroundTaskLayer`, a log of what tasks did and when, and bounded waits
//! so that a hang fails the test instead of stalling the suite.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{self, Future};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_background::{BackgroundTasks, ResponseBody, Stats, Supervisor};

/// The longest any single wait may take before the test fails. Virtual time
/// in paused tests, where a hang therefore fails at once.
pub(crate) const BOUND: Duration = Duration::from_secs(60);

/// The response of [`app`]; its body hands the tasks off when it ends.
pub(crate) type Reply = Response<ResponseBody<Full<Bytes>>>;

/// A handler behind `BackgroundTaskLayer`, as the tests drive it.
pub(crate) type App = BoxCloneService<Request<()>, Reply, Infallible>;

pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(crate) fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A service behind `supervisor.layer()` whose handler calls `handler` with
/// the request and its `BackgroundTasks` handle, then answers `200 ok`.
pub(crate) fn app<H>(supervisor: &Supervisor, handler: H) -> App
where
    H: Fn(&Request<()>, &BackgroundTasks) + Clone + Send + 'static,
{
    let inner = service_fn(move |request: Request<()>| {
        let tasks = request
            .extensions()
            .get::<BackgroundTasks>()
            .expect("BackgroundTaskLayer puts the handle in the extensions");
        handler(&request, tasks);
        future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"ok"),
        ))))
    });
    BoxCloneService::new(supervisor.layer().layer(inner))
}

pub(crate) fn request(method: Method, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .expect("a valid request")
}

/// Sends `request` through `app`; the response body is left unread.
pub(crate) async fn send(app: &mut App, request: Request<()>) -> Reply {
    let response = within("the response", async {
        app.ready().await?.call(request).await
    })
    .await;
    match response {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Reads the response body to its end, which hands the request's tasks off,
/// and returns it.
pub(crate) async fn finish(response: Reply) -> Bytes {
    match within("the response body", response.into_body().collect()).await {
        Ok(body) => body.to_bytes(),
        Err(never) => match never {},
    }
}

/// Sends `request` and reads the whole response, as a client would.
pub(crate) async fn serve(app: &mut App, request: Request<()>) -> Bytes {
    finish(send(app, request).await).await
}

/// Calls `app` and drops the response future before it completes, as a
/// timeout above the layer would: the handler has run, no response exists.
pub(crate) async fn abandon(app: &mut App, request: Request<()>) {
    let service = match within("the service to be ready", app.ready()).await {
        Ok(service) => service,
        Err(never) => match never {},
    };
    drop(service.call(request));
}

/// Awaits `future`, failing the test if it takes longer than [`BOUND`].
pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(BOUND, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Yields to the runtime until `condition` holds; fails after a bounded
/// number of turns (time-independent, so it also bounds paused tests).
pub(crate) async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("gave up waiting for {what}");
}

/// `stats` without the per-lane figures, to compare task counts with
/// [`stats`].
pub(crate) fn counts(mut stats: Stats) -> Stats {
    stats.lanes.clear();
    stats
}

/// Asserts that `actual`'s task counts are those `set` sets (every other
/// counter zero, lanes ignored) and that they add up.
#[allow(dead_code)] // not every test file uses it
#[track_caller]
pub(crate) fn assert_counts(actual: Stats, message: &str, set: impl FnOnce(&mut Stats)) {
    assert_eq!(counts(actual.clone()), stats(set), "{message}");
    assert_eq!(
        actual.submitted,
        actual.accounted(),
        "{message}: {actual:?}"
    );
}

/// Stats with every counter at zero except those `set` sets, to compare a
/// whole snapshot at once.
pub(crate) fn stats(set: impl FnOnce(&mut Stats)) -> Stats {
    let mut stats = Stats::default();
    set(&mut stats);
    stats
}

/// What background tasks did, and when (virtual time in paused tests).
#[derive(Clone, Default)]
pub(crate) struct Events(Arc<Mutex<Vec<(&'static str, Instant)>>>);

impl Events {
    pub(crate) fn record(&self, what: &'static str) {
        self.0.lock().unwrap().push((what, Instant::now()));
    }

    /// When `what` was first recorded, if it was.
    pub(crate) fn when(&self, what: &str) -> Option<Instant> {
        let events = self.0.lock().unwrap();
        events.iter().find(|(w, _)| *w == what).map(|(_, at)| *at)
    }

    pub(crate) fn count(&self, what: &str) -> usize {
        let events = self.0.lock().unwrap();
        events.iter().filter(|(w, _)| *w == what).count()
    }

    /// A guard that records `what` when it is dropped: moved into a task,
    /// it shows that the task's future was dropped.
    pub(crate) fn on_drop(&self, what: &'static str) -> OnDrop {
        OnDrop {
            events: self.clone(),
            what,
        }
    }
}

pub(crate) struct OnDrop {
    events: Events,
    what: &'static str,
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.events.record(self.what);
    }
}

/// A gate that blocking closures wait at until the test opens it. The wait
/// gives up after [`BOUND`] of real time, so that a failing test cannot keep
/// the runtime from shutting down.
#[derive(Clone, Default)]
pub(crate) struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub(crate) fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }

    pub(crate) fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _open = changed
            .wait_timeout_while(guard, BOUND, |open| !*open)
            .unwrap();
    }
}

/// Panics with `message`. Task bodies call it rather than `panic!` directly
/// so that their output type is `()`, not the never type.
pub(crate) fn explode(message: &str) {
    panic!("{message}");
}

/// A gate that async tasks wait at until the test opens it; once open it
/// stays open, so tasks that arrive later pass at once.
#[derive(Clone)]
pub(crate) struct AsyncGate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for AsyncGate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl AsyncGate {
    pub(crate) fn open(&self) {
        self.0.send_replace(true);
    }

    pub(crate) async fn pass(&self) {
        let mut open = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// How many tasks are inside a section at once, and the most there ever
/// were: the concurrency a limit must bound, seen from inside the tasks.
#[derive(Clone, Default)]
pub(crate) struct Peak(Arc<PeakCounts>);

#[derive(Default)]
struct PeakCounts {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Peak {
    /// Enters the section until the returned guard is dropped.
    pub(crate) fn enter(&self) -> Inside {
        let inside = self.0.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.most.fetch_max(inside, Ordering::SeqCst);
        Inside(Arc::clone(&self.0))
    }

    /// How many are inside now.
    pub(crate) fn now(&self) -> usize {
        self.0.now.load(Ordering::SeqCst)
    }

    /// The most that were ever inside at once.
    pub(crate) fn most(&self) -> usize {
        self.0.most.load(Ordering::SeqCst)
    }
}

/// A task's presence in a [`Peak`] section; leaves it on drop.
pub(crate) struct Inside(Arc<PeakCounts>);

impl Drop for Inside {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Events {
    /// Everything recorded, in the order it was recorded.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let events = self.0.lock().unwrap();
        events.iter().map(|(what, _)| *what).collect()
    }

    /// Every time `what` was recorded, in order.
    pub(crate) fn times(&self, what: &str) -> Vec<Instant> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, at)| *at)
            .collect()
    }
}

impl Gate {
    /// A guard that opens the gate when dropped, so that a failing test
    /// releases the blocking threads at once instead of leaving the runtime
    /// to wait out [`BOUND`] for them when it is dropped.
    pub(crate) fn opened_on_drop(&self) -> OpenOnDrop {
        OpenOnDrop(self.clone())
    }
}

/// Opens its [`Gate`] when dropped.
pub(crate) struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}
