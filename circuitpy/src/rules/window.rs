//! Failure counts for the windowed policies, which need more than the packed word holds:
//! the in-memory breaker keeps one of these per breaker, allocated on first use.

use crate::clock::Nanos;
use crate::policy::{Config, FailurePolicy};
use crate::rules::{BUCKETS, bucket_width, nanos, trips_on_rate};

#[derive(Clone, Debug, Default)]
pub(crate) struct Window {
    /// [`FailurePolicy::CountInWindow`]: failures so far and when the last one came.
    count: u32,
    last_failure: Nanos,
    /// [`FailurePolicy::Rate`]: ten buckets of (bucket number, calls, failures).
    buckets: [(u64, u32, u32); BUCKETS],
}

impl Window {
    /// Nothing counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0 && self.buckets.iter().all(|bucket| bucket.1 == 0)
    }

    /// Records one outcome of a closed breaker; true when it trips the breaker.
    pub(crate) fn record(&mut self, config: &Config, now: Nanos, failed: bool) -> bool {
        match config.policy {
            FailurePolicy::Consecutive => false,
            FailurePolicy::CountInWindow { window } => {
                if !failed {
                    return false;
                }
                // A failure `window` or more after the previous one starts a new count.
                if self.count == 0 || now.saturating_sub(self.last_failure) >= nanos(window) {
                    self.count = 0;
                }
                self.count += 1;
                self.last_failure = now;
                self.count >= config.failure_threshold
            }
            FailurePolicy::Rate {
                rate,
                window,
                minimum_calls,
            } => {
                let width = bucket_width(window);
                let current = now / width;
                let slot = &mut self.buckets[(current % BUCKETS as u64) as usize];
                if slot.0 != current {
                    *slot = (current, 0, 0);
                }
                slot.1 += 1;
                slot.2 += u32::from(failed);
                let oldest = current.saturating_sub(BUCKETS as u64 - 1);
                let (calls, failures) = self
                    .buckets
                    .iter()
                    .filter(|bucket| bucket.0 >= oldest && bucket.0 <= current && bucket.1 > 0)
                    .fold((0u64, 0u64), |(c, f), bucket| {
                        (c + u64::from(bucket.1), f + u64::from(bucket.2))
                    });
                failed && trips_on_rate(calls, failures, rate, minimum_calls)
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = Window::default();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::OnStorageFailure;

    const SECOND: Nanos = 1_000_000_000;

    fn config(threshold: u32) -> Config {
        Config {
            failure_threshold: threshold,
            recovery_timeout: Duration::from_secs(1),
            key: "k",
            half_open_trials: 1,
            policy: FailurePolicy::Consecutive,
            slow_call_threshold: None,
            on_storage_failure: OnStorageFailure::Allow,
            storage_timeout: Duration::from_millis(50),
            key_prefix: "p",
            sync_interval: None,
            backoff: crate::policy::Backoff::OFF,
            recovery_jitter: 0.0,
        }
    }

    #[test]
    fn count_in_window_restarts_after_a_quiet_window() {
        let mut config = config(3);
        config.policy = FailurePolicy::CountInWindow {
            window: Duration::from_secs(10),
        };
        let mut window = Window::default();
        assert!(!window.record(&config, 0, true));
        assert!(!window.record(&config, 9 * SECOND, true));
        // Each failure renewed the window, so the third still counts.
        assert!(window.record(&config, 18 * SECOND, true));
        window.clear();
        assert!(!window.record(&config, 20 * SECOND, true));
        assert!(!window.record(&config, 31 * SECOND, true));
        assert!(!window.record(&config, 31 * SECOND, true));
    }

    #[test]
    fn rate_needs_the_minimum_calls_and_forgets_old_buckets() {
        let mut config = config(1);
        config.policy = FailurePolicy::Rate {
            rate: 0.5,
            window: Duration::from_secs(10),
            minimum_calls: 4,
        };
        let mut window = Window::default();
        assert!(!window.record(&config, 0, true));
        assert!(!window.record(&config, 0, false));
        assert!(!window.record(&config, 0, false));
        assert!(window.record(&config, 0, true), "2 of 4 failed");
        let mut window = Window::default();
        for _ in 0..3 {
            window.record(&config, 0, true);
        }
        // Eleven seconds later the old failures are out of the window.
        assert!(!window.record(&config, 11 * SECOND, true));
    }
}
