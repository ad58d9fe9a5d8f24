//! [`InFlight`]: the jobs one worker is running, so that those cut short by
//! the end of a shutdown's grace period can be returned to the queue.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The ids of the jobs a worker has started and not finished. A job whose
/// future is dropped before it finishes (the worker was stopped) stays in
/// the set; that is how the worker knows what to give back.
#[derive(Clone, Debug, Default)]
pub(crate) struct InFlight {
    ids: Arc<Mutex<HashSet<String>>>,
}

impl InFlight {
    /// Records that job `id` has started; call [`Running::finish`] when it
    /// ends. A panic also counts as finished (the attempt is over).
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
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.finished || std::thread::panicking() {
            self.in_flight.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jobs_cut_short_stay_in_flight() {
        let in_flight = InFlight::default();
        let done = in_flight.start("done".into());
        let cut_short = in_flight.start("cut-short".into());
        done.finish();
        drop(cut_short);
        assert_eq!(in_flight.take(), vec!["cut-short".to_owned()]);
        assert!(in_flight.take().is_empty());
    }
}
