//! [`EncodedJob`]: a job as the queue stores it, checked before it is
//! pushed.

use std::time::SystemTime;

use super::error::JobError;
use super::job::{Job, JobId};

/// The longest unique key a job may declare, in bytes.
pub const MAX_UNIQUE_KEY_LEN: usize = 255;

/// The largest job a queue stores by default, in bytes of its JSON
/// ([`JobQueue::max_job_bytes`](super::JobQueue::max_job_bytes)).
pub const DEFAULT_MAX_JOB_BYTES: usize = 1024 * 1024;

/// The most [`JobQueue::max_job_bytes`](super::JobQueue::max_job_bytes)
/// accepts: a quarter of the largest value PostgreSQL stores (1 GiB), so
/// that a job the queue accepts is one the database takes.
pub const MAX_JOB_BYTES_LIMIT: usize = 256 * 1024 * 1024;

/// A job turned into what the queue stores, before it is pushed: encoding
/// and checking happen in the caller (a handler), so a job that cannot be
/// stored is an error there and not a failure later.
#[derive(Clone, Debug)]
pub(crate) struct EncodedJob {
    pub(crate) id: JobId,
    pub(crate) queue: &'static str,
    pub(crate) args: Vec<u8>,
    pub(crate) max_attempts: u32,
    /// Not before this time (`None`: at once).
    pub(crate) run_at: Option<SystemTime>,
    /// From [`Job::unique_key`], or a periodic job's tick.
    pub(crate) unique_key: Option<String>,
    /// Whether the key stays held once the job has finished (a tick fires
    /// once, ever).
    pub(crate) key_held_for_good: bool,
}

impl EncodedJob {
    /// Encodes `job`, refusing a malformed unique key, arguments over
    /// `max_bytes`, and arguments that do not decode back into a `J` (its
    /// worker, which decodes them the same way, could never run it).
    pub(crate) fn new<J: Job>(job: &J, max_bytes: usize) -> Result<Self, JobError> {
        let unique_key = job.unique_key();
        if let Some(key) = &unique_key {
            check_unique_key(key)?;
        }
        let args = serde_json::to_vec(job).map_err(JobError::Encode)?;
        if args.len() > max_bytes {
            return Err(JobError::TooLarge {
                bytes: args.len(),
                max: max_bytes,
            });
        }
        serde_json::from_slice::<J>(&args).map_err(JobError::Undecodable)?;
        Ok(Self {
            id: JobId::new(),
            queue: J::NAME,
            args,
            max_attempts: J::MAX_ATTEMPTS.max(1),
            run_at: None,
            unique_key,
            key_held_for_good: false,
        })
    }

    pub(crate) fn at(mut self, run_at: SystemTime) -> Self {
        self.run_at = Some(run_at);
        self
    }

    /// Keyed by `key` for good, whatever the job's own key.
    pub(crate) fn once(mut self, key: String) -> Self {
        self.unique_key = Some(key);
        self.key_held_for_good = true;
        self
    }
}

/// A key is a value, never code: any text, but not empty, not longer than
/// [`MAX_UNIQUE_KEY_LEN`] bytes, and without control characters (which logs
/// would carry).
fn check_unique_key(key: &str) -> Result<(), JobError> {
    let problem = if key.is_empty() {
        "is empty"
    } else if key.len() > MAX_UNIQUE_KEY_LEN {
        "is longer than 255 bytes"
    } else if key.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    let shown: String = key
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    Err(JobError::InvalidUniqueKey(format!("{shown:?} {problem}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_refused_and_shown_cut_and_escaped() {
        assert!(check_unique_key("user:42").is_ok());
        for (key, problem) in [
            (String::new(), "is empty"),
            ("k".repeat(256), "is longer than 255 bytes"),
            ("a\nb".to_owned(), "contains a control character"),
        ] {
            let message = check_unique_key(&key).unwrap_err().to_string();
            assert!(message.contains(problem), "{message}");
            assert!(message.len() < 200, "{message}");
        }
    }
}
