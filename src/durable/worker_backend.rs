//! [`WorkerBackend`]: the apalis backend a durable worker runs on, on either
//! engine: a [`Pipeline`] over the engine's statements, jobs in JSON, and
//! the middleware that reports each job's start and outcome to the
//! pipeline.

use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_codec::json::JsonCodec;
use apalis_core::backend::finalize::Durable;
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use serde_json::Value;
use ulid::Ulid;

use super::job_events::ReportLayer;
use super::pipeline::{Pipeline, Statements};

/// An engine's statements, with the apalis configuration they run under.
pub(crate) trait EngineStatements: Statements<Compact = Vec<u8>, Response = Value> {
    /// The engine's apalis configuration (`apalis_sqlite::Config`,
    /// `apalis_postgres::Config`).
    type Config;

    fn config(&self) -> &Self::Config;
}

/// What a [`WorkerBackend`] takes from the engine's apalis configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// Jobs per claim.
    pub(crate) batch_size: usize,
    pub(crate) heartbeat_interval: Duration,
    /// Write each job's outcome (apalis's `persist_results`).
    pub(crate) results: bool,
    /// Mark each job started (apalis's `lock_tasks`).
    pub(crate) starts: bool,
}

/// The backend a worker for jobs of type `Args` runs on.
#[derive(Debug)]
pub(crate) struct WorkerBackend<S: EngineStatements, Args> {
    pipeline: Pipeline<S>,
    codec: JsonCodec,
    results: bool,
    starts: bool,
    _args: PhantomData<fn() -> Args>,
}

impl<S: EngineStatements, Args> WorkerBackend<S, Args>
where
    S::Error: Send + Sync + 'static,
{
    pub(crate) fn new(statements: S, options: Options) -> Self {
        Self {
            pipeline: Pipeline::new(statements, options.batch_size, options.heartbeat_interval),
            codec: JsonCodec::default(),
            results: options.results,
            starts: options.starts,
            _args: PhantomData,
        }
    }
}

impl<S: EngineStatements, Args> Backend for WorkerBackend<S, Args>
where
    S::Error: Send + Sync + 'static,
{
    type Task = Task<Vec<u8>>;
    type Error = S::Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.pipeline.poll_ready(cx, worker)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.pipeline.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.pipeline.poll_close(cx, worker)
    }
}

impl<S: EngineStatements, Args> BackendConfig for WorkerBackend<S, Args>
where
    S::Error: Send + Sync + 'static,
{
    type Args = Args;
    type Id = Ulid;
    type Kind = Durable;
    type Config = S::Config;
    type Layer = ReportLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &S::Config {
        self.pipeline.persistence().config()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        ReportLayer::new(
            self.pipeline.reports(),
            JsonCodec::<Value>::default(),
            self.results,
            self.starts,
        )
    }
}

impl<S: EngineStatements, Args> WireFormatBackend for WorkerBackend<S, Args>
where
    S::Error: Send + Sync + 'static,
{
    type Codec = JsonCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &JsonCodec {
        &self.codec
    }
}
