//! The axum extractor for [`BackgroundTasks`] (feature `axum`).

use std::convert::Infallible;
use std::fmt;

use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, StatusCode};

use crate::handle::BackgroundTasks;

/// Extracts the request's handle from the extensions
/// [`BackgroundTaskLayer`](crate::BackgroundTaskLayer) put it in.
///
/// Without the layer the request is rejected with [`MissingBackgroundTaskLayer`]
/// (`500`); use `Option<BackgroundTasks>` for handlers that also run without
/// it.
impl<S> FromRequestParts<S> for BackgroundTasks
where
    S: Send + Sync,
{
    type Rejection = MissingBackgroundTaskLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<BackgroundTasks>()
            .cloned()
            .ok_or(MissingBackgroundTaskLayer)
    }
}

/// `Option<BackgroundTasks>`: `None` when the layer is not installed.
impl<S> OptionalFromRequestParts<S> for BackgroundTasks
where
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<BackgroundTasks>().cloned())
    }
}

/// Rejection of the [`BackgroundTasks`] extractor when the request went
/// through no [`BackgroundTaskLayer`](crate::BackgroundTaskLayer): a
/// programming error, answered with `500 Internal Server Error` and a JSON
/// body naming the layer to add.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingBackgroundTaskLayer;

impl MissingBackgroundTaskLayer {
    const MESSAGE: &'static str = "missing request extension `BackgroundTasks`: \
        add `tower_background::BackgroundTaskLayer` (`.layer(supervisor.layer())`) \
        around this route";
}

impl fmt::Display for MissingBackgroundTaskLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::MESSAGE)
    }
}

impl std::error::Error for MissingBackgroundTaskLayer {}

impl IntoResponse for MissingBackgroundTaskLayer {
    fn into_response(self) -> Response {
        tracing::error!("{}", Self::MESSAGE);
        // MESSAGE holds no character JSON needs escaped.
        let body = format!(
            r#"{{"error":"missing-background-task-layer","message":"{}"}}"#,
            Self::MESSAGE
        );
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}
