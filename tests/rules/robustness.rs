//! In-process robustness: hooks that panic, trials that never return, per-call keys from
//! outside input.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use circuitpy::{Breaker, CircuitBreaker, ManualClock, MemoryStorage, State};

use circuitpy_tests::handlers::Failed as E;

static CLOCK: LazyLock<ManualClock> = LazyLock::new(ManualClock::new);
static STORAGE: LazyLock<MemoryStorage> =
    LazyLock::new(|| MemoryStorage::with_clock(CLOCK.clock()));

static PANIC_ON_HALF_OPEN: AtomicBool = AtomicBool::new(false);

struct PanickyHook;
impl CircuitBreaker for PanickyHook {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "panicky_hook";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
    fn on_state_change(&self, _key: &str, _from: State, to: State) {
        if to == State::HalfOpen && PANIC_ON_HALF_OPEN.swap(false, Ordering::SeqCst) {
            panic!("a hook that panics");
        }
    }
}

/// a hook that panics while the breaker half-opens does not keep the trial permit.
#[test]
fn a_panicking_hook_does_not_leak_the_trial_permit() {
    let breaker = Breaker::new(PanickyHook);
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    assert_eq!(breaker.state().unwrap(), State::Open);
    CLOCK.advance(Duration::from_secs(2));
    PANIC_ON_HALF_OPEN.store(true, Ordering::SeqCst);
    let _ = catch_unwind(AssertUnwindSafe(|| breaker.call(|| Ok::<(), E>(()))));
    // Whatever the first call did, the breaker is usable: the next call runs as a trial or
    // the breaker already closed.
    let mut ran = false;
    let result = breaker.call(|| {
        ran = true;
        Ok::<(), E>(())
    });
    assert!(
        ran,
        "the breaker kept rejecting after a hook panicked: {result:?}"
    );
    assert_eq!(breaker.state().unwrap(), State::Closed);
}

struct Stuck;
impl CircuitBreaker for Stuck {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "stuck";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// an in-memory trial permit is a lease that lapses after a recovery timeout, as
/// the shared storages' are.
#[test]
fn a_trial_that_never_returns_lets_its_lease_lapse() {
    let breaker = Breaker::new(Stuck);
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    CLOCK.advance(Duration::from_secs(2));
    std::thread::scope(|scope| {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let stuck = scope.spawn(|| {
            breaker.call(move || {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv();
                Ok::<(), E>(())
            })
        });
        started.recv().unwrap();
        let result = breaker.call(|| Ok::<(), E>(()));
        assert!(result.is_err(), "a second trial while the first runs");
        CLOCK.advance(Duration::from_secs(2));
        let mut ran = false;
        let result = breaker.call(|| {
            ran = true;
            Ok::<(), E>(())
        });
        assert!(ran, "the stuck trial's permit never lapsed: {result:?}");
        release.send(()).unwrap();
        let _ = stuck.join();
    });
}

fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

static KEYS_STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);

struct PerHost;
impl CircuitBreaker for PerHost {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const FAILURE_KEY: &'static str = "per_host";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &KEYS_STORAGE
    }
}

/// A million distinct per-call keys that each fail once stay under the bound. The resident
/// set is measured in a process of its own (this test binary again, running only this
/// test), so that the other tests running beside it do not count.
#[test]
fn a_million_failing_keys_stay_bounded() {
    if !circuitpy_tests::in_own_process(&circuitpy_tests::test_name!(
        a_million_failing_keys_stay_bounded
    )) {
        return;
    }
    let before = resident_kib();
    let mut most = 0;
    for n in 0..1_000_000u32 {
        let breaker = Breaker::keyed(PerHost, &format!("host-{n}"));
        let _ = breaker.call(|| Err::<(), E>(E::Down));
        if n % 100_000 == 99_999 {
            let resident = circuitpy::health::report()
                .breakers
                .iter()
                .filter(|breaker| breaker.key.starts_with("per_host:"))
                .count();
            most = most.max(resident);
        }
    }
    let grown = resident_kib().saturating_sub(before);
    eprintln!(
        "a million failing keys: at most {most} resident per-call breakers, the resident set grew by {grown} KiB"
    );
    assert!(
        most <= circuitpy::MAX_PER_CALL_BREAKERS,
        "{most} per-call breakers resident"
    );
    assert!(
        grown < 64 * 1024,
        "a million failing keys grew the resident set by {} MiB",
        grown / 1024
    );
}
