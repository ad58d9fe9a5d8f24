//! How a tracked task's end reaches the store, however it ends: the
//! [`Recorder`] drop guard and the [`track`] wrapper around the task; and,
//! for a store with leases, the renewals that keep the task's lock while it
//! may run.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use pin_project_lite::pin_project;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use super::id::TaskId;
use super::output::IntoTaskResult;
use super::record::TaskOutcome;
use super::store::TaskStore;

/// Records a task's outcome in the store exactly once. Armed from before
/// the task is registered: if it is dropped armed — the task's future was
/// dropped (shutdown abort, a refused or discarded task, a start
/// abandoned halfway) or something unwound through it — it records
/// `cancelled`, or `failed` when the thread is panicking, which also
/// releases the task's lock.
///
/// It also owns the task's lease renewals, if any
/// ([`keep_leased`](Self::keep_leased)): they stop when the outcome is
/// recorded or the recorder is dropped.
pub(super) struct Recorder<S: TaskStore> {
    store: Arc<S>,
    task_id: TaskId,
    armed: bool,
    renewals: Option<Renewals>,
    /// Where a write from `Drop` that could not finish at once goes, for
    /// [`TaskRegistry::flush`](super::TaskRegistry::flush) to wait for.
    writes: TaskTracker,
}

impl<S: TaskStore> Recorder<S> {
    pub(super) fn new(store: Arc<S>, task_id: TaskId, writes: TaskTracker) -> Self {
        Self {
            store,
            task_id,
            armed: true,
            renewals: None,
            writes,
        }
    }

    /// For a start that registered nothing: there is nothing to record.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }

    /// For a registered task of a store with a [lease](TaskStore::lease):
    /// renews it every third of the lease, on a tokio task of its own, from
    /// now until the outcome is recorded or this recorder is dropped — so
    /// also while the task waits for its response to be sent.
    pub(super) fn keep_leased(&mut self) {
        let Some(lease) = self.store.lease() else {
            return;
        };
        let (store, task_id) = (Arc::clone(&self.store), self.task_id);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let renewing = runtime.spawn(renew_lease(store, task_id, lease));
                self.renewals = Some(Renewals(renewing.abort_handle()));
            }
            Err(_) => tracing::warn!(
                %task_id,
                "tracked task: started outside a tokio runtime; its lease is not renewed",
            ),
        }
    }

    /// Records `outcome`. Stays armed until the store has answered, so that
    /// if this future is dropped halfway the guard still records
    /// `cancelled` (the store keeps whichever outcome came first).
    async fn record(&mut self, outcome: TaskOutcome) {
        // The store is about to release the lock: a renewal from now on
        // would only find the task ended.
        self.renewals = None;
        let result = self
            .store
            .complete(self.task_id, outcome, SystemTime::now())
            .await;
        self.armed = false;
        if let Err(error) = result {
            tracing::error!(task_id = %self.task_id, %error, "tracked task: cannot record its end");
        }
    }
}

impl<S: TaskStore> Drop for Recorder<S> {
    fn drop(&mut self) {
        self.renewals = None;
        if !self.armed {
            return;
        }
        let outcome = if std::thread::panicking() {
            TaskOutcome::Failed("the task panicked".to_owned())
        } else {
            TaskOutcome::Cancelled
        };
        let store = Arc::clone(&self.store);
        let task_id = self.task_id;
        let end_time = SystemTime::now();
        let mut complete = Box::pin(async move {
            if let Err(error) = store.complete(task_id, outcome, end_time).await {
                tracing::error!(%task_id, %error, "tracked task: cannot record its end");
            }
        });
        // `Drop` cannot await. A store that answers at once (the in-memory
        // one) is done here; a slower one finishes on the runtime, if any.
        if poll_once(complete.as_mut()).is_some() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(self.writes.spawn_on(complete, &runtime)),
            Err(_) => tracing::warn!(
                %task_id,
                "tracked task: dropped outside a tokio runtime; its end is not recorded",
            ),
        }
    }
}

/// The lease renewals of one task: a tokio task, aborted when this is
/// dropped.
struct Renewals(AbortHandle);

impl Drop for Renewals {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease of the running task `task_id` every third of `lease`
/// until it is aborted, or the store says the task is no longer running.
/// A failed renewal is logged and tried again a third of the lease later:
/// the lease lapses only if the store stays unreachable for most of it.
async fn renew_lease<S: TaskStore>(store: Arc<S>, task_id: TaskId, lease: Duration) {
    let period = (lease / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(period).await;
        match store.renew(task_id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    %task_id,
                    "tracked task: no longer running in the store (ended, or given up when \
                     its lease lapsed); stopped renewing its lease",
                );
                return;
            }
            Err(error) => {
                tracing::warn!(%task_id, %error, "tracked task: cannot renew its lease; will retry");
            }
        }
    }
}

/// The future queued with `BackgroundTasks::add`: runs `task`, records its
/// outcome, and returns `Err` on failure so that the supervisor counts and
/// logs it too. A panic is caught, recorded as `failed` with its message,
/// and resumed, so the supervisor counts it as panicked.
///
/// Being an `async fn`, it holds `recorder` from the moment it is created:
/// dropped before its first poll (a refused or discarded task), it records
/// `cancelled` all the same.
pub(super) async fn track<S, F>(mut recorder: Recorder<S>, task: F) -> Result<(), String>
where
    S: TaskStore,
    F: Future + Send + 'static,
    F::Output: IntoTaskResult,
{
    // The result is converted inside the guarded future, so a panicking
    // `Serialize` impl is caught too.
    let caught = CatchUnwind {
        future: async move { task.await.into_task_result() },
    }
    .await;
    match caught {
        Ok(Ok(value)) => {
            recorder.record(TaskOutcome::Finished(value)).await;
            Ok(())
        }
        Ok(Err(message)) => {
            recorder.record(TaskOutcome::Failed(message.clone())).await;
            Err(message)
        }
        Err(payload) => {
            let message = format!("the task panicked: {}", panic_text(&*payload));
            recorder.record(TaskOutcome::Failed(message)).await;
            resume_unwind(payload)
        }
    }
}

/// The text of a panic, from the payloads `panic!` makes.
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "(a non-text panic payload)"
    }
}

pin_project! {
    /// A future that catches a panic of the future it wraps.
    ///
    /// Written here rather than taken from `futures-util`, which this
    /// crate does not depend on; it is `catch_unwind` around each poll.
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Polls `future` once, with a waker that does nothing: its output if it
/// is ready at once.
pub(super) fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Option<F::Output> {
    struct Nothing;
    impl Wake for Nothing {
        fn wake(self: Arc<Self>) {}
    }

    let waker = Waker::from(Arc::new(Nothing));
    match future.poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
