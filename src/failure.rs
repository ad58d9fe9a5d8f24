//! What the `on_failure` hook is told about a task that failed or panicked.

use std::fmt;

use http::Method;

/// A background task that returned an error or panicked.
///
/// Passed by reference to the hook set with
/// [`SupervisorBuilder::on_failure`](crate::SupervisorBuilder::on_failure),
/// after the failure has been counted and logged at `ERROR`.
#[derive(Debug)]
pub struct TaskFailure<'a> {
    pub(crate) kind: FailureKind,
    pub(crate) name: Option<&'static str>,
    pub(crate) message: &'a str,
    pub(crate) method: Option<&'a Method>,
    pub(crate) path: Option<&'a str>,
}

/// How a task failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The task returned `Err`.
    Error,
    /// The task panicked; the panic was caught and did not reach the server.
    Panic,
    /// The task ran past its [timeout](crate::Task::timeout) on its
    /// last attempt.
    Timeout,
}

impl<'a> TaskFailure<'a> {
    /// Whether the task returned an error or panicked.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The task's [`name`](crate::Task::name), if it was given one.
    pub fn name(&self) -> Option<&'static str> {
        self.name
    }

    /// The error's `Display` text, or the panic's message (`"<non-string
    /// panic payload>"` when the payload was not a string).
    pub fn message(&self) -> &'a str {
        self.message
    }

    /// The method of the request that queued the task (`None` for a task
    /// added through [`Supervisor::tasks`](crate::Supervisor::tasks)).
    pub fn method(&self) -> Option<&'a Method> {
        self.method
    }

    /// The path of the request that queued the task (`None` for a task
    /// added through [`Supervisor::tasks`](crate::Supervisor::tasks)).
    pub fn path(&self) -> Option<&'a str> {
        self.path
    }
}

impl fmt::Display for TaskFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FailureKind::Error => "failed",
            FailureKind::Panic => "panicked",
            FailureKind::Timeout => "timed out",
        };
        f.write_str("background task")?;
        if let Some(name) = self.name {
            write!(f, " {name}")?;
        }
        if let (Some(method), Some(path)) = (self.method, self.path) {
            write!(f, " of {method} {path}")?;
        }
        write!(f, " {what}: {}", self.message)
    }
}
