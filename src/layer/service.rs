//! [`BackgroundTask`]: the service [`BackgroundTaskLayer`](crate::BackgroundTaskLayer)
//! wraps around yours.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::handoff::Handoff;
use crate::handle::BackgroundTasks;
use crate::policy::Policy;
use crate::task_set::TaskSet;

/// Middleware that inserts a [`BackgroundTasks`] handle into each request's
/// extensions and hands its tasks off when the response body ends.
///
/// Created by [`BackgroundTaskLayer`](crate::BackgroundTaskLayer); see there
/// for exactly when tasks are handed off or discarded.
#[derive(Clone, Debug)]
pub struct BackgroundTask<S> {
    inner: S,
    set: Arc<TaskSet>,
    policy: Policy,
}

impl<S> BackgroundTask<S> {
    pub(crate) fn new(inner: S, set: Arc<TaskSet>, policy: Policy) -> Self {
        Self { inner, set, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BackgroundTask<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = Response<super::body::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let tasks = BackgroundTasks::new(
            Arc::clone(&self.set),
            request.method().clone(),
            request.uri(),
        );
        let head_request = request.method() == Method::HEAD;
        request.extensions_mut().insert(tasks.clone());
        // The guard exists before the inner `call` runs, so tasks queued by a
        // `call` that panics are still accounted for (discarded) on unwind.
        let handoff = Handoff::new(tasks.into_request());
        let inner = self.inner.call(request);
        ResponseFuture::new(inner, handoff, self.policy, head_request)
    }
}
