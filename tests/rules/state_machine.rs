//! The breaker's rules, one test each, through the public API with a manual clock and the
//! in-memory storage. Every test has its own handler, so no two tests share a breaker.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use circuitpy::{Breaker, CircuitBreaker, FailurePolicy, State, circuit_breaker};
use circuitpy_tests::handler;
use circuitpy_tests::handlers::{Error, Event, rejected};

/// Deadlines are rounded up to about a millisecond; this is comfortably past that.
const SLACK: Duration = Duration::from_millis(5);

fn ok() -> Result<u32, Error> {
    Ok(1)
}

fn down() -> Result<u32, Error> {
    Err(Error::Down)
}

/// Runs `outcome` under the breaker and counts the body's runs in `runs`.
fn run<H: CircuitBreaker<Storage = circuitpy::MemoryStorage>>(
    breaker: &Breaker<H>,
    runs: &Cell<u32>,
    outcome: fn() -> Result<u32, Error>,
) -> Result<u32, Error> {
    breaker.call(|| {
        runs.set(runs.get() + 1);
        outcome()
    })
}

handler!(ConsecutiveTrip {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn consecutive_opens_exactly_at_the_threshold_and_a_success_resets_the_count() {
    let breaker = Breaker::new(ConsecutiveTrip);
    let runs = Cell::new(0);
    for _ in 0..2 {
        assert!(matches!(run(&breaker, &runs, down), Err(Error::Down)));
    }
    assert_eq!(run(&breaker, &runs, ok).unwrap(), 1);
    for _ in 0..2 {
        assert!(matches!(run(&breaker, &runs, down), Err(Error::Down)));
        assert_eq!(breaker.state().unwrap(), State::Closed);
    }
    assert!(matches!(run(&breaker, &runs, down), Err(Error::Down)));
    assert_eq!(breaker.state().unwrap(), State::Open);
    assert_eq!(runs.get(), 6);
    assert_eq!(rejected(&run(&breaker, &runs, ok)), Some("open"));
    assert_eq!(runs.get(), 6);
}

handler!(WindowTrip {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::CountInWindow {
        window: Duration::from_secs(10),
    };
});

#[test]
fn count_in_window_opens_at_the_threshold_when_each_failure_renews_the_window() {
    let breaker = Breaker::new(WindowTrip);
    let runs = Cell::new(0);
    // Eighteen seconds from first to third failure, but never more than ten between two.
    assert!(run(&breaker, &runs, down).is_err());
    WindowTrip::clock().advance(Duration::from_secs(9));
    assert!(run(&breaker, &runs, down).is_err());
    // Successes neither reset nor renew the count under this policy.
    assert!(run(&breaker, &runs, ok).is_ok());
    WindowTrip::clock().advance(Duration::from_secs(9));
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
    assert_eq!(rejected(&run(&breaker, &runs, ok)), Some("open"));
    assert_eq!(runs.get(), 4);
}

handler!(WindowLapse {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::CountInWindow {
        window: Duration::from_secs(10),
    };
});

#[test]
fn count_in_window_starts_over_after_a_gap_longer_than_the_window() {
    let breaker = Breaker::new(WindowLapse);
    let runs = Cell::new(0);
    assert!(run(&breaker, &runs, down).is_err());
    assert!(run(&breaker, &runs, down).is_err());
    WindowLapse::clock().advance(Duration::from_secs(11));
    // The two old failures lapsed: this one is the first of a new count.
    assert!(run(&breaker, &runs, down).is_err());
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
}

handler!(RateMinimum {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(10),
        minimum_calls: 4,
    };
});

#[test]
fn rate_waits_for_the_minimum_calls_then_opens_at_the_rate() {
    let breaker = Breaker::new(RateMinimum);
    let runs = Cell::new(0);
    // Three failures out of three: above the rate, but below the minimum number of calls.
    for _ in 0..3 {
        assert!(run(&breaker, &runs, down).is_err());
    }
    assert_eq!(breaker.state().unwrap(), State::Closed);
    // Fourth call a success: 3 of 4 failed, yet only a failure trips the breaker.
    assert!(run(&breaker, &runs, ok).is_ok());
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
}

handler!(RateBelow {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(10),
        minimum_calls: 4,
    };
});

#[test]
fn rate_stays_closed_below_the_rate_and_opens_when_it_is_reached() {
    let breaker = Breaker::new(RateBelow);
    let runs = Cell::new(0);
    for _ in 0..3 {
        assert!(run(&breaker, &runs, ok).is_ok());
    }
    assert!(run(&breaker, &runs, down).is_err()); // 1 of 4
    assert!(run(&breaker, &runs, down).is_err()); // 2 of 5
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, down).is_err()); // 3 of 6: exactly the rate
    assert_eq!(breaker.state().unwrap(), State::Open);
}

handler!(RateForgets {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(10),
        minimum_calls: 4,
    };
});

#[test]
fn rate_forgets_calls_older_than_the_window() {
    let breaker = Breaker::new(RateForgets);
    let runs = Cell::new(0);
    for _ in 0..3 {
        assert!(run(&breaker, &runs, down).is_err());
    }
    RateForgets::clock().advance(Duration::from_secs(11));
    // Had the three old failures counted, this would be 4 of 4 and trip.
    assert!(run(&breaker, &runs, down).is_err());
    assert!(run(&breaker, &runs, ok).is_ok());
    assert!(run(&breaker, &runs, ok).is_ok());
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, down).is_err()); // 2 of 4 in the window
    assert_eq!(breaker.state().unwrap(), State::Open);
}

handler!(OpenRejects {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[circuit_breaker(handler = OpenRejects)]
fn open_rejects_guarded(runs: &Cell<u32>, fail: bool) -> Result<u32, Error> {
    runs.set(runs.get() + 1);
    if fail { Err(Error::Down) } else { Ok(1) }
}

/// Reads back a `YYYY-MM-DDTHH:MM:SS.mmmZ` instant as milliseconds since the Unix epoch.
fn parse_rfc3339(text: &str) -> u64 {
    assert_eq!(text.len(), 24, "{text:?}");
    let bytes = text.as_bytes();
    assert_eq!(
        (
            bytes[4], bytes[7], bytes[10], bytes[13], bytes[16], bytes[19], bytes[23]
        ),
        (b'-', b'-', b'T', b':', b':', b'.', b'Z'),
        "{text:?}"
    );
    let number = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    // Days from civil date, counting years from March so the leap day comes last.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + number(11..13) * 3600 + number(14..16) * 60 + number(17..19);
    (seconds * 1000 + number(20..23)) as u64
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn open_rejects_without_running_the_body_and_says_when_it_opened_and_when_to_retry() {
    let runs = Cell::new(0);
    assert!(matches!(
        open_rejects_guarded(&runs, true),
        Err(Error::Down)
    ));
    for _ in 0..5 {
        OpenRejects::clock().advance(Duration::from_secs(5));
        let open = open_rejects_guarded(&runs, false).unwrap_err().open();
        assert!(matches!(open.reason(), circuitpy::Rejection::Open));
        assert_eq!(open.key(), "OpenRejects");
        assert_eq!(open.method(), "open_rejects_guarded");
        let (opened_at, retry_at) = (open.opened_at().unwrap(), open.retry_at().unwrap());
        assert_eq!(
            retry_at.duration_since(opened_at).unwrap(),
            Duration::from_secs(30)
        );
        // Opened just now (by the system's wall clock at the manual clock's start).
        let age = SystemTime::now()
            .duration_since(opened_at)
            .unwrap_or_default();
        assert!(age < Duration::from_secs(3600), "opened {age:?} ago");

        let text = open.to_string();
        assert!(
            text.starts_with(
                "circuit breaker is open for method \"open_rejects_guarded\" (key \"OpenRejects\"), opened at "
            ),
            "{text}"
        );
        let (_, after) = text.split_once(", opened at ").unwrap();
        let (opened_text, retry_text) = after.split_once(", next trial at ").unwrap();
        assert_eq!(parse_rfc3339(opened_text), millis(opened_at));
        assert_eq!(parse_rfc3339(retry_text), millis(retry_at));
    }
    assert_eq!(runs.get(), 1);
}

handler!(StaysOpen {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn open_lasts_the_recovery_timeout_then_half_opens() {
    let breaker = Breaker::new(StaysOpen);
    let runs = Cell::new(0);
    assert!(run(&breaker, &runs, down).is_err());
    StaysOpen::clock().advance(Duration::from_secs(10) - SLACK);
    assert_eq!(breaker.state().unwrap(), State::Open);
    assert_eq!(rejected(&run(&breaker, &runs, ok)), Some("open"));
    StaysOpen::clock().advance(2 * SLACK);
    assert_eq!(breaker.state().unwrap(), State::HalfOpen);
    assert_eq!(run(&breaker, &runs, ok).unwrap(), 1);
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert_eq!(runs.get(), 2);
}

handler!(ThreeTrials {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const HALF_OPEN_TRIALS: u32 = 3;
});

#[test]
fn half_open_admits_exactly_the_trials_and_rejects_the_rest_while_they_run() {
    let breaker = Breaker::new(ThreeTrials);
    assert!(breaker.call(down).is_err());
    ThreeTrials::clock().advance(Duration::from_secs(10) + SLACK);
    let runs = Cell::new(0);
    let mut extra = Vec::new();
    // Three trials nested in each other are all under way when the fourth call comes.
    let outer = breaker.call(|| {
        runs.set(runs.get() + 1);
        breaker.call(|| {
            runs.set(runs.get() + 1);
            breaker.call(|| {
                runs.set(runs.get() + 1);
                assert_eq!(breaker.state().unwrap(), State::HalfOpen);
                for _ in 0..4 {
                    extra.push(rejected(&run(&breaker, &runs, ok)));
                }
                Ok::<u32, Error>(3)
            })?;
            assert_eq!(breaker.state().unwrap(), State::HalfOpen);
            Ok::<u32, Error>(2)
        })?;
        assert_eq!(breaker.state().unwrap(), State::HalfOpen);
        Ok::<u32, Error>(1)
    });
    assert_eq!(outer.unwrap(), 1);
    assert_eq!(runs.get(), 3);
    assert_eq!(extra, vec![Some("trials"); 4]);
    // All three trials succeeded: closed.
    assert_eq!(breaker.state().unwrap(), State::Closed);
}

handler!(TrialsClose {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const HALF_OPEN_TRIALS: u32 = 3;
});

#[test]
fn all_trials_succeeding_closes_with_the_count_cleared() {
    let breaker = Breaker::new(TrialsClose);
    let runs = Cell::new(0);
    for _ in 0..2 {
        assert!(run(&breaker, &runs, down).is_err());
    }
    TrialsClose::clock().advance(Duration::from_secs(10) + SLACK);
    for done in 1..=3 {
        assert_eq!(run(&breaker, &runs, ok).unwrap(), 1);
        let expected = if done < 3 {
            State::HalfOpen
        } else {
            State::Closed
        };
        assert_eq!(breaker.state().unwrap(), expected, "after {done} trials");
    }
    // The failure count starts again from zero: one failure does not trip a threshold of 2.
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
}

handler!(TrialFails {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const HALF_OPEN_TRIALS: u32 = 3;
});

#[test]
fn one_failed_trial_opens_for_another_recovery_timeout() {
    let breaker = Breaker::new(TrialFails);
    let runs = Cell::new(0);
    assert!(run(&breaker, &runs, down).is_err());
    TrialFails::clock().advance(Duration::from_secs(10) + SLACK);
    assert!(run(&breaker, &runs, ok).is_ok());
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
    // The new open period counts from the failed trial.
    TrialFails::clock().advance(Duration::from_secs(10) - SLACK);
    assert_eq!(rejected(&run(&breaker, &runs, ok)), Some("open"));
    assert_eq!(runs.get(), 3);
    TrialFails::clock().advance(2 * SLACK);
    assert_eq!(breaker.state().unwrap(), State::HalfOpen);
    // A fresh round of three trials, the earlier success forgotten.
    for _ in 0..2 {
        assert!(run(&breaker, &runs, ok).is_ok());
        assert_eq!(breaker.state().unwrap(), State::HalfOpen);
    }
    assert!(run(&breaker, &runs, ok).is_ok());
    assert_eq!(breaker.state().unwrap(), State::Closed);
}

handler!(SlowCalls {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const SLOW_CALL_THRESHOLD: Option<Duration> = Some(Duration::from_millis(100));
});

#[test]
fn slow_successes_count_as_failures() {
    let breaker = Breaker::new(SlowCalls);
    let call = |took: Duration| {
        breaker.call(|| {
            SlowCalls::clock().advance(took);
            Ok::<_, Error>("done")
        })
    };
    // Fast enough: successes.
    for _ in 0..3 {
        assert_eq!(call(Duration::from_millis(100)).unwrap(), "done");
    }
    // Too slow: the caller still gets its value, but the breaker counts a failure.
    assert_eq!(call(Duration::from_millis(101)).unwrap(), "done");
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert_eq!(call(Duration::from_millis(500)).unwrap(), "done");
    assert_eq!(breaker.state().unwrap(), State::Open);
    assert_eq!(rejected(&call(Duration::ZERO)), Some("open"));
}

handler!(SlowTrial {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const SLOW_CALL_THRESHOLD: Option<Duration> = Some(Duration::from_millis(100));
});

#[test]
fn a_slow_trial_reopens_the_breaker() {
    let breaker = Breaker::new(SlowTrial);
    assert!(breaker.call(down).is_err());
    SlowTrial::clock().advance(Duration::from_secs(10) + SLACK);
    let slow = breaker.call(|| {
        SlowTrial::clock().advance(Duration::from_secs(1));
        Ok::<_, Error>(7)
    });
    assert_eq!(slow.unwrap(), 7);
    assert_eq!(breaker.state().unwrap(), State::Open);
}

handler!(Narrowed {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    fn is_failure(&self, error: &dyn Any) -> bool {
        !matches!(error.downcast_ref::<Error>(), Some(Error::NotFound))
    }
});

fn not_found() -> Result<u32, Error> {
    Err(Error::NotFound)
}

#[test]
fn errors_that_are_not_failures_pass_through_unrecorded() {
    let breaker = Breaker::new(Narrowed);
    let runs = Cell::new(0);
    for _ in 0..10 {
        assert!(matches!(
            run(&breaker, &runs, not_found),
            Err(Error::NotFound)
        ));
    }
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, down).is_err());
    // Not recorded as a success either: the failure count survives it.
    assert!(matches!(
        run(&breaker, &runs, not_found),
        Err(Error::NotFound)
    ));
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
    assert_eq!(runs.get(), 13);
    assert!(Narrowed::log().changes().len() == 1);
}

handler!(NarrowedTrial {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    fn is_failure(&self, error: &dyn Any) -> bool {
        !matches!(error.downcast_ref::<Error>(), Some(Error::NotFound))
    }
});

#[test]
fn a_trial_ending_in_an_error_that_does_not_count_gives_its_permit_back() {
    let breaker = Breaker::new(NarrowedTrial);
    let runs = Cell::new(0);
    assert!(run(&breaker, &runs, down).is_err());
    NarrowedTrial::clock().advance(Duration::from_secs(10) + SLACK);
    assert!(matches!(
        run(&breaker, &runs, not_found),
        Err(Error::NotFound)
    ));
    assert_eq!(breaker.state().unwrap(), State::HalfOpen);
    // The only permit is free again: the next call is a trial, and closes the breaker.
    assert!(run(&breaker, &runs, ok).is_ok());
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert_eq!(runs.get(), 3);
}

handler!(Panics {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[circuit_breaker(handler = Panics)]
fn panicking(runs: &Cell<u32>) -> Result<u32, Error> {
    runs.set(runs.get() + 1);
    panic!("the body gave up")
}

#[test]
fn a_panic_counts_as_a_failure_and_keeps_unwinding() {
    let runs = Cell::new(0);
    for _ in 0..2 {
        let panic = catch_unwind(AssertUnwindSafe(|| panicking(&runs))).unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"the body gave up"));
    }
    assert_eq!(Breaker::new(Panics).state().unwrap(), State::Open);
    // Open now: no body, no panic, a rejection.
    assert_eq!(rejected(&panicking(&runs)), Some("open"));
    assert_eq!(runs.get(), 2);
}

handler!(Hooks {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn hooks_see_every_state_change_and_every_rejection() {
    let breaker = Breaker::new(Hooks);
    let runs = Cell::new(0);
    let change = |from, to| Event::Change {
        key: "Hooks".to_owned(),
        from,
        to,
    };
    let rejection = |reason| Event::Rejected {
        key: "Hooks".to_owned(),
        reason,
    };
    assert!(run(&breaker, &runs, ok).is_ok());
    assert_eq!(Hooks::log().take(), vec![]);
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(
        Hooks::log().take(),
        vec![change(State::Closed, State::Open)]
    );
    assert!(run(&breaker, &runs, ok).is_err());
    assert!(run(&breaker, &runs, ok).is_err());
    assert_eq!(
        Hooks::log().take(),
        vec![rejection("open"), rejection("open")]
    );
    Hooks::clock().advance(Duration::from_secs(10) + SLACK);
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(
        Hooks::log().take(),
        vec![
            change(State::Open, State::HalfOpen),
            change(State::HalfOpen, State::Open)
        ]
    );
    Hooks::clock().advance(Duration::from_secs(10) + SLACK);
    assert!(run(&breaker, &runs, ok).is_ok());
    assert_eq!(
        Hooks::log().take(),
        vec![
            change(State::Open, State::HalfOpen),
            change(State::HalfOpen, State::Closed)
        ]
    );
    breaker.force_open().unwrap();
    assert!(run(&breaker, &runs, ok).is_err());
    breaker.reset().unwrap();
    assert_eq!(
        Hooks::log().take(),
        vec![
            change(State::Closed, State::ForcedOpen),
            rejection("forced"),
            change(State::ForcedOpen, State::Closed)
        ]
    );
}

handler!(HookTrials {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn the_rejection_hook_sees_trials_in_progress() {
    let breaker = Breaker::new(HookTrials);
    let runs = Cell::new(0);
    assert!(run(&breaker, &runs, down).is_err());
    HookTrials::clock().advance(Duration::from_secs(10) + SLACK);
    HookTrials::log().take();
    let inner = breaker.call(|| Ok::<_, Error>(run(&breaker, &runs, ok)));
    assert_eq!(rejected(&inner.unwrap()), Some("trials"));
    assert_eq!(
        HookTrials::log().take(),
        vec![
            Event::Change {
                key: "HookTrials".to_owned(),
                from: State::Open,
                to: State::HalfOpen
            },
            Event::Rejected {
                key: "HookTrials".to_owned(),
                reason: "trials"
            },
            Event::Change {
                key: "HookTrials".to_owned(),
                from: State::HalfOpen,
                to: State::Closed
            },
        ]
    );
}

handler!(ForcedOpen {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn forced_open_rejects_everything_until_reset() {
    let breaker = Breaker::new(ForcedOpen);
    let runs = Cell::new(0);
    breaker.force_open().unwrap();
    assert_eq!(breaker.state().unwrap(), State::ForcedOpen);
    for _ in 0..3 {
        ForcedOpen::clock().advance(Duration::from_secs(3600));
        let open = run(&breaker, &runs, ok).unwrap_err().open();
        assert!(matches!(open.reason(), circuitpy::Rejection::ForcedOpen));
        assert_eq!(open.retry_at(), None);
        assert_eq!(breaker.state().unwrap(), State::ForcedOpen);
    }
    assert_eq!(runs.get(), 0);
    breaker.reset().unwrap();
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, ok).is_ok());
    assert_eq!(runs.get(), 1);
}

handler!(ForcedClosed {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn forced_closed_runs_everything_and_records_nothing_until_reset() {
    let breaker = Breaker::new(ForcedClosed);
    let runs = Cell::new(0);
    assert!(run(&breaker, &runs, down).is_err());
    breaker.force_closed().unwrap();
    for _ in 0..10 {
        assert!(matches!(run(&breaker, &runs, down), Err(Error::Down)));
    }
    assert_eq!(breaker.state().unwrap(), State::ForcedClosed);
    assert_eq!(runs.get(), 11);
    breaker.reset().unwrap();
    assert_eq!(breaker.state().unwrap(), State::Closed);
    // Reset cleared the failure counted before forcing: one more failure does not trip.
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
}

handler!(ResetOpen {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn reset_closes_an_open_breaker_at_once() {
    let breaker = Breaker::new(ResetOpen);
    let runs = Cell::new(0);
    assert!(run(&breaker, &runs, down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
    breaker.reset().unwrap();
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(run(&breaker, &runs, ok).is_ok());
    // Forcing closed then open: the last one wins.
    breaker.force_closed().unwrap();
    breaker.force_open().unwrap();
    assert_eq!(breaker.state().unwrap(), State::ForcedOpen);
    breaker.reset().unwrap();
    assert_eq!(runs.get(), 2);
}

handler!(PerKey {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[circuit_breaker(handler = PerKey, key = host)]
fn per_key(host: &str, fail: bool) -> Result<String, Error> {
    if fail {
        Err(Error::Down)
    } else {
        Ok(host.to_owned())
    }
}

#[test]
fn per_call_keys_are_independent_breakers() {
    assert!(per_key("a", true).is_err());
    let open = per_key("a", false).unwrap_err().open();
    assert_eq!(open.key(), "PerKey:a");
    assert_eq!(per_key("b", false).unwrap(), "b");
    assert_eq!(Breaker::keyed(PerKey, "a").state().unwrap(), State::Open);
    assert_eq!(Breaker::keyed(PerKey, "b").state().unwrap(), State::Closed);
    // The handler's own key is one more breaker, untouched.
    assert_eq!(Breaker::new(PerKey).state().unwrap(), State::Closed);
    assert_eq!(Breaker::keyed(PerKey, "a").key(), "PerKey:a");
    // Control through one key leaves the others alone.
    Breaker::keyed(PerKey, "b").force_open().unwrap();
    assert_eq!(rejected(&per_key("b", false)), Some("forced"));
    Breaker::keyed(PerKey, "a").reset().unwrap();
    assert_eq!(per_key("a", false).unwrap(), "a");
    assert_eq!(
        PerKey::log().changes(),
        vec![
            ("PerKey:a".to_owned(), State::Closed, State::Open),
            ("PerKey:b".to_owned(), State::Closed, State::ForcedOpen),
            ("PerKey:a".to_owned(), State::Open, State::Closed),
        ]
    );
}

handler!(StaleWindow {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::CountInWindow {
        window: Duration::from_secs(60),
    };
});

#[test]
fn a_failure_admitted_before_the_breaker_opened_does_not_count_after_it_closed_again() {
    use std::future::{Future, poll_fn};
    use std::task::{Context, Poll, Waker};

    let breaker = Breaker::new(StaleWindow);
    let finish = Cell::new(false);
    // A call admitted while closed, still running when the breaker opens and closes again.
    let mut slow = Box::pin(breaker.call_async(async {
        poll_fn(|_| {
            if finish.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        Err::<(), Error>(Error::Down)
    }));
    let mut context = Context::from_waker(Waker::noop());
    assert!(slow.as_mut().poll(&mut context).is_pending());
    for _ in 0..2 {
        assert!(breaker.call(down).is_err());
    }
    assert_eq!(breaker.state().unwrap(), State::Open);
    StaleWindow::clock().advance(Duration::from_secs(10) + SLACK);
    assert!(breaker.call(ok).is_ok());
    assert_eq!(breaker.state().unwrap(), State::Closed);
    // The old call fails now; it belongs to the breaker's previous closed period.
    finish.set(true);
    assert!(matches!(
        slow.as_mut().poll(&mut context),
        Poll::Ready(Err(Error::Down))
    ));
    assert_eq!(breaker.state().unwrap(), State::Closed);
    // One failure of this closed period is below the threshold of two.
    assert!(breaker.call(down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(breaker.call(down).is_err());
    assert_eq!(breaker.state().unwrap(), State::Open);
}

/// A handler that owns its storage: each storage instance has its own breakers, wherever the
/// handler is moved.
struct Owned(circuitpy::MemoryStorage);

impl circuitpy::CircuitBreaker for Owned {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
    const FAILURE_KEY: &'static str = "owned";
    type Storage = circuitpy::MemoryStorage;
    fn storage(&self) -> &circuitpy::MemoryStorage {
        &self.0
    }
}

#[test]
fn breakers_belong_to_their_storage_instance() {
    let mut seen = Vec::new();
    for _ in 0..3 {
        let breaker = circuitpy::Breaker::new(Owned(circuitpy::MemoryStorage::new()));
        seen.push(breaker.state().unwrap());
        breaker.force_open().unwrap();
        // Moving the breaker (and the storage inside it) keeps its state.
        let moved = Box::new(breaker);
        assert_eq!(moved.state().unwrap(), circuitpy::State::ForcedOpen);
    }
    assert_eq!(seen, [circuitpy::State::Closed; 3]);
}

handler!(BackingOff {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const RECOVERY_BACKOFF: circuitpy::Backoff =
        circuitpy::Backoff::exponential(2.0, Duration::from_secs(5));
});

#[test]
fn each_failed_trial_round_doubles_the_open_time_up_to_the_cap_until_the_breaker_closes() {
    use circuitpy::admin::Admin;
    let breaker = Breaker::new(BackingOff);
    let clock = BackingOff::clock();
    let runs = Cell::new(0);
    let storage = BackingOff.storage();
    let failed_rounds = || {
        storage
            .inspect("circuitpy", "BackingOff")
            .unwrap()
            .map(|info| info.failed_rounds)
    };
    // The trip from closed: open for the recovery timeout.
    assert!(matches!(run(&breaker, &runs, down), Err(Error::Down)));
    let mut open = Duration::from_secs(1);
    // Each failed trial round: 2 s, 4 s, then the 5 s cap, twice.
    for (round, next) in [(1, 2), (2, 4), (3, 5), (4, 5)] {
        clock.advance(open - SLACK);
        assert_eq!(breaker.state().unwrap(), State::Open, "before {open:?}");
        clock.advance(SLACK);
        assert_eq!(breaker.state().unwrap(), State::HalfOpen, "after {open:?}");
        assert!(matches!(run(&breaker, &runs, down), Err(Error::Down)));
        assert_eq!(failed_rounds(), Some(round));
        open = Duration::from_secs(next);
        let Err(Error::Open(rejection)) = run(&breaker, &runs, ok) else {
            panic!("a failed trial reopens")
        };
        let open_for = rejection
            .retry_at()
            .unwrap()
            .duration_since(rejection.opened_at().unwrap())
            .unwrap();
        assert_eq!(open_for, open);
    }
    // A trial that succeeds closes the breaker; the next trip is back to one second.
    clock.advance(open);
    assert_eq!(run(&breaker, &runs, ok).unwrap(), 1);
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(matches!(run(&breaker, &runs, down), Err(Error::Down)));
    assert_eq!(failed_rounds(), Some(0));
    clock.advance(Duration::from_secs(1));
    assert_eq!(breaker.state().unwrap(), State::HalfOpen);
}

#[test]
fn a_backoff_that_cannot_reach_its_cap_does_not_compile_into_a_config() {
    use circuitpy::{Backoff, Config};
    let mut config = Config::of::<BackingOff>();
    config.backoff = Backoff::exponential(1.01, Duration::from_secs(3600));
    assert!(config.check().unwrap_err().contains("within 31"));
    config.backoff = Backoff::exponential(f64::NAN, Duration::from_secs(5));
    assert!(config.check().unwrap_err().contains("factor"));
    config.backoff = Backoff::exponential(2.0, Duration::from_millis(500));
    assert!(
        config
            .check()
            .unwrap_err()
            .contains("at least RECOVERY_TIMEOUT")
    );
}

handler!(Jittered {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const RECOVERY_JITTER: f64 = 0.5;
});

#[test]
fn a_jitter_spreads_the_trials_of_breakers_that_opened_together() {
    let runs = Cell::new(0);
    let mut deadlines = Vec::new();
    for tenant in 0..50 {
        let breaker = Breaker::keyed(Jittered, &format!("tenant-{tenant}"));
        assert!(matches!(run(&breaker, &runs, down), Err(Error::Down)));
        let Err(Error::Open(rejection)) = run(&breaker, &runs, ok) else {
            panic!("tripped")
        };
        deadlines.push(rejection.retry_at().unwrap());
    }
    let first = *deadlines.iter().min().unwrap();
    let last = *deadlines.iter().max().unwrap();
    let spread = last.duration_since(first).unwrap();
    assert!(
        spread > Duration::from_secs(3) && spread <= Duration::from_secs(5),
        "50 breakers opened in one instant reopen over {spread:?}"
    );
    deadlines.sort();
    deadlines.dedup();
    assert!(
        deadlines.len() >= 40,
        "{} distinct deadlines",
        deadlines.len()
    );
    // None waits longer than the recovery timeout, none less than half of it.
    let still_open = || {
        (0..50)
            .filter(|tenant| {
                Breaker::keyed(Jittered, &format!("tenant-{tenant}"))
                    .state()
                    .unwrap()
                    == State::Open
            })
            .count()
    };
    Jittered::clock().advance(Duration::from_secs(5) - SLACK);
    assert_eq!(still_open(), 50);
    Jittered::clock().advance(Duration::from_secs(5) + SLACK);
    assert_eq!(still_open(), 0);
}
