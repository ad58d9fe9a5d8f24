//! The `metrics` feature, read through a real recorder (`metrics-util`'s
//! `DebuggingRecorder`): every way a task ends is counted under its lane and
//! name, the lanes' gauges follow their slots and queues, and the wait and
//! run histograms get a sample per task.
//!
//! Each test installs its own recorder on its own thread
//! (`set_default_local_recorder`) before building its supervisor, and runs
//! on a current-thread runtime, so the tests of this binary, which run in
//! parallel, never see each other's metrics.

#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use tower::{service_fn, Layer, ServiceExt};
use tower_background::{Group, LoadShedLayer, Retry, Supervisor, Task};

use support::{abandon, app, explode, request, serve, AsyncGate};

/// One snapshot of a recorder (taking it resets the recorder's counters and
/// gauges to zero): each series with its sorted labels.
struct Recorded(Vec<Series>);

struct Series {
    kind: MetricKind,
    name: String,
    labels: Vec<(String, String)>,
    value: DebugValue,
}

impl Recorded {
    fn take(snapshotter: &Snapshotter) -> Self {
        let metrics = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _unit, _description, value)| {
                let (kind, key) = key.into_parts();
                let mut labels: Vec<_> = key
                    .labels()
                    .map(|label| (label.key().to_owned(), label.value().to_owned()))
                    .collect();
                labels.sort();
                Series {
                    kind,
                    name: key.name().to_owned(),
                    labels,
                    value,
                }
            })
            .collect();
        Self(metrics)
    }

    /// The value of the series `name{labels}`, if it was registered.
    fn find(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut wanted: Vec<_> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        wanted.sort();
        self.0
            .iter()
            .find(|series| series.kind == kind && series.name == name && series.labels == wanted)
            .map(|series| &series.value)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        match self.find(MetricKind::Counter, name, labels)? {
            DebugValue::Counter(value) => Some(*value),
            _ => None,
        }
    }

    fn gauge(&self, name: &str, lane: &str) -> Option<f64> {
        match self.find(MetricKind::Gauge, name, &[("lane", lane)])? {
            DebugValue::Gauge(value) => Some(value.into_inner()),
            _ => None,
        }
    }

    /// Every series of the gauge `name`: its lane and value, by lane.
    fn gauges(&self, name: &str) -> Vec<(String, f64)> {
        let mut gauges: Vec<_> = self
            .0
            .iter()
            .filter(|series| series.kind == MetricKind::Gauge && series.name == name)
            .filter_map(|series| match (&series.labels[..], &series.value) {
                ([(key, lane)], DebugValue::Gauge(value)) if key == "lane" => {
                    Some((lane.clone(), value.into_inner()))
                }
                _ => None,
            })
            .collect();
        gauges.sort_by(|a, b| a.0.cmp(&b.0));
        gauges
    }

    fn histogram(&self, name: &str, lane: &str, task: &str) -> Option<Vec<f64>> {
        let labels = [("lane", lane), ("name", task)];
        match self.find(MetricKind::Histogram, name, &labels)? {
            DebugValue::Histogram(values) => Some(values.iter().map(|v| v.into_inner()).collect()),
            _ => None,
        }
    }

    /// `background_tasks_total{lane, name, outcome}`.
    fn tasks(&self, lane: &str, name: &str, outcome: &str) -> Option<u64> {
        let labels = [("lane", lane), ("name", name), ("outcome", outcome)];
        self.counter("background_tasks_total", &labels)
    }
}

#[tokio::test(start_paused = true)]
async fn every_way_a_task_ends_is_counted_under_its_lane_and_name() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let supervisor = Supervisor::builder().lane("email", 1).build();

    let mut app = app(&supervisor, |_, tasks| {
        tasks.add(Task::new(async {}).name("welcome").lane("email"));
        tasks.add(async {});
        tasks.add(Task::new(async { Err::<(), _>("smtp said no") }).name("fails"));
        tasks.add(Task::new(async { explode("in a test") }).name("panics"));
        let slow = Task::new(tokio::time::sleep(Duration::from_secs(60)));
        tasks.add(slow.name("slow").timeout(Duration::from_secs(1)));
        tasks.add(Task::blocking(|| ()).name("render"));
    });
    serve(&mut app, request(Method::POST, "/signup")).await;
    supervisor.wait_idle().await;

    let recorded = Recorded::take(&snapshotter);
    assert_eq!(recorded.tasks("email", "welcome", "completed"), Some(1));
    assert_eq!(recorded.tasks("default", "", "completed"), Some(1));
    assert_eq!(recorded.tasks("default", "fails", "failed"), Some(1));
    assert_eq!(recorded.tasks("default", "panics", "panicked"), Some(1));
    assert_eq!(recorded.tasks("default", "slow", "timed_out"), Some(1));
    assert_eq!(recorded.tasks("blocking", "render", "completed"), Some(1));
    // A name's series exist for every outcome from its first task on (at
    // zero), so a rate over them is defined before the first failure.
    assert_eq!(recorded.tasks("email", "welcome", "failed"), Some(0));
    // Each task is counted once, under its own name only.
    assert_eq!(recorded.tasks("default", "fails", "completed"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn tasks_that_never_ran_are_counted_under_their_lane_and_name() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let supervisor = Supervisor::builder()
        .lane("email", 1)
        .max_queued(2)
        .grace_period(Duration::from_secs(2))
        .build();

    // Discarded: the response future is dropped, so no response exists.
    let mut dropped = app(&supervisor, |_, tasks| {
        tasks.add(Task::new(async {}).name("never-answered"));
    });
    abandon(&mut dropped, request(Method::POST, "/dropped")).await;

    // Rejected: a lane that does not exist (no lane label: the requested
    // name could be anything).
    let mut unknown = app(&supervisor, |_, tasks| {
        tasks.add(Task::new(async {}).name("lost").lane("nowhere"));
    });
    serve(&mut unknown, request(Method::POST, "/unknown")).await;

    // Cancelled: one task holds the email lane's only slot past the grace
    // period, another waits in its queue; the abort ends both.
    let forever = AsyncGate::default();
    let tasks = supervisor.tasks();
    let gate = forever.clone();
    tasks.add(
        Task::new(async move { gate.pass().await })
            .name("stuck")
            .lane("email"),
    );
    tasks.add(Task::new(async {}).name("behind").lane("email"));

    // Rejected: the queue is full (`behind` and this request's first task
    // are the two pending tasks it holds).
    let mut full = app(&supervisor, |_, tasks| {
        tasks.add(Task::new(async {}).name("fits"));
        tasks.add(Task::new(async {}).name("overflows"));
    });
    let _ = serve(&mut full, request(Method::POST, "/full")).await;

    supervisor.shutdown().await;
    // Refused: shutdown has begun (here, ended).
    tasks.add(Task::new(async {}).name("late").lane("email"));

    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.tasks("default", "never-answered", "discarded"),
        Some(1)
    );
    assert_eq!(recorded.tasks("", "lost", "rejected"), Some(1));
    assert_eq!(recorded.tasks("default", "overflows", "rejected"), Some(1));
    // The rejection turned the response into a 503, discarding the rest.
    assert_eq!(recorded.tasks("default", "fits", "discarded"), Some(1));
    assert_eq!(recorded.tasks("email", "stuck", "cancelled"), Some(1));
    assert_eq!(recorded.tasks("email", "behind", "cancelled"), Some(1));
    assert_eq!(recorded.tasks("email", "late", "refused"), Some(1));
    // Only a task that started has a run time.
    let stuck = recorded.histogram("background_task_run_seconds", "email", "stuck");
    assert_eq!(stuck.map(|samples| samples.len()), Some(1));
    let behind = recorded.histogram("background_task_run_seconds", "email", "behind");
    assert_eq!(behind, Some(vec![]));
}

#[tokio::test]
async fn lane_gauges_follow_slots_queues_and_limits() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let supervisor = Supervisor::builder()
        .lane("email", 2)
        .blocking_limit(4)
        .build();

    let gate = AsyncGate::default();
    let tasks = supervisor.tasks();
    for _ in 0..3 {
        let gate = gate.clone();
        tasks.add(Task::new(async move { gate.pass().await }).lane("email"));
    }
    let held = gate.clone();
    tasks.add(async move { held.pass().await });
    support::eventually("the lanes to fill", || {
        let lanes = supervisor.stats().lanes;
        lanes[0].running == 1 && lanes[2].running == 2
    })
    .await;

    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.gauge("background_tasks_running", "email"),
        Some(2.0)
    );
    assert_eq!(
        recorded.gauge("background_tasks_queued", "email"),
        Some(1.0)
    );
    assert_eq!(
        recorded.gauge("background_tasks_running", "default"),
        Some(1.0)
    );
    // The default lane has no limit, and so no limit gauge.
    let limits = recorded.gauges("background_tasks_limit");
    let expected = [("blocking".to_owned(), 4.0), ("email".to_owned(), 2.0)];
    assert_eq!(limits, expected);

    gate.open();
    supervisor.wait_idle().await;
    // The snapshot above reset the gauges to zero; what has happened since
    // is every slot given back and the queued task taken out.
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.gauge("background_tasks_running", "email"),
        Some(-2.0)
    );
    assert_eq!(
        recorded.gauge("background_tasks_queued", "email"),
        Some(-1.0)
    );
    assert_eq!(
        recorded.gauge("background_tasks_running", "default"),
        Some(-1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn the_wait_and_the_run_of_each_task_are_timed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let supervisor = Supervisor::builder().lane("email", 1).build();

    // One slot: `second` waits while `first` runs for 3 s, then runs for 1 s
    // (each sleep made when its task starts).
    let mut app = app(&supervisor, |_, tasks| {
        let first = Task::new(async { tokio::time::sleep(Duration::from_secs(3)).await });
        tasks.add(first.name("first").lane("email"));
        let second = Task::new(async { tokio::time::sleep(Duration::from_secs(1)).await });
        tasks.add(second.name("second").lane("email"));
    });
    serve(&mut app, request(Method::POST, "/signup")).await;
    supervisor.wait_idle().await;

    let recorded = Recorded::take(&snapshotter);
    let seconds = |metric, name| {
        let samples = recorded
            .histogram(metric, "email", name)
            .unwrap_or_default();
        assert_eq!(samples.len(), 1, "{metric} of {name}: {samples:?}");
        samples[0]
    };
    let about = |value: f64, expected: f64| (expected..expected + 0.1).contains(&value);
    let wait = "background_task_wait_seconds";
    let run = "background_task_run_seconds";
    assert!(about(seconds(wait, "first"), 0.0));
    assert!(about(seconds(run, "first"), 3.0));
    assert!(about(seconds(wait, "second"), 3.0));
    assert!(about(seconds(run, "second"), 1.0));
}

#[tokio::test(start_paused = true)]
async fn retries_skipped_steps_and_shed_requests_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let supervisor = Supervisor::new();

    let tasks = supervisor.tasks();
    let retry = Retry::exponential(3).without_jitter();
    tasks.add(Task::retrying(retry, || async { Err::<(), _>("down") }).name("flaky"));
    tasks.add(
        Group::sequential()
            .step(async { Err::<(), _>("first step failed") })
            .step(async {})
            .step(async {}),
    );
    supervisor.wait_idle().await;

    // A request shed while a task runs (backlog 1, above a mark of 0).
    let gate = AsyncGate::default();
    let held = gate.clone();
    tasks.add(async move { held.pass().await });
    let shed = LoadShedLayer::new(&supervisor.monitor(), 0).layer(service_fn(
        |_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        },
    ));
    let response = shed.oneshot(request(Method::GET, "/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    gate.open();
    supervisor.wait_idle().await;

    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter("background_task_retries_total", &[]),
        Some(2)
    );
    assert_eq!(
        recorded.counter("background_task_steps_skipped_total", &[]),
        Some(2)
    );
    assert_eq!(
        recorded.counter("background_requests_shed_total", &[]),
        Some(1)
    );
    assert_eq!(recorded.tasks("default", "flaky", "failed"), Some(1));
}
