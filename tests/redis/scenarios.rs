//! One scenario suite, run against the in-memory storage and against a real Redis server:
//! a shared breaker must behave as the in-process one does.

use std::any::Any;
use std::cell::Cell;
use std::time::Duration;

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, FailurePolicy, ManualClock, MemoryStorage,
    Rejection, State,
};
use circuitpy_tests::redis::RedisServer;

const RECOVERY: Duration = Duration::from_millis(200);

/// Where a scenario runs, and how time passes there.
trait Env: Sized + 'static {
    type S: Send + Sync + 'static;
    fn make() -> Option<(Self, &'static Self::S)>;
    fn wait(&self, by: Duration);
}

struct Memory(ManualClock);

impl Env for Memory {
    type S = MemoryStorage;
    fn make() -> Option<(Self, &'static MemoryStorage)> {
        let clock = ManualClock::new();
        let storage = Box::leak(Box::new(MemoryStorage::with_clock(clock.clock())));
        Some((Memory(clock), storage))
    }
    fn wait(&self, by: Duration) {
        self.0.advance(by);
    }
}

/// The server's clock cannot be driven, so time passes for real (a few hundred ms in all).
struct Redis(#[allow(dead_code)] RedisServer);

impl Env for Redis {
    type S = redis::Client;
    fn make() -> Option<(Self, &'static redis::Client)> {
        let server = RedisServer::start()?;
        let client = Box::leak(Box::new(server.client()));
        Some((Redis(server), client))
    }
    fn wait(&self, by: Duration) {
        std::thread::sleep(by);
    }
}

#[derive(Debug)]
enum E {
    Down,
    NotFound,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for E {
    fn from(open: CircuitBreakerOpen) -> Self {
        E::Open(open)
    }
}

/// Why a call was rejected, or `None` when it was not.
fn reason(result: Result<(), E>) -> Option<&'static str> {
    match result {
        Err(E::Open(open)) => Some(match open.reason() {
            Rejection::Open => "open",
            Rejection::TrialsInProgress => "trials in progress",
            Rejection::ForcedOpen => "forced open",
            _ => "storage failed",
        }),
        _ => None,
    }
}

macro_rules! handler {
    ($name:ident, $policy:expr) => {
        struct $name<S: 'static>(&'static S);

        impl<S: Send + Sync + 'static> CircuitBreaker for $name<S> {
            const FAILURE_THRESHOLD: u32 = 3;
            const RECOVERY_TIMEOUT: Duration = RECOVERY;
            const FAILURE_KEY: &'static str = "scenario";
            const HALF_OPEN_TRIALS: u32 = 2;
            const FAILURE_POLICY: FailurePolicy = $policy;
            // Generous, so a busy machine does not turn a scenario into a storage failure.
            const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
            type Storage = S;
            fn storage(&self) -> &S {
                self.0
            }
            fn is_failure(&self, error: &dyn Any) -> bool {
                !matches!(error.downcast_ref::<E>(), Some(E::NotFound))
            }
        }
    };
}

handler!(Consecutive, FailurePolicy::Consecutive);
handler!(
    Windowed,
    FailurePolicy::CountInWindow {
        window: Duration::from_secs(10)
    }
);
handler!(
    Rated,
    FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(10),
        minimum_calls: 4,
    }
);

fn fail<H: CircuitBreaker>(breaker: &Breaker<H>) -> Result<(), E>
where
    H::Storage: circuitpy::Storage,
{
    breaker.call(|| Err(E::Down))
}

fn succeed<H: CircuitBreaker>(breaker: &Breaker<H>) -> Result<(), E>
where
    H::Storage: circuitpy::Storage,
{
    breaker.call(|| Ok(()))
}

fn trip<H: CircuitBreaker>(breaker: &Breaker<H>)
where
    H::Storage: circuitpy::Storage,
{
    for _ in 0..3 {
        assert!(matches!(fail(breaker), Err(E::Down)));
    }
    assert_eq!(breaker.state().unwrap(), State::Open);
}

fn consecutive_failures_trip_at_the_threshold<V: Env>()
where
    V::S: circuitpy::Storage,
{
    let Some((_env, storage)) = V::make() else {
        return;
    };
    let breaker = Breaker::new(Consecutive(storage));
    fail(&breaker).unwrap_err();
    fail(&breaker).unwrap_err();
    // A success resets the count: two more failures do not trip.
    succeed(&breaker).unwrap();
    fail(&breaker).unwrap_err();
    fail(&breaker).unwrap_err();
    assert_eq!(breaker.state().unwrap(), State::Closed);
    assert!(matches!(fail(&breaker), Err(E::Down)), "the third runs");
    assert_eq!(breaker.state().unwrap(), State::Open);
    let ran = Cell::new(false);
    let result = breaker.call(|| {
        ran.set(true);
        Ok(())
    });
    assert_eq!(reason(result), Some("open"));
    assert!(!ran.get(), "an open breaker does not run the body");
}

fn half_open_admits_exactly_the_trials_then_closes<V: Env>()
where
    V::S: circuitpy::Storage,
{
    let Some((env, storage)) = V::make() else {
        return;
    };
    let breaker = Breaker::new(Consecutive(storage));
    trip(&breaker);
    env.wait(RECOVERY + Duration::from_millis(50));
    assert_eq!(breaker.state().unwrap(), State::HalfOpen);
    // Two trials in flight at once; a third call meanwhile is turned away.
    let mut third = None;
    let outer: Result<(), E> = breaker.call(|| {
        let inner: Result<(), E> = breaker.call(|| {
            third = Some(reason(succeed(&breaker)));
            Ok(())
        });
        inner.unwrap();
        Ok(())
    });
    outer.unwrap();
    assert_eq!(third, Some(Some("trials in progress")));
    assert_eq!(breaker.state().unwrap(), State::Closed);
    // Counts were reset by closing: two failures do not trip again.
    fail(&breaker).unwrap_err();
    fail(&breaker).unwrap_err();
    assert_eq!(breaker.state().unwrap(), State::Closed);
}

fn a_failed_trial_reopens_for_another_recovery<V: Env>()
where
    V::S: circuitpy::Storage,
{
    let Some((env, storage)) = V::make() else {
        return;
    };
    let breaker = Breaker::new(Consecutive(storage));
    trip(&breaker);
    env.wait(RECOVERY + Duration::from_millis(50));
    assert!(matches!(fail(&breaker), Err(E::Down)), "the trial runs");
    assert_eq!(breaker.state().unwrap(), State::Open);
    assert_eq!(reason(succeed(&breaker)), Some("open"));
    env.wait(RECOVERY + Duration::from_millis(50));
    // Trials one after the other: both permits of the round get used, then it closes.
    succeed(&breaker).unwrap();
    assert_eq!(breaker.state().unwrap(), State::HalfOpen);
    succeed(&breaker).unwrap();
    assert_eq!(breaker.state().unwrap(), State::Closed);
}

fn errors_that_are_not_failures_pass_unrecorded<V: Env>()
where
    V::S: circuitpy::Storage,
{
    let Some((_env, storage)) = V::make() else {
        return;
    };
    let breaker = Breaker::new(Consecutive(storage));
    for _ in 0..5 {
        assert!(matches!(
            breaker.call(|| Err::<(), E>(E::NotFound)),
            Err(E::NotFound)
        ));
    }
    assert_eq!(breaker.state().unwrap(), State::Closed);
    // Nor do they reset the count.
    fail(&breaker).unwrap_err();
    fail(&breaker).unwrap_err();
    let _ = breaker.call(|| Err::<(), E>(E::NotFound));
    fail(&breaker).unwrap_err();
    assert_eq!(breaker.state().unwrap(), State::Open);
}

fn panics_count_as_failures<V: Env>()
where
    V::S: circuitpy::Storage,
{
    let Some((_env, storage)) = V::make() else {
        return;
    };
    let breaker = Breaker::new(Consecutive(storage));
    for _ in 0..3 {
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<(), E> = breaker.call(|| panic!("body panicked"));
        }));
        assert!(unwound.is_err(), "the panic keeps unwinding");
    }
    assert_eq!(breaker.state().unwrap(), State::Open);
}

fn forced_modes_stick_until_reset<V: Env>()
where
    V::S: circuitpy::Storage,
{
    let Some((env, storage)) = V::make() else {
        return;
    };
    let breaker = Breaker::new(Consecutive(storage));
    breaker.force_open().unwrap();
    assert_eq!(reason(succeed(&breaker)), Some("forced open"));
    env.wait(RECOVERY + Duration::from_millis(50));
    assert_eq!(reason(succeed(&breaker)), Some("forced open"));
    assert_eq!(breaker.state().unwrap(), State::ForcedOpen);
    breaker.reset().unwrap();
    assert_eq!(breaker.state().unwrap(), State::Closed);
    succeed(&breaker).unwrap();

    breaker.force_closed().unwrap();
    for _ in 0..5 {
        assert!(matches!(fail(&breaker), Err(E::Down)));
    }
    assert_eq!(breaker.state().unwrap(), State::ForcedClosed);
    breaker.reset().unwrap();
    assert_eq!(breaker.state().unwrap(), State::Closed);
}

fn count_in_window_is_not_reset_by_a_success<V: Env>()
where
    V::S: circuitpy::Storage,
{
    let Some((_env, storage)) = V::make() else {
        return;
    };
    let breaker = Breaker::new(Windowed(storage));
    fail(&breaker).unwrap_err();
    succeed(&breaker).unwrap();
    fail(&breaker).unwrap_err();
    succeed(&breaker).unwrap();
    assert_eq!(breaker.state().unwrap(), State::Closed);
    fail(&breaker).unwrap_err();
    assert_eq!(breaker.state().unwrap(), State::Open);
}

fn rate_trips_once_enough_calls_failed<V: Env>()
where
    V::S: circuitpy::Storage,
{
    let Some((_env, storage)) = V::make() else {
        return;
    };
    let breaker = Breaker::new(Rated(storage));
    fail(&breaker).unwrap_err();
    fail(&breaker).unwrap_err();
    // Two of two failed, but fewer than the minimum calls were seen.
    assert_eq!(breaker.state().unwrap(), State::Closed);
    succeed(&breaker).unwrap();
    succeed(&breaker).unwrap();
    succeed(&breaker).unwrap();
    // 2 of 5 failed: below half.
    assert_eq!(breaker.state().unwrap(), State::Closed);
    fail(&breaker).unwrap_err();
    // 3 of 6 failed: half.
    assert_eq!(breaker.state().unwrap(), State::Open);
}

macro_rules! suite {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $scenario() { super::$scenario::<super::Memory>() } )*
        }
        mod redis_server {
            $( #[test] fn $scenario() { super::$scenario::<super::Redis>() } )*
        }
    };
}

suite!(
    consecutive_failures_trip_at_the_threshold,
    half_open_admits_exactly_the_trials_then_closes,
    a_failed_trial_reopens_for_another_recovery,
    errors_that_are_not_failures_pass_unrecorded,
    panics_count_as_failures,
    forced_modes_stick_until_reset,
    count_in_window_is_not_reset_by_a_success,
    rate_trips_once_enough_calls_failed,
);
