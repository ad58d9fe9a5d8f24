//! What shutdown knows of a task that is still running ([`Started`]), what
//! it tells of one ([`UnfinishedTask`]), and how it keeps the oldest few
//! ([`Oldest`]) without holding them all.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::origin::Origin;

/// A running task's name, origin and start, kept from its first `Pending`
/// (a task that ends on its first poll never needs them) to its end.
#[derive(Clone, Debug)]
pub(crate) struct Started {
    name: Option<&'static str>,
    origin: Origin,
    since: Instant,
}

impl Started {
    pub(crate) fn now(name: Option<&'static str>, origin: &Origin) -> Self {
        Self {
            name,
            origin: origin.clone(),
            since: Instant::now(),
        }
    }

    fn unfinished(&self, now: Instant) -> UnfinishedTask {
        UnfinishedTask {
            name: self.name,
            request: self.origin.label().map(str::to_owned),
            age: now.saturating_duration_since(self.since),
        }
    }
}

/// A task that was still running: in [`Supervisor::shutdown`]'s progress
/// lines, and in [`ShutdownReport::aborted_tasks`] for those it had to abort.
///
/// [`Supervisor::shutdown`]: crate::Supervisor::shutdown
/// [`ShutdownReport::aborted_tasks`]: crate::ShutdownReport::aborted_tasks
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct UnfinishedTask {
    /// The task's [`name`](crate::Task::name), if it was given one.
    pub name: Option<&'static str>,
    /// `"METHOD /path"` of the request that queued it (`None` for a task
    /// added through [`Supervisor::tasks`](crate::Supervisor::tasks)).
    pub request: Option<String>,
    /// How long it had been running.
    pub age: Duration,
}

impl fmt::Display for UnfinishedTask {
    /// `welcome-email (POST /signup, 31.2s)`, `POST /signup (31.2s)`, or
    /// `a task (31.2s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let age = Duration::from_millis(self.age.as_millis() as u64 / 100 * 100);
        match (self.name, &self.request) {
            (Some(name), Some(request)) => write!(f, "{name} ({request}, {age:?})"),
            (Some(name), None) => write!(f, "{name} ({age:?})"),
            (None, Some(request)) => write!(f, "{request} ({age:?})"),
            (None, None) => write!(f, "a task ({age:?})"),
        }
    }
}

/// The `limit` oldest of the tasks offered, and how many were offered.
#[derive(Debug)]
pub(crate) struct Oldest {
    limit: usize,
    /// Oldest first.
    kept: Vec<Started>,
    seen: u64,
}

impl Oldest {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            kept: Vec::with_capacity(limit),
            seen: 0,
        }
    }

    pub(crate) fn offer(&mut self, task: &Started) {
        self.seen += 1;
        if self.kept.len() == self.limit
            && self
                .kept
                .last()
                .map_or(true, |newest| newest.since <= task.since)
        {
            return;
        }
        let at = self.kept.partition_point(|kept| kept.since <= task.since);
        self.kept.insert(at, task.clone());
        self.kept.truncate(self.limit);
    }

    /// How many tasks were offered.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// The oldest tasks offered, oldest first, aged as of `now`.
    pub(crate) fn unfinished(&self, now: Instant) -> Vec<UnfinishedTask> {
        self.kept.iter().map(|task| task.unfinished(now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keeps_the_oldest_few_oldest_first() {
        let origin = Origin::new(&Method::POST, "/signup");
        let mut started = Vec::new();
        for i in 0..10 {
            started.push(Started::now(
                Some(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"][i]),
                &origin,
            ));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let mut oldest = Oldest::new(3);
        for task in started.iter().rev() {
            oldest.offer(task);
        }
        let now = Instant::now();
        let kept = oldest.unfinished(now);
        assert_eq!(oldest.seen(), 10);
        assert_eq!(
            kept.iter()
                .map(|task| task.name.unwrap())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(kept[0].age, Duration::from_secs(10));
        assert_eq!(kept[0].to_string(), "a (POST /signup, 10s)");
    }
}
