//! [`Lock`]: whether a tracked task may run twice at once, and the
//! [`LockKey`] a store locks on.

use std::fmt;

use super::signature::Signature;

/// The response header that tells a client which lock refused its start:
/// `x-task-lock: signature` or `x-task-lock: args-signature` (see
/// [`Lock::header_value`]).
pub const LOCK_HEADER: &str = "x-task-lock";

/// Whether a tracked task may run more than once at a time.
///
/// With a lock, starting a task while one with the same key is running does
/// not start a second one: the start learns the running task's id instead
/// (over HTTP, a `303 See Other` to it). The lock is taken in the same
/// atomic step that registers the task, and released however the task ends:
/// finished, failed, panicked or cancelled.
///
/// # Example
///
/// ```
/// use tower_background::tracking::{Lock, TaskSpec};
///
/// #[derive(serde::Serialize)]
/// struct Report {
///     month: u8,
/// }
///
/// // One monthly report at a time per month; two different months may run together.
/// let spec = TaskSpec::new("monthly_report", Lock::Args, &Report { month: 3 })?;
/// assert_eq!(spec.lock(), Lock::Args);
/// assert!(spec.args_signature().is_some());
/// # Ok::<(), tower_background::tracking::SignatureError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lock {
    /// No lock: every start starts a task.
    #[default]
    None,
    /// One task per [signature](Signature::of_task) at a time, whatever its
    /// arguments (apidaora's `lock=True`).
    Signature,
    /// One task per signature *and* [arguments](Signature::of_args) at a
    /// time: the same task with other arguments may run alongside.
    Args,
}

impl Lock {
    /// The value of the [`LOCK_HEADER`] when this lock refused a start:
    /// `"signature"` or `"args-signature"`; `None` for [`Lock::None`],
    /// which refuses nothing.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Signature => Some("signature"),
            Self::Args => Some("args-signature"),
        }
    }
}

/// What a store locks on: a task's signature (`36f992696100`) for
/// [`Lock::Signature`], or its signature and args signature joined by a
/// colon (`36f992696100:487a69db8177`) for [`Lock::Args`].
///
/// Two starts conflict when their keys are equal, so a task started with
/// `Lock::Signature` and one started with `Lock::Args` never conflict: give
/// each task name one kind of lock.
///
/// # Example
///
/// ```
/// use tower_background::tracking::{Lock, TaskSpec};
///
/// let spec = TaskSpec::new("hello_task", Lock::Signature, &())?;
/// assert_eq!(spec.lock_key().unwrap().as_str(), "36f992696100");
/// assert!(TaskSpec::new("hello_task", Lock::None, &())?.lock_key().is_none());
/// # Ok::<(), tower_background::tracking::SignatureError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockKey(String);

impl LockKey {
    /// The key of a [`Lock::Signature`] lock.
    pub fn signature(signature: Signature) -> Self {
        Self(signature.to_string())
    }

    /// The key of a [`Lock::Args`] lock.
    pub fn args(signature: Signature, args_signature: Signature) -> Self {
        Self(format!("{signature}:{args_signature}"))
    }

    /// The key as text, for a store to index.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockKey({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        assert_eq!(Lock::None.header_value(), None);
        assert_eq!(Lock::Signature.header_value(), Some("signature"));
        assert_eq!(Lock::Args.header_value(), Some("args-signature"));
        assert_eq!(Lock::default(), Lock::None);
    }

    #[test]
    fn keys_of_the_two_locks_differ() {
        let task = Signature::of_task("t");
        let args = Signature::of_args("t", &1).unwrap();
        assert_eq!(LockKey::signature(task).as_str(), task.to_string());
        assert_eq!(
            LockKey::args(task, args).to_string(),
            format!("{task}:{args}")
        );
        assert_ne!(LockKey::signature(task), LockKey::args(task, args));
    }
}
