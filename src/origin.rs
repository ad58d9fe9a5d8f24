//! [`Origin`]: which request a task came from, in the few bytes a handed-off
//! task keeps.

use std::fmt;
use std::sync::Arc;

use http::Method;

/// `"METHOD /path"` of the request that queued a task, shared by all of that
/// request's handed-off tasks: what their log lines and failure reports
/// name.
///
/// A handed-off task holds this rather than the request's own state (its
/// method, whole `Uri` and queue), so that a task waiting for a slot costs
/// little and does not keep the request's state alive, nor hyper's read
/// buffer, which a request's `Uri` points into.
#[derive(Clone)]
pub(crate) struct Origin(Arc<str>);

impl Origin {
    pub(crate) fn new(method: &Method, path: &str) -> Self {
        let mut label = String::with_capacity(method.as_str().len() + 1 + path.len());
        label.push_str(method.as_str());
        label.push(' ');
        label.push_str(path);
        Self(label.into())
    }

    pub(crate) fn method(&self) -> &str {
        self.0
            .split_once(' ')
            .map_or(&*self.0, |(method, _)| method)
    }

    pub(crate) fn path(&self) -> &str {
        self.0.split_once(' ').map_or("", |(_, path)| path)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_back_into_method_and_path() {
        let origin = Origin::new(&Method::POST, "/sign up/with space");
        assert_eq!(origin.method(), "POST");
        assert_eq!(origin.path(), "/sign up/with space");
        let custom = Origin::new(&Method::from_bytes(b"PURGE").unwrap(), "/");
        assert_eq!((custom.method(), custom.path()), ("PURGE", "/"));
    }
}
