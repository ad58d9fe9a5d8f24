//! [`ResponseFuture`]: carries a request's tasks while the inner service
//! produces the response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::handoff::{Handoff, IfDropped};
use crate::policy::{OnDisconnect, OnServerError, Policy};
use crate::stats::DiscardReason;

pin_project! {
    /// Response future of [`Background`](crate::Background).
    ///
    /// Dropped before it completes, or completing with the inner service's
    /// error, it discards the request's tasks (counted as
    /// `no_response`, logged at `DEBUG`).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        handoff: Option<Handoff>,
        policy: Policy,
        head_request: bool,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, handoff: Handoff, policy: Policy, head_request: bool) -> Self {
        Self {
            inner,
            handoff: Some(handoff),
            policy,
            head_request,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx));
        // On an error the guard is dropped here, discarding the tasks.
        let mut handoff = this.handoff.take();
        let response = response?;

        let (parts, body) = response.into_parts();
        if let Some(guard) = handoff.as_mut() {
            let has_no_body =
                *this.head_request || has_no_body(parts.status) || body.is_end_stream();
            if parts.status.is_server_error() && this.policy.on_server_error == OnServerError::Skip
            {
                if let Some(guard) = handoff.take() {
                    guard.discard(DiscardReason::ServerError);
                }
            } else if has_no_body || this.policy.on_disconnect == OnDisconnect::Run {
                guard.if_dropped(IfDropped::HandOff);
            } else {
                guard.if_dropped(IfDropped::Discard(DiscardReason::ClientDisconnected));
            }
        }
        Poll::Ready(Ok(Response::from_parts(
            parts,
            ResponseBody::new(body, handoff),
        )))
    }
}

/// Statuses whose responses never carry a body, whatever the body says: the
/// server sends the head and drops the body unpolled.
fn has_no_body(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}
