//! The reliability suite: every task accepted ends, exactly once, in one of
//! the counted outcomes — completed, failed, panicked, cancelled, discarded
//! (with its reason) or refused — and the counts add up
//! (`submitted == accounted()`), under load, client disconnects, handler and
//! task faults, shutdown mid-load, slow and stalled readers, arbitrary body
//! behaviour, and threads racing the hand-off.
//!
//! Each scenario runs a real hyper HTTP/1.1 server on `127.0.0.1:0` (or, for
//! the state machine and the races, drives the real layer in-process),
//! predicts every counter from what it did to each request, checks each
//! task's side effect in a ledger (one slot per task: exactly once, or never),
//! bounds every wait (a hang fails the test after 60 s), and stops by itself.
//! No assertion is on speed; the one time bound (shutdown within grace +
//! 2 s) is a bound on a hang.
//!
//! ```text
//! cargo test --all-features --test reliability -- --nocapture                 # one summary line per scenario
//! RELIABILITY_SCALE=full cargo test --all-features --test reliability -- --nocapture   # the issue's full load
//! ```
//!
//! `RELIABILITY.md` at the repository root has the figures observed.
//!
//! | module | scenario |
//! |---|---|
//! | [`load`] | concurrent keep-alive clients, 1–3 mixed tasks per request |
//! | [`disconnects`] | clients leaving mid-body, after the head, before the response |
//! | [`handler_faults`] | handlers timing out, panicking, failing, answering `5xx` |
//! | [`task_faults`] | tasks failing, panicking, hanging, ignoring cancellation |
//! | [`shutdown`] | SIGTERM mid-load: HTTP drain, then a bounded supervisor shutdown |
//! | [`slow_readers`] | slow and stalled readers, a server idle timeout |
//! | [`fuzz`] | proptest over the response future and body state machine |
//! | [`race`] | threads adding while the body ends, or while shutdown begins |
//! | `bad_input` | the extractor without the layer (feature `axum`) |
//! | [`admission_load`] | groups, lanes and timeouts under load with small limits |
//! | [`burst`] | a burst of 1 s tasks with the default settings; `503`s past a configured limit |
//! | `tracked_flood` | a tracked route flooded past its store's capacity, with malformed requests (feature `tracking`) |

// Shared with every behaviour test: bounded waits, stats snapshots, the
// streaming bodies, gates.
#[path = "support/mod.rs"]
mod support;

// The scenarios' files live in `tests/reliability/`, next to this one (a
// `#[path]` each, so Cargo does not build them as test binaries of their own).
#[path = "reliability/harness.rs"]
mod harness;

#[path = "reliability/load.rs"]
mod load;

#[path = "reliability/disconnects.rs"]
mod disconnects;

#[path = "reliability/handler_faults.rs"]
mod handler_faults;

#[path = "reliability/task_faults.rs"]
mod task_faults;

#[path = "reliability/shutdown.rs"]
mod shutdown;

#[path = "reliability/slow_readers.rs"]
mod slow_readers;

#[path = "reliability/fuzz.rs"]
mod fuzz;

#[path = "reliability/race.rs"]
mod race;

#[cfg(feature = "axum")]
#[path = "reliability/bad_input.rs"]
mod bad_input;

#[cfg(feature = "tracking")]
#[path = "reliability/tracked_flood.rs"]
mod tracked_flood;

#[path = "reliability/admission_load.rs"]
mod admission_load;

#[path = "reliability/burst.rs"]
mod burst;
