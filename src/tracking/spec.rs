//! [`TaskSpec`]: what a tracked task is (its signatures) and how it locks.

use serde::Serialize;

use super::error::SignatureError;
use super::lock::{Lock, LockKey};
use super::signature::Signature;

/// What a tracked task is and how it locks: its [signature](Signature), its
/// args signature, and its [`Lock`]. Built once per start, from the task's
/// name and its arguments.
///
/// The args signature is computed only for [`Lock::Args`], the one lock
/// that needs it, and is `null` in the task's JSON otherwise, as in
/// apidaora's responses.
///
/// # Example
///
/// ```
/// use tower_background::tracking::{Lock, TaskSpec};
///
/// #[derive(serde::Serialize)]
/// struct Hello {
///     name: String,
/// }
/// let args = Hello { name: "Me".into() };
///
/// let spec = TaskSpec::new("hello_task", Lock::Signature, &args)?;
/// assert_eq!(spec.signature().to_string(), "36f992696100");
/// assert_eq!(spec.args_signature(), None);
///
/// let spec = TaskSpec::new("hello_task", Lock::Args, &args)?;
/// assert_eq!(spec.args_signature().unwrap().to_string(), "487a69db8177");
/// # Ok::<(), tower_background::tracking::SignatureError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    signature: Signature,
    args_signature: Option<Signature>,
    lock: Lock,
    lock_key: Option<LockKey>,
}

impl TaskSpec {
    /// The task called `name`, run with `args`, locked by `lock`.
    ///
    /// # Errors
    ///
    /// With [`Lock::Args`] only, when `args` cannot be turned into JSON (see
    /// [`Signature::of_args`]); other locks do not look at `args`.
    pub fn new<A>(name: &str, lock: Lock, args: &A) -> Result<Self, SignatureError>
    where
        A: Serialize + ?Sized,
    {
        let signature = Signature::of_task(name);
        let (args_signature, lock_key) = match lock {
            Lock::None => (None, None),
            Lock::Signature => (None, Some(LockKey::signature(signature))),
            Lock::Args => {
                let args = Signature::of_args(name, args)?;
                (Some(args), Some(LockKey::args(signature, args)))
            }
        };
        Ok(Self {
            signature,
            args_signature,
            lock,
            lock_key,
        })
    }

    /// Which task.
    pub fn signature(&self) -> Signature {
        self.signature
    }

    /// Which arguments, for [`Lock::Args`]; `None` otherwise.
    pub fn args_signature(&self) -> Option<Signature> {
        self.args_signature
    }

    /// How the task locks.
    pub fn lock(&self) -> Lock {
        self.lock
    }

    /// What a store locks on, if the task locks.
    pub fn lock_key(&self) -> Option<&LockKey> {
        self.lock_key.as_ref()
    }
}
