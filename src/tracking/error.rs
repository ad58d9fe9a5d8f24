//! The errors of tracking: [`TrackingError`] (each one a JSON response),
//! [`StoreError`], [`SignatureError`] and [`ParseIdempotencyKeyError`].

use std::error::Error;
use std::fmt;
use std::time::Duration;

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::AddError;

/// Why a tracked task could not be started or reported. Each is answered
/// with a JSON body `{"error": "<code>"}` (most with a `"message"` too),
/// never axum's plain-text rejections:
///
/// | variant | status | `error` |
/// |---|---|---|
/// | [`MissingTaskId`](Self::MissingTaskId) | `400` | `missing-task-id` |
/// | [`InvalidTaskId`](Self::InvalidTaskId) | `400` | `invalid-task-id` |
/// | [`TaskNotFound`](Self::TaskNotFound) | `404` | `task-not-found` |
/// | [`MethodNotAllowed`](Self::MethodNotAllowed) | `405` + `Allow` | `method-not-allowed` |
/// | [`InvalidArguments`](Self::InvalidArguments) | `400` | `invalid-arguments` |
/// | [`UnsupportedMediaType`](Self::UnsupportedMediaType) | `415` | `unsupported-media-type` |
/// | [`PayloadTooLarge`](Self::PayloadTooLarge) | `413` | `payload-too-large` |
/// | [`InvalidIdempotencyKey`](Self::InvalidIdempotencyKey) | `400` | `invalid-idempotency-key` |
/// | [`IdempotencyKeyReused`](Self::IdempotencyKeyReused) | `422` | `idempotency-key-reused` |
/// | [`Full`](Self::Full) | `503` + `Retry-After` | `registry-full` |
/// | [`Signature`](Self::Signature) | `500` | `unsignable-arguments` |
/// | [`Store`](Self::Store) | `500` | `task-store-error` |
///
/// # Example
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::IntoResponse;
/// use tower_background::tracking::TrackingError;
///
/// let response = TrackingError::TaskNotFound.into_response();
/// assert_eq!(response.status(), StatusCode::NOT_FOUND);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum TrackingError {
    /// A status request without `?task_id=`.
    MissingTaskId,
    /// A `task_id` that is not a hyphenated UUID.
    InvalidTaskId,
    /// No task has this id: it never existed, or it ended more than the
    /// retention time ago, or was evicted to make room (or, on a task's own
    /// route, it is another task's id).
    TaskNotFound,
    /// A request to a tracked route with a method other than `POST` (start)
    /// and `GET` (report); the method is given. The route's answer carries
    /// an `Allow` header.
    MethodNotAllowed(String),
    /// The task's arguments could not be read from the query string or the
    /// JSON body; the message says why.
    InvalidArguments(String),
    /// A request body that is not JSON (`Content-Type: application/json`).
    UnsupportedMediaType,
    /// A body larger than the route's limit (axum's `DefaultBodyLimit`, 2 MB
    /// unless set); the message says so.
    PayloadTooLarge(String),
    /// An `Idempotency-Key` header that is no
    /// [key](super::IdempotencyKey), or is given more than once; the
    /// message says why.
    InvalidIdempotencyKey(ParseIdempotencyKeyError),
    /// The `Idempotency-Key` already started a task of this route with
    /// other arguments (the draft's `422 Unprocessable Content`): a client
    /// reusing a key for a new request by mistake. Nothing was started.
    IdempotencyKeyReused,
    /// The store is full of running tasks; a client should retry after
    /// `retry_after`.
    Full {
        /// Sent as `Retry-After`, in whole seconds (rounded up, at least 1).
        retry_after: Duration,
    },
    /// The arguments cannot be turned into JSON to sign them: a bug in the
    /// argument type, not the client's fault.
    Signature(SignatureError),
    /// The store failed.
    Store(StoreError),
    /// The supervisor did not accept the task: it is shutting down, or its
    /// queue is full. The record is marked `cancelled` and its lock
    /// released; a `503` with `Retry-After` tells the client to try again
    /// (elsewhere, when shutting down).
    NotAccepted(AddError),
}

impl TrackingError {
    /// The response's status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingTaskId
            | Self::InvalidTaskId
            | Self::InvalidArguments(_)
            | Self::InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TaskNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotAccepted(error) if error.retry_after().is_some() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Signature(_) | Self::Store(_) | Self::NotAccepted(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The `error` code in the response body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingTaskId => "missing-task-id",
            Self::InvalidTaskId => "invalid-task-id",
            Self::TaskNotFound => "task-not-found",
            Self::MethodNotAllowed(_) => "method-not-allowed",
            Self::InvalidArguments(_) => "invalid-arguments",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::InvalidIdempotencyKey(_) => "invalid-idempotency-key",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::Full { .. } => "registry-full",
            Self::Signature(_) => "unsignable-arguments",
            Self::Store(_) => "task-store-error",
            Self::NotAccepted(error) => error.code(),
        }
    }
}

impl fmt::Display for TrackingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingTaskId => {
                f.write_str("the status request has no `task_id` query parameter")
            }
            Self::InvalidTaskId => f.write_str("the task id is not a hyphenated UUID"),
            Self::TaskNotFound => f.write_str("no task has this id (or its record has expired)"),
            Self::MethodNotAllowed(method) => write!(
                f,
                "{method} is not served here: POST starts the task, GET ?task_id= reports it"
            ),
            Self::InvalidArguments(message) => write!(f, "invalid task arguments: {message}"),
            Self::UnsupportedMediaType => f.write_str(
                "send the task's arguments in the query string, or as JSON with \
                 `Content-Type: application/json`",
            ),
            Self::PayloadTooLarge(message) => f.write_str(message),
            Self::InvalidIdempotencyKey(error) => fmt::Display::fmt(error, f),
            Self::IdempotencyKeyReused => f.write_str(
                "this Idempotency-Key already started a task with other arguments; \
                 send a new key with new arguments",
            ),
            Self::Full { .. } => f.write_str(
                "too many tasks are running to start another: every tracked task is still running",
            ),
            Self::Signature(error) => fmt::Display::fmt(error, f),
            Self::Store(error) => write!(f, "the task store failed: {error}"),
            Self::NotAccepted(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl Error for TrackingError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Signature(error) => Some(error),
            Self::Store(error) => Some(error),
            Self::NotAccepted(error) => Some(error),
            Self::InvalidIdempotencyKey(error) => Some(error),
            _ => None,
        }
    }
}

impl From<StoreError> for TrackingError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<SignatureError> for TrackingError {
    fn from(error: SignatureError) -> Self {
        Self::Signature(error)
    }
}

impl IntoResponse for TrackingError {
    /// The status and JSON body in the table above. The two id errors have
    /// the bare `{"error": …}` body of the issue's contract; the others add
    /// a `"message"`. Server-side errors are logged at `ERROR`, and their
    /// body does not repeat the store's error.
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let body = match &self {
            Self::InvalidTaskId | Self::TaskNotFound => json!({ "error": code }),
            Self::Store(_) => {
                tracing::error!(error = %self, "tracked task: store failed");
                json!({ "error": code, "message": "the task store failed; see the server's log" })
            }
            Self::Signature(_) => {
                tracing::error!(error = %self, "tracked task: arguments cannot be signed");
                json!({ "error": code, "message": self.to_string() })
            }
            _ => json!({ "error": code, "message": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        let retry_after = match &self {
            Self::Full { retry_after } => Some(*retry_after),
            Self::NotAccepted(error) => error.retry_after(),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            response.headers_mut().insert(
                RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after)),
            );
        }
        response
    }
}

/// Whole seconds, rounded up, at least 1: `Retry-After: 0` would invite a
/// busy loop.
fn retry_after_secs(retry_after: Duration) -> u64 {
    let secs = retry_after.as_secs();
    let secs = if retry_after.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    };
    secs.max(1)
}

/// A [`TaskStore`](super::TaskStore) failed: the database is unreachable,
/// a query failed, … The in-memory store never fails.
///
/// # Example
///
/// ```
/// use tower_background::tracking::StoreError;
///
/// let error = StoreError::new("connection refused");
/// assert_eq!(error.to_string(), "connection refused");
/// ```
#[derive(Debug)]
pub struct StoreError(Box<dyn Error + Send + Sync>);

impl StoreError {
    /// Wraps the store's own error.
    pub fn new(error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// A task's arguments could not be turned into JSON to compute their
/// [args signature](super::Signature::of_args).
///
/// # Example
///
/// ```
/// use std::collections::HashMap;
/// use tower_background::tracking::Signature;
///
/// // JSON object keys must be strings (or numbers).
/// let args: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
/// assert!(Signature::of_args("t", &args).is_err());
/// ```
#[derive(Debug)]
pub struct SignatureError(serde_json::Error);

impl SignatureError {
    pub(super) fn new(error: serde_json::Error) -> Self {
        Self(error)
    }
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the task's arguments cannot be turned into JSON: {}",
            self.0
        )
    }
}

impl Error for SignatureError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// Why a value is no [`IdempotencyKey`](super::IdempotencyKey); its `Display` says which rule it
/// breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseIdempotencyKeyError(pub(super) Reason);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reason {
    Empty,
    TooLong { max: usize },
    NotVisibleAscii,
    Quoting,
    Repeated,
}

impl fmt::Display for ParseIdempotencyKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Reason::Empty => f.write_str("the Idempotency-Key is empty"),
            Reason::TooLong { max } => {
                write!(f, "the Idempotency-Key is longer than {max} characters")
            }
            Reason::NotVisibleAscii => f.write_str(
                "an Idempotency-Key is visible ASCII characters only (`!` to `~`: no spaces, \
                 controls or non-ASCII)",
            ),
            Reason::Quoting => f.write_str(
                "the Idempotency-Key is not a well-formed string: a closing `\"` must end it, \
                 and only `\\\"` and `\\\\` are escapes",
            ),
            Reason::Repeated => f.write_str("the Idempotency-Key header is given more than once"),
        }
    }
}

impl std::error::Error for ParseIdempotencyKeyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(5)), 5);
        assert_eq!(retry_after_secs(Duration::from_millis(5001)), 6);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn statuses_and_codes() {
        let full = TrackingError::Full {
            retry_after: Duration::from_secs(2),
        };
        let response = full.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(
            TrackingError::InvalidTaskId.status(),
            StatusCode::BAD_REQUEST
        );
        let reused = TrackingError::IdempotencyKeyReused.into_response();
        assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reused.headers()["content-type"], "application/json");
        assert_eq!(
            TrackingError::Store(StoreError::new("down")).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
