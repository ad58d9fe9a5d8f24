//! [`Retry`]: how a retried task spaces its attempts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential back-off with full jitter: before attempt `n + 1`, wait a
/// random time between zero and `min(max_delay, base_delay × 2^(n−1))`.
///
/// The jitter spreads the retries of many tasks that failed together (an
/// outage) so they do not hit the recovering service at the same instant. A
/// task keeps its lane slot while it waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Retry {
    pub(crate) max_attempts: u32,
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) jitter: bool,
}

impl Retry {
    /// At most `max_attempts` attempts in all (at least 1), starting from a
    /// 100 ms delay, doubling up to 30 s, with jitter.
    pub fn exponential(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            jitter: true,
        }
    }

    /// The delay before the second attempt (before jitter).
    pub fn base_delay(mut self, base_delay: Duration) -> Self {
        self.base_delay = base_delay;
        self
    }

    /// The longest delay between two attempts.
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Wait exactly the exponential delay, without jitter (for tests and
    /// for services that want predictable spacing).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The wait before attempt `attempt + 1`, after `attempt` (≥ 1) failed.
    pub(crate) fn delay_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let delay = self
            .base_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        if !self.jitter {
            return delay;
        }
        // Full jitter from std alone: `RandomState` is seeded randomly per
        // instance, which is all the randomness spreading retries needs.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(attempt);
        let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
        delay.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_stays_below_them() {
        let retry = Retry::exponential(10)
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        let exact = retry.without_jitter();
        let expected = [100, 200, 400, 800, 1000, 1000];
        for (attempt, millis) in (1..).zip(expected) {
            assert_eq!(exact.delay_after(attempt), Duration::from_millis(millis));
            for _ in 0..100 {
                assert!(retry.delay_after(attempt) <= Duration::from_millis(millis));
            }
        }
        // Jitter actually varies.
        let samples: std::collections::HashSet<_> = (0..20).map(|_| retry.delay_after(3)).collect();
        assert!(samples.len() > 1);
    }
}
