//! Bounded waits: every wait a test makes has an end, so that a hang fails
//! the test instead of stalling the suite.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The longest any single wait may take before the test fails. Virtual time
/// in paused tests, where a hang therefore fails at once.
pub(crate) const BOUND: Duration = Duration::from_secs(60);

pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(crate) fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Awaits `future`, failing the test if it takes longer than [`BOUND`].
pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(BOUND, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Yields to the runtime until `condition` holds; fails after a bounded
/// number of turns (time-independent, so it also bounds paused tests).
pub(crate) async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("gave up waiting for {what}");
}

/// Checks `condition` every few milliseconds until it holds; fails the test
/// after [`BOUND`]. For what the test cannot await, such as what happens on
/// the server's side of a socket (a dropped connection, a dropped body).
pub(crate) async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + BOUND;
    while !condition() {
        assert!(Instant::now() < give_up, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
