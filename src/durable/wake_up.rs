//! [`WakeUp`]: when an idle apalis worker asks the database for new jobs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use futures_core::Stream;
use tokio::time::{Instant, Sleep};

/// Wakes a worker every `period`, and at once when `events` yields
/// (PostgreSQL's `LISTEN` on new jobs, or SQLite's in-process
/// [announcements](super::announce::Announcements)).
///
/// Written here rather than using apalis's `poll_with_interval` and
/// `with_pubsub`, which lose wake-ups: apalis's `PollWith` ignores the
/// strategy's answer, and its interval strategy returns a new delay it
/// never polls. A tick spent while an older fetch was in flight then left
/// the worker asleep until its next heartbeat — up to 30 s, measured in
/// `benches/durable.rs`. Here the next tick is armed as soon as one fires,
/// and after any wake-up the worker is woken once more, so a fetch always
/// starts after the event that caused it.
pub(crate) struct WakeUp<S> {
    period: Duration,
    tick: Pin<Box<Sleep>>,
    events: Option<S>,
}

impl<S> WakeUp<S> {
    pub(crate) fn new(period: Duration, events: Option<S>) -> Self {
        Self {
            period,
            tick: Box::pin(tokio::time::sleep(period)),
            events,
        }
    }
}

impl<S: Stream + Unpin> PollStrategy for WakeUp<S> {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut woken = false;
        if self.tick.as_mut().poll(cx).is_ready() {
            self.tick.as_mut().reset(Instant::now() + self.period);
            // Arm the next tick now: nothing else would poll it.
            let _ = self.tick.as_mut().poll(cx);
            woken = true;
        }
        if let Some(events) = &mut self.events {
            loop {
                match Pin::new(&mut *events).poll_next(cx) {
                    Poll::Ready(Some(_)) => woken = true,
                    // The listener is gone: the tick alone wakes the worker.
                    Poll::Ready(None) => {
                        self.events = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if woken {
            cx.waker().wake_by_ref();
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
