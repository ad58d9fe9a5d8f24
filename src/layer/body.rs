//! [`ResponseBody`]: hands the request's tasks off when the body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::handoff::Handoff;

pin_project! {
    /// Response body of [`BackgroundTask`](crate::layer::BackgroundTask).
    ///
    /// Forwards every frame, `is_end_stream` and `size_hint` unchanged, and
    /// hands the request's tasks off the moment the body ends: `poll_frame`
    /// returned `None`, an error or trailers, `is_end_stream()` turned true
    /// after a frame, or the data sent reached the response's
    /// `Content-Length` (a streamed body with a length set by the handler,
    /// which the server stops polling once it has written that many bytes). Dropped earlier, it applies the layer's
    /// [`OnDisconnect`](crate::OnDisconnect) policy (unless the body had
    /// nothing to send to begin with, in which case dropping it is its end).
    ///
    /// When the layer answers with an error of its own instead of the
    /// handler's response (see [`ResponseFuture`](crate::ResponseFuture)),
    /// this body is that error's JSON, and the handler's body is dropped
    /// unread; this is why the data type must be buildable from [`Bytes`]
    /// (true of axum's, hyper's and tonic's bodies).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        handoff: Option<Handoff>,
        replacement: Replacement,
        // Bytes of the response's `Content-Length` not sent yet, if it has
        // one.
        unsent: Option<u64>,
    }
}

/// Whether the body is the handler's or the layer's own error.
#[derive(Debug)]
enum Replacement {
    /// The handler's body is sent.
    None,
    /// The layer's error body, until its one frame has been sent.
    Error(Option<Bytes>),
}

impl<B> ResponseBody<B> {
    /// `inner`, whose response declares `content_length` bytes, if it
    /// does.
    pub(crate) fn new(inner: B, handoff: Option<Handoff>, content_length: Option<u64>) -> Self {
        Self {
            inner,
            handoff,
            replacement: Replacement::None,
            unsent: content_length,
        }
    }

    /// A body that sends `error` instead of `inner`.
    pub(crate) fn replaced(inner: B, error: Bytes) -> Self {
        Self {
            inner,
            handoff: None,
            replacement: Replacement::Error(Some(error)),
            unsent: None,
        }
    }
}

/// Counts `frame`'s data against `unsent`, the bytes of the response's
/// `Content-Length` left: whether they have all been sent now.
fn all_sent<D: Buf>(unsent: &mut Option<u64>, frame: &Frame<D>) -> bool {
    match (unsent.as_mut(), frame.data_ref()) {
        (Some(unsent), Some(data)) => {
            *unsent = unsent.saturating_sub(data.remaining() as u64);
            *unsent == 0
        }
        _ => false,
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Replacement::Error(error) = this.replacement {
            return Poll::Ready(error.take().map(|error| Ok(Frame::data(error.into()))));
        }
        let frame = this.inner.as_mut().poll_frame(cx);
        let ended = match &frame {
            Poll::Pending => false,
            Poll::Ready(None | Some(Err(_))) => true,
            // Trailers are a body's last frame: an HTTP/2 server sends them
            // and drops the body without polling again, even when the body
            // never says it has ended.
            Poll::Ready(Some(Ok(frame))) => {
                frame.is_trailers() || all_sent(this.unsent, frame) || this.inner.is_end_stream()
            }
        };
        if ended {
            if let Some(handoff) = this.handoff.take() {
                handoff.finish();
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.replacement {
            Replacement::None => self.inner.is_end_stream(),
            Replacement::Error(error) => error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.replacement {
            Replacement::None => self.inner.size_hint(),
            Replacement::Error(error) => {
                SizeHint::with_exact(error.as_ref().map_or(0, |error| error.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every short sequence of frames, errors, `Pending`, end and an early
    //! drop: the tasks are handed off exactly once, at the end and not before,
    //! and a drop before the end applies the policy.

    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::future::{ready, Future};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use futures_util::task::noop_waker_ref;
    use http::{Method, Response, Uri};
    use http_body::{Body, Frame};

    use crate::handle::BackgroundTasks;
    use crate::lane::Lane;
    use crate::layer::future::ResponseFuture;
    use crate::layer::handoff::Handoff;
    use crate::policy::{OnDisconnect, Policy};
    use crate::task_set::TaskSet;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Step {
        Data,
        Error,
        End,
        Pending,
    }

    /// A body that plays a script, and knows it has ended when what is left
    /// of the script is empty or starts with `End` (like `Full` after its one
    /// frame).
    struct Scripted(VecDeque<Step>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            match self.0.pop_front() {
                Some(Step::Data) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x"))))),
                Some(Step::Error) => {
                    self.0.clear();
                    Poll::Ready(Some(Err("broken")))
                }
                Some(Step::End) | None => {
                    self.0.clear();
                    Poll::Ready(None)
                }
                Some(Step::Pending) => Poll::Pending,
            }
        }

        fn is_end_stream(&self) -> bool {
            matches!(self.0.front(), None | Some(Step::End))
        }
    }

    fn scripts(max_len: usize) -> Vec<Vec<Step>> {
        let steps = [Step::Data, Step::Error, Step::End, Step::Pending];
        let mut all = vec![vec![]];
        let mut last = vec![vec![]];
        for _ in 0..max_len {
            let mut next = Vec::new();
            for script in &last {
                for step in steps {
                    let mut longer: Vec<Step> = script.clone();
                    longer.push(step);
                    next.push(longer);
                }
            }
            all.extend(next.iter().cloned());
            last = next;
        }
        all
    }

    /// Plays `script`, polling `polls` times then dropping the body, and
    /// checks the counters after every step against the definition of "ended".
    fn check(set: &Arc<TaskSet>, script: &[Step], polls: usize, policy: Policy) {
        let before = set.stats();
        let tasks = BackgroundTasks::new(Arc::clone(set), Method::GET, &Uri::from_static("/"));
        tasks.add(async {});
        let handoff = Handoff::new(tasks.clone().into_request());
        let body = Scripted(script.iter().copied().collect());
        let response = ready(Ok::<_, Infallible>(Response::new(body)));
        let mut future = Box::pin(ResponseFuture::new(response, handoff, policy, false));
        let mut cx = Context::from_waker(noop_waker_ref());
        let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
            panic!("a ready inner future gives a ready response");
        };
        let mut body = Box::pin(response.into_body());

        let handed_off = || set.stats().running - before.running;
        let discarded = || set.stats().discarded - before.discarded;
        let mut ended = body.is_end_stream();
        // Nothing is handed off while the server holds a body, even one with
        // nothing to send.
        assert_eq!(handed_off(), 0, "{script:?}: handed off at build");
        for _ in 0..polls {
            let frame = body.as_mut().poll_frame(&mut cx);
            ended |= match frame {
                Poll::Ready(None | Some(Err(_))) => true,
                Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                Poll::Pending => false,
            };
            assert_eq!(
                handed_off(),
                u64::from(ended),
                "{script:?} after {polls} polls"
            );
            assert_eq!(discarded(), 0, "{script:?}: discarded while polled");
        }
        drop(body);
        let expected_run = ended || policy.on_disconnect == OnDisconnect::Run;
        assert_eq!(
            handed_off(),
            u64::from(expected_run),
            "{script:?}: after drop"
        );
        assert_eq!(
            discarded(),
            u64::from(!expected_run),
            "{script:?}: after drop"
        );

        // A late add follows the request's fate.
        tasks.add(async {});
        assert_eq!(
            handed_off(),
            2 * u64::from(expected_run),
            "{script:?}: late add"
        );
        assert_eq!(
            discarded(),
            2 * u64::from(!expected_run),
            "{script:?}: late add"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn hands_off_exactly_once_and_never_before_the_end() {
        // On a current-thread runtime spawned tasks never run here (this test
        // does not yield), so `running` counts hand-offs exactly.
        let lanes = vec![Lane::new("default", usize::MAX), Lane::new("blocking", 1)];
        let set = Arc::new(TaskSet::new(
            tokio::runtime::Handle::current(),
            lanes,
            usize::MAX,
            None,
        ));
        let mut cases = 0;
        for on_disconnect in [OnDisconnect::Run, OnDisconnect::Skip] {
            let policy = Policy {
                on_disconnect,
                ..Policy::default()
            };
            for script in scripts(4) {
                for polls in 0..=script.len() + 1 {
                    check(&set, &script, polls, policy);
                    cases += 1;
                }
            }
        }
        assert!(cases > 1000, "only {cases} cases");
        let stats = set.stats();
        assert_eq!(stats.submitted, stats.accounted());
    }
}
