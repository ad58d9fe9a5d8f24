//! The request side: [`BackgroundTaskLayer`] puts a
//! [`BackgroundTasks`](crate::BackgroundTasks) handle into every request;
//! its service [`BackgroundTask`], [`ResponseFuture`] and [`ResponseBody`]
//! carry a guard down to the end of the response body, where the request's
//! tasks are handed off (or discarded).
//!
//! Read top-down: [`BackgroundTaskLayer`] → `service` → `future` → `body`,
//! with `handoff`'s guard travelling from the service to the body's end.

mod body;
mod future;
mod handoff;
mod service;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use service::BackgroundTask;

use std::sync::Arc;

use tower_layer::Layer;

use crate::policy::{OnDisconnect, OnServerError, Policy};

use crate::task_set::TaskSet;

/// A [`Layer`] that gives every request a [`BackgroundTasks`](crate::BackgroundTasks)
/// handle in its extensions and hands the tasks queued on it to a
/// [`Supervisor`](crate::Supervisor) once the response body has ended.
///
/// Built from a supervisor with [`Supervisor::layer`](crate::Supervisor::layer);
/// cheap to clone. The layer keeps the supervisor's task set alive, so it
/// may outlive the `Supervisor` value: once that has
/// been shut down or dropped, tasks offered through the layer are refused and
/// counted.
///
/// # When tasks are handed off
///
/// Exactly once per request, at the first of:
///
/// - the response body reports its end: `poll_frame` returns `None`, an
///   error or a trailers frame, or `is_end_stream()` becomes true after a
///   frame (a server may never poll again once a body with an exact
///   `Content-Length` is complete);
/// - the body's data reaches the response's `Content-Length` header: a
///   streamed body whose length the handler set (a download) may never say
///   it has ended, and the server stops polling it once it has written
///   that many bytes;
/// - the response body is dropped, if it had nothing to send from the start
///   (`is_end_stream()` already true, `Content-Length: 0`, a `HEAD` request,
///   a `1xx`, `204` or `304` status): the server releases such a body right
///   after writing the head;
/// - the response body is dropped before its end, which means the client went
///   away: tasks run, or are discarded under [`OnDisconnect::Skip`].
///
/// And they are discarded, never run, when no response exists: the inner
/// service returned an error, or the response future was dropped (a timeout
/// or a caught panic above this layer); or, under [`OnServerError::Skip`],
/// when the response has a `5xx` status.
///
/// # Example
///
/// ```
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_background::{BackgroundTasks, OnDisconnect, Supervisor};
/// # use http::{Request, Response};
/// # use http_body_util::Full;
/// # use bytes::Bytes;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let background = Supervisor::new();
/// let service = ServiceBuilder::new()
///     .layer(background.layer().on_disconnect(OnDisconnect::Skip))
///     .service(service_fn(|request: Request<()>| async move {
///         let tasks = request.extensions().get::<BackgroundTasks>().unwrap();
///         tasks.add(async { println!("after the response") });
///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hi"))))
///     }));
///
/// let response = service.oneshot(Request::new(())).await.unwrap();
/// drop(response); // a real server sends the body first
/// background.shutdown().await;
/// # }
/// ```
///
/// # With axum: on the router, or around it
///
/// `Router::layer(supervisor.layer())` is the usual way, and what the
/// examples do. axum then wraps every route in a boxed service of its own,
/// cloned for each request. Around the whole router, the layer runs once per
/// request, before routing, and the handlers extract
/// [`BackgroundTasks`](crate::BackgroundTasks) just the same:
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # mod example {
/// use axum::body::Body;
/// use axum::extract::Request;
/// use axum::http::Response;
/// use axum::{Router, ServiceExt};
/// use tower::ServiceBuilder;
/// use tower_background::Supervisor;
///
/// async fn serve(router: Router, supervisor: &Supervisor) -> std::io::Result<()> {
///     let app = ServiceBuilder::new()
///         // `axum::serve` takes axum's own body type.
///         .map_response(|response: Response<_>| response.map(Body::new))
///         .layer(supervisor.layer())
///         // What `Router::into_make_service` does: every handler made
///         // into a route once, not on each request.
///         .service(router.with_state(()));
///     let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
///     axum::serve(listener, ServiceExt::<Request>::into_make_service(app)).await
/// }
/// # }
/// ```
///
/// Around the router, a request gets the same handle and the same hand-off
/// for less work: with `Router::layer`, axum clones a boxed route wrapping
/// this layer's service (and the route inside it) for every request; around
/// the router, the layer's service is called in place and never cloned per
/// request. `BENCHMARKS.md` has the figures for both ways; its load benchmark
/// installs the layer with `Router::layer`.
#[derive(Clone, Debug)]
pub struct BackgroundTaskLayer {
    set: Arc<TaskSet>,
    policy: Policy,
}

impl BackgroundTaskLayer {
    /// A layer handing tasks to `set`, with the default policies
    /// ([`OnDisconnect::Run`], [`OnServerError::Run`]).
    pub(crate) fn new(set: Arc<TaskSet>) -> Self {
        Self {
            set,
            policy: Policy::default(),
        }
    }

    /// What to do with a request's tasks when the client goes away before the
    /// response body has ended.
    pub fn on_disconnect(mut self, policy: OnDisconnect) -> Self {
        self.policy.on_disconnect = policy;
        self
    }

    /// What to do with a request's tasks when its response is a `5xx`.
    pub fn on_server_error(mut self, policy: OnServerError) -> Self {
        self.policy.on_server_error = policy;
        self
    }
}

impl<S> Layer<S> for BackgroundTaskLayer {
    type Service = BackgroundTask<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BackgroundTask::new(inner, Arc::clone(&self.set), self.policy)
    }
}
