//! The client side: keep-alive connections, each a closed loop through the
//! saturated window, then an open loop at the paced times, and what each
//! saw; [`drive`] runs them and the samplers against one variant's server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{interval_at, timeout_at, MissedTickBehavior};
use tower_background::Monitor;

use crate::config::Config;
use crate::sample::{sample, Sampled, Window};
use crate::server::BODY;

/// When a connection's paced requests are due: the first at `first`, then
/// one every `period`, whatever the responses take (an open loop).
#[derive(Clone, Copy, Debug)]
struct Pacing {
    first: Instant,
    /// `connections ÷ rate`: every connection sends at the same rate, and
    /// the connections' first requests are `1 ÷ rate` apart.
    period: Duration,
    /// Requests due inside it are measured.
    window: Window,
}

impl Pacing {
    /// How many of this connection's requests are due after `scheduled` and
    /// inside the window: the ones a failed exchange leaves unsent.
    fn due_after(&self, scheduled: Instant) -> u64 {
        let period = self.period.as_secs_f64();
        let since = |instant: Instant| {
            instant
                .checked_duration_since(scheduled)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        // Requests `scheduled + j × period`, j ≥ 1, inside [start, end).
        let first = (since(self.window.start) / period).ceil().max(1.0);
        let past_last = (since(self.window.end) / period).ceil();
        (past_last - first).max(0.0) as u64
    }
}

/// What one connection saw in one window.
#[derive(Debug, Default)]
pub(crate) struct ClientRun {
    /// Responses completed inside the window.
    pub(crate) completed: u64,
    /// Latencies (ns) of the requests sent inside the window; for a paced
    /// window, see [`open_loop`].
    pub(crate) latencies: Vec<u64>,
    /// Paced windows only: the time (ns) from when each measured request was
    /// due to its body's end, the client's own lateness included.
    pub(crate) from_schedule: Vec<u64>,
    /// Paced windows only: how late (ns) the client sent each measured
    /// request after it was due and its connection free.
    pub(crate) send_lags: Vec<u64>,
    /// Requests sent (or, paced, due) inside the window and not answered by
    /// `drain_until`.
    pub(crate) unanswered: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl ClientRun {
    fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    /// Every connection's run as one, its latencies sorted.
    pub(crate) fn merge(runs: Vec<Self>) -> Self {
        let mut all = Self::default();
        for run in runs {
            all.completed += run.completed;
            all.unanswered += run.unanswered;
            all.errors += run.errors;
            all.latencies.extend(run.latencies);
            all.from_schedule.extend(run.from_schedule);
            all.send_lags.extend(run.send_lags);
            if all.first_error.is_none() {
                all.first_error = run.first_error;
            }
        }
        all.latencies.sort_unstable();
        all.from_schedule.sort_unstable();
        all.send_lags.sort_unstable();
        all
    }
}

/// One keep-alive connection: `GET /` requests one after the other until
/// the window ends, then, with `pacing`, at the paced times on the same
/// connection.
async fn client(
    addr: SocketAddr,
    window: Window,
    pacing: Option<Pacing>,
) -> (ClientRun, Option<ClientRun>) {
    let mut run = ClientRun::default();
    let mut paced_run = pacing.map(|_| ClientRun::default());
    let (mut sender, connection) = match connect(addr).await {
        Ok(connected) => connected,
        Err(error) => {
            if let Some(paced_run) = &mut paced_run {
                paced_run.error(format_args!("no connection: {error}"));
            }
            run.error(error);
            return (run, paced_run);
        }
    };
    let still_open = closed_loop(&mut sender, window, &mut run).await;
    if let (Some(pacing), Some(paced_run)) = (pacing, &mut paced_run) {
        if still_open {
            open_loop(&mut sender, pacing, paced_run).await;
        } else {
            paced_run.error("the connection failed in the saturated window");
        }
    }
    connection.abort();
    (run, paced_run)
}

/// A keep-alive connection to `addr`, its connection task spawned.
async fn connect(
    addr: SocketAddr,
) -> Result<(SendRequest<Empty<Bytes>>, JoinHandle<hyper::Result<()>>), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    Ok((sender, tokio::spawn(connection)))
}

/// One `GET /` and its whole body.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    let request = Request::get("/")
        .header(HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// How one request of a loop ended.
enum Exchanged {
    /// Answered `200 ok`, its body ended at this instant (counted in `run`).
    Answered(Instant),
    /// An error or an unexpected answer (counted in `run`): the connection
    /// is no longer usable.
    Failed,
    /// Not answered by the deadline (for the caller to count).
    TimedOut,
}

/// Sends one request on `sender` and waits for its answer until `deadline`,
/// counting in `run` an answer (and whether it ended inside `window`) or
/// what went wrong.
async fn exchange_until(
    sender: &mut SendRequest<Empty<Bytes>>,
    deadline: Instant,
    window: Window,
    run: &mut ClientRun,
) -> Exchanged {
    match timeout_at(deadline.into(), exchange(sender)).await {
        Ok(Ok((status, body))) if status == StatusCode::OK && body == BODY => {
            let done = Instant::now();
            if done >= window.start && done < window.end {
                run.completed += 1;
            }
            Exchanged::Answered(done)
        }
        Ok(Ok((status, body))) => {
            run.error(format_args!("unexpected response: {status} {body:?}"));
            Exchanged::Failed
        }
        Ok(Err(error)) => {
            run.error(format_args!("request: {error}"));
            Exchanged::Failed
        }
        Err(_) => Exchanged::TimedOut,
    }
}

/// Sends requests one after the other until the window ends: a closed
/// loop. Returns whether the connection is still usable.
async fn closed_loop(
    sender: &mut SendRequest<Empty<Bytes>>,
    window: Window,
    run: &mut ClientRun,
) -> bool {
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            return true;
        }
        let measured = sent >= window.start;
        match exchange_until(sender, window.deadline(measured), window, run).await {
            Exchanged::Answered(done) => {
                if measured {
                    run.latencies.push((done - sent).as_nanos() as u64);
                }
            }
            Exchanged::Failed => return false,
            Exchanged::TimedOut => {
                if measured {
                    run.unanswered += 1;
                }
                return false;
            }
        }
    }
}

/// Sends a request at each time `pacing` sets, or as soon as the connection
/// is free if it is still busy then, until the window ends: an open loop.
///
/// A request's latency is counted from when it was due, so time spent
/// waiting behind a slow response counts (no coordinated omission), less
/// the client's own lateness in sending it once it was due and its
/// connection free: tokio's timer has a resolution of 1 ms and fires about
/// that much late, which at these latencies (hundreds of µs) would
/// otherwise swamp the server's share. That is, latency = (the end of the
/// connection's previous exchange − the due time, if positive) + (body's
/// end − sent). The time from the due time alone is kept too
/// (`from_schedule`), and the lateness (`send_lags`).
async fn open_loop(sender: &mut SendRequest<Empty<Bytes>>, pacing: Pacing, run: &mut ClientRun) {
    let window = pacing.window;
    let mut due = interval_at(pacing.first.into(), pacing.period);
    // `Burst`: a request due while the connection is busy is sent as soon as
    // it is free, and `tick` still returns the time it was due, so every
    // request of the schedule is sent and timed from its due time. `Delay`
    // would push the rest of the schedule back and `Skip` would drop the
    // missed requests: both would offer less load exactly when the server is
    // slow, and hide that slowness.
    due.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // When the connection could last send: the end of its previous exchange.
    let mut free_since = Instant::now();
    loop {
        let scheduled = due.tick().await.into_std();
        if scheduled >= window.end {
            return;
        }
        let sent = Instant::now();
        let measured = scheduled >= window.start;
        match exchange_until(sender, window.deadline(measured), window, run).await {
            Exchanged::Answered(done) => {
                if measured {
                    let held_back = free_since.saturating_duration_since(scheduled);
                    run.latencies
                        .push((held_back + (done - sent)).as_nanos() as u64);
                    run.from_schedule.push((done - scheduled).as_nanos() as u64);
                    run.send_lags.push(
                        sent.saturating_duration_since(scheduled.max(free_since))
                            .as_nanos() as u64,
                    );
                }
                free_since = done;
            }
            Exchanged::Failed => return,
            Exchanged::TimedOut => {
                // This request and every later one due inside the window.
                run.unanswered += u64::from(measured) + pacing.due_after(scheduled);
                return;
            }
        }
    }
}

/// One window's results: every connection's run and what was sampled.
pub(crate) struct Phase {
    pub(crate) window: Window,
    pub(crate) runs: Vec<ClientRun>,
    pub(crate) sampled: Sampled,
}

/// Drives `config.connections` clients against `addr` on the client runtime:
/// the saturated window, then, given a rate (requests/s) and a lead-in, the
/// paced window on the same connections.
pub(crate) async fn drive(
    addr: SocketAddr,
    config: &Config,
    warm_up: Duration,
    monitor: Option<Monitor>,
    paced: Option<(f64, Duration)>,
) -> (Phase, Option<Phase>) {
    let start = Instant::now() + warm_up;
    let end = start + config.measure;
    let window = Window {
        start,
        end,
        drain_until: end + config.drain,
    };
    // The paced schedule starts as the saturated window ends; its lead-in is
    // not measured.
    let paced = paced.zip(config.paced).map(|((rate, lead_in), paced)| {
        let start = end + lead_in;
        let window = Window {
            start,
            end: start + paced,
            drain_until: start + paced + config.drain,
        };
        (rate, window)
    });
    let pacing = |connection: usize| {
        paced.map(|(rate, window)| Pacing {
            first: end + Duration::from_secs_f64(connection as f64 / rate),
            period: Duration::from_secs_f64(config.connections as f64 / rate),
            window,
        })
    };
    let clients: Vec<_> = (0..config.connections)
        .map(|connection| tokio::spawn(client(addr, window, pacing(connection))))
        .collect();
    let sampler = tokio::spawn(sample(monitor.clone(), window));
    let paced_sampler = paced.map(|(_, window)| (window, tokio::spawn(sample(monitor, window))));
    let mut runs = Vec::with_capacity(clients.len());
    let mut paced_runs = Vec::new();
    for client in clients {
        let (run, paced_run) = client.await.expect("a client task panicked");
        runs.push(run);
        paced_runs.extend(paced_run);
    }
    let sampled = sampler.await.expect("the sampler panicked");
    let paced = match paced_sampler {
        Some((window, sampler)) => Some(Phase {
            window,
            runs: paced_runs,
            sampled: sampler.await.expect("the sampler panicked"),
        }),
        None => None,
    };
    (
        Phase {
            window,
            runs,
            sampled,
        },
        paced,
    )
}
