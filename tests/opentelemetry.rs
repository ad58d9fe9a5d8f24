//! OpenTelemetry: through `tracing-opentelemetry`, a task's
//! `background_task` span is exported as the root of a trace of its own,
//! with a link to the span that was current when the task was added (here
//! the request's), and it ends when the task ends, however long after the
//! request that is.
//!
//! The spans are read from the SDK's in-memory exporter behind a simple
//! (synchronous) span processor: a span is in the exporter as soon as it has
//! ended, and not before.

mod support;

use std::time::SystemTime;

use http::Method;
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower_background::Supervisor;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Registry;

use support::{app, request, serve, until, within, AsyncGate, Events, Gate};

/// An async task's span: its own trace, linked to the request's span, still
/// open after the request span has ended and ended once the task has.
#[tokio::test]
async fn an_async_task_span_is_its_own_trace_linked_to_the_request_and_ends_with_the_task() {
    let (exporter, _provider, _default) = export_to_memory();

    let supervisor = Supervisor::new();
    let events = Events::default();
    let gate = AsyncGate::default();
    let mut app = app(&supervisor, {
        let (events, gate) = (events.clone(), gate.clone());
        move |_, tasks| {
            let (events, gate) = (events.clone(), gate.clone());
            tasks.add(async move {
                events.record("started");
                gate.pass().await;
            });
        }
    });
    // The request's span covers the handler and the response body, as
    // tower-http's `TraceLayer` does: the task is added, and its span made,
    // while the request span is current.
    serve(&mut app, request(Method::POST, "/orders"))
        .instrument(tracing::info_span!("request"))
        .await;
    until("the task to start", || events.count("started") == 1).await;

    let request = request_span_ended_before_the_task(&exporter);
    let opened = SystemTime::now();
    gate.open();
    within("the task to finish", supervisor.wait_idle()).await;
    let task = task_span_ended_after(&exporter, &request, opened).await;
    assert_separate_and_linked(&request, &task);
    assert_eq!(attribute(&task, "http.method"), Some("POST".into()));
    assert_eq!(attribute(&task, "http.path"), Some("/orders".into()));
}

/// A blocking closure's span likewise: it ends when the closure returns on
/// the blocking pool, not when the request does.
#[tokio::test]
async fn a_blocking_task_span_is_its_own_trace_linked_to_the_request_and_ends_with_the_task() {
    let (exporter, _provider, _default) = export_to_memory();

    let supervisor = Supervisor::new();
    let events = Events::default();
    let gate = Gate::default();
    let _release = gate.opened_on_drop();
    let mut app = app(&supervisor, {
        let (events, gate) = (events.clone(), gate.clone());
        move |_, tasks| {
            let (events, gate) = (events.clone(), gate.clone());
            tasks.add_blocking(move || {
                events.record("started");
                gate.wait();
            });
        }
    });
    serve(&mut app, request(Method::POST, "/reports"))
        .instrument(tracing::info_span!("request"))
        .await;
    // The closure runs on another thread: wait in real time, bounded.
    support::eventually("the closure to start", || events.count("started") == 1).await;

    let request = request_span_ended_before_the_task(&exporter);
    let opened = SystemTime::now();
    gate.open();
    within("the task to finish", supervisor.wait_idle()).await;
    let task = task_span_ended_after(&exporter, &request, opened).await;
    assert_separate_and_linked(&request, &task);
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A `tracing` subscriber, the default on this thread until the guard is
/// dropped, that sends every span through `tracing-opentelemetry` to an
/// in-memory exporter: the set-up the README shows, with the exporter
/// swapped. The provider must outlive the test's spans.
fn export_to_memory() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = Registry::default()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tower-background")));
    let default = tracing::subscriber::set_default(subscriber);
    (exporter, provider, default)
}

/// The request span, which has ended and been exported while the task is
/// still running (held at its gate); the task's span has not.
fn request_span_ended_before_the_task(exporter: &InMemorySpanExporter) -> SpanData {
    let request = only_span(exporter, "request")
        .expect("the request span has ended, with the task still running");
    assert!(
        only_span(exporter, "background_task").is_none(),
        "the task span ended while the task was still running"
    );
    request
}

/// The task's span, once exported, which must have ended after `opened`
/// (when the test let the task finish), and so after the request span.
async fn task_span_ended_after(
    exporter: &InMemorySpanExporter,
    request: &SpanData,
    opened: SystemTime,
) -> SpanData {
    until("the task span to be exported", || {
        only_span(exporter, "background_task").is_some()
    })
    .await;
    let task = only_span(exporter, "background_task").expect("exported");
    assert!(
        task.end_time >= opened,
        "the task span ended before the task did: {:?} < {opened:?}",
        task.end_time
    );
    assert!(task.end_time > request.end_time);
    task
}

/// The task span has no parent and a trace of its own, and one link: to the
/// request span.
#[track_caller]
fn assert_separate_and_linked(request: &SpanData, task: &SpanData) {
    assert_eq!(
        task.parent_span_id,
        SpanId::INVALID,
        "the task span is a root, not the request span's child"
    );
    assert_ne!(
        task.span_context.trace_id(),
        request.span_context.trace_id(),
        "the task span starts a trace of its own"
    );
    let linked: Vec<_> = task.links.iter().map(|link| &link.span_context).collect();
    assert_eq!(
        linked,
        [&request.span_context],
        "the task span links to the request span (trace and span id)"
    );
}

/// The ended span named `name`, if one has been exported; fails the test if
/// more than one has.
fn only_span(exporter: &InMemorySpanExporter, name: &str) -> Option<SpanData> {
    let mut spans: Vec<SpanData> = exporter
        .get_finished_spans()
        .expect("the in-memory exporter is not shut down")
        .into_iter()
        .filter(|span| span.name == name)
        .collect();
    assert!(spans.len() <= 1, "more than one {name:?} span: {spans:?}");
    spans.pop()
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key.as_str() == key)
        .map(|attribute| attribute.value.clone())
}
