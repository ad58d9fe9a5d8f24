//! How options shape a task's work: a time limit per attempt, and retries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::retry::Retry;
use crate::stats::Outcome;
use crate::task::Kind;
use crate::task_set::TaskSet;
use crate::work::{Maker, Work};

/// The work to run for `kind` under a time limit. Plain tasks stay as they
/// are: the extra wrapping (and its allocation) is only for tasks that ask
/// for a timeout, retries, or are groups.
#[inline]
pub(crate) fn work(kind: Kind, timeout: Option<Duration>, set: &Arc<TaskSet>) -> Work {
    match kind {
        Kind::Async(future) => match timeout {
            None => Work::Async(future),
            Some(limit) => Work::Async(Box::pin(with_timeout(limit, future))),
        },
        Kind::Blocking(function) => match timeout {
            None => Work::Blocking(function),
            Some(limit) => Work::BlockingWithTimeout(Box::new((function, limit))),
        },
        Kind::Retrying(make, retry) => {
            Work::Async(Box::pin(retrying(make, retry, timeout, Arc::clone(set))))
        }
        Kind::Group(group) => {
            let future = group.run(Arc::clone(set));
            match timeout {
                None => Work::Async(future),
                Some(limit) => Work::Async(Box::pin(with_timeout(limit, future))),
            }
        }
    }
}

async fn with_timeout<F>(limit: Duration, attempt: F) -> Outcome
where
    F: Future<Output = Outcome>,
{
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or(Outcome::TimedOut)
}

/// Runs attempts until one completes, one panics, or `retry` runs out;
/// counts every attempt after the first in `Stats::retried`.
async fn retrying(
    mut make: Maker,
    retry: Retry,
    timeout: Option<Duration>,
    set: Arc<TaskSet>,
) -> Outcome {
    let mut attempt = 1;
    loop {
        let future: Pin<Box<dyn Future<Output = Outcome> + Send>> = make();
        let outcome = match timeout {
            None => future.await,
            Some(limit) => with_timeout(limit, future).await,
        };
        let retriable = matches!(outcome, Outcome::Failed(_) | Outcome::TimedOut);
        if !retriable || attempt >= retry.max_attempts {
            return outcome;
        }
        let delay = retry.delay_after(attempt);
        tracing::debug!(attempt, ?delay, ?outcome, "background task: retrying");
        tokio::time::sleep(delay).await;
        set.counters.retried();
        attempt += 1;
    }
}
