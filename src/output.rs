//! [`TaskOutput`]: what a background task may return.

use std::fmt::Display;

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
