//! The helpers every behaviour test shares, one concept per file:
//!
//! | module | what it holds |
//! |---|---|
//! | [`wait`] | bounded waits: a hang fails the test instead of stalling the suite |
//! | [`app`] | a handler behind the real `BackgroundTaskLayer`, driven in-process |
//! | [`body`] | streaming response bodies the test feeds or meters |
//! | [`tasks`] | what background tasks do: count their runs, log events, wait at gates |
//! | [`stats`] | whole `Stats` snapshots to compare, and the accounting identity |
//! | [`logs`] | log output captured in memory |
//!
//! Every test binary includes this module (`mod support;`, or a `#[path]`
//! from the reliability suite and the gRPC example's test), and each uses its
//! own subset of it.

// Each test binary uses its own subset of these helpers (and of their
// re-exports below).
#![allow(dead_code, unused_imports)]

pub(crate) mod app;
pub(crate) mod body;
pub(crate) mod logs;
pub(crate) mod stats;
pub(crate) mod tasks;
pub(crate) mod wait;

pub(crate) use app::{abandon, app, background_tasks, finish, request, send, serve, App, Reply};
pub(crate) use body::{ChannelBody, Chunk, Chunks, Progress, Then};
pub(crate) use logs::{capture_logs, Logs};
pub(crate) use stats::{assert_counts, assert_still_queued, counts, stats};
pub(crate) use tasks::{
    counting, explode, AsyncGate, Events, Gate, Inside, OnDrop, OpenOnDrop, Peak,
};
pub(crate) use wait::{eventually, millis, secs, until, within, BOUND};
