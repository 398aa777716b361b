//! A quorum on a shared storage, in one process: this process's failures alone open only
//! its own view; the fleet's breaker trips once failures came from `QUORUM` processes. The
//! storage is the rules' reference (the row machine every shared storage follows) on a
//! manual clock; the other processes are requests with reporters of their own.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use circuitpy::testing::Reference;
use circuitpy::{
    AsyncStorage, Breaker, CircuitBreaker, Clock, Config, FailurePolicy, ManualClock, Op,
    Rejection, Request, Snapshot, State, Storage, StorageError,
};
use circuitpy_tests::handlers::Error;

/// The reference on a manual clock, every operation counted.
struct Clocked {
    reference: Reference,
    clock: ManualClock,
    /// The breakers' reading of `clock`.
    reading: Clock,
    operations: AtomicU64,
}

impl Storage for Clocked {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        self.reference.increment(key, ttl)
    }
    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        self.reference.get_count(key)
    }
    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        self.reference.expire_after(key, ttl)
    }
    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        self.operations.fetch_add(1, Ordering::Relaxed);
        self.reference
            .execute(&(*request).at(self.clock.clock().elapsed()))
    }
    fn clock(&self) -> &Clock {
        &self.reading
    }
}

impl AsyncStorage for Clocked {
    async fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        Storage::increment(self, key, ttl)
    }
    async fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        Storage::get_count(self, key)
    }
    async fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        Storage::expire_after(self, key, ttl)
    }
    async fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        Storage::execute(self, request)
    }
    fn clock(&self) -> &Clock {
        Storage::clock(self)
    }
}

impl Clocked {
    fn new() -> Self {
        let clock = ManualClock::new();
        Clocked {
            reference: Reference::new(),
            reading: clock.clock(),
            clock,
            operations: AtomicU64::new(0),
        }
    }
}

// Each test moves a clock of its own.
static STORAGE: LazyLock<Clocked> = LazyLock::new(Clocked::new);
static ASYNC_STORAGE: LazyLock<Clocked> = LazyLock::new(Clocked::new);
static FORCED_STORAGE: LazyLock<Clocked> = LazyLock::new(Clocked::new);

const RECOVERY: Duration = Duration::from_secs(10);

macro_rules! handler {
    ($name:ident) => {
        handler!($name, "quorate", STORAGE);
    };
    ($name:ident, $key:literal, $storage:ident) => {
        struct $name;
        impl CircuitBreaker for $name {
            const FAILURE_THRESHOLD: u32 = 3;
            const RECOVERY_TIMEOUT: Duration = RECOVERY;
            const FAILURE_KEY: &'static str = $key;
            const FAILURE_POLICY: FailurePolicy = FailurePolicy::CountInWindow {
                window: Duration::from_secs(60),
            };
            const QUORUM: u32 = 3;
            type Storage = Clocked;
            fn storage(&self) -> &Clocked {
                &$storage
            }
        }
    };
}

// Two handlers on one key: two views in this process, each with its own local breaker.
handler!(Sick);
handler!(Healthy);
handler!(AsyncSick, "quorate-async", ASYNC_STORAGE);
handler!(ForcedSick, "quorate-forced", FORCED_STORAGE);

fn call<H: CircuitBreaker<Storage = Clocked>>(handler: H, fails: bool) -> Result<(), Error> {
    Breaker::new(handler).call(|| if fails { Err(Error::Down) } else { Ok(()) })
}

fn rejection(result: Result<(), Error>) -> Option<Rejection> {
    match result {
        Err(Error::Open(open)) => Some(open.reason().clone()),
        _ => None,
    }
}

/// The fleet's breaker as the storage holds it.
fn fleet() -> Snapshot {
    let config = Config::of::<Sick>();
    Storage::execute(&*STORAGE, &Request::new("quorate", Op::Read, &config)).unwrap()
}

/// A failure reported by another process.
fn failure_from(reporter: u64) -> Snapshot {
    let config = Config::of::<Sick>();
    let failure = Request::new("quorate", Op::Failure, &config).reported_by(reporter);
    Storage::execute(&*STORAGE, &failure).unwrap()
}

#[test]
fn one_sick_process_opens_only_its_own_view_and_a_quorum_trips_the_fleet() {
    // The sick process's failures reach the threshold: its own view opens, the fleet's
    // breaker stays closed (one reporter of three).
    let operations = || STORAGE.operations.load(Ordering::Relaxed);
    assert!(matches!(call(Sick, true), Err(Error::Down)));
    let before = operations();
    for _ in 0..2 {
        assert!(matches!(call(Sick, true), Err(Error::Down)));
    }
    assert_eq!(
        operations(),
        before + 2,
        "one storage operation per call under a quorum too"
    );
    let shared = fleet();
    assert_eq!((shared.state, shared.failures), (State::Closed, 3));
    let before = operations();
    let rejected = rejection(call(Sick, false));
    assert!(
        matches!(
            rejected,
            Some(Rejection::OpenHere {
                trials_in_progress: false
            })
        ),
        "{rejected:?}"
    );
    assert_eq!(
        operations(),
        before,
        "rejected here, without asking the storage"
    );
    // The process's health report says so.
    let report = circuitpy::health::report();
    let sick = report
        .breakers
        .iter()
        .find(|breaker| breaker.key == "quorate" && breaker.open_here)
        .expect("the sick view is open here");
    assert!(
        !sick.is_healthy() && sick.state == State::Closed,
        "{sick:?}"
    );
    // The other view runs its calls.
    call(Healthy, false).unwrap();
    assert_eq!(fleet().state, State::Closed);

    // A recovery timeout later the sick process tries one call of its own: it fails, and
    // its view opens again; the fleet's count takes the failure.
    STORAGE.clock.advance(RECOVERY);
    assert!(matches!(call(Sick, true), Err(Error::Down)));
    assert!(matches!(
        rejection(call(Sick, false)),
        Some(Rejection::OpenHere { .. })
    ));
    assert_eq!(fleet().failures, 4);

    // A second process fails: two reporters, still short of three.
    assert_eq!(failure_from(2).state, State::Closed);
    call(Healthy, false).unwrap();
    // A third: the fleet trips, once.
    let tripped = failure_from(3);
    assert_eq!(tripped.state, State::Open);
    let opened = tripped.open_since;
    // The healthy view learns it from its next call's reply, then rejects as the fleet's.
    let _ = call(Healthy, false);
    assert!(matches!(
        rejection(call(Healthy, false)),
        Some(Rejection::Open)
    ));
    assert_eq!(failure_from(4).state, State::Open);
    assert_eq!(fleet().open_since, opened, "one trip, not a second");

    // The sick view heals on its own: a recovery timeout later its trial succeeds locally,
    // but the fleet is open and says so.
    STORAGE.clock.advance(RECOVERY);
    let _ = call(Sick, false);
    // A reset from this process closes its own breaker too.
    Breaker::new(Sick).reset().unwrap();
    call(Sick, false).unwrap();
    assert_eq!(fleet().state, State::Closed);
}

#[test]
fn async_calls_open_their_own_view_alike() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let breaker = Breaker::new(AsyncSick);
        for _ in 0..3 {
            let result: Result<(), Error> = breaker.call_async(async { Err(Error::Down) }).await;
            assert!(matches!(result, Err(Error::Down)));
        }
        let result: Result<(), Error> = breaker.call_async(async { Ok(()) }).await;
        assert!(
            matches!(rejection(result), Some(Rejection::OpenHere { .. })),
            "three failures of this process alone open its own view"
        );
        let config = Config::of::<AsyncSick>();
        let shared = Storage::execute(
            &*ASYNC_STORAGE,
            &Request::new("quorate-async", Op::Read, &config),
        )
        .unwrap();
        assert_eq!((shared.state, shared.failures), (State::Closed, 3));
        // Its own trial, a recovery timeout later, succeeds and closes its view.
        ASYNC_STORAGE.clock.advance(RECOVERY);
        breaker
            .call_async(async { Ok::<(), Error>(()) })
            .await
            .unwrap();
        breaker
            .call_async(async { Ok::<(), Error>(()) })
            .await
            .unwrap();
    });
}

#[test]
fn a_quorum_is_between_one_and_sixteen_processes() {
    let mut config = Config::of::<Sick>();
    for (quorum, valid) in [(0, false), (1, true), (16, true), (17, false)] {
        config.quorum = quorum;
        assert_eq!(
            config.check().is_ok(),
            valid,
            "QUORUM = {quorum}: {:?}",
            config.check()
        );
    }
    config.quorum = 0;
    assert_eq!(
        config.check(),
        Err("circuitpy: QUORUM must be between 1 and 16")
    );
}

#[test]
fn an_operators_forced_close_reaches_a_process_open_on_its_own_within_a_second() {
    for _ in 0..3 {
        assert!(matches!(call(ForcedSick, true), Err(Error::Down)));
    }
    assert!(matches!(
        rejection(call(ForcedSick, false)),
        Some(Rejection::OpenHere { .. })
    ));
    // An operator forces it closed from another process. Within the second after this
    // process last heard from the storage it still rejects, sending nothing; then one call
    // asks, and from then on every call runs, failing ones too, none held against the
    // process.
    let config = Config::of::<ForcedSick>();
    let forced = Request::new("quorate-forced", Op::ForceClosed, &config);
    Storage::execute(&*FORCED_STORAGE, &forced).unwrap();
    let before = FORCED_STORAGE.operations.load(Ordering::Relaxed);
    assert!(matches!(
        rejection(call(ForcedSick, false)),
        Some(Rejection::OpenHere { .. })
    ));
    assert_eq!(FORCED_STORAGE.operations.load(Ordering::Relaxed), before);
    FORCED_STORAGE.clock.advance(Duration::from_secs(1));
    call(ForcedSick, false).unwrap();
    for _ in 0..5 {
        assert!(matches!(call(ForcedSick, true), Err(Error::Down)));
    }
    call(ForcedSick, false).unwrap();
    // A reset from this process closes its own breaker too.
    Breaker::new(ForcedSick).reset().unwrap();
    call(ForcedSick, false).unwrap();
}
