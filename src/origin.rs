//! Which request a task came from: the request's own [`RequestLine`],
//! and the [`Origin`] label a handed-off task keeps of it. Tasks added
//! through [`Supervisor::tasks`](crate::Supervisor::tasks) come from no
//! request: both are then empty, and log lines leave out the request's
//! fields.

use std::fmt;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Method, Uri};

/// A request's method and path, as its handle keeps them: what log lines
/// about the request name, and what its tasks' [`Origin`] is made from.
#[derive(Debug)]
pub(crate) struct RequestLine {
    /// `None` for the handle of work no request started.
    method: Option<Method>,
    /// Only the path and query of the request's URI: a scheme and authority
    /// would be cloned for nothing.
    path_and_query: Option<PathAndQuery>,
}

impl RequestLine {
    pub(crate) fn new(method: Method, uri: &Uri) -> Self {
        Self {
            method: Some(method),
            path_and_query: uri.path_and_query().cloned(),
        }
    }

    /// The line of work no request started.
    pub(crate) fn none() -> Self {
        Self {
            method: None,
            path_and_query: None,
        }
    }

    pub(crate) fn method(&self) -> Option<&str> {
        self.method.as_ref().map(Method::as_str)
    }

    pub(crate) fn path(&self) -> Option<&str> {
        self.method.as_ref()?;
        Some(self.path_and_query.as_ref().map_or("", PathAndQuery::path))
    }

    /// What the request's handed-off tasks keep of it. Made at each
    /// hand-off rather than kept: a request hands off once, and again only
    /// for a task added through a kept handle afterwards, which is rare; a
    /// cache would cost every request with tasks (a `OnceLock`'s check and
    /// its space) to save a label now and then.
    pub(crate) fn origin(&self) -> Origin {
        match (&self.method, self.path()) {
            (Some(method), Some(path)) => Origin::new(method, path),
            _ => Origin(None),
        }
    }
}

/// `"METHOD /path"` of the request that queued a task, shared by all of that
/// request's handed-off tasks: what their log lines and failure reports
/// name. `None` for work no request started.
///
/// A handed-off task holds this rather than the request's own state (its
/// method, whole `Uri` and queue), so that a task waiting for a slot costs
/// little and does not keep the request's state alive, nor hyper's read
/// buffer, which a request's `Uri` points into.
#[derive(Clone)]
pub(crate) struct Origin(Option<Arc<str>>);

/// Labels up to this many bytes are put together on the stack.
const ON_STACK: usize = 256;

impl Origin {
    pub(crate) fn new(method: &Method, path: &str) -> Self {
        let method = method.as_str();
        let len = method.len() + 1 + path.len();
        // Put together on the stack, the label is allocated once, in its
        // `Arc`; through a `String` it would be allocated twice, and freed
        // once, for every request that hands tasks off.
        let mut buffer = [0; ON_STACK];
        if let Some(label) = buffer.get_mut(..len) {
            let (head, tail) = label.split_at_mut(method.len());
            head.copy_from_slice(method.as_bytes());
            tail[0] = b' ';
            tail[1..].copy_from_slice(path.as_bytes());
            // Two `str`s and a space: always UTF-8.
            if let Ok(label) = std::str::from_utf8(label) {
                return Self(Some(Arc::from(label)));
            }
        }
        let mut label = String::with_capacity(len);
        label.push_str(method);
        label.push(' ');
        label.push_str(path);
        Self(Some(label.into()))
    }

    /// `"METHOD /path"`, or `None` for work no request started.
    pub(crate) fn label(&self) -> Option<&str> {
        self.0.as_deref()
    }

    pub(crate) fn method(&self) -> Option<&str> {
        let label = self.0.as_deref()?;
        Some(label.split_once(' ').map_or(label, |(method, _)| method))
    }

    pub(crate) fn path(&self) -> Option<&str> {
        let label = self.0.as_deref()?;
        Some(label.split_once(' ').map_or("", |(_, path)| path))
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(label) => fmt::Debug::fmt(&**label, f),
            None => f.write_str("(no request)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_back_into_method_and_path() {
        let origin = Origin::new(&Method::POST, "/sign up/with space");
        assert_eq!(origin.method(), Some("POST"));
        assert_eq!(origin.path(), Some("/sign up/with space"));
        let custom = Origin::new(&Method::from_bytes(b"PURGE").unwrap(), "/");
        assert_eq!((custom.method(), custom.path()), (Some("PURGE"), Some("/")));
        let none = RequestLine::none().origin();
        assert_eq!((none.method(), none.path()), (None, None));
    }

    #[test]
    fn labels_on_either_side_of_the_stack_buffer_are_whole() {
        for len in [ON_STACK - 5, ON_STACK - 4, ON_STACK - 3, ON_STACK * 4] {
            // "GET " is 4 bytes: the label is `len + 4` bytes long.
            let path = format!("/{}é", "p".repeat(len - 3));
            let origin = Origin::new(&Method::GET, &path);
            assert_eq!(origin.method(), Some("GET"));
            assert_eq!(origin.path(), Some(path.as_str()));
            assert_eq!(
                format!("{origin:?}"),
                format!("{:?}", format!("GET {path}"))
            );
        }
    }
}
