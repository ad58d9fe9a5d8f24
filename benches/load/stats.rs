//! What one variant measured in one round: each window's throughput,
//! latency, failures and CPU, and what its supervisor and shutdown saw.

use std::time::Duration;

use crate::client::{ClientRun, Phase};
use crate::config::Variant;
use crate::sample::Sampled;
use crate::sample::Window;
use crate::server::Teardown;
use crate::support::percentile;

/// What any window measured, the saturated one ([`Measured`]) or the
/// paced one ([`Paced`]): throughput, latency, failures and CPU.
#[derive(Debug)]
pub(crate) struct WindowStats {
    /// Responses completed inside the window ÷ its length (for a paced
    /// window: the paced rate, unless the server or the client fell
    /// behind).
    pub(crate) rps: f64,
    /// Latency, ns (for a paced window, as
    /// [`open_loop`](crate::client::open_loop) counts it).
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) errors: u64,
    pub(crate) unanswered: u64,
    pub(crate) first_error: Option<String>,
    /// Server threads' CPU time per completed request, ns.
    pub(crate) server_cpu_per_request: Option<f64>,
    /// Client threads' CPU time per completed request, ns.
    pub(crate) client_cpu_per_request: Option<f64>,
    /// Server threads' CPU time ÷ the window: cores kept busy.
    pub(crate) server_cores: Option<f64>,
}

impl WindowStats {
    /// The figures of `run` (every connection's, merged) and of what was
    /// `sampled` over `window`.
    pub(crate) fn new(window: Window, run: &ClientRun, sampled: &Sampled) -> Self {
        let requests = run.completed;
        let seconds = (window.end - window.start).as_secs_f64();
        Self {
            rps: requests as f64 / seconds,
            p50: latency_at(&run.latencies, 0.50),
            p99: latency_at(&run.latencies, 0.99),
            p999: latency_at(&run.latencies, 0.999),
            errors: run.errors,
            unanswered: run.unanswered,
            first_error: run.first_error.clone(),
            server_cpu_per_request: per_request(sampled.server_cpu, requests),
            client_cpu_per_request: per_request(sampled.client_cpu, requests),
            server_cores: sampled.server_cpu.map(|cpu| cpu.as_secs_f64() / seconds),
        }
    }

    /// Requests that failed or went unanswered.
    pub(crate) fn failures(&self) -> u64 {
        self.errors + self.unanswered
    }
}

/// One variant in one round.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) variant: Variant,
    /// The saturated window.
    pub(crate) stats: WindowStats,
    pub(crate) peak_running: Option<u64>,
    pub(crate) peak_queued: Option<u64>,
    /// Trivial tasks run over the variant's life: its paced window's
    /// included.
    pub(crate) trivial_ran: u64,
    pub(crate) teardown: Teardown,
    /// The paced window, for the variants in
    /// [`PACED_VARIANTS`](crate::config::PACED_VARIANTS).
    pub(crate) paced: Option<Paced>,
}

/// One variant's paced window in one round.
#[derive(Debug)]
pub(crate) struct Paced {
    pub(crate) stats: WindowStats,
    /// From when a request was due to its body's end, the client's lateness
    /// included, ns.
    pub(crate) from_schedule_p99: u64,
    /// The client's lateness in sending, ns.
    pub(crate) send_lag_p50: u64,
    pub(crate) send_lag_p99: u64,
    /// The running-task count over the window (layer variants): for
    /// variants 6 and 6c, about the paced rate × 1 s of sleeping tasks.
    pub(crate) least_running: Option<u64>,
    pub(crate) peak_running: Option<u64>,
}

impl From<Phase> for Paced {
    fn from(phase: Phase) -> Self {
        let Phase {
            window,
            runs,
            sampled,
        } = phase;
        let run = ClientRun::merge(runs);
        Self {
            stats: WindowStats::new(window, &run, &sampled),
            from_schedule_p99: latency_at(&run.from_schedule, 0.99),
            send_lag_p50: latency_at(&run.send_lags, 0.50),
            send_lag_p99: latency_at(&run.send_lags, 0.99),
            least_running: sampled.least_running,
            peak_running: sampled.peak_running,
        }
    }
}

/// The `q`-quantile of sorted latencies (ns); 0 when there are none.
fn latency_at(sorted: &[u64], q: f64) -> u64 {
    percentile(sorted, q).unwrap_or(0)
}

/// CPU time per completed request, ns.
fn per_request(cpu: Option<Duration>, requests: u64) -> Option<f64> {
    cpu.map(|cpu| cpu.as_nanos() as f64 / requests.max(1) as f64)
}
