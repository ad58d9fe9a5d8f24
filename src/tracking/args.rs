//! Reading a tracked task's arguments from a `POST`: from the query string,
//! or from a JSON body.

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::TrackingError;

/// The arguments of `request`: from its JSON body if it has one (then the
/// query string must be empty), from its query string otherwise.
///
/// Every failure is a [`TrackingError`], answered in JSON: a bad query or
/// JSON is `400 invalid-arguments` with axum's explanation as the message,
/// a non-JSON body `415`, a body over the route's `DefaultBodyLimit` `413`.
pub(super) async fn read_args<A: DeserializeOwned>(request: Request) -> Result<A, TrackingError> {
    let uri = request.uri().clone();
    let json = is_json(request.headers().get(CONTENT_TYPE));
    // Through axum's extractor, so the route's `DefaultBodyLimit` applies.
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                TrackingError::PayloadTooLarge(rejection.body_text())
            } else {
                TrackingError::InvalidArguments(rejection.body_text())
            }
        })?;
    if body.is_empty() {
        return Query::try_from_uri(&uri)
            .map(|Query(args)| args)
            .map_err(|rejection| TrackingError::InvalidArguments(rejection.body_text()));
    }
    if !json {
        return Err(TrackingError::UnsupportedMediaType);
    }
    if uri.query().is_some_and(|query| !query.is_empty()) {
        return Err(TrackingError::InvalidArguments(
            "arguments are given both in the query string and in the body; give them in one place"
                .to_owned(),
        ));
    }
    Json::from_bytes(&body)
        .map(|Json(args)| args)
        .map_err(|rejection| TrackingError::InvalidArguments(rejection.body_text()))
}

/// `application/json`, or `application/<anything>+json`, with any
/// parameters.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(content_type) = content_type.and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Hello {
        name: String,
        times: Option<u8>,
    }

    fn request(uri: &str, content_type: Option<&str>, body: &str) -> Request {
        let mut request = Request::post(uri);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        request.body(Body::from(body.to_owned())).unwrap()
    }

    async fn read(
        uri: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<Hello, TrackingError> {
        read_args(request(uri, content_type, body)).await
    }

    #[tokio::test]
    async fn from_the_query_string_with_typed_values() {
        let args = read("/h?name=Me&times=3", None, "").await.unwrap();
        assert_eq!(
            args,
            Hello {
                name: "Me".into(),
                times: Some(3)
            }
        );
    }

    #[tokio::test]
    async fn from_a_json_body() {
        let json = Some("application/json; charset=utf-8");
        let args = read("/h", json, r#"{"name":"Me"}"#).await.unwrap();
        assert_eq!(
            args,
            Hello {
                name: "Me".into(),
                times: None
            }
        );
        let vendor = Some("application/vnd.hello+json");
        assert!(read("/h", vendor, r#"{"name":"Me"}"#).await.is_ok());
    }

    #[tokio::test]
    async fn every_failure_is_a_tracking_error() {
        let json = Some("application/json");
        for (uri, content_type, body, code) in [
            ("/h", None, "", "invalid-arguments"),
            ("/h?times=300&name=x", None, "", "invalid-arguments"),
            ("/h", json, "{", "invalid-arguments"),
            ("/h", json, r#"{"times":1}"#, "invalid-arguments"),
            ("/h?name=Me", json, r#"{"name":"Me"}"#, "invalid-arguments"),
            (
                "/h",
                Some("text/plain"),
                "name=Me",
                "unsupported-media-type",
            ),
            ("/h", None, r#"{"name":"Me"}"#, "unsupported-media-type"),
        ] {
            let error = read(uri, content_type, body).await.unwrap_err();
            assert_eq!(error.code(), code, "{uri} {content_type:?} {body}");
        }
    }

    #[tokio::test]
    async fn unit_arguments_need_nothing() {
        read_args::<()>(request("/h", None, "")).await.unwrap();
    }
}
