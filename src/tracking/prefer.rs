//! [`RespondAsync`]: the `Prefer: respond-async` request preference of
//! RFC 7240, and the `Preference-Applied` header that answers it.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::header::HeaderName;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};

/// The response header that says which preferences were applied:
/// `preference-applied` (RFC 7240, section 3).
pub const PREFERENCE_APPLIED_HEADER: &str = "preference-applied";

/// Whether a request asks, with `Prefer: respond-async` (RFC 7240, section
/// 4.1), to be answered at once with `202 Accepted` rather than after the
/// work is done. An extractor that never fails: `RespondAsync(false)`
/// without the preference.
///
/// A route that can wait for its result (a `?wait=true`, say) honours it
/// by answering with its `202` form, and says so with
/// [`RespondAsync::applied`]: `Preference-Applied: respond-async`. A
/// tracked route ([`TaskRegistry::route`](super::TaskRegistry::route))
/// always answers a start at once, and adds the header when asked.
///
/// Every `Prefer` field is read, preferences separated by commas, names
/// in any case, values and parameters (`wait=10`, `; x=y`, quoted strings)
/// skipped; a preference not understood is ignored, as the RFC asks.
///
/// # Example
///
/// A start that waits for its result unless the client prefers not to:
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
/// use tower_background::tracking::RespondAsync;
///
/// async fn submit(RespondAsync(respond_async): RespondAsync) -> Response {
///     if respond_async {
///         // Queue the work, answer with where to ask for its result.
///         return (StatusCode::ACCEPTED, [RespondAsync::applied()]).into_response();
///     }
///     // Do the work, answer with its result.
///     (StatusCode::CREATED, "the result").into_response()
/// }
/// # let _ = axum::routing::post(submit).with_state::<()>(());
///
/// use axum::http::HeaderMap;
/// let mut headers = HeaderMap::new();
/// headers.insert("prefer", "wait=10, Respond-Async".parse().unwrap());
/// assert_eq!(RespondAsync::from_headers(&headers), RespondAsync(true));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RespondAsync(pub bool);

impl RespondAsync {
    /// Whether `headers` carry `Prefer: respond-async`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let asked = headers
            .get_all("prefer")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(preferences)
            .any(|name| name.eq_ignore_ascii_case("respond-async"));
        Self(asked)
    }

    /// `Preference-Applied: respond-async`, for the response that applied
    /// it; as a `(name, value)` pair, it is a part of an axum response
    /// (`(StatusCode::ACCEPTED, [RespondAsync::applied()], body)`).
    pub fn applied() -> (HeaderName, HeaderValue) {
        (
            HeaderName::from_static(PREFERENCE_APPLIED_HEADER),
            HeaderValue::from_static("respond-async"),
        )
    }
}

/// The names of the preferences in one `Prefer` field value: each
/// comma-separated element's text up to its first `=` or `;`, trimmed.
/// Commas inside quoted strings do not separate.
fn preferences(value: &str) -> impl Iterator<Item = &str> {
    split_outside_quotes(value, ',').map(|preference| {
        let end = preference.find(['=', ';']).unwrap_or(preference.len());
        preference[..end].trim_matches([' ', '\t'])
    })
}

/// `text` split at each `separator` that is not inside a quoted string
/// (where `\` escapes the next character).
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (at, char) in text.char_indices() {
            match char {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                _ if char == separator && !quoted => {
                    rest = Some(&text[at + char.len_utf8()..]);
                    return Some(&text[..at]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

impl<S> FromRequestParts<S> for RespondAsync
where
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asks(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("prefer", value.parse().unwrap());
        }
        RespondAsync::from_headers(&headers).0
    }

    #[test]
    fn finds_respond_async_among_other_preferences() {
        assert!(asks(&["respond-async"]));
        assert!(asks(&["RESPOND-ASYNC"]));
        assert!(asks(&["wait=10, respond-async"]));
        assert!(asks(&["respond-async; x=\"a,b\""]));
        assert!(asks(&["handling=lenient", " respond-async "]));
        assert!(asks(&["respond-async=", "x"]));
    }

    #[test]
    fn ignores_what_is_not_respond_async() {
        assert!(!asks(&[]));
        assert!(!asks(&["wait=10"]));
        assert!(!asks(&["respond-asynchronously"]));
        assert!(!asks(&["x=\"respond-async\""]));
        assert!(!asks(&["x=\"a, respond-async\""]));
        assert!(!asks(&["x=\"a\\\", respond-async\""]));
        assert!(!asks(&["handling=lenient; respond-async"]));
    }

    #[test]
    fn applied_names_the_preference() {
        let (name, value) = RespondAsync::applied();
        assert_eq!(name, "preference-applied");
        assert_eq!(value, "respond-async");
    }
}
