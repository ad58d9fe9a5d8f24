//! [`ReportLayer`]: the worker middleware that tells the [`Pipeline`]
//! when a job starts and how it ended, for the pipeline to write.
//!
//! It sends what apalis's `TaskPersistLayer` sends (a `Lock` when a job
//! starts, a `Complete` with its encoded result when it ends), on a channel
//! the pipeline owns. apalis's layer can only be built by its own driver,
//! which holds the receiving end.
//!
//! [`Pipeline`]: super::pipeline::Pipeline

use std::task::{Context, Poll};

use apalis_core::backend::codec::Codec;
use apalis_core::backend::persistence::TaskEvent;
use apalis_core::backend::TaskResult;
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use futures_core::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;
use tower_layer::Layer;
use tower_service::Service;

/// Wraps a worker's service so each job reports its start and its outcome.
#[derive(Debug)]
pub(crate) struct ReportLayer<C, Compact> {
    events: UnboundedSender<TaskEvent<Compact>>,
    codec: C,
    results: bool,
    starts: bool,
}

impl<C, Compact> ReportLayer<C, Compact> {
    /// `results`: report outcomes (apalis's `persist_results`); `starts`:
    /// report starts (apalis's `lock_tasks`).
    pub(crate) fn new(
        events: UnboundedSender<TaskEvent<Compact>>,
        codec: C,
        results: bool,
        starts: bool,
    ) -> Self {
        Self {
            events,
            codec,
            results,
            starts,
        }
    }
}

impl<C: Clone, Compact> Clone for ReportLayer<C, Compact> {
    fn clone(&self) -> Self {
        Self {
            events: self.events.clone(),
            codec: self.codec.clone(),
            results: self.results,
            starts: self.starts,
        }
    }
}

impl<S, C: Clone, Compact> Layer<S> for ReportLayer<C, Compact> {
    type Service = Report<S, C, Compact>;

    fn layer(&self, inner: S) -> Self::Service {
        Report {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ReportLayer`] builds.
#[derive(Debug)]
pub(crate) struct Report<S, C, Compact> {
    inner: S,
    layer: ReportLayer<C, Compact>,
}

impl<S: Clone, C: Clone, Compact> Clone for Report<S, C, Compact> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, Args, C> Service<Task<Args>> for Report<S, C, C::Compact>
where
    S: Service<Task<Args>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Send,
    Args: Send + 'static,
    C: Codec<S::Response> + Clone + Send + 'static,
    C::Error: std::error::Error,
    C::Compact: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let context = task.ctx().clone();
        let run = self.inner.call(task);
        let layer = self.layer.clone();
        Box::pin(async move {
            // Every task a backend hands out has an id.
            let Some(task_id) = context.task_id().cloned() else {
                return run.await.map_err(Into::into);
            };
            // A send fails only once the pipeline is gone, and with it the
            // worker: the job's row stays claimed, and is taken back when
            // the worker's heartbeat expires.
            if layer.starts {
                let _ = layer.events.send(TaskEvent::Lock {
                    task_id: task_id.clone(),
                });
            }
            let outcome = run.await.map_err(Into::into);
            if layer.results {
                let result = outcome
                    .as_ref()
                    .map_err(ToString::to_string)
                    .and_then(|response| {
                        layer
                            .codec
                            .encode(response)
                            .map_err(|error| error.to_string())
                    });
                let _ = layer.events.send(TaskEvent::Complete(TaskResult {
                    task_id,
                    attempt: context.attempt(),
                    status: context.status(),
                    result,
                }));
            }
            outcome
        })
    }
}
