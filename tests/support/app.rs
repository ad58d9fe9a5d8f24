//! A handler behind the real `BackgroundTaskLayer`, as the in-process tests
//! drive it: build it, send it a request, read (or abandon) the response.

use std::convert::Infallible;
use std::future;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_background::layer::ResponseBody;
use tower_background::{BackgroundTasks, Supervisor};

use super::wait::within;

/// The response of [`app`]; its body hands the tasks off when it ends.
pub(crate) type Reply = Response<ResponseBody<Full<Bytes>>>;

/// A handler behind `BackgroundTaskLayer`, as the tests drive it.
pub(crate) type App = BoxCloneService<Request<()>, Reply, Infallible>;

/// The `BackgroundTasks` handle the layer put in `request`'s extensions.
pub(crate) fn background_tasks<B>(request: &Request<B>) -> &BackgroundTasks {
    request
        .extensions()
        .get::<BackgroundTasks>()
        .expect("BackgroundTaskLayer puts the handle in the extensions")
}

/// A service behind `supervisor.layer()` whose handler calls `handler` with
/// the request and its `BackgroundTasks` handle, then answers `200 ok`.
pub(crate) fn app<H>(supervisor: &Supervisor, handler: H) -> App
where
    H: Fn(&Request<()>, &BackgroundTasks) + Clone + Send + 'static,
{
    let inner = service_fn(move |request: Request<()>| {
        handler(&request, background_tasks(&request));
        future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"ok"),
        ))))
    });
    BoxCloneService::new(supervisor.layer().layer(inner))
}

pub(crate) fn request(method: Method, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .expect("a valid request")
}

/// Sends `request` through `app`; the response body is left unread.
pub(crate) async fn send(app: &mut App, request: Request<()>) -> Reply {
    let response = within("the response", async {
        app.ready().await?.call(request).await
    })
    .await;
    match response {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Reads the response body to its end, which hands the request's tasks off,
/// and returns it.
pub(crate) async fn finish(response: Reply) -> Bytes {
    match within("the response body", response.into_body().collect()).await {
        Ok(body) => body.to_bytes(),
        Err(never) => match never {},
    }
}

/// Sends `request` and reads the whole response, as a client would.
pub(crate) async fn serve(app: &mut App, request: Request<()>) -> Bytes {
    finish(send(app, request).await).await
}

/// Calls `app` and drops the response future before it completes, as a
/// timeout above the layer would: the handler has run, no response exists.
pub(crate) async fn abandon(app: &mut App, request: Request<()>) {
    let service = match within("the service to be ready", app.ready()).await {
        Ok(service) => service,
        Err(never) => match never {},
    };
    drop(service.call(request));
}
