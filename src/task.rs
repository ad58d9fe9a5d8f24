//! One unit of background work, type-erased so a request can queue async
//! futures and blocking closures side by side.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;

/// The output of a background task: `()` or a `Result` whose error can be
/// displayed.
///
/// A task that returns `Err(e)` is counted as *failed* and `e` is logged at
/// `ERROR` (and passed to the
/// [`on_failure`](crate::SupervisorBuilder::on_failure) hook); the `Ok` value
/// is dropped. This trait is sealed: it is implemented for exactly those two
/// shapes.
pub trait TaskOutput: sealed::Sealed + Send + 'static {
    /// `Ok(())` if the task succeeded, otherwise the error's message.
    #[doc(hidden)]
    fn into_result(self) -> Result<(), String>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<T, E> TaskOutput for Result<T, E>
where
    T: Send + 'static,
    E: Display + Send + 'static,
{
    fn into_result(self) -> Result<(), String> {
        self.map(drop).map_err(|error| error.to_string())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<T, E> Sealed for Result<T, E> {}
}

/// What a task does once it is handed off.
pub(crate) enum Work {
    /// Polled on the runtime's worker threads.
    Async(Pin<Box<dyn Future<Output = Result<(), String>> + Send>>),
    /// Run on tokio's blocking pool, never on a worker thread.
    Blocking(Box<dyn FnOnce() -> Result<(), String> + Send>),
}

/// A queued task and the span that was current when it was added, so the
/// task's own span can say it `follows_from` the request that queued it.
pub(crate) struct Task {
    pub(crate) work: Work,
    pub(crate) added_in: tracing::Span,
}

impl Task {
    pub(crate) fn new(work: Work) -> Self {
        Self {
            work,
            added_in: tracing::Span::current(),
        }
    }

    pub(crate) fn from_future<F>(future: F) -> Self
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        Self::new(Work::Async(Box::pin(
            async move { future.await.into_result() },
        )))
    }

    pub(crate) fn from_blocking<F, T>(function: F) -> Self
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        Self::new(Work::Blocking(Box::new(move || function().into_result())))
    }
}
