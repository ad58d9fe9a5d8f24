//! [`IdempotencyKey`]: the `Idempotency-Key` request header of the IETF
//! httpapi draft ("The Idempotency-Key HTTP Header Field"), and
//! [`Idempotency`], a key as a store keeps it.

use std::fmt;
use std::str::FromStr;

use axum::extract::OptionalFromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::error::{ParseIdempotencyKeyError, Reason, TrackingError};
use super::signature::Signature;

/// The request header a client names a start with: `idempotency-key`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The longest [`IdempotencyKey`], in characters: 255.
///
/// The draft sets no limit. 255 is the limit clients already meet
/// elsewhere (Stripe's keys, a `VARCHAR(255)`), holds a UUID (36) or a
/// SHA-256 in hex (64) with room to spare, and bounds what the keys of a
/// store can cost: at most one key per record, so `capacity × 255` bytes
/// (2.5 MB at the default capacity of 10 000).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A client's `Idempotency-Key`: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible
/// ASCII characters (`!` to `~`, so no spaces, controls or non-ASCII).
///
/// The draft makes the header a Structured Field string, `"8e03978e-…"`
/// (`\"` and `\\` escape a quote and a backslash); many clients send the
/// key bare, `8e03978e-…`. Both are read, and are the same key.
///
/// # Example
///
/// ```
/// use tower_background::tracking::IdempotencyKey;
///
/// let quoted: IdempotencyKey = r#""8e03978e-40d5-43e8-bc93-6894a57f9324""#.parse()?;
/// let bare: IdempotencyKey = "8e03978e-40d5-43e8-bc93-6894a57f9324".parse()?;
/// assert_eq!(quoted, bare);
/// assert_eq!(bare.as_str(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
///
/// assert!("".parse::<IdempotencyKey>().is_err());
/// assert!("two words".parse::<IdempotencyKey>().is_err());
/// assert!("k".repeat(256).parse::<IdempotencyKey>().is_err());
/// # Ok::<(), tower_background::tracking::ParseIdempotencyKeyError>(())
/// ```
///
/// As an extractor, `Option<IdempotencyKey>` reads the header: `None`
/// without it, and a `400` ([`TrackingError::InvalidIdempotencyKey`]) when
/// it is malformed or given twice.
///
/// ```
/// use tower_background::tracking::IdempotencyKey;
///
/// async fn handler(key: Option<IdempotencyKey>) -> String {
///     key.map_or_else(|| "no key".to_owned(), |key| key.to_string())
/// }
/// # let _ = axum::routing::post(handler).with_state::<()>(());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Box<str>);

impl IdempotencyKey {
    /// The key, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Idempotency-Key` of a request, if it has one.
    ///
    /// # Errors
    ///
    /// [`TrackingError::InvalidIdempotencyKey`] when the header is given
    /// more than once, or its value is no key.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, TrackingError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(TrackingError::InvalidIdempotencyKey(
                ParseIdempotencyKeyError(Reason::Repeated),
            ));
        }
        // `to_str` refuses bytes beyond visible ASCII, which no key has.
        let key = match value.to_str() {
            Ok(text) => text.parse(),
            Err(_) => Err(ParseIdempotencyKeyError(Reason::NotVisibleAscii)),
        };
        key.map(Some).map_err(TrackingError::InvalidIdempotencyKey)
    }
}

impl FromStr for IdempotencyKey {
    type Err = ParseIdempotencyKeyError;

    /// Parses a header value: a Structured Field string or a bare key,
    /// with optional surrounding spaces or tabs.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim_matches([' ', '\t']);
        let key = match text.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => text.to_owned(),
        };
        if key.is_empty() {
            return Err(ParseIdempotencyKeyError(Reason::Empty));
        }
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ParseIdempotencyKeyError(Reason::NotVisibleAscii));
        }
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(ParseIdempotencyKeyError(Reason::TooLong {
                max: MAX_IDEMPOTENCY_KEY_LEN,
            }));
        }
        Ok(Self(key.into_boxed_str()))
    }
}

/// The inside of a Structured Field string whose opening quote has been
/// taken off: up to the closing quote, which must end the text.
fn unquote(quoted: &str) -> Result<String, ParseIdempotencyKeyError> {
    let malformed = ParseIdempotencyKeyError(Reason::Quoting);
    let mut key = String::new();
    let mut chars = quoted.chars();
    loop {
        match chars.next().ok_or(malformed)? {
            '"' => break,
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => key.push(escaped),
                _ => return Err(malformed),
            },
            other => key.push(other),
        }
        // Checked as it grows, so a huge value is not copied whole.
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(ParseIdempotencyKeyError(Reason::TooLong {
                max: MAX_IDEMPOTENCY_KEY_LEN,
            }));
        }
    }
    if chars.next().is_some() {
        return Err(malformed);
    }
    Ok(key)
}

impl fmt::Display for IdempotencyKey {
    /// The key, unquoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", self.0)
    }
}

impl<S> OptionalFromRequestParts<S> for IdempotencyKey
where
    S: Send + Sync,
{
    type Rejection = TrackingError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

/// An [`IdempotencyKey`] as a [`TaskStore`](super::TaskStore) keeps it,
/// from [`TaskSpec::with_idempotency_key`](super::TaskSpec::with_idempotency_key):
/// the client's key and the [args signature](Signature::of_args) of the
/// arguments it came with.
///
/// A key is scoped to its task's [signature](super::TaskSpec::signature):
/// the same key sent to two tasks (two routes) is two keys. A store keeps
/// it as long as the record of the task it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    key: IdempotencyKey,
    args_signature: Signature,
}

impl Idempotency {
    pub(super) fn new(key: IdempotencyKey, args_signature: Signature) -> Self {
        Self {
            key,
            args_signature,
        }
    }

    /// The client's key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The signature of the arguments the key came with: a start with the
    /// same key and other arguments is refused.
    pub fn args_signature(&self) -> Signature {
        self.args_signature
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn parse(text: &str) -> Result<String, ParseIdempotencyKeyError> {
        text.parse::<IdempotencyKey>().map(|key| key.to_string())
    }

    #[test]
    fn quoted_and_bare_keys_are_the_same_key() {
        assert_eq!(parse("abc-123").unwrap(), "abc-123");
        assert_eq!(parse(r#""abc-123""#).unwrap(), "abc-123");
        assert_eq!(parse(" \t\"abc\" ").unwrap(), "abc");
        assert_eq!(parse(r#""a\"b\\c""#).unwrap(), r#"a"b\c"#);
        assert_eq!(parse(&"k".repeat(255)).unwrap().len(), 255);
        assert_eq!(
            parse(&format!("\"{}\"", "k".repeat(255))).unwrap().len(),
            255
        );
    }

    #[test]
    fn malformed_keys_say_why() {
        for (text, reason) in [
            ("", Reason::Empty),
            ("  ", Reason::Empty),
            (r#""""#, Reason::Empty),
            ("two words", Reason::NotVisibleAscii),
            (r#""two words""#, Reason::NotVisibleAscii),
            ("tab\there", Reason::NotVisibleAscii),
            ("é", Reason::NotVisibleAscii),
            (r#""open"#, Reason::Quoting),
            (r#""a"b"#, Reason::Quoting),
            (r#""a\nb""#, Reason::Quoting),
            (r#""a\"#, Reason::Quoting),
        ] {
            assert_eq!(
                parse(text),
                Err(ParseIdempotencyKeyError(reason)),
                "{text:?}"
            );
        }
        let long = "k".repeat(256);
        assert_eq!(
            parse(&long),
            Err(ParseIdempotencyKeyError(Reason::TooLong {
                max: MAX_IDEMPOTENCY_KEY_LEN,
            }))
        );
        let long = format!("\"{}", "k".repeat(100_000));
        assert_eq!(
            parse(&long),
            Err(ParseIdempotencyKeyError(Reason::TooLong {
                max: MAX_IDEMPOTENCY_KEY_LEN,
            }))
        );
    }

    #[test]
    fn from_headers() {
        let mut headers = HeaderMap::new();
        assert!(IdempotencyKey::from_headers(&headers).unwrap().is_none());
        headers.insert(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static("k1"));
        let key = IdempotencyKey::from_headers(&headers).unwrap().unwrap();
        assert_eq!(key.as_str(), "k1");
        headers.append(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static("k1"));
        let error = IdempotencyKey::from_headers(&headers).unwrap_err();
        assert_eq!(error.code(), "invalid-idempotency-key");
        let mut headers = HeaderMap::new();
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        headers.insert(IDEMPOTENCY_KEY_HEADER, latin1);
        let error = IdempotencyKey::from_headers(&headers).unwrap_err();
        assert_eq!(error.code(), "invalid-idempotency-key");
    }
}
