//! [`TaskSpec`]: what a tracked task is (its signatures), how it locks,
//! and the idempotency key it was started with.

use serde::Serialize;

use super::error::SignatureError;
use super::idempotency::{Idempotency, IdempotencyKey};
use super::lock::{Lock, LockKey};
use super::signature::Signature;

/// What a tracked task is and how it locks: its [signature](Signature), its
/// args signature, its [`Lock`], and the client's [`IdempotencyKey`] if it
/// sent one. Built once per start, from the task's name and its arguments.
///
/// The args signature is computed only for [`Lock::Args`], the one lock
/// that needs it, and is `null` in the task's JSON otherwise, as in
/// apidaora's responses. (An idempotency key keeps its own, see
/// [`with_idempotency_key`](Self::with_idempotency_key).)
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
    name: Box<str>,
    signature: Signature,
    args_signature: Option<Signature>,
    lock: Lock,
    lock_key: Option<LockKey>,
    idempotency: Option<Idempotency>,
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
            name: name.into(),
            signature,
            args_signature,
            lock,
            lock_key,
            idempotency: None,
        })
    }

    /// The same start, named by the client's `key`: a store that already
    /// holds a record started with this key, for this task, does not
    /// start another one; it answers with that task
    /// ([`Started::Repeated`](super::Started::Repeated), over HTTP `303`)
    /// if `args` are the same, and refuses
    /// ([`TrackingError::IdempotencyKeyReused`](super::TrackingError::IdempotencyKeyReused),
    /// `422`) if they differ. Arguments are compared by their
    /// [args signature](Signature::of_args), so the same values sent as a
    /// query or as JSON are the same arguments.
    ///
    /// # Errors
    ///
    /// When `args` cannot be turned into JSON (see [`Signature::of_args`]).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_background::tracking::{IdempotencyKey, Lock, TaskSpec};
    ///
    /// let key: IdempotencyKey = "8e03978e-40d5-43e8-bc93-6894a57f9324".parse()?;
    /// let spec = TaskSpec::new("hello_task", Lock::None, &("Me",))?
    ///     .with_idempotency_key(key.clone(), &("Me",))?;
    /// let idempotency = spec.idempotency().unwrap();
    /// assert_eq!(idempotency.key(), &key);
    /// // Its own args signature, while the record's stays `null`.
    /// assert_eq!(spec.args_signature(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_idempotency_key<A>(
        mut self,
        key: IdempotencyKey,
        args: &A,
    ) -> Result<Self, SignatureError>
    where
        A: Serialize + ?Sized,
    {
        let args_signature = match self.args_signature {
            Some(args_signature) => args_signature,
            None => Signature::of_args(&self.name, args)?,
        };
        self.idempotency = Some(Idempotency::new(key, args_signature));
        Ok(self)
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

    /// The client's idempotency key, with the arguments it came with, if
    /// the start has one.
    pub fn idempotency(&self) -> Option<&Idempotency> {
        self.idempotency.as_ref()
    }
}
