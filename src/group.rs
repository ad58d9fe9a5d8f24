//! [`Group`]: steps run one after another, or together, as one task.

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use crate::output::TaskOutput;
use crate::running::panic_message;
use crate::slot;
use crate::stats::Outcome;
use crate::task_set::TaskSet;
use crate::work::{self, BlockingWork, BoxedWork, BLOCKING_LANE};

/// Steps that run as one background task: one after another
/// ([`Group::sequential`]) or all at once ([`Group::concurrent`]). Steps can
/// be async ([`step`](Group::step)) or blocking
/// ([`blocking_step`](Group::blocking_step)), mixed; a blocking step runs on
/// the blocking pool within the blocking lane's limit, like
/// [`add_blocking`](crate::BackgroundTasks::add_blocking).
///
/// A group is added like any task, with
/// [`BackgroundTasks::add`](crate::BackgroundTasks::add) (or as
/// [`Task::from(group)`](crate::Task) to give it a lane or a time limit),
/// and starts only after the response has ended. A group with a blocking
/// step given the blocking lane runs in the default lane: its blocking steps
/// take the blocking lane's slots, and the group holding one of them would
/// wait for another (with every slot held by such groups, none could run). It counts
/// as one task in [`Stats`](crate::Stats): completed if every step completed,
/// otherwise panicked if a step panicked, otherwise failed (the first
/// failure's message is logged and given to the `on_failure` hook). Steps
/// that never ran because of a failure are counted in
/// [`Stats::skipped`](crate::Stats::skipped).
///
/// | | a step fails or panics |
/// |---|---|
/// | `sequential()` | the steps after it are skipped |
/// | `concurrent()` | the others run on to their end |
/// | `concurrent().fail_fast()` | the others are dropped, counted as skipped |
///
/// # Example
///
/// ```
/// use tower_background::{BackgroundTasks, Group};
///
/// fn after_signup(tasks: &BackgroundTasks) {
///     tasks.add(
///         Group::sequential()
///             .step(async { /* send the notification */ })
///             .blocking_step(|| { /* append to the log file */ }),
///     );
/// }
/// ```
#[must_use = "a group does nothing until it is added"]
pub struct Group {
    concurrent: bool,
    fail_fast: bool,
    steps: Vec<Step>,
}

enum Step {
    Async(BoxedWork),
    Blocking(BlockingWork),
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("concurrent", &self.concurrent)
            .field("fail_fast", &self.fail_fast)
            .field("steps", &self.steps.len())
            .finish()
    }
}

impl Group {
    /// Steps run one after another, in the order added; the first that
    /// fails or panics ends the group.
    pub fn sequential() -> Self {
        Self {
            concurrent: false,
            fail_fast: false,
            steps: Vec::new(),
        }
    }

    /// Steps all start together; the group ends when every one has ended.
    pub fn concurrent() -> Self {
        Self {
            concurrent: true,
            ..Self::sequential()
        }
    }

    /// For a concurrent group: when a step fails or panics, drop the others
    /// at once (counted as skipped) instead of letting them finish.
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// Adds an async step.
    pub fn step<F>(mut self, future: F) -> Self
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.steps.push(Step::Async(work::boxed(future)));
        self
    }

    /// Adds a blocking step.
    pub fn blocking_step<F, T>(mut self, function: F) -> Self
    where
        F: FnOnce() -> T + Send + 'static,
        T: TaskOutput,
    {
        self.steps
            .push(Step::Blocking(work::boxed_blocking(function)));
        self
    }

    /// Whether a step of the group is blocking: it then waits, when its
    /// turn comes, for a slot of the blocking lane.
    pub(crate) fn has_blocking_step(&self) -> bool {
        self.steps
            .iter()
            .any(|step| matches!(step, Step::Blocking(_)))
    }

    /// How many steps the group has.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the group has no step (it then completes at once).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub(crate) fn run(self, set: Arc<TaskSet>) -> BoxedWork {
        if self.concurrent {
            Box::pin(run_concurrent(self.steps, self.fail_fast, set))
        } else {
            Box::pin(run_sequential(self.steps, set))
        }
    }
}

async fn run_sequential(steps: Vec<Step>, set: Arc<TaskSet>) -> Outcome {
    let total = steps.len();
    for (done, step) in steps.into_iter().enumerate() {
        let outcome = run_step(&set, step).await;
        if !matches!(outcome, Outcome::Completed) {
            set.counters.skipped((total - done - 1) as u64);
            return outcome;
        }
    }
    Outcome::Completed
}

async fn run_concurrent(steps: Vec<Step>, fail_fast: bool, set: Arc<TaskSet>) -> Outcome {
    type Running<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;
    let mut running: Vec<Option<Running<'_>>> = steps
        .into_iter()
        .map(|step| Some(Box::pin(run_step(&set, step)) as Running<'_>))
        .collect();
    let mut outcome = Outcome::Completed;
    poll_fn(|cx| {
        let mut pending = 0;
        for slot in running.iter_mut() {
            let Some(step) = slot else { continue };
            match step.as_mut().poll(cx) {
                Poll::Pending => pending += 1,
                Poll::Ready(ended) => {
                    *slot = None;
                    outcome = worse(std::mem::replace(&mut outcome, Outcome::Completed), ended);
                }
            }
        }
        let failed = !matches!(outcome, Outcome::Completed);
        if pending == 0 || (fail_fast && failed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    let dropped = running.iter().filter(|step| step.is_some()).count();
    set.counters.skipped(dropped as u64);
    outcome
}

/// The group's outcome so far combined with a step's: the first failure is
/// kept, except that a panic outranks an error.
fn worse(so_far: Outcome, step: Outcome) -> Outcome {
    match (&so_far, &step) {
        (Outcome::Completed, _) => step,
        (Outcome::Panicked(_), _) => so_far,
        (_, Outcome::Panicked(_)) => step,
        _ => so_far,
    }
}

async fn run_step(set: &Arc<TaskSet>, step: Step) -> Outcome {
    match step {
        Step::Async(mut future) => {
            poll_fn(|cx| {
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                    Ok(poll) => poll,
                    Err(payload) => Poll::Ready(Outcome::Panicked(panic_message(payload))),
                }
            })
            .await
        }
        Step::Blocking(function) => {
            let Some(slot) = slot::acquire(set, BLOCKING_LANE).await else {
                return Outcome::Cancelled;
            };
            let span = tracing::Span::current();
            // The closure owns the slot: if the group is dropped (a timeout,
            // an abort) while it runs, the slot stays taken until it returns.
            let closure = move || {
                let _slot = slot;
                span.in_scope(function)
            };
            match tokio::task::spawn_blocking(closure).await {
                Ok(result) => Outcome::from_result(result),
                Err(error) if error.is_panic() => {
                    Outcome::Panicked(panic_message(error.into_panic()))
                }
                Err(_) => Outcome::Cancelled,
            }
        }
    }
}
