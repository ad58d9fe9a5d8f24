//! [`InFlight`]: the jobs one worker is running, so that those cut short by
//! the end of a shutdown's grace period can be returned to the queue.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use super::stats::JobCounters;

/// The ids of the jobs a worker has started and not finished. A job whose
/// future is dropped before it finishes (the worker was stopped) stays in
/// the set; that is how the worker knows what to give back.
#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    ids: Arc<Mutex<HashSet<String>>>,
    counters: Arc<JobCounters>,
}

impl InFlight {
    /// An empty set whose finished jobs are counted in `counters`.
    pub(crate) fn new(counters: Arc<JobCounters>) -> Self {
        Self {
            ids: Arc::default(),
            counters,
        }
    }

    /// Records that job `id` has started; call [`Running::finish`] when it
    /// ends. A panic also counts as finished, and failed (the attempt is
    /// over; apalis turns the panic into the attempt's error).
    pub(crate) fn start(&self, id: String) -> Running {
        self.lock().insert(id.clone());
        Running {
            in_flight: self.clone(),
            id,
            finished: false,
        }
    }

    /// Takes the ids of the jobs started and not finished.
    pub(crate) fn take(&self) -> Vec<String> {
        self.lock().drain().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One running job; see [`InFlight::start`].
#[derive(Debug)]
pub(crate) struct Running {
    in_flight: InFlight,
    id: String,
    finished: bool,
}

impl Running {
    /// The job returned: `ok` says whether it succeeded.
    pub(crate) fn finish(mut self, ok: bool) {
        self.finished = true;
        self.in_flight.counters.finished(ok);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished && std::thread::panicking() {
            self.finished = true;
            self.in_flight.counters.finished(false);
        }
        if self.finished {
            self.in_flight.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jobs_cut_short_stay_in_flight() {
        let counters = Arc::new(JobCounters::default());
        let in_flight = InFlight::new(Arc::clone(&counters));
        let done = in_flight.start("done".into());
        let cut_short = in_flight.start("cut-short".into());
        done.finish(true);
        drop(cut_short);
        assert_eq!(in_flight.take(), vec!["cut-short".to_owned()]);
        assert!(in_flight.take().is_empty());
        assert_eq!(
            (counters.snapshot().succeeded, counters.snapshot().failed),
            (1, 0)
        );
    }

    #[test]
    fn a_panicking_job_is_finished_and_failed() {
        let counters = Arc::new(JobCounters::default());
        let in_flight = InFlight::new(Arc::clone(&counters));
        let panicked = std::panic::catch_unwind(|| {
            let _running = in_flight.start("panics".into());
            panic!("job panicked");
        });
        assert!(panicked.is_err());
        assert!(in_flight.take().is_empty());
        assert_eq!(counters.snapshot().failed, 1);
    }
}
