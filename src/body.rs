//! [`ResponseBody`]: hands the request's tasks off when the body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::handoff::Handoff;

pin_project! {
    /// Response body of [`Background`](crate::Background).
    ///
    /// Forwards every frame, `is_end_stream` and `size_hint` unchanged, and
    /// hands the request's tasks off the moment the body ends: `poll_frame`
    /// returned `None` or an error, or `is_end_stream()` turned true after a
    /// frame. Dropped earlier, it applies the layer's
    /// [`OnDisconnect`](crate::OnDisconnect) policy (unless the body had
    /// nothing to send to begin with, in which case dropping it is its end).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        handoff: Option<Handoff>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, handoff: Option<Handoff>) -> Self {
        Self { inner, handoff }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = this.inner.as_mut().poll_frame(cx);
        let ended = match &frame {
            Poll::Pending => false,
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
        };
        if ended {
            if let Some(handoff) = this.handoff.take() {
                handoff.finish();
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
