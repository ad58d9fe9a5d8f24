//! The durable-job suite: real queues on real engines — SQLite (a file in a
//! temporary directory) always, and PostgreSQL when `DATABASE_URL` names a
//! server (each test creates a database of its own there, and drops it at
//! the end). Without `DATABASE_URL`, each PostgreSQL test prints
//! "skipped: DATABASE_URL not set" and passes; CI (`.ci/run`) starts a
//! private PostgreSQL server and sets it.
//!
//! ```text
//! cargo test --all-features --test durable
//! SQLX_OFFLINE=true DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo test --all-features --test durable
//! ```
//!
//! (`SQLX_OFFLINE=true`: with `DATABASE_URL` set, sqlx's query macros in
//! apalis would otherwise check their SQL against that server when they are
//! built, and fail.)
//!
//! Each scenario is a module whose tests are `{scenario}::sqlite` and
//! `{scenario}::postgres`:
//!
//! | module | scenario |
//! |---|---|
//! | [`parity`] | `job.run()` and a worker's stored result agree, for the four shared jobs and an overflow that fails after every attempt; jobs enqueued by an axum handler are pushed after the response and run |
//! | [`bulk`] | `push_all` stores 1 000 jobs at once, in order, and a bad job stops the batch before anything is stored; `enqueue_all` pushes them after the response |
//! | [`crash`] | a worker process SIGKILLed mid-job: another worker runs the job again — **duplicate delivery** (at least once), shown |
//! | [`crash`] | a worker process SIGKILLed with a whole batch running (concurrency 8) and jobs queued behind it: another worker runs every job; the duplicates, counted, are exactly the jobs the killed process had started and not finished |
//! | [`no_overlap`] | two worker sets × 4 over 200 jobs: each job runs once, never in two workers at a time |
//! | [`overlapped`] | PostgreSQL: while the write of one job's outcome waits for a row lock, the worker claims and runs the next job |
//! | [`shutdown`] | a job that outlives the grace period goes back to the queue, and the next worker runs it |
//! | [`restart`] | the database restarted while a group commit and a burst of deferred pushes are in flight: every `Ok` push stored once, an `Err` push stored at most once (counted), every deferred job stored once |
//! | [`db_down`] | the database away: `push` from a handler is a `503`; a deferred push is retried and delivered, or abandoned and logged if shutdown ends first |
//! | [`discarded`] | a deferred job whose push never starts (its request's tasks discarded, or refused at the hand-off by a shutdown) is counted `discarded` or `abandoned` and logged with its JSON; one `enqueue` refuses is only an error |
//! | [`pending`] | deferred jobs waiting for the database are bounded: past `max_pending` a `503`, counted; a full buffer is stored within grace, or abandoned counted and logged |
//! | [`pool`] | the queue's pool exhausted (PostgreSQL): `push` from a handler is a `503` within `ACQUIRE_TIMEOUT`, not a hang; deferred batches that found no connection are retried and stored once each when the connections come back |
//! | [`prefetch`] | a worker claims its prefetch (4 × concurrency by default, or `Workers::prefetch`) and no more; the claimed jobs it had not started go back to the queue at shutdown |
//! | [`held_index`] | PostgreSQL: apalis's `lock_by` indexes become one partial index of held jobs, so acknowledgements find jobs by id; servers starting together make the change once |
//! | [`stale_statistics`] | PostgreSQL: a burst after the job table was analyzed empty is claimed and acknowledged by id (primary-key reads counted), not by a walk of the table per batch |
//! | [`locked`] | PostgreSQL: a push blocked by a lock on the job table fails after `LOCK_TIMEOUT`; a deferred push stored once the lock is gone |
//! | [`misuse`] | a job that cannot be encoded (`Encode`), does not decode back (`Undecodable`) or is over `max_job_bytes` (`TooLarge`, a `413`), at the call |
//! | [`periodic`] | two servers on one cron schedule store each tick once, workers run them, shutdown stops both loops; a malformed expression is a typed error |
//! | [`unique`] | a unique job's held key returns its holder (also for two processes pushing at once), a finished holder frees it, a bad key is refused; a delayed job waits for its time |
//! | [`wake`] | a push wakes the same queue's idle workers in this process at once (a poll interval of an hour does not delay it) |
//! | [`transactional`] | a job pushed in the application's transaction exists exactly when the transaction commits; one on the other engine is refused |
//!
//! Workers use a 1 s heartbeat, so a dead worker's jobs are taken back
//! after 2 s (but in [`no_overlap`], which says why); every wait is bounded
//! (a hang fails the test).
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "axum"))]

// A fresh database per test, shared with `tests/tracked_sql.rs`.
mod databases;

// The jobs the examples share: `Add`, `Power`, `Join`, `Fibonacci`.
#[path = "../examples/jobs/mod.rs"]
#[allow(unreachable_pub)]
mod jobs;

// The scenarios' files live in `tests/durable/`, next to this one (a `#[path]`
// each, so Cargo does not build them as test binaries of their own).
#[path = "durable/bulk.rs"]
mod bulk;
#[path = "durable/crash.rs"]
mod crash;
#[path = "durable/db_down.rs"]
mod db_down;
#[path = "durable/discarded.rs"]
mod discarded;
#[path = "durable/held_index.rs"]
mod held_index;
#[path = "durable/locked.rs"]
mod locked;
#[path = "durable/misuse.rs"]
mod misuse;
#[path = "durable/no_overlap.rs"]
mod no_overlap;
#[path = "durable/overlapped.rs"]
mod overlapped;
#[path = "durable/parity.rs"]
mod parity;
#[path = "durable/pending.rs"]
mod pending;
#[path = "durable/periodic.rs"]
mod periodic;
#[path = "durable/pool.rs"]
mod pool;
#[path = "durable/prefetch.rs"]
mod prefetch;
#[path = "durable/restart.rs"]
mod restart;
#[path = "durable/shutdown.rs"]
mod shutdown;
#[path = "durable/stale_statistics.rs"]
mod stale_statistics;
#[path = "durable/support.rs"]
mod support;
#[path = "durable/transactional.rs"]
mod transactional;
#[path = "durable/unique.rs"]
mod unique;
#[path = "durable/wake.rs"]
mod wake;
