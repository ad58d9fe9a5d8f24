//! [`Announcer`]: pushes made through a queue, announced to the workers of
//! the same queue in this process, so that they fetch at once instead of at
//! their next poll.

#[cfg(feature = "sqlite")]
use std::future::Future;
#[cfg(feature = "sqlite")]
use std::pin::Pin;
#[cfg(feature = "sqlite")]
use std::task::{Context, Poll};

#[cfg(feature = "sqlite")]
use futures_core::Stream;
use tokio::sync::watch;

/// Counts the pushes of one queue (and its clones); workers watch it.
#[derive(Debug)]
pub(crate) struct Announcer {
    pushes: watch::Sender<u64>,
}

impl Default for Announcer {
    fn default() -> Self {
        Self {
            pushes: watch::Sender::new(0),
        }
    }
}

impl Announcer {
    /// Says that a job has been stored.
    pub(crate) fn announce(&self) {
        self.pushes
            .send_modify(|pushes| *pushes = pushes.wrapping_add(1));
    }

    /// The pushes from now on, as a stream a worker's poll strategy reads
    /// (SQLite's workers: PostgreSQL's hear every push through `LISTEN`).
    #[cfg(feature = "sqlite")]
    pub(crate) fn subscribe(&self) -> Announcements {
        Announcements::Idle(self.pushes.subscribe())
    }
}

/// Yields once for every change of the push count since it was last read:
/// a push made while the worker was busy is not lost, since a watch
/// remembers that it changed.
#[cfg(feature = "sqlite")]
pub(crate) enum Announcements {
    Idle(watch::Receiver<u64>),
    Waiting(Pin<Box<dyn Future<Output = Option<watch::Receiver<u64>>> + Send>>),
    Closed,
}

#[cfg(feature = "sqlite")]
impl Stream for Announcements {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        loop {
            match std::mem::replace(&mut *self, Self::Closed) {
                Self::Idle(mut pushes) => {
                    *self = Self::Waiting(Box::pin(async move {
                        pushes.changed().await.ok()?;
                        Some(pushes)
                    }));
                }
                Self::Waiting(mut changed) => match changed.as_mut().poll(cx) {
                    Poll::Pending => {
                        *self = Self::Waiting(changed);
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(pushes)) => {
                        *self = Self::Idle(pushes);
                        return Poll::Ready(Some(()));
                    }
                    Poll::Ready(None) => return Poll::Ready(None),
                },
                Self::Closed => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[tokio::test]
    async fn a_push_made_before_the_worker_looks_is_not_lost() {
        let announcer = Announcer::default();
        let mut announcements = announcer.subscribe();
        announcer.announce();
        announcer.announce();
        let next = poll_fn(|cx| Pin::new(&mut announcements).poll_next(cx)).await;
        assert_eq!(next, Some(()));
        // Both pushes were read at once: nothing more until the next one.
        let pending = poll_fn(|cx| Poll::Ready(Pin::new(&mut announcements).poll_next(cx))).await;
        assert!(pending.is_pending());
        announcer.announce();
        let next = poll_fn(|cx| Pin::new(&mut announcements).poll_next(cx)).await;
        assert_eq!(next, Some(()));
    }
}
