//! Helpers shared by the behaviour tests: a response body the test feeds by
//! hand, a task that counts its runs, and a bound on every wait.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;
use tower_background::Supervisor;

/// The longest any single step of a test may take before it counts as hung.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than [`STEP_LIMIT`]:
/// a hang is a failure, never a blocked test run.
pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP_LIMIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// What the test pushes into a [`ChannelBody`]: a chunk, or an error.
pub(crate) type Chunk = io::Result<Bytes>;

/// A streaming response body that yields what the test sends, and ends when
/// the sender is dropped. [`mpsc::Sender::closed`] tells the test when the
/// body itself has been dropped.
pub(crate) struct ChannelBody {
    chunks: mpsc::Receiver<Chunk>,
}

impl ChannelBody {
    pub(crate) fn new() -> (mpsc::Sender<Chunk>, Self) {
        let (sender, chunks) = mpsc::channel(8);
        (sender, Self { chunks })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.get_mut()
            .chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}

/// A background task that adds one to `runs` when it runs.
pub(crate) fn counting(runs: &Arc<AtomicUsize>) -> impl Future<Output = ()> + Send + 'static {
    let runs = Arc::clone(runs);
    async move {
        runs.fetch_add(1, Ordering::SeqCst);
    }
}

/// Asserts that `queued` tasks are still waiting for their response to end:
/// none has been handed off, so none has run.
///
/// Deterministic without sleeping: a handed-off task counts as running from
/// the moment it is handed off, so `wait_idle` would wait for it to finish
/// and `runs` would show it.
pub(crate) async fn assert_still_queued(supervisor: &Supervisor, runs: &AtomicUsize, queued: u64) {
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a task ran too early");
    let stats = supervisor.stats();
    assert_eq!(
        stats.waiting, queued,
        "tasks left the queue early: {stats:?}"
    );
    assert_eq!(stats.running, 0, "a task was handed off early: {stats:?}");
}
