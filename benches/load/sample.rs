//! What is sampled while a window runs: the supervisor's running and
//! queued task counts, and the CPU time of the server's threads and of the
//! client's, which the threads' names tell apart.

use std::time::{Duration, Instant};

use tower_background::Monitor;

use crate::support::threads_cpu_ns;

/// The measured window of a variant: requests sent inside it are counted,
/// and the samplers run through it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    /// Requests sent inside the window are waited for until then.
    pub(crate) drain_until: Instant,
}

impl Window {
    /// Until when a request is waited for: one measured (sent, or for a
    /// paced window due, inside the window) until `drain_until`; one of the
    /// warm-up or lead-in no later than the window's end.
    pub(crate) fn deadline(&self, measured: bool) -> Instant {
        if measured {
            self.drain_until
        } else {
            self.end
        }
    }
}

/// How often the running-task count is sampled during a variant.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Thread names (a thread's `comm` keeps 15 bytes): the server runtime's
/// workers and blocking pool, and the client runtime's.
pub(crate) const SERVER_THREADS: &str = "load-server";
pub(crate) const CLIENT_THREADS: &str = "load-client";
/// The threads of variant 6c's tasks' runtime. [`threads_cpu_ns`] matches
/// names by prefix: starting with [`SERVER_THREADS`], they count in the
/// server's CPU, as the serving runtime's threads that ran those tasks in
/// variant 6 do.
pub(crate) const SERVER_TASK_THREADS: &str = "load-server-bg";

/// What was sampled during the window.
#[derive(Debug, Default)]
pub(crate) struct Sampled {
    /// The largest running-task count seen (layer variants).
    pub(crate) peak_running: Option<u64>,
    /// The smallest.
    pub(crate) least_running: Option<u64>,
    /// The largest count of tasks waiting for a slot in their lane.
    pub(crate) peak_queued: Option<u64>,
    /// CPU time of the server's threads (workers and blocking pool, and
    /// variant 6c's tasks' runtime) and of the client's, inside the window.
    pub(crate) server_cpu: Option<Duration>,
    pub(crate) client_cpu: Option<Duration>,
}

/// Samples the running-task count every [`SAMPLE_EVERY`] and the threads'
/// CPU time at the window's start and end.
pub(crate) async fn sample(monitor: Option<Monitor>, window: Window) -> Sampled {
    tokio::time::sleep_until(window.start.into()).await;
    let server_start = threads_cpu_ns(SERVER_THREADS);
    let client_start = threads_cpu_ns(CLIENT_THREADS);
    let (mut peak_running, mut least_running, mut peak_queued) = (0, u64::MAX, 0);
    loop {
        if let Some(monitor) = &monitor {
            let stats = monitor.stats();
            peak_running = peak_running.max(stats.running);
            least_running = least_running.min(stats.running);
            peak_queued = peak_queued.max(stats.queued);
        }
        let now = Instant::now();
        if now >= window.end {
            break;
        }
        tokio::time::sleep_until((now + SAMPLE_EVERY).min(window.end).into()).await;
    }
    let used = |start: Option<u64>, prefix| {
        Some(Duration::from_nanos(
            threads_cpu_ns(prefix)?.saturating_sub(start?),
        ))
    };
    Sampled {
        peak_running: monitor.as_ref().map(|_| peak_running),
        least_running: monitor.as_ref().map(|_| least_running),
        peak_queued: monitor.as_ref().map(|_| peak_queued),
        server_cpu: used(server_start, SERVER_THREADS),
        client_cpu: used(client_start, CLIENT_THREADS),
    }
}
