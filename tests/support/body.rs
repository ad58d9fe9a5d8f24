//! Streaming response bodies the tests control: [`ChannelBody`] yields what
//! the test sends it; [`Chunks`] yields a fixed number of chunks, each only
//! when the server asks for it, then ends or hangs.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

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

/// What a [`Chunks`] body does after its last chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Ends (`None`; `is_end_stream()` is already true after the last chunk).
    End,
    /// Never sends anything again, like a long poll or an event stream whose
    /// next event never comes: only the client going away ends it.
    Hang,
}

/// How far the server got through a [`Chunks`] body.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Bytes the server has taken from the body.
    pub(crate) produced: AtomicU64,
    /// Set when the body produced its last frame: from then on
    /// `is_end_stream()` is true (or it has returned `None`).
    pub(crate) ended: AtomicBool,
}

impl Progress {
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

/// A streaming response body: `count` copies of `chunk`, each produced only
/// when the server asks for it (so a slow reader holds it back), then
/// [`Then`].
pub(crate) struct Chunks {
    chunk: Bytes,
    left: usize,
    then: Then,
    progress: Arc<Progress>,
}

impl Chunks {
    pub(crate) fn new(chunk: Bytes, count: usize, then: Then) -> (Self, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        let body = Self {
            chunk,
            left: count,
            then,
            progress: Arc::clone(&progress),
        };
        (body, progress)
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return match this.then {
                Then::End => {
                    this.progress.ended.store(true, Ordering::SeqCst);
                    Poll::Ready(None)
                }
                // Never woken: the body waits to be dropped.
                Then::Hang => Poll::Pending,
            };
        }
        this.left -= 1;
        let chunk = this.chunk.clone();
        this.progress
            .produced
            .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        if this.is_end_stream() {
            // Before the frame leaves: the layer hands the tasks off as soon
            // as it sees `is_end_stream()`, and a task may check this flag.
            this.progress.ended.store(true, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.then == Then::End
    }
}
