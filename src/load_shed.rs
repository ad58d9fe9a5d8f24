//! [`LoadShedLayer`]: answers `503` before the handler runs while the
//! background backlog is above a high-water mark; its service [`LoadShed`],
//! [`ResponseFuture`] and [`ResponseBody`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::monitor::Monitor;
use crate::task_set::TaskSet;

/// A [`Layer`] that sheds load: while a supervisor's backlog (tasks waiting
/// for their response, queued for a slot, or running: [`Stats::backlog`])
/// is above `high_water`, requests are answered `503 Service Unavailable`
/// with `Retry-After` and a JSON body, without calling the inner service.
/// Below the mark, requests pass through untouched.
///
/// Shedding before the handler runs keeps an overloaded server from doing a
/// request's work only to find it cannot queue the follow-up; handlers that
/// want to decide per request use
/// [`try_add`](crate::BackgroundTasks::try_add) instead. Shed requests are
/// counted in [`Stats::shed`].
///
/// The response body type is [`ResponseBody`], whose data must be buildable
/// from [`Bytes`] (true of axum's, hyper's and tonic's bodies).
///
/// [`Stats::backlog`]: crate::Stats::backlog
/// [`Stats::shed`]: crate::Stats::shed
///
/// # Example
///
/// ```
/// # #[cfg(feature = "axum")]
/// # mod example {
/// use axum::{routing::post, Router};
/// use tower_background::{LoadShedLayer, Supervisor};
///
/// fn app(background: &Supervisor) -> Router {
///     Router::new()
///         .route("/export", post(|| async { "queued" }))
///         .layer(background.layer())
///         // outermost: refuse early, before any other work
///         .layer(LoadShedLayer::new(&background.monitor(), 10_000))
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LoadShedLayer {
    set: Arc<TaskSet>,
    high_water: u64,
    retry_after: Duration,
}

impl LoadShedLayer {
    /// Sheds while the backlog `monitor` sees is above `high_water`,
    /// suggesting clients retry after 1 s.
    pub fn new(monitor: &Monitor, high_water: u64) -> Self {
        Self {
            set: Arc::clone(monitor.task_set()),
            high_water,
            retry_after: Duration::from_secs(1),
        }
    }

    /// The `Retry-After` sent with a shed request (whole seconds, at least 1).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`LoadShedLayer`].
#[derive(Clone, Debug)]
pub struct LoadShed<S> {
    inner: S,
    layer: LoadShedLayer,
}

impl<S> LoadShed<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LoadShed<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let backlog = layer.set.backlog();
        if backlog > layer.high_water {
            layer.set.counters.shed();
            tracing::debug!(
                http.method = %request.method(),
                http.path = request.uri().path(),
                backlog,
                high_water = layer.high_water,
                "request shed: background backlog above its mark",
            );
            return ResponseFuture {
                state: State::Shed {
                    response: Some(overloaded(backlog, layer.high_water, layer.retry_after)),
                },
            };
        }
        ResponseFuture {
            state: State::Inner {
                future: self.inner.call(request),
            },
        }
    }
}

fn overloaded(backlog: u64, high_water: u64, retry_after: Duration) -> Response<Bytes> {
    let body = format!(
        r#"{{"error":"overloaded","message":"{backlog} background tasks are pending, above the limit of {high_water}; retry later"}}"#
    );
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after.as_secs().max(1)),
    );
    response
}

pin_project! {
    /// The response future of [`LoadShed`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProjection]
    #[derive(Debug)]
    enum State<F> {
        Inner { #[pin] future: F },
        Shed { response: Option<Response<Bytes>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Inner { future } => future
                .poll(cx)
                .map_ok(|response| response.map(ResponseBody::inner)),
            StateProjection::Shed { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(ResponseBody::shed))),
                // Polled again after completion: a contract breach by the
                // caller; stay pending rather than panic.
                None => Poll::Pending,
            },
        }
    }
}

pin_project! {
    /// The response body of [`LoadShed`]: the inner service's, or the JSON
    /// body of a `503`.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Shed { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    fn shed(data: Bytes) -> Self {
        Self {
            kind: Kind::Shed { data: Some(data) },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProjection::Inner { body } => body.poll_frame(cx),
            KindProjection::Shed { data } => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(data.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Shed { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Shed { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}
