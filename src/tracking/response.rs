//! The responses of a tracked-task route: `202`/`303` for a start
//! ([`Started::into_response_at`]) and `200` with the record for a status
//! request (`TaskRecord` is [`IntoResponse`]).

use axum::http::header::LOCATION;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::id::TaskId;
use super::lock::LOCK_HEADER;
use super::record::TaskRecord;
use super::registry::Started;

impl Started {
    /// The response to a start, pointing at the task's status URL
    /// `<status_path>?task_id=<id>`:
    ///
    /// - [`Started::Accepted`]: `202 Accepted`, the record as JSON
    ///   (`task_id`, `start_time`, `status: "running"`, `signature`,
    ///   `args_signature`) and `Location: <status_path>?task_id=<id>`;
    /// - [`Started::Locked`]: `303 See Other` with
    ///   `Location: <status_path>?task_id=<running id>` and
    ///   `x-task-lock: signature` (or `args-signature`), and no body;
    /// - [`Started::Repeated`]: `303 See Other` with
    ///   `Location: <status_path>?task_id=<id>` of the task the idempotency
    ///   key started, and no body.
    ///
    /// `status_path` is usually the request's own path (the route serves
    /// both); take it from axum's `OriginalUri` so that it is right inside
    /// nested routers. A path that cannot be a header value leaves the
    /// `Location` out rather than failing.
    ///
    /// # Example
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use tower_background::tracking::{Lock, Started, TaskId};
    ///
    /// let running = TaskId::new();
    /// let response = Started::Locked { running, lock: Lock::Signature }
    ///     .into_response_at("/hello-single");
    /// assert_eq!(response.status(), StatusCode::SEE_OTHER);
    /// assert_eq!(
    ///     response.headers()["location"],
    ///     format!("/hello-single?task_id={running}").as_str(),
    /// );
    /// assert_eq!(response.headers()["x-task-lock"], "signature");
    /// ```
    pub fn into_response_at(self, status_path: &str) -> Response {
        let task_id = self.task_id();
        let (mut response, lock) = match self {
            Self::Accepted(record) => ((StatusCode::ACCEPTED, Json(record)).into_response(), None),
            Self::Locked { lock, .. } => {
                (StatusCode::SEE_OTHER.into_response(), lock.header_value())
            }
            Self::Repeated(_) => (StatusCode::SEE_OTHER.into_response(), None),
        };
        let headers = response.headers_mut();
        if let Some(location) = location(status_path, task_id) {
            headers.insert(LOCATION, location);
        }
        if let Some(lock) = lock {
            headers.insert(
                HeaderName::from_static(LOCK_HEADER),
                HeaderValue::from_static(lock),
            );
        }
        response
    }
}

fn location(status_path: &str, task_id: TaskId) -> Option<HeaderValue> {
    let location = format!("{status_path}?task_id={task_id}");
    match HeaderValue::try_from(location) {
        Ok(location) => Some(location),
        Err(_) => {
            tracing::warn!(
                status_path,
                "tracked task: the status path cannot be a `Location`"
            );
            None
        }
    }
}

impl IntoResponse for TaskRecord {
    /// `200 OK` with the record as JSON (see [`TaskRecord`]).
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::tracking::{Lock, TaskSpec};

    #[test]
    fn accepted_is_202_with_the_record_and_location() {
        let spec = TaskSpec::new("t", Lock::None, &()).unwrap();
        let record = TaskRecord::running(TaskId::new(), &spec, SystemTime::now());
        let id = record.task_id;
        let response = Started::Accepted(record).into_response_at("/a/b");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(
            response.headers()[LOCATION],
            format!("/a/b?task_id={id}").as_str()
        );
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(response.headers().get(LOCK_HEADER).is_none());
    }

    #[test]
    fn locked_by_arguments_says_so() {
        let response = Started::Locked {
            running: TaskId::new(),
            lock: Lock::Args,
        }
        .into_response_at("/r");
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[LOCK_HEADER], "args-signature");
    }

    #[test]
    fn repeated_is_303_to_the_first_task_without_a_lock_header() {
        let first = TaskId::new();
        let response = Started::Repeated(first).into_response_at("/r");
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            response.headers()[LOCATION],
            format!("/r?task_id={first}").as_str()
        );
        assert!(response.headers().get(LOCK_HEADER).is_none());
    }

    #[test]
    fn a_path_that_is_no_header_value_leaves_location_out() {
        let response = Started::Locked {
            running: TaskId::new(),
            lock: Lock::Signature,
        }
        .into_response_at("/bad\npath");
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert!(response.headers().get(LOCATION).is_none());
    }
}
