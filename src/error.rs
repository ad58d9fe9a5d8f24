//! [`AddError`]: why a `try_add` did not accept a task.

use std::fmt;
use std::time::Duration;

/// Why [`BackgroundTasks::try_add`](crate::BackgroundTasks::try_add) (or
/// another `try_` method) did not accept a task.
///
/// The task was not queued and is not counted in
/// [`Stats::submitted`](crate::Stats::submitted) (but for a task added after
/// its response that a shutdown refused between its admission and its
/// start: that one is counted as submitted and refused): the caller still
/// holds the decision, typically to answer `503 Service Unavailable` with a
/// `Retry-After` header (with the `axum` feature, `AddError` is itself such a
/// response).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddError {
    /// As many tasks as the queue holds
    /// ([`SupervisorBuilder::max_queued`](crate::SupervisorBuilder::max_queued))
    /// are already waiting, for their response or for a slot.
    QueueFull {
        /// The queue's size.
        limit: usize,
    },
    /// The supervisor is shutting down (or was dropped).
    ShuttingDown,
    /// No lane of this name was configured with
    /// [`SupervisorBuilder::lane`](crate::SupervisorBuilder::lane).
    UnknownLane(String),
    /// The request's tasks were discarded (no response, or a policy), and so
    /// is anything added to it later.
    Discarded,
}

impl AddError {
    /// How long a client could wait before trying again, for a `Retry-After`
    /// header: 1 s when the queue is full, 5 s when shutting down (another
    /// instance may take the retry); `None` for the errors a retry won't fix.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QueueFull { .. } => Some(Duration::from_secs(1)),
            Self::ShuttingDown => Some(Duration::from_secs(5)),
            Self::UnknownLane(_) | Self::Discarded => None,
        }
    }

    /// A short machine-readable code, as used in the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::QueueFull { .. } => "background-queue-full",
            Self::ShuttingDown => "shutting-down",
            Self::UnknownLane(_) => "unknown-lane",
            Self::Discarded => "tasks-discarded",
        }
    }
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull { limit } => {
                write!(
                    f,
                    "the background task queue is full ({limit} tasks waiting)"
                )
            }
            Self::ShuttingDown => f.write_str("the server is shutting down"),
            Self::UnknownLane(name) => write!(f, "no background lane is named {name:?}"),
            Self::Discarded => f.write_str("this request's background tasks were discarded"),
        }
    }
}

impl std::error::Error for AddError {}

impl AddError {
    /// The status a client is answered with for this error: `503 Service
    /// Unavailable` when trying again later may help (it has a
    /// [`retry_after`](Self::retry_after)), `500` otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self.retry_after() {
            Some(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            None => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error as the crate answers it over HTTP: [`status`](Self::status),
    /// `Content-Type: application/json`, `Retry-After` when there is one, and
    /// the body `{"error": code, "message": message}`.
    pub(crate) fn to_http(&self) -> http::Response<bytes::Bytes> {
        error_response(self.code(), &self.to_string(), self.retry_after())
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for AddError {
    fn into_response(self) -> axum_core::response::Response {
        self.to_http().map(axum_core::body::Body::from)
    }
}

/// The crate's error responses: `{"error": code, "message": message}`,
/// `503` with `Retry-After` when trying again later may help, `500`
/// otherwise.
pub(crate) fn error_response(
    code: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> http::Response<bytes::Bytes> {
    error_response_as(None, code, message, retry_after)
}

/// [`error_response`] with `status` in place of the one `retry_after`
/// implies, where one is given.
pub(crate) fn error_response_as(
    status: Option<http::StatusCode>,
    code: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> http::Response<bytes::Bytes> {
    use http::{header, HeaderValue, StatusCode};

    let status = status.unwrap_or(match retry_after {
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        None => StatusCode::INTERNAL_SERVER_ERROR,
    });
    let body = format!(
        r#"{{"error":{},"message":{}}}"#,
        json_string(code),
        json_string(message)
    );
    let mut response = http::Response::new(bytes::Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(after) = retry_after {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    response
}

/// `text` as a JSON string literal (the crate's core has no JSON encoder).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
