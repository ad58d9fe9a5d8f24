//! [`ResponseFuture`]: carries a request's tasks while the inner service
//! produces the response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use super::handoff::{Handoff, IfDropped};
use crate::error::AddError;
use crate::policy::{OnDisconnect, OnServerError, Policy};
use crate::stats::DiscardReason;

pin_project! {
    /// Response future of [`BackgroundTask`](crate::layer::BackgroundTask).
    ///
    /// Dropped before it completes, or completing with the inner service's
    /// error, it discards the request's tasks (counted as
    /// `no_response`, logged at `DEBUG`).
    ///
    /// If a plain [`add`](crate::BackgroundTasks::add) on the request could
    /// not accept a task before the response was produced (the queue was
    /// full, the supervisor was shutting down, an unknown lane), a response
    /// that is not already a `4xx` or `5xx` is replaced by that
    /// [`AddError`]'s: `503` with `Retry-After` (or `500` for an unknown
    /// lane) and a JSON body, and the tasks the request did queue are
    /// discarded (counted as `server_error`), so a retry is their only copy.
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

        let (mut parts, body) = response.into_parts();
        // A plain `add` that could not accept a task turns a response that
        // would have said "done" into the error, so that the client learns
        // its work was not taken and can retry; the tasks the request did
        // queue are discarded, so that the retry is their only copy.
        let replacement = handoff
            .as_ref()
            .and_then(Handoff::refusal)
            .filter(|_| !parts.status.is_client_error() && !parts.status.is_server_error())
            .map(AddError::to_http);
        if let Some(error) = replacement {
            let (error_parts, error_body) = error.into_parts();
            // The handler's headers described the response it meant to
            // send (a `Location`, a `Content-Length`): none of them applies.
            parts.status = error_parts.status;
            parts.headers = error_parts.headers;
            if let Some(guard) = handoff.take() {
                guard.discard(DiscardReason::ServerError);
            }
            return Poll::Ready(Ok(Response::from_parts(
                parts,
                ResponseBody::replaced(body, error_body),
            )));
        }
        // Needed only where the body cannot tell its own end: a streamed
        // body (no exact size) whose length the handler set.
        let content_length = match &handoff {
            Some(_) if body.size_hint().exact().is_none() => content_length(&parts.headers),
            _ => None,
        };
        if let Some(guard) = handoff.as_mut() {
            let has_no_body = *this.head_request
                || has_no_body(parts.status)
                || body.is_end_stream()
                || content_length == Some(0);
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
            ResponseBody::new(body, handoff, content_length),
        )))
    }
}

/// The response's `Content-Length`, if it has exactly one that is a number:
/// the server sends that many bytes of the body, then stops polling it.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()?.trim().parse().ok()
}

/// Statuses whose responses never carry a body, whatever the body says: the
/// server sends the head and drops the body unpolled.
fn has_no_body(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}
