//! [`TaskRecord`]: what is known about a tracked task, as the status route
//! shows it; its [`TaskStatus`], and the [`TaskOutcome`] that ends it.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::id::TaskId;
use super::signature::Signature;
use super::spec::TaskSpec;
use super::timestamp;

/// Where a tracked task is.
///
/// Serialized in lowercase: `"running"`, `"finished"`, `"failed"`,
/// `"cancelled"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Registered and not yet ended: waiting for its response to be sent,
    /// or running.
    Running,
    /// Returned a value, kept in [`TaskRecord::result`].
    Finished,
    /// Returned an error or panicked; the message is in
    /// [`TaskRecord::error`].
    Failed,
    /// Dropped before it ended: aborted when shutdown's grace period ran
    /// out, refused because shutdown had begun, or discarded with its
    /// request's tasks (no response was sent).
    Cancelled,
}

impl TaskStatus {
    /// `true` for every status but [`TaskStatus::Running`].
    pub fn is_done(self) -> bool {
        self != Self::Running
    }
}

/// How a tracked task ended, as recorded by
/// [`TaskStore::complete`](super::TaskStore::complete).
#[derive(Clone, Debug, PartialEq)]
pub enum TaskOutcome {
    /// The task returned this value (its JSON form).
    Finished(Value),
    /// The task returned an error, or panicked, with this message.
    Failed(String),
    /// The task was dropped before it ended.
    Cancelled,
}

/// The error of a failed or cancelled task, shown as `{"message": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskError {
    /// The error's `Display` text, or the panic's message.
    pub message: String,
}

impl TaskError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What is known about a tracked task: its ids, its times, its status, and
/// how it ended.
///
/// Its JSON is the body of the status route (field names as in apidaora):
///
/// ```json
/// {"task_id":"4ee301eb-6487-48a0-b6ed-e5f576accfc2","start_time":"2026-05-01T09:30:00.123Z",
///  "status":"finished","signature":"36f992696100","args_signature":null,
///  "end_time":"2026-05-01T09:30:01.125Z","result":"Hello Me!"}
/// ```
///
/// `args_signature` is always there (`null` unless the task locks per
/// arguments); `end_time` appears once the task has ended, `result` once it
/// has finished (a task that returns nothing has `"result":null`), and
/// `error` (`{"message":"…"}`) once it has failed or been cancelled. Times
/// are RFC 3339 UTC, to the millisecond (always three digits), from the
/// system clock.
///
/// Fields are public to read; a record is made with
/// [`running`](TaskRecord::running) and ended with
/// [`complete`](TaskRecord::complete) (or deserialized, by a store that
/// keeps records as JSON).
///
/// # Example
///
/// ```
/// use std::time::SystemTime;
/// use tower_background::tracking::{Lock, TaskId, TaskOutcome, TaskRecord, TaskSpec, TaskStatus};
///
/// let spec = TaskSpec::new("hello_task", Lock::Signature, &())?;
/// let mut record = TaskRecord::running(TaskId::new(), &spec, SystemTime::now());
/// assert_eq!(record.status, TaskStatus::Running);
///
/// assert!(record.complete(TaskOutcome::Finished("Hello Me!".into()), SystemTime::now()));
/// assert_eq!(record.status, TaskStatus::Finished);
/// assert_eq!(record.result, Some("Hello Me!".into()));
///
/// // The first outcome stays.
/// assert!(!record.complete(TaskOutcome::Cancelled, SystemTime::now()));
/// assert_eq!(record.status, TaskStatus::Finished);
/// # Ok::<(), tower_background::tracking::SignatureError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task's id.
    pub task_id: TaskId,
    /// When the task was registered (before its response was sent).
    #[serde(with = "timestamp")]
    pub start_time: SystemTime,
    /// Where the task is.
    pub status: TaskStatus,
    /// Which task.
    pub signature: Signature,
    /// Which arguments, when the task locks per arguments.
    #[serde(default)]
    pub args_signature: Option<Signature>,
    /// When the task ended.
    #[serde(
        default,
        with = "timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_time: Option<SystemTime>,
    /// What a finished task returned.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub result: Option<Value>,
    /// Why a task failed, or that it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
}

/// The message of a cancelled task's error.
pub(super) const CANCELLED: &str = "the task was stopped before it ended: aborted at shutdown, \
    refused because shutdown had begun, or discarded with its request";

impl TaskRecord {
    /// A record of the task `spec` describes, registered at `start_time`
    /// and running.
    pub fn running(task_id: TaskId, spec: &TaskSpec, start_time: SystemTime) -> Self {
        Self {
            task_id,
            start_time,
            status: TaskStatus::Running,
            signature: spec.signature(),
            args_signature: spec.args_signature(),
            end_time: None,
            result: None,
            error: None,
        }
    }

    /// Ends a running record with `outcome` at `end_time`; returns `false`
    /// and changes nothing if the record had already ended (the first
    /// outcome stays).
    pub fn complete(&mut self, outcome: TaskOutcome, end_time: SystemTime) -> bool {
        if self.status.is_done() {
            return false;
        }
        self.end_time = Some(end_time);
        match outcome {
            TaskOutcome::Finished(value) => {
                self.status = TaskStatus::Finished;
                self.result = Some(value);
            }
            TaskOutcome::Failed(message) => {
                self.status = TaskStatus::Failed;
                self.error = Some(TaskError::new(message));
            }
            TaskOutcome::Cancelled => {
                self.status = TaskStatus::Cancelled;
                self.error = Some(TaskError::new(CANCELLED));
            }
        }
        true
    }
}

/// Deserializes a present field as `Some`, even when it is `null` (a task
/// that returned nothing), unlike `Option`'s own impl.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::tracking::Lock;

    fn record() -> TaskRecord {
        let spec = TaskSpec::new("hello_task", Lock::Signature, &()).unwrap();
        let id = "4ee301eb-6487-48a0-b6ed-e5f576accfc2".parse().unwrap();
        TaskRecord::running(id, &spec, UNIX_EPOCH + Duration::from_secs(1))
    }

    #[test]
    fn a_running_record_has_the_fields_of_the_reference() {
        assert_eq!(
            serde_json::to_string(&record()).unwrap(),
            r#"{"task_id":"4ee301eb-6487-48a0-b6ed-e5f576accfc2","start_time":"1970-01-01T00:00:01.000Z","status":"running","signature":"36f992696100","args_signature":null}"#
        );
    }

    #[test]
    fn each_outcome_shows_its_fields_and_round_trips() {
        let end = UNIX_EPOCH + Duration::from_secs(2);
        let cases = [
            (
                TaskOutcome::Finished(json!("Hello Me!")),
                json!({"result": "Hello Me!"}),
            ),
            (TaskOutcome::Finished(Value::Null), json!({"result": null})),
            (
                TaskOutcome::Failed("boom".into()),
                json!({"error": {"message": "boom"}}),
            ),
            (
                TaskOutcome::Cancelled,
                json!({"error": {"message": CANCELLED}}),
            ),
        ];
        for (outcome, extra) in cases {
            let mut record = record();
            assert!(record.complete(outcome.clone(), end));
            let mut expected = json!({
                "task_id": "4ee301eb-6487-48a0-b6ed-e5f576accfc2",
                "start_time": "1970-01-01T00:00:01.000Z",
                "end_time": "1970-01-01T00:00:02.000Z",
                "signature": "36f992696100",
                "args_signature": null,
            });
            expected["status"] = json!(record.status);
            for (key, value) in extra.as_object().unwrap() {
                expected[key] = value.clone();
            }
            let shown = serde_json::to_value(&record).unwrap();
            assert_eq!(shown, expected, "{outcome:?}");
            let back: TaskRecord = serde_json::from_value(shown).unwrap();
            assert_eq!(back, record, "{outcome:?}");
        }
    }

    #[test]
    fn the_first_outcome_stays() {
        let mut record = record();
        assert!(record.complete(TaskOutcome::Failed("first".into()), UNIX_EPOCH));
        assert!(!record.complete(TaskOutcome::Finished(json!(1)), UNIX_EPOCH));
        assert_eq!(record.status, TaskStatus::Failed);
        assert_eq!(record.error, Some(TaskError::new("first")));
        assert_eq!(record.result, None);
    }
}
