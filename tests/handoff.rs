//! When a request's background tasks are handed off, discarded or left
//! waiting, driven in-process through `tower::ServiceExt::oneshot` with bodies
//! the tests poll (or drop) by hand.

mod support;

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, ThreadId};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use support::{assert_still_queued, counting, within, ChannelBody};
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};
use tower_background::layer::{BackgroundTask, ResponseBody, ResponseFuture};
use tower_background::{
    BackgroundTaskLayer, BackgroundTasks, OnDisconnect, OnServerError, Stats, Supervisor, Task,
};

/// Sends `request` through `layer` to a handler that gets the request's
/// handle from its extensions and answers with whatever `handler` returns.
async fn serve<B, H>(
    layer: &BackgroundTaskLayer,
    request: Request<()>,
    handler: H,
) -> Response<ResponseBody<B>>
where
    B: Body,
    H: FnOnce(&BackgroundTasks) -> Response<B>,
{
    let mut handler = Some(handler);
    let service = layer.layer(service_fn(move |request: Request<()>| {
        let handler = handler.take().expect("the service is called once");
        let tasks = request
            .extensions()
            .get::<BackgroundTasks>()
            .expect("the layer puts a handle in the request's extensions");
        let response = handler(tasks);
        async move { Ok::<_, Infallible>(response) }
    }));
    match within("the response", service.oneshot(request)).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn get() -> Request<()> {
    Request::new(())
}

fn with_status<B>(status: StatusCode, body: B) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn full(text: &'static str) -> Full<Bytes> {
    Full::new(Bytes::from_static(text.as_bytes()))
}

/// Reads one frame and returns its data; `None` at the end of the body.
async fn next_data<B>(body: &mut B) -> Option<Bytes>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let frame = within("a frame", body.frame()).await?;
    Some(
        frame
            .expect("a data frame")
            .into_data()
            .expect("a data frame"),
    )
}

async fn send(chunks: &tokio::sync::mpsc::Sender<support::Chunk>, text: &'static str) {
    chunks
        .send(Ok(Bytes::from_static(text.as_bytes())))
        .await
        .expect("the body is still alive");
}

/// Reads `body` to its end, which hands the request's tasks off.
async fn read_to_end<B>(body: B)
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    within("the body", body.collect()).await.unwrap();
}

/// Sends `request` through `layer` to a handler that queues one task adding
/// to `runs` and answers with `response`; returns the body, unread.
async fn serve_one_counting_task<B: Body>(
    layer: &BackgroundTaskLayer,
    request: Request<()>,
    runs: &Arc<AtomicUsize>,
    response: Response<B>,
) -> ResponseBody<B> {
    let task = counting(runs);
    let response = serve(layer, request, move |tasks| {
        tasks.add(task);
        response
    })
    .await;
    response.into_body()
}

/// Streams a response whose handler queued one task adding to `runs`, and
/// reads its first chunk, "one": the response is mid-stream. Returns the
/// sender that feeds the body, and the body.
async fn stream_first_chunk(
    layer: &BackgroundTaskLayer,
    runs: &Arc<AtomicUsize>,
) -> (
    tokio::sync::mpsc::Sender<support::Chunk>,
    ResponseBody<ChannelBody>,
) {
    let (chunks, body) = ChannelBody::new();
    let mut body = serve_one_counting_task(layer, get(), runs, Response::new(body)).await;
    send(&chunks, "one").await;
    assert_eq!(next_data(&mut body).await.unwrap(), "one");
    (chunks, body)
}

/// Waits until no handed-off task is running, then asserts that no task
/// adding to `runs` has run and that none is left waiting; returns the stats
/// for the test's own checks.
async fn assert_none_ran_or_waits(supervisor: &Supervisor, runs: &AtomicUsize) -> Stats {
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a discarded task ran");
    let stats = supervisor.stats();
    assert_eq!(stats.waiting, 0, "{stats:?}");
    stats
}

/// Serves a `GET` through `layer` like [`serve`], reads the body to its end,
/// and returns a clone of the request's handle, kept past that end.
async fn serve_keeping_the_handle<H>(layer: &BackgroundTaskLayer, handler: H) -> BackgroundTasks
where
    H: FnOnce(&BackgroundTasks) -> Response<Full<Bytes>>,
{
    let kept = OnceLock::new();
    let response = serve(layer, get(), |tasks| {
        kept.set(tasks.clone()).unwrap();
        handler(tasks)
    })
    .await;
    read_to_end(response.into_body()).await;
    kept.into_inner().expect("the handler ran")
}

// --- 1. The handle ---------------------------------------------------------

/// The handle, and the layer's service, future and body, have the auto traits
/// servers need (checked at compile time; axum's `Router::layer` also wants
/// the service `Sync`).
#[test]
fn handle_and_layered_types_are_send_and_sync() {
    fn handle<T: Clone + Send + Sync + 'static>() {}
    fn layered<S: Send + Sync, F: Send, B: Send + Sync>() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<BackgroundTask<S>>();
        sync::<BackgroundTask<S>>();
        send::<ResponseFuture<F>>();
        send::<ResponseBody<B>>();
        sync::<ResponseBody<B>>();
    }
    handle::<BackgroundTasks>();
    layered::<(), std::future::Pending<()>, Full<Bytes>>();
}

/// The inner service finds a `BackgroundTasks` handle in the request's
/// extensions, and what it queues there runs once the body is read.
#[tokio::test]
async fn inner_service_finds_the_handle_in_the_extensions() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let found = Arc::new(AtomicBool::new(false));

    let seen = Arc::clone(&found);
    let counter = Arc::clone(&runs);
    let service = supervisor
        .layer()
        .layer(service_fn(move |request: Request<()>| {
            let handle = request.extensions().get::<BackgroundTasks>();
            seen.store(handle.is_some(), Ordering::SeqCst);
            if let Some(tasks) = handle {
                tasks.add(counting(&counter));
            }
            async { Ok::<_, Infallible>(Response::new(full("ok"))) }
        }));
    let response = within("the response", service.oneshot(get()))
        .await
        .unwrap();
    read_to_end(response.into_body()).await;
    within("wait_idle", supervisor.wait_idle()).await;

    assert!(found.load(Ordering::SeqCst), "no handle in the extensions");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `add` takes futures returning `()` or `Result<T, E: Display>`; an `Err`
/// counts as failed, an `Ok` (of any `T`) and `()` as completed.
#[tokio::test]
async fn add_accepts_unit_and_result_outputs_and_counts_errors_as_failed() {
    let supervisor = Supervisor::new();
    let response = serve(&supervisor.layer(), get(), |tasks| {
        tasks.add(async {});
        tasks.add(async { Ok::<u32, io::Error>(7) });
        tasks.add(async { Err::<(), _>(io::Error::other("the mail server is down")) });
        tasks.add(async { Err::<u8, String>("so is the other one".to_owned()) });
        Response::new(full("ok"))
    })
    .await;
    read_to_end(response.into_body()).await;
    within("wait_idle", supervisor.wait_idle()).await;

    let stats = supervisor.stats();
    assert_eq!(stats.submitted, 4, "{stats:?}");
    assert_eq!(stats.completed, 2, "{stats:?}");
    assert_eq!(stats.failed, 2, "{stats:?}");
}

/// `add_blocking` runs its closure off the runtime's only worker thread.
#[tokio::test(flavor = "current_thread")]
async fn add_blocking_runs_on_another_thread_than_the_runtime() {
    let supervisor = Supervisor::new();
    let ran_on: Arc<Mutex<Option<ThreadId>>> = Arc::default();

    let slot = Arc::clone(&ran_on);
    let response = serve(&supervisor.layer(), get(), move |tasks| {
        tasks.add_blocking(move || {
            *slot.lock().unwrap() = Some(thread::current().id());
        });
        Response::new(full("ok"))
    })
    .await;
    read_to_end(response.into_body()).await;
    within("wait_idle", supervisor.wait_idle()).await;

    let ran_on = ran_on.lock().unwrap().expect("the closure ran");
    assert_ne!(ran_on, thread::current().id());
    assert_eq!(supervisor.stats().completed, 1);
}

/// A blocking closure that waits for an async task does not stall the
/// runtime: on a one-thread runtime the async task still runs and wakes it.
#[tokio::test(flavor = "current_thread")]
async fn add_blocking_does_not_stall_the_runtime() {
    let supervisor = Supervisor::new();
    let (blocking_started, started) = tokio::sync::oneshot::channel::<()>();
    let (wake, woken) = std::sync::mpsc::channel::<()>();

    let response = serve(&supervisor.layer(), get(), move |tasks| {
        tasks.add_blocking(move || {
            blocking_started.send(()).unwrap();
            // Err (counted as failed) if the async task below never ran.
            woken.recv_timeout(Duration::from_secs(5))
        });
        tasks.add(async move {
            started.await.unwrap();
            wake.send(()).unwrap();
        });
        Response::new(full("ok"))
    })
    .await;
    read_to_end(response.into_body()).await;
    within("wait_idle", supervisor.wait_idle()).await;

    let stats = supervisor.stats();
    assert_eq!(stats.completed, 2, "{stats:?}");
    assert_eq!(stats.failed + stats.panicked, 0, "{stats:?}");
}

// --- 2. Nothing starts before the response has ended ------------------------

/// A streaming body's tasks wait through its chunks and start when it ends
/// (`poll_frame` gives `None`).
#[tokio::test]
async fn streaming_body_hands_off_after_its_last_chunk() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let (chunks, body) = ChannelBody::new();

    let mut body =
        serve_one_counting_task(&supervisor.layer(), get(), &runs, Response::new(body)).await;
    assert_still_queued(&supervisor, &runs, 1).await;

    send(&chunks, "one").await;
    assert_eq!(next_data(&mut body).await.unwrap(), "one");
    send(&chunks, "two").await;
    assert_eq!(next_data(&mut body).await.unwrap(), "two");
    assert_still_queued(&supervisor, &runs, 1).await;

    drop(chunks);
    assert_eq!(next_data(&mut body).await, None);
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(supervisor.stats().completed, 1);
}

/// A body whose `is_end_stream()` turns true with its last frame hands off on
/// that poll: the server may never poll it again, nor drop it soon.
#[tokio::test]
async fn body_ending_with_its_frame_hands_off_without_another_poll() {
    let supervisor = &Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let response = Response::new(full("the whole body"));
    let mut body = serve_one_counting_task(&supervisor.layer(), get(), &runs, response).await;
    assert_still_queued(supervisor, &runs, 1).await;

    assert_eq!(next_data(&mut body).await.unwrap(), "the whole body");
    assert!(body.is_end_stream());
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "not handed off on its frame"
    );
    drop(body);
}

/// Responses that have nothing to send (empty body, `204`, `304`, `HEAD`):
/// the tasks wait while the body is held and run when the server drops it,
/// which is not a disconnect even under `OnDisconnect::Skip`.
#[tokio::test]
async fn bodiless_responses_hand_off_when_dropped_even_under_skip() {
    let supervisor = Supervisor::new();
    let layer = supervisor.layer().on_disconnect(OnDisconnect::Skip);
    let runs = Arc::new(AtomicUsize::new(0));

    let head = Request::builder().method(Method::HEAD).body(()).unwrap();
    let cases = [
        ("empty body", get(), Response::new(full(""))),
        ("204", get(), with_status(StatusCode::NO_CONTENT, full("x"))),
        (
            "304",
            get(),
            with_status(StatusCode::NOT_MODIFIED, full("x")),
        ),
        ("HEAD", head, Response::new(full("ignored for HEAD"))),
    ];
    for (n, (case, request, response)) in (1..).zip(cases) {
        let body = serve_one_counting_task(&layer, request, &runs, response).await;
        within("wait_idle", supervisor.wait_idle()).await;
        assert_eq!(runs.load(Ordering::SeqCst), n - 1, "{case}: ran while held");
        assert_eq!(supervisor.stats().waiting, 1, "{case}");

        drop(body);
        within("wait_idle", supervisor.wait_idle()).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            n,
            "{case}: not run once dropped"
        );
    }
    let stats = supervisor.stats();
    assert_eq!(stats.completed, 4, "{stats:?}");
    assert_eq!(stats.discarded, 0, "{stats:?}");
}

/// A body whose `poll_frame` gives an error has ended: the tasks start on that
/// poll (even under `OnDisconnect::Skip`, and before the body is dropped).
#[tokio::test]
async fn body_error_hands_off() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = supervisor.layer().on_disconnect(OnDisconnect::Skip);

    let (chunks, mut body) = stream_first_chunk(&layer, &runs).await;
    assert_still_queued(&supervisor, &runs, 1).await;

    chunks
        .send(Err(io::Error::other("upstream broke")))
        .await
        .unwrap();
    let frame = within("a frame", body.frame())
        .await
        .expect("an error frame");
    assert!(frame.is_err());
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(supervisor.stats().discarded, 0);
    drop(body);
}

/// However the end is seen (last frame, then `None`, then drop), the tasks
/// are handed off exactly once.
#[tokio::test]
async fn tasks_are_handed_off_exactly_once() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let response = Response::new(full("body"));
    let mut body = serve_one_counting_task(&supervisor.layer(), get(), &runs, response).await;
    assert_eq!(next_data(&mut body).await.unwrap(), "body");
    assert_eq!(next_data(&mut body).await, None);
    assert_eq!(next_data(&mut body).await, None);
    drop(body);
    within("wait_idle", supervisor.wait_idle()).await;

    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = supervisor.stats();
    assert_eq!(stats.submitted, 1, "{stats:?}");
    assert_eq!(stats.completed, 1, "{stats:?}");
    assert_eq!(stats.accounted(), stats.submitted, "{stats:?}");
}

/// `oneshot` returns with the task still queued, for an empty and a
/// non-empty body, on a multi-thread runtime where a started task would run
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_returns_before_any_task_starts() {
    let supervisor = Supervisor::new();
    let started = Arc::new(AtomicBool::new(false));

    for non_empty in [false, true] {
        let flag = Arc::clone(&started);
        let response = serve(&supervisor.layer(), get(), move |tasks| {
            tasks.add(async move { flag.store(true, Ordering::SeqCst) });
            let text = if non_empty { "body" } else { "" };
            Response::new(full(text))
        })
        .await;
        let stats = supervisor.stats();
        assert!(!started.load(Ordering::SeqCst), "non_empty: {non_empty}");
        assert_eq!((stats.waiting, stats.running), (1, 0), "{stats:?}");
        within("wait_idle", supervisor.wait_idle()).await;
        assert!(!started.load(Ordering::SeqCst), "non_empty: {non_empty}");

        drop(response);
        within("wait_idle", supervisor.wait_idle()).await;
        assert!(
            started.swap(false, Ordering::SeqCst),
            "non_empty: {non_empty}"
        );
    }
}

// --- 3. The client went away -------------------------------------------------

/// A body dropped mid-stream (the client went away) still runs its tasks by
/// default.
#[tokio::test]
async fn body_dropped_mid_stream_runs_tasks_by_default() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let (_chunks, body) = stream_first_chunk(&supervisor.layer(), &runs).await;
    assert_still_queued(&supervisor, &runs, 1).await;

    drop(body);
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(supervisor.stats().discarded, 0);
}

/// Under `OnDisconnect::Skip`, a body dropped mid-stream discards its tasks,
/// counted as `client_disconnected`, and they never run.
#[tokio::test]
async fn body_dropped_mid_stream_discards_tasks_under_skip() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = supervisor.layer().on_disconnect(OnDisconnect::Skip);

    let (_chunks, body) = stream_first_chunk(&layer, &runs).await;

    drop(body);
    let stats = assert_none_ran_or_waits(&supervisor, &runs).await;
    assert_eq!(stats.discarded, 1, "{stats:?}");
    assert_eq!(stats.discard_reasons.client_disconnected, 1, "{stats:?}");
    assert_eq!(stats.completed, 0, "{stats:?}");
}

/// Under `OnServerError::Skip`, a `500`'s tasks are discarded as
/// `server_error` and never run, while a `200`'s run.
#[tokio::test]
async fn server_error_discards_tasks_under_skip() {
    let supervisor = Supervisor::new();
    let layer = supervisor.layer().on_server_error(OnServerError::Skip);
    let failed_runs = Arc::new(AtomicUsize::new(0));
    let ok_runs = Arc::new(AtomicUsize::new(0));

    let response = with_status(StatusCode::INTERNAL_SERVER_ERROR, full("oops"));
    read_to_end(serve_one_counting_task(&layer, get(), &failed_runs, response).await).await;

    let response = Response::new(full("fine"));
    read_to_end(serve_one_counting_task(&layer, get(), &ok_runs, response).await).await;
    within("wait_idle", supervisor.wait_idle()).await;

    assert_eq!(failed_runs.load(Ordering::SeqCst), 0);
    assert_eq!(ok_runs.load(Ordering::SeqCst), 1);
    let stats = supervisor.stats();
    assert_eq!(stats.discarded, 1, "{stats:?}");
    assert_eq!(stats.discard_reasons.server_error, 1, "{stats:?}");
    assert_eq!(stats.completed, 1, "{stats:?}");
}

// --- 4. No response, no tasks --------------------------------------------------

/// When the inner service returns an error, the tasks it queued are discarded
/// as `no_response` and never run.
#[tokio::test]
async fn inner_service_error_discards_tasks() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let counter = Arc::clone(&runs);
    let service = supervisor
        .layer()
        .layer(service_fn(move |request: Request<()>| {
            let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
            tasks.add(counting(&counter));
            async { Err::<Response<Full<Bytes>>, _>(io::Error::other("handler failed")) }
        }));
    let result = within("the response", service.oneshot(get())).await;
    assert!(result.is_err());

    let stats = assert_none_ran_or_waits(&supervisor, &runs).await;
    assert_eq!(stats.discarded, 1, "{stats:?}");
    assert_eq!(stats.discard_reasons.no_response, 1, "{stats:?}");
}

/// When the response future is dropped unfinished (a timeout above the
/// layer), the tasks queued so far are discarded as `no_response`.
#[tokio::test(start_paused = true)]
async fn dropped_response_future_discards_tasks() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let counter = Arc::clone(&runs);
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .layer(supervisor.layer())
        .service(service_fn(move |request: Request<()>| {
            let tasks = request
                .extensions()
                .get::<BackgroundTasks>()
                .unwrap()
                .clone();
            let task = counting(&counter);
            async move {
                tasks.add(task);
                std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
            }
        }));
    let result = within("the timeout", service.oneshot(get())).await;
    assert!(result.is_err(), "the handler never answers");

    let stats = assert_none_ran_or_waits(&supervisor, &runs).await;
    assert_eq!(stats.submitted, 1, "{stats:?}");
    assert_eq!(stats.discard_reasons.no_response, 1, "{stats:?}");
}

// --- 5. Adding through a kept handle later -------------------------------------

/// A task added through a kept handle after the body has ended starts at
/// once, with no further request activity.
#[tokio::test]
async fn late_add_after_the_end_starts_at_once() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let kept = serve_keeping_the_handle(&supervisor.layer(), |_| Response::new(full("ok"))).await;
    kept.add(counting(&runs));
    assert_eq!(supervisor.stats().waiting, 0, "queued instead of started");
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A handle is `Send`: code on a thread outside the runtime may add to it
/// after the hand-off, and the task starts at once on the supervisor's
/// runtime, a blocking one with a timeout included (its deadline timer is
/// the runtime's, not the calling thread's, which has none).
#[tokio::test]
async fn late_add_from_a_thread_outside_the_runtime_starts_on_the_runtime() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let kept = serve_keeping_the_handle(&supervisor.layer(), |_| Response::new(full("ok"))).await;
    let tasks = kept.clone();
    let ran = Arc::clone(&runs);
    thread::spawn(move || {
        tasks.add(counting(&ran));
        tasks.add(
            Task::blocking(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .timeout(Duration::from_secs(30)),
        );
    })
    .join()
    .expect("adding from a plain thread does not panic");
    within("wait_idle", supervisor.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A task added through a kept handle after the request's tasks were
/// discarded is discarded too, for the same reason.
#[tokio::test]
async fn late_add_after_a_discard_is_discarded() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let layer = supervisor.layer().on_server_error(OnServerError::Skip);
    let kept = serve_keeping_the_handle(&layer, |tasks| {
        tasks.add(counting(&runs));
        with_status(StatusCode::SERVICE_UNAVAILABLE, full("later"))
    })
    .await;
    kept.add(counting(&runs));
    let stats = assert_none_ran_or_waits(&supervisor, &runs).await;
    assert_eq!(stats.discard_reasons.server_error, 2, "{stats:?}");
}

/// The same when nothing was queued before the discard (the request is
/// closed without its queue's lock): the reason is kept all the same.
#[tokio::test]
async fn late_add_after_discarding_an_empty_queue_is_discarded_for_its_reason() {
    let supervisor = Supervisor::new();
    let runs = Arc::new(AtomicUsize::new(0));

    let layer = supervisor.layer().on_server_error(OnServerError::Skip);
    let kept = serve_keeping_the_handle(&layer, |_| {
        with_status(StatusCode::SERVICE_UNAVAILABLE, full("later"))
    })
    .await;
    kept.add(counting(&runs));
    let stats = assert_none_ran_or_waits(&supervisor, &runs).await;
    assert_eq!(stats.discard_reasons.server_error, 1, "{stats:?}");
}
