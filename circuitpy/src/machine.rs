//! The breaker's decision logic as pure functions: a state word and the time go in, a
//! decision comes out. No I/O and no atomics here; `cell.rs` applies these decisions to an
//! `AtomicU64` with compare-and-swap, and the shared storages implement the same rules on
//! their servers.
//!
//! The whole state of an in-process breaker fits in one `u64`, so every transition is a
//! single compare-and-swap and a reader never sees a torn state:
//!
//! | bits  | field      | meaning                                                           |
//! |-------|------------|-------------------------------------------------------------------|
//! | 0–2   | phase      | [`State`] code                                                    |
//! | 3–18  | generation | bumped on every phase change; outcomes apply only to their own    |
//! | 19–63 | payload    | closed: consecutive failures; open: deadline; half-open: permits (16 bits) and successes (16 bits) |
//!
//! Deadlines are kept in ticks of 2^20 ns (about 1 ms), rounded up so a breaker never
//! half-opens early; 45 bits of ticks last over a thousand years.

use std::time::Duration;

use crate::clock::Nanos;
use crate::handler::State;
use crate::policy::{Config, FailurePolicy};

const PHASE_BITS: u32 = 3;
const GENERATION_BITS: u32 = 16;
const PAYLOAD_SHIFT: u32 = PHASE_BITS + GENERATION_BITS;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
const TICK_SHIFT: u32 = 20;

/// A breaker's packed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

impl Word {
    pub(crate) const CLOSED: Word = Word(0);

    fn new(phase: State, generation: u16, payload: u64) -> Word {
        Word(phase.code() | (u64::from(generation) << PHASE_BITS) | (payload << PAYLOAD_SHIFT))
    }

    pub(crate) fn phase(self) -> State {
        // Every word is built by `Word::new` from a valid code.
        State::from_code(self.0 & PHASE_MASK).unwrap_or(State::Closed)
    }

    pub(crate) fn generation(self) -> u16 {
        ((self.0 >> PHASE_BITS) & GENERATION_MASK) as u16
    }

    fn payload(self) -> u64 {
        self.0 >> PAYLOAD_SHIFT
    }

    pub(crate) fn failures(self) -> u32 {
        if self.phase() == State::Closed {
            self.payload() as u32
        } else {
            0
        }
    }

    fn permits(self) -> u32 {
        (self.payload() & 0xffff) as u32
    }

    fn successes(self) -> u32 {
        ((self.payload() >> 16) & 0xffff) as u32
    }

    /// When an open (or mirrored forced-open) breaker next asks for a trial; `None` for
    /// "never by itself".
    pub(crate) fn deadline(self) -> Option<Nanos> {
        match self.phase() {
            State::Open | State::ForcedOpen if self.payload() != 0 => {
                Some(self.payload() << TICK_SHIFT)
            }
            _ => None,
        }
    }

    /// The same phase change with the next generation.
    pub(crate) fn next(self, phase: State, payload: u64) -> Word {
        Word::new(phase, self.generation().wrapping_add(1), payload)
    }

    pub(crate) fn opened(self, deadline: Nanos) -> Word {
        self.next(State::Open, deadline_ticks(deadline))
    }

    pub(crate) fn with_failures(self, failures: u32) -> Word {
        Word::new(State::Closed, self.generation(), u64::from(failures))
    }

    fn with_trials(self, permits: u32, successes: u32) -> Word {
        Word::new(
            State::HalfOpen,
            self.generation(),
            u64::from(permits) | (u64::from(successes) << 16),
        )
    }
}

/// Deadline ticks, rounded up, never zero (zero means "no deadline").
pub(crate) fn deadline_ticks(deadline: Nanos) -> u64 {
    deadline.div_ceil(1 << TICK_SHIFT).max(1)
}

/// What a breaker does with a call about to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Run it; count its outcome against this generation.
    Pass,
    /// Run it as a trial; the breaker moves to the returned word.
    Trial(Word),
    /// Do not run it.
    Reject(Refusal),
}

/// Why a call is refused, before any storage is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Open,
    TrialsInProgress,
    ForcedOpen,
}

/// The admission rule of the authoritative (in-process) breaker.
#[inline]
pub(crate) fn admit(word: Word, now: Nanos, trials: u32) -> Admit {
    match word.phase() {
        State::Closed | State::ForcedClosed => Admit::Pass,
        State::ForcedOpen => Admit::Reject(Refusal::ForcedOpen),
        State::Open => match word.deadline() {
            Some(deadline) if now >= deadline => {
                Admit::Trial(word.next(State::HalfOpen, 0).with_trials(1, 0))
            }
            _ => Admit::Reject(Refusal::Open),
        },
        State::HalfOpen if word.permits() < trials => {
            Admit::Trial(word.with_trials(word.permits() + 1, word.successes()))
        }
        State::HalfOpen => Admit::Reject(Refusal::TrialsInProgress),
    }
}

/// How a call that was admitted ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// A failure; `trips` says whether the window policy (if any) says it trips.
    Failure {
        trips: bool,
    },
    /// The call's outcome was never reported (dropped future, dead thread).
    Abandoned,
}

/// True when, under the consecutive policy, a success of a call admitted closed under
/// `admitted` leaves `word` as it is: there are no failures to reset, or the breaker has
/// moved to another phase or generation since. The same answer as `settle` returning `None`
/// for that case, in a couple of instructions, so the common success needs no more.
#[inline]
pub(crate) fn closed_success_changes_nothing(word: Word, admitted: Word) -> bool {
    const HEADER_MASK: u64 = (1 << PAYLOAD_SHIFT) - 1;
    word.payload() == 0 || (word.0 ^ admitted.0) & HEADER_MASK != 0
}

/// The new word after an admitted call ended, or `None` when nothing changes.
///
/// `admitted` is the word the call was admitted under (the trial word for trials), so an
/// outcome from an earlier generation never moves the breaker.
pub(crate) fn settle(
    word: Word,
    admitted: Word,
    outcome: Outcome,
    config: &Config,
    now: Nanos,
) -> Option<Word> {
    if word.generation() != admitted.generation() || word.phase() != admitted.phase() {
        return None;
    }
    let open = || word.opened(now.saturating_add(config.recovery_timeout.as_nanos() as u64));
    match (word.phase(), outcome) {
        (State::Closed, Outcome::Success) => match config.policy {
            FailurePolicy::Consecutive if word.failures() != 0 => Some(word.with_failures(0)),
            _ => None,
        },
        (State::Closed, Outcome::Failure { trips }) => match config.policy {
            FailurePolicy::Consecutive => {
                let failures = word.failures().saturating_add(1);
                Some(if failures >= config.failure_threshold {
                    open()
                } else {
                    word.with_failures(failures)
                })
            }
            _ => trips.then(open),
        },
        (State::HalfOpen, Outcome::Success) => {
            let successes = word.successes() + 1;
            Some(if successes >= config.half_open_trials {
                word.next(State::Closed, 0)
            } else {
                word.with_trials(word.permits(), successes)
            })
        }
        (State::HalfOpen, Outcome::Failure { .. }) => Some(open()),
        (State::HalfOpen, Outcome::Abandoned) => {
            Some(word.with_trials(word.permits().saturating_sub(1), word.successes()))
        }
        _ => None,
    }
}

/// Failure counts for the windowed policies, which need more than one word of state.
#[derive(Clone, Debug, Default)]
pub(crate) struct Window {
    /// [`FailurePolicy::CountInWindow`]: failures so far and when the last one came.
    count: u32,
    last_failure: Nanos,
    /// [`FailurePolicy::Rate`]: ten buckets of (bucket number, calls, failures).
    buckets: [(u64, u32, u32); BUCKETS],
}

pub(crate) const BUCKETS: usize = 10;

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
                if self.count == 0
                    || now.saturating_sub(self.last_failure) > window.as_nanos() as u64
                {
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

/// The width of one of the rate policy's ten buckets, at least one nanosecond.
pub(crate) fn bucket_width(window: Duration) -> u64 {
    (window.as_nanos() as u64 / BUCKETS as u64).max(1)
}

/// The rate rule, shared by every storage's implementation.
pub(crate) fn trips_on_rate(calls: u64, failures: u64, rate: f64, minimum_calls: u32) -> bool {
    calls >= u64::from(minimum_calls) && failures as f64 >= rate * calls as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OnStorageFailure;

    fn config(threshold: u32, trials: u32) -> Config {
        Config {
            failure_threshold: threshold,
            recovery_timeout: Duration::from_secs(1),
            key: "k",
            half_open_trials: trials,
            policy: FailurePolicy::Consecutive,
            slow_call_threshold: None,
            on_storage_failure: OnStorageFailure::Allow,
            storage_timeout: Duration::from_millis(50),
            key_prefix: "p",
            sync_interval: None,
        }
    }

    const SECOND: Nanos = 1_000_000_000;

    fn fail(word: Word, config: &Config, now: Nanos) -> Word {
        settle(word, word, Outcome::Failure { trips: false }, config, now).unwrap_or(word)
    }

    #[test]
    fn consecutive_failures_trip_at_the_threshold_and_a_success_resets() {
        let config = config(3, 1);
        let mut word = Word::CLOSED;
        word = fail(word, &config, 0);
        word = fail(word, &config, 0);
        assert_eq!(word.failures(), 2);
        word = settle(word, word, Outcome::Success, &config, 0).unwrap();
        assert_eq!(word, Word::CLOSED.with_failures(0));
        for _ in 0..3 {
            word = fail(word, &config, 5 * SECOND);
        }
        assert_eq!(word.phase(), State::Open);
        assert!(word.deadline().unwrap() >= 6 * SECOND);
        assert!(word.deadline().unwrap() < 6 * SECOND + 2_000_000);
    }

    #[test]
    fn open_rejects_until_the_deadline_then_admits_exactly_the_trials() {
        let config = config(1, 2);
        let open = fail(Word::CLOSED, &config, 0);
        assert_eq!(admit(open, SECOND - 1, 2), Admit::Reject(Refusal::Open));
        let Admit::Trial(first) = admit(open, SECOND + 1_100_000, 2) else {
            panic!("no trial")
        };
        let Admit::Trial(second) = admit(first, SECOND + 1_100_000, 2) else {
            panic!("no second trial")
        };
        assert_eq!(
            admit(second, SECOND * 9, 2),
            Admit::Reject(Refusal::TrialsInProgress)
        );
        // One trial abandons: its permit comes back.
        let released = settle(second, first, Outcome::Abandoned, &config, 0).unwrap();
        assert!(matches!(admit(released, 0, 2), Admit::Trial(_)));
    }

    #[test]
    fn all_trials_succeeding_close_and_any_failure_reopens() {
        let config = config(1, 2);
        let open = fail(Word::CLOSED, &config, 0);
        let Admit::Trial(one) = admit(open, 2 * SECOND, 2) else {
            panic!()
        };
        let Admit::Trial(two) = admit(one, 2 * SECOND, 2) else {
            panic!()
        };
        let after_one = settle(two, one, Outcome::Success, &config, 0).unwrap();
        assert_eq!(after_one.phase(), State::HalfOpen);
        let closed = settle(after_one, two, Outcome::Success, &config, 0).unwrap();
        assert_eq!((closed.phase(), closed.failures()), (State::Closed, 0));

        let reopened = settle(
            two,
            two,
            Outcome::Failure { trips: false },
            &config,
            3 * SECOND,
        )
        .unwrap();
        assert_eq!(reopened.phase(), State::Open);
        assert!(reopened.deadline().unwrap() >= 4 * SECOND);
    }

    #[test]
    fn the_quick_closed_success_check_agrees_with_settle() {
        let config = config(3, 1);
        let closed = Word::CLOSED;
        let one_failure = fail(closed, &config, 0);
        let open = fail(fail(one_failure, &config, 0), &config, 0);
        let reclosed = settle(open, open, Outcome::Success, &config, 0).unwrap_or(open);
        let Admit::Trial(trial) = admit(open, 9 * SECOND, 1) else {
            panic!("no trial")
        };
        let closed_again = settle(trial, trial, Outcome::Success, &config, 0).unwrap();
        let words = [closed, one_failure, open, reclosed, trial, closed_again];
        for word in words {
            for admitted in words.iter().filter(|w| w.phase() == State::Closed) {
                assert_eq!(
                    closed_success_changes_nothing(word, *admitted),
                    settle(word, *admitted, Outcome::Success, &config, 0).is_none(),
                    "word {word:?} admitted {admitted:?}"
                );
            }
        }
    }

    #[test]
    fn outcomes_of_an_earlier_generation_change_nothing() {
        let config = config(1, 1);
        let admitted = Word::CLOSED;
        let open = fail(admitted, &config, 0);
        assert_eq!(
            settle(
                open,
                admitted,
                Outcome::Failure { trips: false },
                &config,
                0
            ),
            None
        );
        assert_eq!(settle(open, admitted, Outcome::Success, &config, 0), None);
    }

    #[test]
    fn count_in_window_restarts_after_a_quiet_window() {
        let mut config = config(3, 1);
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
        let mut config = config(1, 1);
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
