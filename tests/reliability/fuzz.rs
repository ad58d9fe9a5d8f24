//! State machine fuzzing: proptest drives the real `BackgroundTaskLayer`,
//! through `tower::ServiceExt::oneshot`, with a scripted inner service and
//! response body, playing arbitrary sequences of: polls of the response
//! future (which may stay pending, fail, or be dropped), response statuses
//! and `HEAD`, body frames, errors, ends and `Pending`s, arbitrary
//! `is_end_stream` answers (even bodies that claim to be over and then send
//! more), drops, and `add` calls from other threads, before, during and
//! after the hand-off, some racing with the next step.
//!
//! After every step the counters are compared with a model written from the
//! crate's documented rules: the hand-off happens exactly once and never
//! before the end; a drop applies the policy; without a response, or with a
//! `5xx` under `OnServerError::Skip`, the tasks are discarded; late adds
//! follow the request's fate. It runs on a current-thread runtime, so handed
//! off tasks run only when the script says so, and `running` counts
//! hand-offs exactly. `src/body.rs` has an exhaustive unit test of the body
//! alone for short scripts; this one goes through the public API, with
//! longer scripts and other threads.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};

use bytes::Bytes;
use futures_util::task::noop_waker_ref;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};
use tower_background::layer::ResponseBody;
use tower_background::{BackgroundTasks, OnDisconnect, OnServerError, Stats, Supervisor};

use crate::harness::{scaled, summary, Ledger};

/// What one poll of the scripted body returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// A data frame, after which `is_end_stream()` answers `end_after`.
    Data {
        end_after: bool,
    },
    Error,
    End,
    Pending,
}

/// One step of the server (or of other code holding a handle).
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Polls the response future, or the body once there is one.
    Poll,
    /// Asks the body `is_end_stream()`.
    AskEnd,
    /// Another thread adds tasks, and is joined.
    Add(u8),
    /// Another thread adds tasks while the next step runs.
    AddDuring(u8),
    /// Lets the runtime run the tasks handed off so far.
    Run,
    /// Drops the response future, or the body once there is one.
    Drop,
}

#[derive(Clone, Debug)]
struct Case {
    head: bool,
    status: u16,
    /// Polls of the response future that return `Pending` first.
    pending: u8,
    /// The inner service returns `Err` instead of a response.
    fails: bool,
    /// `is_end_stream()` before the first poll.
    end_at_build: bool,
    frames: Vec<Next>,
    /// Tasks the handler queues.
    queued: u8,
    skip_on_disconnect: bool,
    skip_on_server_error: bool,
    steps: Vec<Step>,
}

fn next() -> impl Strategy<Value = Next> {
    prop_oneof![
        4 => any::<bool>().prop_map(|end_after| Next::Data { end_after }),
        1 => Just(Next::Error),
        1 => Just(Next::End),
        2 => Just(Next::Pending),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Poll),
        1 => Just(Step::AskEnd),
        2 => (1_u8..=3).prop_map(Step::Add),
        2 => (1_u8..=3).prop_map(Step::AddDuring),
        2 => Just(Step::Run),
        1 => Just(Step::Drop),
    ]
}

prop_compose! {
    fn case()(
        head in proptest::bool::weighted(0.15),
        status in prop::sample::select(vec![200_u16, 201, 204, 304, 500, 503]),
        pending in 0_u8..3,
        fails in proptest::bool::weighted(0.1),
        end_at_build in proptest::bool::weighted(0.15),
        frames in prop::collection::vec(next(), 0..16),
        queued in 0_u8..=3,
        skip_on_disconnect in any::<bool>(),
        skip_on_server_error in any::<bool>(),
        steps in prop::collection::vec(step(), 0..48),
    ) -> Case {
        Case {
            head, status, pending, fails, end_at_build, frames, queued,
            skip_on_disconnect, skip_on_server_error, steps,
        }
    }
}

/// The body the handler answers with: plays `Case::frames`, then ends.
struct Scripted {
    frames: VecDeque<Next>,
    end: bool,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        match self.frames.pop_front().unwrap_or(Next::End) {
            Next::Data { end_after } => {
                self.end = end_after;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
            }
            Next::Error => {
                self.end = true;
                Poll::Ready(Some(Err("broken")))
            }
            Next::End => {
                self.end = true;
                Poll::Ready(None)
            }
            Next::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end
    }
}

/// Where the request's tasks are, by the documented rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Queued,
    HandedOff,
    Discarded(Reason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    NoResponse,
    ClientDisconnected,
    ServerError,
}

/// The model: what the counters must say.
#[derive(Debug)]
struct Model {
    fate: Fate,
    /// What dropping the body means, once there is a response.
    if_dropped: Option<Fate>,
    submitted: u64,
    waiting: u64,
    handed_off: u64,
    no_response: u64,
    client_disconnected: u64,
    server_error: u64,
    /// The body's answer to `is_end_stream()`, and what it plays next.
    end: bool,
    frames: VecDeque<Next>,
}

impl Model {
    fn add(&mut self, n: u64) {
        self.submitted += n;
        match self.fate {
            Fate::Queued => self.waiting += n,
            Fate::HandedOff => self.handed_off += n,
            Fate::Discarded(reason) => *self.discarded(reason) += n,
        }
    }

    fn discarded(&mut self, reason: Reason) -> &mut u64 {
        match reason {
            Reason::NoResponse => &mut self.no_response,
            Reason::ClientDisconnected => &mut self.client_disconnected,
            Reason::ServerError => &mut self.server_error,
        }
    }

    /// Hands off or discards, the first time only.
    fn decide(&mut self, fate: Fate) {
        if self.fate != Fate::Queued {
            return;
        }
        self.fate = fate;
        let n = std::mem::take(&mut self.waiting);
        match fate {
            Fate::Queued => unreachable!(),
            Fate::HandedOff => self.handed_off += n,
            Fate::Discarded(reason) => *self.discarded(reason) += n,
        }
    }

    /// The response exists.
    fn respond(&mut self, case: &Case) {
        let status = StatusCode::from_u16(case.status).unwrap();
        let nothing_to_send = case.head
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || case.end_at_build;
        if status.is_server_error() && case.skip_on_server_error {
            self.decide(Fate::Discarded(Reason::ServerError));
            self.if_dropped = Some(Fate::Discarded(Reason::ServerError));
        } else if nothing_to_send || !case.skip_on_disconnect {
            self.if_dropped = Some(Fate::HandedOff);
        } else {
            self.if_dropped = Some(Fate::Discarded(Reason::ClientDisconnected));
        }
    }

    /// The body was polled once: what it returned, and whether that is its end.
    fn poll_body(&mut self) -> Next {
        let next = self.frames.pop_front().unwrap_or(Next::End);
        match next {
            Next::Data { end_after } => {
                self.end = end_after;
                if end_after {
                    self.decide(Fate::HandedOff);
                }
            }
            Next::Error | Next::End => {
                self.end = true;
                self.decide(Fate::HandedOff);
            }
            Next::Pending => {}
        }
        next
    }

    fn check(&self, stats: &Stats, ran: u64, settled: bool, what: &str) {
        let counted = (
            stats.submitted,
            stats.waiting,
            stats.running + stats.completed,
            stats.discard_reasons.no_response,
            stats.discard_reasons.client_disconnected,
            stats.discard_reasons.server_error,
        );
        let modelled = (
            self.submitted,
            self.waiting,
            self.handed_off,
            self.no_response,
            self.client_disconnected,
            self.server_error,
        );
        assert_eq!(
            counted, modelled,
            "{what}: counted vs model {self:?}\n{stats:?}"
        );
        assert_eq!(stats.submitted, stats.accounted(), "{what}: {stats:?}");
        assert_eq!(
            (stats.failed, stats.panicked, stats.cancelled, stats.refused),
            (0, 0, 0, 0),
            "{what}"
        );
        // A task does its work only when it runs, and runs only once.
        assert_eq!(ran, stats.completed, "{what}: side effects vs completed");
        if settled {
            assert_eq!(stats.running, 0, "{what}: still running after Run");
        }
    }
}

/// What the layered service's `oneshot` resolves to.
type Answer = Result<Response<ResponseBody<Scripted>>, &'static str>;

/// The request as the server holds it.
enum Stage {
    Responding(Pin<Box<dyn Future<Output = Answer>>>),
    Body(Pin<Box<ResponseBody<Scripted>>>),
    Gone,
}

/// Queues `n` counting tasks on `handle`, numbered from `next`.
fn add(handle: &BackgroundTasks, n: u64, ledger: &Ledger, next: &AtomicU64) {
    for _ in 0..n {
        let (ledger, id) = (ledger.clone(), next.fetch_add(1, Ordering::SeqCst));
        handle.add(async move { ledger.record(id) });
    }
}

/// Plays one case on a fresh current-thread runtime; returns the number of
/// steps checked.
fn play(case: &Case) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let supervisor = Supervisor::new();
        let max_tasks = 3 + 3 * case.steps.len() + 3;
        let ledger = Ledger::new(max_tasks);
        let next_id = Arc::new(AtomicU64::new(0));
        let kept: Arc<Mutex<Option<BackgroundTasks>>> = Arc::default();

        let mut layer = supervisor.layer();
        if case.skip_on_disconnect {
            layer = layer.on_disconnect(OnDisconnect::Skip);
        }
        if case.skip_on_server_error {
            layer = layer.on_server_error(OnServerError::Skip);
        }
        let handler = {
            let (case, ledger, next_id, kept) = (
                case.clone(),
                ledger.clone(),
                Arc::clone(&next_id),
                Arc::clone(&kept),
            );
            service_fn(move |request: Request<()>| {
                let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
                add(tasks, u64::from(case.queued), &ledger, &next_id);
                *kept.lock().unwrap() = Some(tasks.clone());
                let (mut pending, fails) = (case.pending, case.fails);
                let mut response = Response::new(Scripted {
                    frames: case.frames.iter().copied().collect(),
                    end: case.end_at_build,
                });
                *response.status_mut() = StatusCode::from_u16(case.status).unwrap();
                let mut response = Some(response);
                std::future::poll_fn(move |_| {
                    if pending > 0 {
                        pending -= 1;
                        return Poll::Pending;
                    }
                    match (fails, response.take()) {
                        (true, _) => Poll::Ready(Err("the handler failed")),
                        (false, Some(response)) => Poll::Ready(Ok(response)),
                        (false, None) => unreachable!("polled after completion"),
                    }
                })
            })
        };
        let mut request = Request::new(());
        if case.head {
            *request.method_mut() = Method::HEAD;
        }
        let mut stage = Stage::Responding(Box::pin(layer.layer(handler).oneshot(request)));

        let mut model = Model {
            fate: Fate::Queued,
            if_dropped: None,
            submitted: 0,
            waiting: 0,
            handed_off: 0,
            no_response: 0,
            client_disconnected: 0,
            server_error: 0,
            end: case.end_at_build,
            frames: case.frames.iter().copied().collect(),
        };
        let mut cx = Context::from_waker(noop_waker_ref());
        // How many tasks have done their work, asserting none did it twice.
        let ran = || ledger.assert_each(|id| u32::from(ledger.get(id) >= 1));

        // The server calls the service: the handler runs and queues its tasks.
        let mut steps: Vec<Step> = vec![Step::Poll];
        steps.extend(case.steps.iter().copied());
        // At the end the server lets go of whatever it still holds, and the
        // runtime runs what was handed off.
        steps.extend([Step::Drop, Step::Run]);
        let mut racing: Vec<(JoinHandle<()>, u64)> = Vec::new();
        let mut first = true;
        for (i, step) in steps.iter().enumerate() {
            let what = format!("step {i} ({step:?})");
            match *step {
                Step::Poll => match &mut stage {
                    Stage::Responding(future) => {
                        let polled = future.as_mut().poll(&mut cx);
                        if first {
                            model.add(u64::from(case.queued));
                            first = false;
                        }
                        match polled {
                            Poll::Pending => {}
                            Poll::Ready(Err(_)) => {
                                model.decide(Fate::Discarded(Reason::NoResponse));
                                stage = Stage::Gone;
                            }
                            Poll::Ready(Ok(response)) => {
                                model.respond(case);
                                assert_eq!(response.status().as_u16(), case.status);
                                let body = response.into_body();
                                assert_eq!(body.is_end_stream(), case.end_at_build, "{what}");
                                stage = Stage::Body(Box::pin(body));
                            }
                        }
                    }
                    Stage::Body(body) => {
                        let polled = body.as_mut().poll_frame(&mut cx);
                        let expected = model.poll_body();
                        let forwarded = match polled {
                            Poll::Ready(Some(Ok(_))) => matches!(expected, Next::Data { .. }),
                            Poll::Ready(Some(Err(_))) => expected == Next::Error,
                            Poll::Ready(None) => expected == Next::End,
                            Poll::Pending => expected == Next::Pending,
                        };
                        assert!(forwarded, "{what}: expected {expected:?}");
                    }
                    Stage::Gone => {}
                },
                Step::AskEnd => {
                    if let Stage::Body(body) = &stage {
                        assert_eq!(body.is_end_stream(), model.end, "{what}: not forwarded");
                    }
                }
                Step::Add(n) => {
                    let handle = kept.lock().unwrap().clone();
                    if let Some(handle) = handle {
                        let (ledger, next_id) = (ledger.clone(), Arc::clone(&next_id));
                        thread::spawn(move || add(&handle, u64::from(n), &ledger, &next_id))
                            .join()
                            .unwrap();
                        model.add(u64::from(n));
                    }
                }
                Step::AddDuring(n) => {
                    let handle = kept.lock().unwrap().clone();
                    if let Some(handle) = handle {
                        let (ledger, next_id) = (ledger.clone(), Arc::clone(&next_id));
                        let adder =
                            thread::spawn(move || add(&handle, u64::from(n), &ledger, &next_id));
                        racing.push((adder, u64::from(n)));
                        // Checked after the next step, once the adder is joined.
                        continue;
                    }
                }
                Step::Run => supervisor.wait_idle().await,
                Step::Drop => match std::mem::replace(&mut stage, Stage::Gone) {
                    Stage::Responding(future) => {
                        drop(future);
                        model.decide(Fate::Discarded(Reason::NoResponse));
                    }
                    Stage::Body(body) => {
                        drop(body);
                        model.decide(model.if_dropped.expect("a response"));
                    }
                    Stage::Gone => {}
                },
            }
            // Whichever order the racing adds and this step took, the
            // counts come out the same once the adder is done.
            for (adder, n) in racing.drain(..) {
                adder.join().unwrap();
                model.add(n);
                if matches!(step, Step::Run) {
                    supervisor.wait_idle().await;
                }
            }
            let settled = matches!(step, Step::Run);
            model.check(&supervisor.stats(), ran(), settled, &what);
        }

        // Each task handed off ran exactly once; the others never ran.
        let handed_off = model.fate == Fate::HandedOff;
        let ran = ledger.assert_each(|id| u32::from(id < model.submitted && handed_off));
        assert_eq!(ran, model.handed_off);
        let report = supervisor.shutdown().await;
        assert_eq!(report.stats.submitted, report.stats.accounted());
        steps.len()
    })
}

#[test]
fn the_hand_off_happens_exactly_once_and_never_before_the_end() {
    let cases = scaled(512, 8192) as u32;
    let checked = AtomicU64::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        // A failure prints the shrunk case; nothing is written to disk.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&case(), |case| {
            checked.fetch_add(play(&case) as u64, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    summary(
        "state machine fuzzing",
        &format!(
            "{cases} proptest cases, {} steps checked against the model (counters after \
             every step; side effects exactly once at the end); no divergence",
            checked.load(Ordering::Relaxed)
        ),
    );
}
