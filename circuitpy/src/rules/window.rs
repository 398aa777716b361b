//! Failure counts for the windowed policies, which need more than the packed word holds:
//! the in-memory breaker keeps one of these per breaker, allocated on first use.
//!
//! The rate policy's calls are counted in [`Calls`], one atomic per bucket, so that a
//! closed success is one compare-and-swap and takes no lock. Everything else (failures,
//! moving the window on to a new bucket, clearing) happens under the lock of the breaker's
//! [`Window`], which also keeps each bucket's failures.
//!
//! # How a success counts without the lock
//!
//! Slot `j % 16` holds bucket `j`'s calls for the sixteen buckets `head - 15 ..= head` (the
//! window is the newest ten of them; sixteen make the slot a mask and the lap a shift).
//! Each slot is tagged with the generation of the closed period it counts for and the
//! bucket's lap (`j / 16`), so a success adds to it only when both are its own: a compare-and-swap that
//! fails because the slot moved on to a later bucket, or was cleared, sends the success to
//! the locked path, which checks the breaker's word as before. Only the locked path writes
//! tags and `head`, so under the lock the tags and the per-bucket failures agree.
//!
//! What this changes against counting every call under the lock:
//! - a success admitted in a closed period that has just ended (tripped, reset) may still
//!   add to that period's slot until the clear that follows the phase change; the clear
//!   then forgets it with the rest, and a slot of another generation is never summed, so it
//!   never counts towards a later period's decision. That is the rule as stated: outcomes of
//!   calls admitted before a trip change nothing;
//! - a success or failure whose bucket has already left the window when it is counted,
//!   because a call counted since is ten buckets or more later (a thread stalled between
//!   reading the clock and counting), is not counted: no later decision would include it;
//! - a stalled success whose slot moved on 128 laps (2 048 buckets) and came back to the
//!   same count, generation and tag before its compare-and-swap would count in the wrong
//!   bucket; nothing else can make a tag match a bucket it does not stand for.
//!
//! A failure, under the lock, sums every slot of its generation in its window: every
//! success that finished before the failure began is included, and successes that finish
//! while it decides are ordered after it (they are cleared with the rest if it trips).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::clock::Nanos;
use crate::policy::{Config, FailurePolicy};
use crate::rules::{BUCKETS, bucket_width, nanos, trips_on_rate};

/// Buckets in the window.
const WINDOW: u64 = BUCKETS as u64;
/// Slots in the ring, a power of two.
const SLOTS: usize = 16;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// A slot: calls (38 bits) | lap (7 bits) | generation (16 bits) | 0 0 1. The generation
/// sits where the breaker's word keeps it, so a tag is a mask of the word and a shift of the
/// bucket. A slot of zero is vacant: the low bit means no tag is ever zero. Calls wrap after
/// 2^38 in one bucket (a `u32` wrapped after 2^32 before).
const TAG_BITS: u32 = 26;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const ONE_CALL: u64 = 1 << TAG_BITS;
const GENERATION_SHIFT: u32 = 3;
const LAP_SHIFT: u32 = 19;
const TAGGED: u64 = 1;

/// The tag of `bucket`'s slot in a closed period of `generation`.
#[inline(always)]
fn tag(generation: u16, bucket: u64) -> u64 {
    (u64::from(generation) << GENERATION_SHIFT) | ((bucket >> 4) & 0x7f) << LAP_SHIFT | TAGGED
}

fn generation_of(slot: u64) -> u16 {
    (slot >> GENERATION_SHIFT) as u16
}

fn calls_of(slot: u64) -> u64 {
    slot >> TAG_BITS
}

/// Copies of the ring, each on cache lines of its own; a thread counts its successes in one
/// of them, so that threads on different copies do not write the same line.
const STRIPES: usize = 4;

/// One copy of the ring: bucket `j`'s calls in slot `j % 16`, tagged (see [`tag`]).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; SLOTS]);

/// `head`, on a line of its own: read by every success, written once a bucket.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Head(AtomicU64);

/// The stripe this thread counts in: threads take them in turn as they first count.
/// Always inlined and reduced modulo [`STRIPES`] on the way out (a no-op on the stored
/// value), so that every caller's compiler sees the index in bounds: no panic path, which
/// would keep a closed success's permit in memory for its landing pad.
#[inline(always)]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|stripe| {
        let mut index = stripe.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(index);
        }
        index % STRIPES
    })
}

/// [`FailurePolicy::Rate`]: the calls of the ten buckets, counted without a lock.
///
/// Every stripe's slot `i` carries the same tag: only the locked path writes tags, and it
/// writes slot `i` of every stripe at once. A bucket's calls are the sum over the stripes.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// The newest bucket counted in; the slots hold `head - 15 ..= head`. Written under the
    /// window's lock only.
    head: Head,
    stripes: [Stripe; STRIPES],
}

impl Calls {
    /// Slot `index` of every stripe.
    fn slot(&self, index: usize) -> impl Iterator<Item = &AtomicU64> {
        self.stripes.iter().map(move |stripe| &stripe.0[index])
    }

    /// Tags slot `index` of every stripe with `tag`, no calls counted.
    fn tag_slot(&self, index: usize, tag: u64) {
        for slot in self.slot(index) {
            slot.store(tag, Ordering::Relaxed);
        }
    }

    /// The tag of slot `index` (the same in every stripe) and its calls.
    fn read(&self, index: usize) -> (u64, u64) {
        let tag = self.stripes[0].0[index].load(Ordering::Relaxed) & TAG_MASK;
        let calls = self
            .slot(index)
            .map(|slot| calls_of(slot.load(Ordering::Relaxed)))
            .fold(0u64, u64::wrapping_add);
        (tag, calls)
    }
}

impl Calls {
    /// Counts one successful call in `bucket` of the closed period of `generation`, if that
    /// bucket's slot is already tagged for it; false when the locked path must count it.
    #[inline(always)]
    pub(crate) fn count_success(&self, bucket: u64, generation: u16) -> bool {
        if self.head.0.load(Ordering::Acquire).wrapping_sub(bucket) >= WINDOW {
            return false;
        }
        let slot = &self.stripes[stripe()].0[(bucket & SLOT_MASK) as usize];
        let tag = tag(generation, bucket);
        let mut seen = slot.load(Ordering::Relaxed);
        while seen & TAG_MASK == tag {
            match slot.compare_exchange_weak(
                seen,
                seen.wrapping_add(ONE_CALL),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => seen = actual,
            }
        }
        false
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Window {
    /// [`FailurePolicy::CountInWindow`]: failures so far and when the last one came.
    count: u32,
    last_failure: Nanos,
    /// [`FailurePolicy::Rate`]: the failures of the bucket whose tag slot `i` of [`Calls`]
    /// holds.
    failures: [u32; SLOTS],
}

impl Window {
    /// Nothing counted.
    pub(crate) fn is_empty(&self, calls: &Calls) -> bool {
        self.count == 0
            && self.failures.iter().all(|&failures| failures == 0)
            && (0..SLOTS).all(|index| calls.read(index).1 == 0)
    }

    /// Records one outcome of a call admitted closed in the period of `generation`, which
    /// the caller has checked is still the breaker's; true when it trips the breaker.
    pub(crate) fn record(
        &mut self,
        calls: &Calls,
        config: &Config,
        now: Nanos,
        failed: bool,
        generation: u16,
    ) -> bool {
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
                let current = now / bucket_width(window);
                self.advance(calls, current, generation);
                let head = calls.head.0.load(Ordering::Relaxed);
                if head - current >= WINDOW {
                    // Its bucket already left the window: no decision would count it.
                    return false;
                }
                let index = (current & SLOT_MASK) as usize;
                let own = tag(generation, current);
                if calls.read(index).0 != own {
                    // Vacant, or of another period: successes racing this store are not
                    // of this period, or were sent here.
                    calls.tag_slot(index, own);
                    self.failures[index] = 0;
                }
                // Successes may add concurrently; nothing else writes a tagged slot.
                calls.stripes[stripe()].0[index].fetch_add(ONE_CALL, Ordering::Relaxed);
                if !failed {
                    return false;
                }
                self.failures[index] = self.failures[index].saturating_add(1);
                let (mut total_calls, mut total_failures) = (0u64, 0u64);
                for bucket in current.saturating_sub(WINDOW - 1)..=current {
                    let index = (bucket & SLOT_MASK) as usize;
                    let (tag_seen, calls_seen) = calls.read(index);
                    if tag_seen == tag(generation, bucket) {
                        total_calls += calls_seen;
                        total_failures += u64::from(self.failures[index]);
                    }
                }
                trips_on_rate(total_calls, total_failures, rate, minimum_calls)
            }
        }
    }

    /// Moves the window on to `current`: the slots of the buckets after `head` up to
    /// `current` are tagged for them, empty. (A new window's `head` is bucket 0, its slots
    /// vacant: a vacant slot is an empty bucket, tagged when first counted in.)
    fn advance(&mut self, calls: &Calls, current: u64, generation: u16) {
        let head = calls.head.0.load(Ordering::Relaxed);
        if current <= head {
            return;
        }
        for bucket in (head + 1).max(current.saturating_sub(SLOT_MASK))..=current {
            let index = (bucket & SLOT_MASK) as usize;
            calls.tag_slot(index, tag(generation, bucket));
            self.failures[index] = 0;
        }
        calls.head.0.store(current, Ordering::Release);
    }

    /// Forgets every count, but for the rate policy's slots already tagged for `keep`, the
    /// generation the breaker has just moved to: successes of a new closed period counted
    /// before this clear ran.
    pub(crate) fn clear(&mut self, calls: &Calls, keep: u16) {
        self.count = 0;
        self.last_failure = 0;
        for (index, failures) in self.failures.iter_mut().enumerate() {
            if generation_of(calls.read(index).0) != keep {
                calls.tag_slot(index, 0);
                *failures = 0;
            }
        }
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
            quorum: 1,
        }
    }

    fn rate(minimum_calls: u32) -> Config {
        let mut config = config(1);
        config.policy = FailurePolicy::Rate {
            rate: 0.5,
            window: Duration::from_secs(10),
            minimum_calls,
        };
        config
    }

    /// A success as the engine counts it: without the lock when it can, else locked.
    fn success(window: &mut Window, calls: &Calls, config: &Config, now: Nanos, generation: u16) {
        if !calls.count_success(now / SECOND, generation) {
            assert!(!window.record(calls, config, now, false, generation));
        }
    }

    #[test]
    fn count_in_window_restarts_after_a_quiet_window() {
        let mut config = config(3);
        config.policy = FailurePolicy::CountInWindow {
            window: Duration::from_secs(10),
        };
        let (mut window, calls) = (Window::default(), Calls::default());
        assert!(!window.record(&calls, &config, 0, true, 0));
        assert!(!window.record(&calls, &config, 9 * SECOND, true, 0));
        // Each failure renewed the window, so the third still counts.
        assert!(window.record(&calls, &config, 18 * SECOND, true, 0));
        window.clear(&calls, 1);
        assert!(!window.record(&calls, &config, 20 * SECOND, true, 1));
        assert!(!window.record(&calls, &config, 31 * SECOND, true, 1));
        assert!(!window.record(&calls, &config, 31 * SECOND, true, 1));
    }

    #[test]
    fn rate_needs_the_minimum_calls_and_forgets_old_buckets() {
        let config = rate(4);
        let (mut window, calls) = (Window::default(), Calls::default());
        assert!(!window.record(&calls, &config, 0, true, 0));
        success(&mut window, &calls, &config, 0, 0);
        success(&mut window, &calls, &config, 0, 0);
        assert!(window.record(&calls, &config, 0, true, 0), "2 of 4 failed");
        let (mut window, calls) = (Window::default(), Calls::default());
        for _ in 0..3 {
            window.record(&calls, &config, 0, true, 0);
        }
        // Eleven seconds later the old failures are out of the window.
        assert!(!window.record(&calls, &config, 11 * SECOND, true, 0));
    }

    #[test]
    fn successes_count_without_the_lock_once_their_bucket_is_tagged() {
        let config = rate(4);
        let (mut window, calls) = (Window::default(), Calls::default());
        let now = 5 * SECOND;
        // A new window: the first success tags the bucket under the lock.
        assert!(!calls.count_success(5, 3));
        assert!(!window.record(&calls, &config, now, false, 3));
        assert!(calls.count_success(5, 3));
        // Another period's success, or a bucket not yet reached, takes the locked path.
        assert!(!calls.count_success(5, 4));
        assert!(!calls.count_success(6, 3));
        // Two successes, then two failures: 2 of 4 failed.
        assert!(!window.record(&calls, &config, now, true, 3));
        assert!(window.record(&calls, &config, now, true, 3));
    }

    #[test]
    fn a_clear_forgets_every_period_but_the_new_one() {
        let config = rate(2);
        let (mut window, calls) = (Window::default(), Calls::default());
        for _ in 0..5 {
            success(&mut window, &calls, &config, SECOND, 7);
        }
        // The breaker moves to generation 8 (a reset); a success of 8 counts before the
        // clear that follows the reset runs.
        success(&mut window, &calls, &config, 2 * SECOND, 8);
        window.clear(&calls, 8);
        assert!(!window.is_empty(&calls));
        // A success of the ended period cannot add to a cleared slot.
        assert!(!calls.count_success(1, 7));
        // 1 success of generation 8 and 1 failure: trips, the 5 of generation 7 are gone.
        assert!(window.record(&calls, &config, 2 * SECOND, true, 8));
        window.clear(&calls, 9);
        assert!(window.is_empty(&calls));
    }

    #[test]
    fn a_bucket_that_left_the_window_is_not_counted() {
        let config = rate(1);
        let (mut window, calls) = (Window::default(), Calls::default());
        success(&mut window, &calls, &config, 20 * SECOND, 0);
        // A late failure from bucket 5, after bucket 20 was counted: out of the window.
        assert!(!window.record(&calls, &config, 5 * SECOND, true, 0));
        // One bucket behind is still in the window: 1 failure of 1 call in its window trips.
        assert!(window.record(&calls, &config, 19 * SECOND, true, 0));
    }
}
