//! What the tests' background tasks do: count their runs, record what they
//! did and when, wait at gates the test opens, count how many are inside a
//! section at once, and panic on purpose.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::time::Instant;

use super::wait::BOUND;

/// A background task that adds one to `runs` when it runs.
pub(crate) fn counting(runs: &Arc<AtomicUsize>) -> impl Future<Output = ()> + Send + 'static {
    let runs = Arc::clone(runs);
    async move {
        runs.fetch_add(1, Ordering::SeqCst);
    }
}

/// Panics with `message`. Task bodies call it rather than `panic!` directly
/// so that their output type is `()`, not the never type.
pub(crate) fn explode(message: &str) {
    panic!("{message}");
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

    /// A guard that records `what` when it is dropped: moved into a task,
    /// it shows that the task's future was dropped.
    pub(crate) fn on_drop(&self, what: &'static str) -> OnDrop {
        OnDrop {
            events: self.clone(),
            what,
        }
    }
}

/// Records its event when dropped; see [`Events::on_drop`].
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
