//! Tracing: every task runs in its own `background_task` span, a root span
//! (no parent) that `follows_from` the span that was current when the task
//! was added, and carries the request's method and path.
//!
//! A small `Layer` records each span (name, parent, fields), each
//! `follows_from` link and, for each event, the span that was current when it
//! was emitted. Spans are numbered in creation order, since the registry
//! reuses the ids of closed spans.

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use http::Method;
use tower_background::Supervisor;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

use support::{app, request, serve, within};

/// Each async task's events happen inside its own `background_task` span,
/// which has no parent, follows from the handler's span, and names the
/// request's method and path.
#[tokio::test]
async fn each_task_runs_in_its_own_span_following_the_handler_span() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(Registry::default().with(recorder.clone()));

    let supervisor = Supervisor::new();
    let mut app = app(&supervisor, |_, tasks| {
        let _handler = tracing::info_span!("handler").entered();
        tasks.add(async { tracing::info!("first task ran") });
        tasks.add(async { tracing::info!("second task ran") });
    });
    serve(&mut app, request(Method::POST, "/orders")).await;
    within("the tasks to finish", supervisor.wait_idle()).await;

    let recorded = recorder.take();
    let handler = recorded.only_span_named("handler");
    let first = recorded.span_of_event("first task ran");
    let second = recorded.span_of_event("second task ran");
    assert_ne!(first, second, "each task has its own span");
    for task in [first, second] {
        let span = &recorded.spans[task];
        assert_eq!(span.name, "background_task");
        assert_eq!(span.parent, None, "a root span, not the handler's child");
        assert!(
            recorded.follows.contains(&(task, handler)),
            "the task span does not follow from the handler span: {:?}",
            recorded.follows
        );
        assert_eq!(span.fields["http.method"], "POST");
        assert_eq!(span.fields["http.path"], "/orders");
    }
}

/// A blocking closure runs inside its task's `background_task` span, which
/// follows from the handler's span.
#[tokio::test]
async fn a_blocking_task_runs_in_its_own_span_following_the_handler_span() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(Registry::default().with(recorder.clone()));

    let supervisor = Supervisor::new();
    let mut app = app(&supervisor, |_, tasks| {
        let _handler = tracing::info_span!("handler").entered();
        // The default subscriber is per thread and the closure runs on a
        // blocking-pool thread: it emits through the test's subscriber
        // explicitly. What is checked is which span is entered there.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        tasks.add_blocking(move || {
            tracing::dispatcher::with_default(&dispatch, || tracing::info!("blocking task ran"));
        });
    });
    serve(&mut app, request(Method::POST, "/reports")).await;
    within("the task to finish", supervisor.wait_idle()).await;

    let recorded = recorder.take();
    let handler = recorded.only_span_named("handler");
    let task = recorded.span_of_event("blocking task ran");
    assert_eq!(recorded.spans[task].name, "background_task");
    assert_eq!(recorded.spans[task].parent, None);
    assert!(recorded.follows.contains(&(task, handler)));
}

/// The task span is a root even when some span is current on the thread
/// that first polls the task: here the whole runtime runs inside a
/// `request` span, and the task span is still not its child (nor the
/// handler's), while the handler span is.
#[test]
fn the_task_span_is_a_root_even_when_a_request_span_is_current() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(Registry::default().with(recorder.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    tracing::info_span!("request").in_scope(|| {
        runtime.block_on(async {
            let supervisor = Supervisor::new();
            let mut app = app(&supervisor, |_, tasks| {
                let _handler = tracing::info_span!("handler").entered();
                tasks.add(async { tracing::info!("task ran") });
            });
            serve(&mut app, request(Method::GET, "/")).await;
            within("the task to finish", supervisor.wait_idle()).await;
        });
    });

    let recorded = recorder.take();
    let request = recorded.only_span_named("request");
    let handler = recorded.only_span_named("handler");
    assert_eq!(recorded.spans[handler].parent, Some(request));
    let task = recorded.span_of_event("task ran");
    assert_eq!(recorded.spans[task].name, "background_task");
    assert_eq!(recorded.spans[task].parent, None);
    assert!(recorded.follows.contains(&(task, handler)));
}

/// A task's failure is logged inside its `background_task` span, so the
/// `ERROR` event is tied to the request that queued the task.
#[tokio::test]
async fn a_failure_is_logged_inside_the_task_span() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(Registry::default().with(recorder.clone()));

    let supervisor = Supervisor::new();
    let mut app = app(&supervisor, |_, tasks| {
        let _handler = tracing::info_span!("handler").entered();
        tasks.add(async { Err::<(), _>("smtp down") });
    });
    serve(&mut app, request(Method::POST, "/signup")).await;
    within("the task to finish", supervisor.wait_idle()).await;

    let recorded = recorder.take();
    let handler = recorded.only_span_named("handler");
    let event = recorded
        .events
        .iter()
        .find(|event| event.level == tracing::Level::ERROR)
        .expect("an ERROR event for the failure");
    let task = event.span.expect("the ERROR event is inside a span");
    assert_eq!(recorded.spans[task].name, "background_task");
    assert!(recorded.follows.contains(&(task, handler)));
}

// ---------------------------------------------------------------------------
// The recording layer
// ---------------------------------------------------------------------------

/// A span's number: its index in [`Recorded::spans`].
struct Number(usize);

#[derive(Debug)]
struct SpanRecord {
    name: &'static str,
    parent: Option<usize>,
    fields: BTreeMap<&'static str, String>,
}

#[derive(Debug)]
struct EventRecord {
    message: String,
    level: tracing::Level,
    /// The span current when the event was emitted.
    span: Option<usize>,
}

#[derive(Debug, Default)]
struct Recorded {
    spans: Vec<SpanRecord>,
    /// `(span, follows)` pairs, as passed to `on_follows_from`.
    follows: Vec<(usize, usize)>,
    events: Vec<EventRecord>,
}

impl Recorded {
    fn only_span_named(&self, name: &str) -> usize {
        let numbers: Vec<usize> = (0..self.spans.len())
            .filter(|&n| self.spans[n].name == name)
            .collect();
        match numbers[..] {
            [number] => number,
            _ => panic!("expected one {name:?} span, got {:?}", self.spans),
        }
    }

    fn span_of_event(&self, message: &str) -> usize {
        let event = self
            .events
            .iter()
            .find(|event| event.message == message)
            .unwrap_or_else(|| panic!("no event {message:?} in {:?}", self.events));
        event
            .span
            .unwrap_or_else(|| panic!("the event {message:?} is in no span"))
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Recorded>>);

impl Recorder {
    fn take(&self) -> Recorded {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn number<S>(ctx: &Context<'_, S>, id: &Id) -> Option<usize>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let span = ctx.span(id)?;
    let extensions = span.extensions();
    extensions.get::<Number>().map(|number| number.0)
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("the registry knows a new span");
        let parent = span.parent().and_then(|parent| number(&ctx, &parent.id()));
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let mut recorded = self.0.lock().unwrap();
        let number = recorded.spans.len();
        recorded.spans.push(SpanRecord {
            name: attrs.metadata().name(),
            parent,
            fields: fields.0,
        });
        span.extensions_mut().insert(Number(number));
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        if let (Some(span), Some(follows)) = (number(&ctx, span), number(&ctx, follows)) {
            self.0.lock().unwrap().follows.push((span, follows));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let span = ctx
            .lookup_current()
            .and_then(|span| number(&ctx, &span.id()));
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().events.push(EventRecord {
            message: fields.0.remove("message").unwrap_or_default(),
            level: *event.metadata().level(),
            span,
        });
    }
}

/// Field values as text (strings without quotes).
#[derive(Default)]
struct Fields(BTreeMap<&'static str, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}
