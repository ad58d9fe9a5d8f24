//! [`TaskIdQuery`]: the `?task_id=` of a status request, as an extractor.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::Uri;
use serde::Deserialize;

use super::error::TrackingError;
use super::id::TaskId;

/// Extracts the task id from the query string (`?task_id=<id>`), rejecting
/// with [`TrackingError::MissingTaskId`] (`400`) when there is none and
/// [`TrackingError::InvalidTaskId`] (`400 {"error":"invalid-task-id"}`)
/// when it is not a hyphenated UUID, or is given twice. Other query
/// parameters are ignored.
///
/// # Example
///
/// ```
/// use axum::extract::State;
/// use tower_background::tracking::{TaskIdQuery, TaskRecord, TaskRegistry, TrackingError};
///
/// async fn status(
///     State(registry): State<TaskRegistry>,
///     TaskIdQuery(task_id): TaskIdQuery,
/// ) -> Result<TaskRecord, TrackingError> {
///     registry.get(task_id).await
/// }
/// # let _ = axum::routing::get(status).with_state::<()>(TaskRegistry::new());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskIdQuery(pub TaskId);

#[derive(Deserialize)]
struct Params {
    task_id: Option<String>,
}

impl TaskIdQuery {
    /// The task id in `uri`'s query string.
    ///
    /// # Errors
    ///
    /// As the extractor.
    pub fn from_uri(uri: &Uri) -> Result<Self, TrackingError> {
        // A malformed query (`task_id` given twice) is the one way this fails.
        let Query(params) =
            Query::<Params>::try_from_uri(uri).map_err(|_| TrackingError::InvalidTaskId)?;
        let task_id = params.task_id.ok_or(TrackingError::MissingTaskId)?;
        task_id
            .parse()
            .map(Self)
            .map_err(|_| TrackingError::InvalidTaskId)
    }
}

impl<S> FromRequestParts<S> for TaskIdQuery
where
    S: Send + Sync,
{
    type Rejection = TrackingError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_uri(&parts.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Result<TaskIdQuery, TrackingError> {
        TaskIdQuery::from_uri(&uri.parse().unwrap())
    }

    #[test]
    fn reads_the_task_id_and_ignores_the_rest() {
        let id = TaskId::new();
        assert_eq!(
            parse(&format!("/t?x=1&task_id={id}")).unwrap(),
            TaskIdQuery(id)
        );
    }

    #[test]
    fn missing_malformed_and_duplicated_ids() {
        let id = TaskId::new();
        assert!(matches!(parse("/t"), Err(TrackingError::MissingTaskId)));
        assert!(matches!(
            parse("/t?name=Me"),
            Err(TrackingError::MissingTaskId)
        ));
        assert!(matches!(
            parse("/t?task_id=42"),
            Err(TrackingError::InvalidTaskId)
        ));
        assert!(matches!(
            parse("/t?task_id="),
            Err(TrackingError::InvalidTaskId)
        ));
        let twice = format!("/t?task_id={id}&task_id={id}");
        assert!(matches!(parse(&twice), Err(TrackingError::InvalidTaskId)));
    }
}
