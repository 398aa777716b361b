//! Local mode (`SYNC_INTERVAL`) on a shared storage: successes in steady state send nothing,
//! failures always report, and a trip elsewhere is seen within the interval.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, Clock, ManualClock, MemoryStorage, Request,
    Snapshot, State, Storage, StorageError,
};

/// A shared storage stand-in: the three primitives over a map, every operation counted.
struct CountingStorage {
    map: MemoryStorage,
    clock: Clock,
    operations: AtomicU64,
}

impl Storage for CountingStorage {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        Storage::increment(&self.map, key, ttl)
    }
    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        Storage::get_count(&self.map, key)
    }
    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        Storage::expire_after(&self.map, key, ttl)
    }
    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        self.operations.fetch_add(1, Ordering::Relaxed);
        circuitpy::primitive::execute(self, request)
    }
    fn clock(&self) -> &Clock {
        &self.clock
    }
}

static MANUAL: LazyLock<ManualClock> = LazyLock::new(ManualClock::new);
static SHARED: LazyLock<CountingStorage> = LazyLock::new(|| CountingStorage {
    map: MemoryStorage::with_clock(MANUAL.clock()),
    clock: MANUAL.clock(),
    operations: AtomicU64::new(0),
});

fn operations() -> u64 {
    SHARED.operations.load(Ordering::Relaxed)
}

macro_rules! handler {
    ($name:ident, $key:literal, $interval:expr) => {
        handler!($name, $key, $interval, SHARED);
    };
    ($name:ident, $key:literal, $interval:expr, $storage:ident) => {
        struct $name;
        impl CircuitBreaker for $name {
            const FAILURE_THRESHOLD: u32 = 3;
            const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
            const FAILURE_KEY: &'static str = $key;
            const SYNC_INTERVAL: Option<Duration> = $interval;
            type Storage = CountingStorage;
            fn storage(&self) -> &CountingStorage {
                &$storage
            }
        }
    };
}

// Two handlers on one key stand for two processes sharing the breaker.
handler!(LocalA, "local", Some(Duration::from_secs(1)));
handler!(LocalB, "local", Some(Duration::from_secs(1)));
handler!(Strict, "strict", None);
handler!(Latecomer, "local", None);

#[derive(Debug)]
enum CallError {
    Down,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for CallError {
    fn from(open: CircuitBreakerOpen) -> Self {
        CallError::Open(open)
    }
}

fn succeed<H: CircuitBreaker<Storage = CountingStorage>>(handler: H) -> Result<(), CallError> {
    Breaker::new(handler).call(|| Ok(()))
}

fn fail<H: CircuitBreaker<Storage = CountingStorage>>(handler: H) {
    let result: Result<(), CallError> = Breaker::new(handler).call(|| Err(CallError::Down));
    assert!(matches!(result, Err(CallError::Down)));
}

#[test]
fn local_mode_behaviour() {
    // Strict mode: a process's first call asks for the shared state; then one operation per
    // success.
    let before = operations();
    succeed(Strict).unwrap();
    assert_eq!(operations() - before, 2);
    let before = operations();
    for _ in 0..100 {
        succeed(Strict).unwrap();
    }
    assert_eq!(operations() - before, 100);

    // Local mode: the first success syncs, the next 9 999 within the interval send nothing.
    let before = operations();
    for _ in 0..10_000 {
        succeed(LocalA).unwrap();
    }
    let sent = operations() - before;
    assert!(sent <= 1, "{sent} operations for 10 000 successes");

    // After the interval, one success reports again.
    MANUAL.advance(Duration::from_millis(1001));
    let before = operations();
    for _ in 0..1_000 {
        succeed(LocalA).unwrap();
    }
    assert_eq!(operations() - before, 1);

    // Failures always report; the next success reports too, to reset the count.
    let before = operations();
    fail(LocalA);
    assert_eq!(operations() - before, 1);
    succeed(LocalA).unwrap();
    assert_eq!(operations() - before, 2);
    succeed(LocalA).unwrap();
    assert_eq!(operations() - before, 2);

    // "Process" B trips the shared breaker. A keeps succeeding locally until its interval
    // is up, then learns the breaker is open and rejects.
    for _ in 0..3 {
        fail(LocalB);
    }
    assert_eq!(Breaker::new(LocalB).state().unwrap(), State::Open);
    succeed(LocalA).unwrap();
    MANUAL.advance(Duration::from_millis(1001));
    // This call ran (A still believed closed) and its report brought back "open".
    succeed(LocalA).unwrap();
    let Err(CallError::Open(rejected)) = succeed(LocalA) else {
        panic!("A did not see the trip")
    };
    assert!(rejected.reason().is_open());

    // A process that starts after the trip asks before its first call, which is rejected
    // without running.
    let mut ran = false;
    let result: Result<(), CallError> = Breaker::new(Latecomer).call(|| {
        ran = true;
        Ok(())
    });
    assert!(matches!(result, Err(CallError::Open(_))));
    assert!(!ran);
}

// An operator's process and a service's, strict mode, on a storage and clock of their own.
static OPERATED_CLOCK: LazyLock<ManualClock> = LazyLock::new(ManualClock::new);
static OPERATED: LazyLock<CountingStorage> = LazyLock::new(|| CountingStorage {
    map: MemoryStorage::with_clock(OPERATED_CLOCK.clock()),
    clock: OPERATED_CLOCK.clock(),
    operations: AtomicU64::new(0),
});
handler!(Service, "operated", None, OPERATED);
handler!(Operator, "operated", None, OPERATED);

#[test]
fn an_open_view_learns_of_an_operators_close_within_a_second() {
    let operations = || OPERATED.operations.load(Ordering::Relaxed);
    for _ in 0..3 {
        fail(Service);
    }
    // Open: rejections cost nothing.
    let before = operations();
    for _ in 0..100 {
        assert!(matches!(succeed(Service), Err(CallError::Open(_))));
    }
    assert_eq!(operations(), before);

    // The operator forces it closed, 59 s before the service's view would end.
    Breaker::new(Operator).force_closed().unwrap();
    OPERATED_CLOCK.advance(Duration::from_millis(500));
    assert!(matches!(succeed(Service), Err(CallError::Open(_))));
    assert_eq!(operations(), before + 1, "only the operator's forcing");

    // A second after the view last heard from the storage, one call asks, and runs.
    OPERATED_CLOCK.advance(Duration::from_millis(501));
    succeed(Service).unwrap();
    succeed(Service).unwrap();

    // Forced open: a closed view learns it from its next call's reply (that call has gone
    // through, as in strict mode it does); then a reset reaches the forced-open view
    // within the interval alike.
    Breaker::new(Operator).force_open().unwrap();
    succeed(Service).unwrap();
    assert!(matches!(succeed(Service), Err(CallError::Open(_))));
    Breaker::new(Operator).reset().unwrap();
    assert!(matches!(succeed(Service), Err(CallError::Open(_))));
    OPERATED_CLOCK.advance(Duration::from_millis(1001));
    succeed(Service).unwrap();
}
