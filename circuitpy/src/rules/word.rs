//! The rules (see `rules/mod.rs`) as pure functions on one packed word: a state word and
//! the time go in, a decision comes out. No I/O and no atomics here; `engine/view.rs`
//! applies these decisions to an `AtomicU64` with compare-and-swap.
//!
//! The whole state of an in-process breaker fits in one `u64`, so every transition is a
//! single compare-and-swap and a reader never sees a torn state:
//!
//! | bits  | field      | meaning                                                           |
//! |-------|------------|-------------------------------------------------------------------|
//! | 0–2   | phase      | [`State`] code                                                    |
//! | 3–18  | generation | bumped on every phase change; outcomes apply only to their own    |
//! | 19–63 | payload    | closed: consecutive failures; open: deadline (40 bits) and failed trial rounds in a row (5 bits); half-open: permits (16 bits), successes (16 bits) and failed trial rounds in a row (5 bits) |
//!
//! Deadlines are kept in ticks of one millisecond, rounded up so a breaker never half-opens
//! early; 40 bits of ticks last over thirty years of the process's clock. Whole
//! milliseconds are also what the
//! shared storages keep, so a deadline falls on the same instant everywhere.

use crate::clock::Nanos;
use crate::error::Rejection;
use crate::handler::State;
use crate::policy::{Config, FailurePolicy};
use crate::rules::nanos;

const PHASE_BITS: u32 = 3;
const GENERATION_BITS: u32 = 16;
const PAYLOAD_SHIFT: u32 = PHASE_BITS + GENERATION_BITS;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
const TICK: u64 = 1_000_000;
/// An open word's deadline: the payload's low 40 bits; the failed rounds above it.
const DEADLINE_BITS: u32 = 40;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;
/// A half-open word's failed rounds, above its permits and successes.
const TRIALS_BITS: u32 = 32;
use crate::rules::MAX_REOPENS;

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

    /// Whether the phase is closed: `phase() == State::Closed` for every word `Word::new`
    /// builds, in one test (the words it never builds are left to `phase()`).
    #[inline(always)]
    pub(crate) fn is_closed(self) -> bool {
        self.0 & PHASE_MASK == State::Closed.code()
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

    fn successes(self) -> u32 {
        ((self.payload() >> 16) & 0xffff) as u32
    }

    /// When an open (or mirrored forced-open) breaker next asks for a trial; `None` for
    /// "never by itself".
    pub(crate) fn deadline(self) -> Option<Nanos> {
        match self.phase() {
            State::Open | State::ForcedOpen if self.payload() & DEADLINE_MASK != 0 => {
                Some((self.payload() & DEADLINE_MASK) * TICK)
            }
            _ => None,
        }
    }

    /// The same phase change with the next generation.
    pub(crate) fn next(self, phase: State, payload: u64) -> Word {
        Word::new(phase, self.generation().wrapping_add(1), payload)
    }

    /// The same phase and generation with another payload.
    pub(crate) fn with_payload(self, payload: u64) -> Word {
        Word::new(self.phase(), self.generation(), payload)
    }

    /// Open until `deadline`, after `reopens` failed trial rounds in a row.
    pub(crate) fn opened(self, deadline: Nanos, reopens: u64) -> Word {
        let ticks = deadline_ticks(deadline).min(DEADLINE_MASK);
        self.next(
            State::Open,
            ticks | (reopens.min(MAX_REOPENS) << DEADLINE_BITS),
        )
    }

    /// Failed trial rounds in a row since the breaker last closed (open and half-open).
    pub(crate) fn reopens(self) -> u64 {
        match self.phase() {
            State::Open => self.payload() >> DEADLINE_BITS,
            State::HalfOpen => self.payload() >> TRIALS_BITS,
            _ => 0,
        }
    }

    pub(crate) fn permits(self) -> u32 {
        if self.phase() == State::HalfOpen {
            (self.payload() & 0xffff) as u32
        } else {
            0
        }
    }

    pub(crate) fn with_failures(self, failures: u32) -> Word {
        Word::new(State::Closed, self.generation(), u64::from(failures))
    }

    fn with_trials(self, permits: u32, successes: u32) -> Word {
        Word::new(
            State::HalfOpen,
            self.generation(),
            u64::from(permits) | (u64::from(successes) << 16) | (self.reopens() << TRIALS_BITS),
        )
    }
}

/// Deadline ticks, rounded up, never zero (zero means "no deadline").
pub(crate) fn deadline_ticks(deadline: Nanos) -> u64 {
    deadline.div_ceil(TICK).max(1)
}

/// What a breaker does with a call about to start.
#[derive(Clone, Debug)]
pub(crate) enum Admit {
    /// Run it; count its outcome against this generation.
    Pass,
    /// Run it as a trial; the breaker moves to the returned word. A word of a new
    /// generation starts a new round, whose lease the caller must set.
    Trial(Word),
    /// Do not run it.
    Reject(Rejection),
}

/// The admission rule of the authoritative (in-process) breaker. `lease` gives when the
/// current half-open round lapses, if known (read only for a half-open word): the caller
/// then starts a new one.
#[inline]
pub(crate) fn admit(
    word: Word,
    now: Nanos,
    trials: u32,
    lease: impl FnOnce() -> Option<Nanos>,
) -> Admit {
    match word.phase() {
        State::Closed | State::ForcedClosed => Admit::Pass,
        State::ForcedOpen => Admit::Reject(Rejection::ForcedOpen),
        State::Open => match word.deadline() {
            Some(deadline) if now >= deadline => Admit::Trial(word.new_round()),
            _ => Admit::Reject(Rejection::Open),
        },
        // A round in which nothing happened for a recovery timeout lapses, and the caller
        // starts a new one.
        State::HalfOpen if lease().is_some_and(|lease| now >= lease) => {
            Admit::Trial(word.new_round())
        }
        State::HalfOpen if word.permits() < trials => {
            Admit::Trial(word.with_trials(word.permits() + 1, word.successes()))
        }
        State::HalfOpen => Admit::Reject(Rejection::TrialsInProgress),
    }
}

impl Word {
    /// A new half-open round (a new generation) with its first permit handed out.
    fn new_round(self) -> Word {
        let reopens = self.reopens();
        self.next(State::HalfOpen, reopens << TRIALS_BITS)
            .with_trials(1, 0)
    }
}

/// How a call that was admitted ended, as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Report {
    Success,
    /// A failure; `trips` says whether the window policy (if any) says it trips.
    Failure {
        trips: bool,
    },
    /// The call's outcome was never reported (dropped future, dead thread), or it ended
    /// with an error that does not count: a trial gives its permit back.
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
/// `seed` is the breaker key's [`jitter_seed`](crate::rules::jitter_seed) when the handler
/// has a jitter (0 otherwise).
pub(crate) fn settle(
    word: Word,
    admitted: Word,
    report: Report,
    config: &Config,
    now: Nanos,
    seed: u64,
) -> Option<Word> {
    if word.generation() != admitted.generation() || word.phase() != admitted.phase() {
        return None;
    }
    // A trip from closed opens for the recovery timeout; a failed trial round for longer
    // under a backoff.
    let open_after = |reopens: u64| {
        let open = crate::rules::open_for(config, reopens, seed, now / TICK);
        word.opened(now.saturating_add(nanos(open)), reopens)
    };
    let open = || open_after(0);
    let reopen = || open_after((word.reopens() + 1).min(MAX_REOPENS));
    match (word.phase(), report) {
        (State::Closed, Report::Success) => match config.policy {
            FailurePolicy::Consecutive if word.failures() != 0 => Some(word.with_failures(0)),
            _ => None,
        },
        (State::Closed, Report::Failure { trips }) => match config.policy {
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
        (State::HalfOpen, Report::Success) => {
            let successes = word.successes() + 1;
            Some(if successes >= config.half_open_trials {
                word.next(State::Closed, 0)
            } else {
                word.with_trials(word.permits(), successes)
            })
        }
        (State::HalfOpen, Report::Failure { .. }) => Some(reopen()),
        (State::HalfOpen, Report::Abandoned) => {
            Some(word.with_trials(word.permits().saturating_sub(1), word.successes()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            backoff: crate::policy::Backoff::OFF,
            recovery_jitter: 0.0,
            quorum: 1,
        }
    }

    const SECOND: Nanos = 1_000_000_000;

    fn fail(word: Word, config: &Config, now: Nanos) -> Word {
        settle(word, word, Report::Failure { trips: false }, config, now, 0).unwrap_or(word)
    }

    #[test]
    fn consecutive_failures_trip_at_the_threshold_and_a_success_resets() {
        let config = config(3, 1);
        let mut word = Word::CLOSED;
        word = fail(word, &config, 0);
        word = fail(word, &config, 0);
        assert_eq!(word.failures(), 2);
        word = settle(word, word, Report::Success, &config, 0, 0).unwrap();
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
        assert!(matches!(
            admit(open, SECOND - 1, 2, || None),
            Admit::Reject(Rejection::Open)
        ));
        let Admit::Trial(first) = admit(open, SECOND + 1_100_000, 2, || None) else {
            panic!("no trial")
        };
        let Admit::Trial(second) = admit(first, SECOND + 1_100_000, 2, || None) else {
            panic!("no second trial")
        };
        assert!(matches!(
            admit(second, SECOND * 9, 2, || None),
            Admit::Reject(Rejection::TrialsInProgress)
        ));
        // All permits are out; once the round's lease lapses a new round begins.
        let Admit::Trial(new_round) = admit(second, SECOND * 9, 2, || Some(SECOND * 8)) else {
            panic!("the lapsed round was not replaced")
        };
        assert_ne!(new_round.generation(), second.generation());
        // One trial abandons: its permit comes back.
        let released = settle(second, first, Report::Abandoned, &config, 0, 0).unwrap();
        assert!(matches!(admit(released, 0, 2, || None), Admit::Trial(_)));
    }

    #[test]
    fn all_trials_succeeding_close_and_any_failure_reopens() {
        let config = config(1, 2);
        let open = fail(Word::CLOSED, &config, 0);
        let Admit::Trial(one) = admit(open, 2 * SECOND, 2, || None) else {
            panic!()
        };
        let Admit::Trial(two) = admit(one, 2 * SECOND, 2, || None) else {
            panic!()
        };
        let after_one = settle(two, one, Report::Success, &config, 0, 0).unwrap();
        assert_eq!(after_one.phase(), State::HalfOpen);
        let closed = settle(after_one, two, Report::Success, &config, 0, 0).unwrap();
        assert_eq!((closed.phase(), closed.failures()), (State::Closed, 0));

        let reopened = settle(
            two,
            two,
            Report::Failure { trips: false },
            &config,
            3 * SECOND,
            0,
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
        let reclosed = settle(open, open, Report::Success, &config, 0, 0).unwrap_or(open);
        let Admit::Trial(trial) = admit(open, 9 * SECOND, 1, || None) else {
            panic!("no trial")
        };
        let closed_again = settle(trial, trial, Report::Success, &config, 0, 0).unwrap();
        let words = [closed, one_failure, open, reclosed, trial, closed_again];
        for word in words {
            for admitted in words.iter().filter(|w| w.phase() == State::Closed) {
                assert_eq!(
                    closed_success_changes_nothing(word, *admitted),
                    settle(word, *admitted, Report::Success, &config, 0, 0).is_none(),
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
                Report::Failure { trips: false },
                &config,
                0,
                0
            ),
            None
        );
        assert_eq!(settle(open, admitted, Report::Success, &config, 0, 0), None);
    }
}
