//! Random sequences of calls, clock advances, concurrent trials finished in any order,
//! abandoned calls and manual control, checked step by step against a small reference model
//! of the breaker: whether the body ran, how a call was rejected, and `Breaker::state`.

use std::any::Any;
use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use circuitpy::{Breaker, CircuitBreaker, ManualClock, State};
use circuitpy_tests::handler;
use circuitpy_tests::handlers::{Error, rejected};
use proptest::prelude::*;

const THRESHOLD: u32 = 3;
const TRIALS: u32 = 2;
/// Half a second off the whole seconds the clock moves by, so no step lands on a deadline
/// (which the breaker rounds up to its millisecond tick).
const RECOVERY: Duration = Duration::from_millis(10_500);

/// The window of the windowed handler: a whole number of seconds, so that steps land on
/// its edge too.
const WINDOW: Duration = Duration::from_secs(6);

handler!(ModelledWindow {
    const FAILURE_THRESHOLD: u32 = THRESHOLD;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
    const HALF_OPEN_TRIALS: u32 = TRIALS;
    const FAILURE_POLICY: circuitpy::FailurePolicy =
        circuitpy::FailurePolicy::CountInWindow { window: WINDOW };
    fn is_failure(&self, error: &dyn Any) -> bool {
        !matches!(error.downcast_ref::<Error>(), Some(Error::NotFound))
    }
});

/// The rate handler's buckets are a tenth of its window: whole seconds, like the steps.
const RATE_BUCKET: Duration = Duration::from_secs(1);
const RATE_MINIMUM_CALLS: u32 = 4;

handler!(ModelledRate {
    const FAILURE_THRESHOLD: u32 = THRESHOLD;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
    const HALF_OPEN_TRIALS: u32 = TRIALS;
    const FAILURE_POLICY: circuitpy::FailurePolicy = circuitpy::FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(10),
        minimum_calls: RATE_MINIMUM_CALLS,
    };
    fn is_failure(&self, error: &dyn Any) -> bool {
        !matches!(error.downcast_ref::<Error>(), Some(Error::NotFound))
    }
});

/// How the model counts failures while closed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    Consecutive,
    Window(Duration),
    Rate,
}

handler!(Modelled {
    const FAILURE_THRESHOLD: u32 = THRESHOLD;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
    const HALF_OPEN_TRIALS: u32 = TRIALS;
    fn is_failure(&self, error: &dyn Any) -> bool {
        !matches!(error.downcast_ref::<Error>(), Some(Error::NotFound))
    }
});

/// How a call's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Success,
    Failure,
    Panic,
    /// An error `is_failure` does not count.
    NotCounted,
}

#[derive(Clone, Debug)]
enum Step {
    /// A call that runs to its end at once.
    Call(End),
    Advance(u64),
    /// A call whose body starts and waits to be finished.
    Start,
    /// Finishes a waiting call (picked by index modulo their number).
    Finish(usize, End),
    /// Drops a waiting call's future.
    Abandon(usize),
    ForceOpen,
    ForceClosed,
    Reset,
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        3 => Just(End::Success),
        3 => Just(End::Failure),
        1 => Just(End::Panic),
        1 => Just(End::NotCounted),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => end().prop_map(Step::Call),
        3 => prop_oneof![Just(0u64), Just(1), 1u64..=12, Just(11)].prop_map(Step::Advance),
        3 => Just(Step::Start),
        3 => (any::<usize>(), end()).prop_map(|(i, e)| Step::Finish(i, e)),
        2 => any::<usize>().prop_map(Step::Abandon),
        1 => prop_oneof![Just(Step::ForceOpen), Just(Step::ForceClosed), Just(Step::Reset)],
    ]
}

/// The reference model's phase.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// `last`: when the last counted failure came (windowed policy only).
    Closed {
        failures: u32,
        last: Duration,
    },
    Open {
        until: Duration,
    },
    /// `lapses`: when the round lapses unless something happens in it first.
    HalfOpen {
        permits: u32,
        successes: u32,
        lapses: Duration,
    },
    ForcedOpen,
    ForcedClosed,
}

impl Phase {
    const CLOSED: Phase = Phase::Closed {
        failures: 0,
        last: Duration::ZERO,
    };
}

/// What an admitted call's outcome will count against.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Closed(u64),
    Trial(u64),
    Unrecorded,
}

#[derive(Debug)]
struct Model {
    policy: Policy,
    /// The rate policy's calls of this closed period: (bucket, failed).
    rate_calls: Vec<(u64, bool)>,
    phase: Phase,
    /// Bumped on every phase change and every manual control; outcomes of calls admitted
    /// under an older epoch change nothing.
    epoch: u64,
}

impl Model {
    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.epoch += 1;
        self.rate_calls.clear();
    }

    /// Admission at `now`: the role of an admitted call, or the rejection's reason.
    fn admit(&mut self, now: Duration) -> Result<Role, &'static str> {
        match self.phase {
            Phase::Closed { .. } => Ok(Role::Closed(self.epoch)),
            Phase::ForcedClosed => Ok(Role::Unrecorded),
            Phase::ForcedOpen => Err("forced"),
            Phase::Open { until } if now >= until => self.new_round(now),
            Phase::Open { .. } => Err("open"),
            // Nothing happened in the round for a recovery timeout: its leases lapsed.
            Phase::HalfOpen { lapses, .. } if now >= lapses => self.new_round(now),
            Phase::HalfOpen {
                permits, successes, ..
            } if permits < TRIALS => {
                self.phase = Phase::HalfOpen {
                    permits: permits + 1,
                    successes,
                    lapses: now + RECOVERY,
                };
                Ok(Role::Trial(self.epoch))
            }
            Phase::HalfOpen { .. } => Err("trials"),
        }
    }

    fn new_round(&mut self, now: Duration) -> Result<Role, &'static str> {
        self.enter(Phase::HalfOpen {
            permits: 1,
            successes: 0,
            lapses: now + RECOVERY,
        });
        Ok(Role::Trial(self.epoch))
    }

    /// Records an admitted call's end at `now`; `None` for an abandoned call.
    fn settle(&mut self, role: Role, end: Option<End>, now: Duration) {
        let failed = matches!(end, Some(End::Failure | End::Panic));
        let open = Phase::Open {
            until: now + RECOVERY,
        };
        match (role, self.phase) {
            (Role::Closed(epoch), Phase::Closed { .. })
                if epoch == self.epoch && self.policy == Policy::Rate =>
            {
                // Errors that do not count are not calls of the rate either.
                let Some(End::Success | End::Failure | End::Panic) = end else {
                    return;
                };
                let bucket = now.as_nanos() as u64 / RATE_BUCKET.as_nanos() as u64;
                self.rate_calls.push((bucket, failed));
                let oldest = bucket.saturating_sub(9);
                let (calls, failures) = self
                    .rate_calls
                    .iter()
                    .filter(|(at, _)| *at >= oldest)
                    .fold((0, 0), |(calls, failures), (_, failed)| {
                        (calls + 1, failures + u32::from(*failed))
                    });
                // A rate of one half: trips when at least half the calls failed.
                if failed && calls >= RATE_MINIMUM_CALLS && 2 * failures >= calls {
                    self.enter(open);
                }
            }
            (Role::Closed(epoch), Phase::Closed { failures, last }) if epoch == self.epoch => {
                if failed {
                    let failures = match self.policy {
                        // The count starts over after a gap of a whole window or more.
                        Policy::Window(window) if now.saturating_sub(last) >= window => 1,
                        _ => failures + 1,
                    };
                    if failures >= THRESHOLD {
                        self.enter(open);
                    } else {
                        self.phase = Phase::Closed {
                            failures,
                            last: now,
                        };
                    }
                } else if end == Some(End::Success) && self.policy == Policy::Consecutive {
                    // Consecutive: a success resets the count; in a window it changes nothing.
                    self.phase = Phase::CLOSED;
                }
            }
            // A round that lapsed is over: its permits' outcomes change nothing.
            (
                Role::Trial(epoch),
                Phase::HalfOpen {
                    permits,
                    successes,
                    lapses,
                },
            ) if epoch == self.epoch && now < lapses => {
                if failed {
                    self.enter(open);
                } else if end == Some(End::Success) {
                    if successes + 1 >= TRIALS {
                        self.enter(Phase::CLOSED);
                    } else {
                        self.phase = Phase::HalfOpen {
                            permits,
                            successes: successes + 1,
                            lapses: now + RECOVERY,
                        };
                    }
                } else {
                    // Abandoned, or an error that does not count: the permit comes back.
                    self.phase = Phase::HalfOpen {
                        permits: permits.saturating_sub(1),
                        successes,
                        lapses: now + RECOVERY,
                    };
                }
            }
            _ => {}
        }
    }

    /// What `Breaker::state` reports at `now`.
    fn state(&self, now: Duration) -> State {
        match self.phase {
            Phase::Closed { .. } => State::Closed,
            Phase::Open { until } if now >= until => State::HalfOpen,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
            Phase::ForcedOpen => State::ForcedOpen,
            Phase::ForcedClosed => State::ForcedClosed,
        }
    }
}

type Pending<'a> = Pin<Box<dyn Future<Output = Result<u32, Error>> + 'a>>;

/// A started call: its future, the slot that tells its body how to end, and its model role.
struct Waiting<'a> {
    future: Pending<'a>,
    end: Rc<Cell<Option<End>>>,
    role: Role,
}

fn finish(end: End) -> Result<u32, Error> {
    match end {
        End::Success => Ok(1),
        End::Failure => Err(Error::Down),
        End::NotCounted => Err(Error::NotFound),
        End::Panic => panic!("modelled panic"),
    }
}

/// Polls once; a panic from the body comes back as `Err`.
fn poll_once(future: &mut Pending<'_>) -> Result<Poll<Result<u32, Error>>, Box<dyn Any + Send>> {
    let mut context = Context::from_waker(Waker::noop());
    catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut context)))
}

/// Checks a finished call's result against how its body was told to end.
fn check_end(result: Result<Result<u32, Error>, Box<dyn Any + Send>>, end: End) {
    match (result, end) {
        (Ok(Ok(1)), End::Success)
        | (Ok(Err(Error::Down)), End::Failure)
        | (Ok(Err(Error::NotFound)), End::NotCounted) => {}
        (Err(panic), End::Panic) => {
            assert_eq!(panic.downcast_ref::<&str>(), Some(&"modelled panic"));
        }
        (result, end) => panic!("body told to end with {end:?}, call returned {result:?}"),
    }
}

static CASE: AtomicU64 = AtomicU64::new(0);

fn run_case<H>(handler: H, manual: &ManualClock, policy: Policy, steps: &[Step])
where
    H: CircuitBreaker<Storage = circuitpy::MemoryStorage>,
{
    // Each case has a breaker of its own: a fresh per-call key.
    let key = format!("case-{}", CASE.fetch_add(1, Ordering::Relaxed));
    let breaker = Breaker::keyed(handler, &key);
    let clock = manual.clock();
    let mut model = Model {
        policy,
        rate_calls: Vec::new(),
        phase: Phase::CLOSED,
        epoch: 0,
    };
    let mut waiting: Vec<Waiting<'_>> = Vec::new();

    for (index, step) in steps.iter().enumerate() {
        let now = clock.elapsed();
        match step {
            Step::Call(end) => {
                let expected = model.admit(now);
                let ran = Cell::new(false);
                let result = catch_unwind(AssertUnwindSafe(|| {
                    breaker.call(|| {
                        ran.set(true);
                        finish(*end)
                    })
                }));
                match expected {
                    Ok(role) => {
                        assert!(ran.get(), "step {index}: the body should have run");
                        check_end(result, *end);
                        model.settle(role, Some(*end), now);
                    }
                    Err(reason) => {
                        assert!(!ran.get(), "step {index}: the body should not have run");
                        assert_eq!(rejected(&result.unwrap()), Some(reason), "step {index}");
                    }
                }
            }
            Step::Advance(seconds) => manual.advance(Duration::from_secs(*seconds)),
            Step::Start => {
                let expected = model.admit(now);
                let slot = Rc::new(Cell::new(None));
                let ran = Rc::new(Cell::new(false));
                let (body_slot, body_ran) = (slot.clone(), ran.clone());
                let mut future: Pending<'_> = Box::pin(breaker.call_async(async move {
                    body_ran.set(true);
                    let end = poll_fn(|_| match body_slot.get() {
                        Some(end) => Poll::Ready(end),
                        None => Poll::Pending,
                    })
                    .await;
                    finish(end)
                }));
                let first = poll_once(&mut future).expect("nothing panics before the end");
                match expected {
                    Ok(role) => {
                        assert!(first.is_pending(), "step {index}: should be running");
                        assert!(ran.get(), "step {index}: the body should have started");
                        waiting.push(Waiting {
                            future,
                            end: slot,
                            role,
                        });
                    }
                    Err(reason) => {
                        assert!(!ran.get(), "step {index}: the body should not have run");
                        let Poll::Ready(result) = first else {
                            panic!("step {index}: a rejection is immediate")
                        };
                        assert_eq!(rejected(&result), Some(reason), "step {index}");
                    }
                }
            }
            Step::Finish(pick, end) => {
                if waiting.is_empty() {
                    continue;
                }
                let mut call = waiting.remove(pick % waiting.len());
                call.end.set(Some(*end));
                let result = poll_once(&mut call.future).map(|poll| match poll {
                    Poll::Ready(result) => result,
                    Poll::Pending => panic!("step {index}: the call should have finished"),
                });
                check_end(result, *end);
                model.settle(call.role, Some(*end), now);
            }
            Step::Abandon(pick) => {
                if waiting.is_empty() {
                    continue;
                }
                let call = waiting.remove(pick % waiting.len());
                drop(call.future);
                model.settle(call.role, None, now);
            }
            Step::ForceOpen => {
                breaker.force_open().unwrap();
                model.enter(Phase::ForcedOpen);
            }
            Step::ForceClosed => {
                breaker.force_closed().unwrap();
                model.enter(Phase::ForcedClosed);
            }
            Step::Reset => {
                breaker.reset().unwrap();
                model.enter(Phase::CLOSED);
            }
        }
        let now = clock.elapsed();
        assert_eq!(
            breaker.state().unwrap(),
            model.state(now),
            "after step {index} ({step:?}); model {model:?}"
        );
    }
}

/// The modelled panics are expected: keep them, and only them, out of the test output.
fn quiet_modelled_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"modelled panic") {
                report(info);
            }
        }));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_breaker_behaves_like_the_model(steps in prop::collection::vec(step(), 1..100)) {
        quiet_modelled_panics();
        run_case(Modelled, Modelled::clock(), Policy::Consecutive, &steps);
    }

    #[test]
    fn the_windowed_breaker_behaves_like_the_model(steps in prop::collection::vec(step(), 1..100)) {
        quiet_modelled_panics();
        run_case(ModelledWindow, ModelledWindow::clock(), Policy::Window(WINDOW), &steps);
    }

    #[test]
    fn the_rate_breaker_behaves_like_the_model(steps in prop::collection::vec(step(), 1..100)) {
        quiet_modelled_panics();
        run_case(ModelledRate, ModelledRate::clock(), Policy::Rate, &steps);
    }
}
