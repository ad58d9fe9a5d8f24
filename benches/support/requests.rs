//! Requests served in process, without a socket: what the `handoff`,
//! `admission` and `durable` benches use to drive a layered tower service
//! the way hyper would, so that a difference between two variants is the
//! layer's and not the driver's.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};
use tower_background::BackgroundTasks;

/// The URI every request carries: parsed once, cloned into each request (the
/// same on both sides of every comparison).
pub(crate) const URI: &str = "/signup?plan=free";

/// Two workers, as on the two-core machine the figures come from.
pub(crate) fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// One thread: no work stealing and no worker wake-ups.
pub(crate) fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A `POST` to `uri` with an empty body.
pub(crate) fn request(uri: &Uri) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    request
}

/// Every handler's response: a small body in one frame.
pub(crate) fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// The handle the layer put into `request`.
pub(crate) fn tasks_of(request: &Request<()>) -> &BackgroundTasks {
    request
        .extensions()
        .get::<BackgroundTasks>()
        .expect("the layer inserts the handle")
}

/// Calls `service` once and reads the response body the way hyper does:
/// frame by frame, stopping at `None` or as soon as `is_end_stream()` is true.
pub(crate) async fn serve_one<S, B>(service: &mut S, uri: &Uri)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let ready = service.ready().await.expect("infallible");
    let body = ready
        .call(request(uri))
        .await
        .expect("infallible")
        .into_body();
    read_to_end(body).await;
}

/// Reads `body` the way hyper does: frame by frame, stopping at `None` or
/// as soon as `is_end_stream()` is true. Through the layer, its end hands
/// the request's tasks off.
pub(crate) async fn read_to_end<B>(mut body: B)
where
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    while !body.is_end_stream() {
        match body.frame().await {
            Some(frame) => drop(black_box(frame.expect("a frame"))),
            None => break,
        }
    }
}
