//! The protocol over the three primitives (and the shared storages where the same rule
//! applies): local-mode counts, forced states under concurrency, stale and unreported
//! trials, expiries.

use std::sync::Barrier;
use std::time::Duration;

use circuitpy::{
    Breaker, CircuitBreaker, Clock, ManualClock, MemoryStorage, State, Storage, StorageError,
};

use circuitpy_tests::handlers::held_call;
use circuitpy_tests::handlers::{Failed as E, leak};
use circuitpy_tests::shared_handler;

/// The three primitives over a map, on a manual clock: the breaker runs the primitive
/// protocol on it, as it would on a custom storage.
pub struct Primitives {
    map: MemoryStorage,
    clock: Clock,
}

impl Primitives {
    pub fn new(manual: &ManualClock) -> Primitives {
        Primitives {
            map: MemoryStorage::with_clock(manual.clock()),
            clock: manual.clock(),
        }
    }
}

impl Storage for Primitives {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        Storage::increment(&self.map, key, ttl)
    }
    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        Storage::get_count(&self.map, key)
    }
    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        Storage::expire_after(&self.map, key, ttl)
    }
    fn clock(&self) -> &Clock {
        &self.clock
    }
}

/// 50 successes reported at once, then 10 failures (17 %), do not trip a 50 %
/// breaker.
#[test]
fn held_back_successes_count_in_full() {
    let manual = ManualClock::new();
    let storage = Primitives::new(&manual);
    circuitpy_tests::assert_held_back_successes_count_in_full(&storage);
}

/// Primitives whose deletions of the forced-mode key wait for each other, so that two
/// concurrent operations interleave delete, delete, increment, increment.
struct Interleaved {
    inner: Primitives,
    barrier: Barrier,
}

impl Storage for Interleaved {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        self.inner.increment(key, ttl)
    }
    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        self.inner.get_count(key)
    }
    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let result = self.inner.expire_after(key, ttl);
        if key.ends_with(":mode") {
            self.barrier.wait();
        }
        result
    }
    fn clock(&self) -> &Clock {
        self.inner.clock()
    }
}

shared_handler!(Forced {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

/// two concurrent `force_open` leave the breaker forced open.
#[test]
fn concurrent_forcing_is_decided_by_one_operation() {
    let manual = ManualClock::new();
    let storage = leak(Interleaved {
        inner: Primitives::new(&manual),
        barrier: Barrier::new(2),
    });
    let breaker = Breaker::new(Forced(storage));
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                // Whatever the interleaving, no deadlock: the barrier only pairs deletions.
                let _ = breaker.force_open();
            });
        }
    });
    assert_eq!(
        breaker.state().unwrap(),
        State::ForcedOpen,
        "two force_open left it in another state"
    );
}

shared_handler!(Pair {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const HALF_OPEN_TRIALS: u32 = 2;
    fn is_failure(&self, error: &dyn std::any::Any) -> bool {
        !matches!(error.downcast_ref::<E>(), Some(E::Ignored))
    }
});

/// a trial whose lease lapsed does not count toward the next round.
fn stale_trials_do_not_count<S: Storage + 'static>(
    storage: &'static S,
    advance: impl Fn(Duration),
) {
    let breaker = Breaker::keyed(Pair(storage), "stale");
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    assert_eq!(breaker.state().unwrap(), State::Open);
    advance(Duration::from_secs(11));
    std::thread::scope(|scope| {
        let (first_started, first_release, first) = held_call(scope, &breaker, Ok(()));
        let (second_started, second_release, second) = held_call(scope, &breaker, Ok(()));
        assert!(first_started.recv().unwrap(), "first trial admitted");
        assert!(second_started.recv().unwrap(), "second trial admitted");
        // Neither reports for a whole recovery timeout: their leases lapse.
        advance(Duration::from_secs(11));
        let (new_started, new_release, new_round) = held_call(scope, &breaker, Ok(()));
        assert!(
            new_started.recv().unwrap(),
            "a new round admits a trial once the old leases lapsed"
        );
        // The old round's trials report success now: too late to count.
        first_release.send(()).unwrap();
        second_release.send(()).unwrap();
        first.join().unwrap();
        second.join().unwrap();
        assert_eq!(
            breaker.state().unwrap(),
            State::HalfOpen,
            "successes of a lapsed round closed the breaker"
        );
        new_release.send(()).unwrap();
        new_round.join().unwrap();
    });
}

#[test]
fn stale_trials_do_not_count_on_primitives() {
    let manual = ManualClock::new();
    let storage = leak(Primitives::new(&manual));
    stale_trials_do_not_count(storage, |by| manual.advance(by));
}

#[test]
fn stale_trials_do_not_count_in_memory() {
    let manual = ManualClock::new();
    let storage = leak(MemoryStorage::with_clock(manual.clock()));
    stale_trials_do_not_count(storage, |by| manual.advance(by));
}

/// a trial that ends in an error that does not count gives its permit back at once.
fn an_uncounted_trial_releases_its_permit<S: Storage + 'static>(
    storage: &'static S,
    advance: impl Fn(Duration),
) {
    struct One<S: 'static>(&'static S);
    impl<S: Send + Sync + 'static> CircuitBreaker for One<S> {
        const FAILURE_THRESHOLD: u32 = 1;
        const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
        const FAILURE_KEY: &'static str = "uncounted";
        type Storage = S;
        fn storage(&self) -> &S {
            self.0
        }
        fn is_failure(&self, error: &dyn std::any::Any) -> bool {
            !matches!(error.downcast_ref::<E>(), Some(E::Ignored))
        }
    }
    let breaker = Breaker::new(One(storage));
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    advance(Duration::from_secs(11));
    assert!(matches!(
        breaker.call(|| Err::<(), E>(E::Ignored)),
        Err(E::Ignored)
    ));
    let mut ran = false;
    let result = breaker.call(|| {
        ran = true;
        Ok::<(), E>(())
    });
    assert!(
        ran,
        "the permit of a trial that ended uncounted was kept: {result:?}"
    );
    assert_eq!(breaker.state().unwrap(), State::Closed);
}

#[test]
fn an_uncounted_trial_releases_its_permit_on_primitives() {
    let manual = ManualClock::new();
    let storage = leak(Primitives::new(&manual));
    an_uncounted_trial_releases_its_permit(storage, |by| manual.advance(by));
}

shared_handler!(Hourly {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
});

/// a dependency down for more than a day keeps the breaker open; the trip marker
/// is renewed by each failed trial.
#[test]
fn a_day_long_outage_keeps_the_breaker_open() {
    let manual = ManualClock::new();
    let storage = leak(Primitives::new(&manual));
    let breaker = Breaker::new(Hourly(storage));
    for _ in 0..3 {
        let _ = breaker.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(breaker.state().unwrap(), State::Open);
    for hour in 0..30 {
        manual.advance(Duration::from_secs(3601));
        let mut ran = false;
        let _ = breaker.call(|| {
            ran = true;
            Err::<(), E>(E::Down)
        });
        assert!(ran, "hour {hour}: the trial did not run");
        let mut ran_again = false;
        let _ = breaker.call(|| {
            ran_again = true;
            Err::<(), E>(E::Down)
        });
        assert!(
            !ran_again,
            "hour {hour}: a call ran right after a failed trial (the breaker read closed)"
        );
    }
}

/// the failure count expires a retention period after the last failure.
#[test]
fn the_failure_count_expires_after_the_last_failure() {
    let manual = ManualClock::new();
    let storage = leak(Primitives::new(&manual));
    let breaker = Breaker::keyed(Hourly(storage), "slow");
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    manual.advance(Duration::from_secs(23 * 3600));
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    manual.advance(Duration::from_secs(2 * 3600));
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    assert_eq!(
        breaker.state().unwrap(),
        State::Open,
        "three failures, each within a day of the last, did not trip"
    );
}
