//! The conformance kit against the in-memory storage, against a correct storage written from
//! the three primitives, and against deliberately broken ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use circuitpy::testing::{Options, check_async_storage, check_storage};
use circuitpy::{
    Clock, ManualClock, MemoryStorage, Op, Request, Snapshot, State, Storage, StorageError,
};

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

#[test]
fn memory_storage_passes_the_kit() {
    let manual = ManualClock::new();
    let storage = leak(MemoryStorage::with_clock(manual.clock()));
    let report =
        check_storage(storage, Options::with_clock(manual)).unwrap_or_else(|f| panic!("{f}"));
    for rule in [
        "increment-is-atomic",
        "concurrent-failures-trip-once",
        "half-open-admits-exactly-k-trials",
        "an-unreported-trial-gives-its-permit-back",
        "forced-open-is-sticky",
        "rate-trips-at-the-failure-share",
        // The in-memory storage's `execute` is the primitive protocol.
        "quorum-unsupported-said-so",
    ] {
        assert!(
            report.rules.contains(&rule),
            "{rule} not checked: {:?}",
            report.rules
        );
    }
}

#[test]
fn memory_storage_passes_the_async_kit() {
    let manual = ManualClock::new();
    let storage = leak(MemoryStorage::with_clock(manual.clock()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let report = runtime
        .block_on(check_async_storage(storage, Options::with_clock(manual)))
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
}

/// A storage over a map, correct unless told to break one rule.
struct MapStorage {
    clock: Clock,
    manual: ManualClock,
    flaw: Option<Flaw>,
    map: Mutex<HashMap<String, (u64, Duration)>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    /// `increment` creates keys that never expire.
    ForgetsExpiry,
    /// `increment` moves the expiry of an existing key.
    MovesExpiry,
    /// `increment` reads, then writes in a second step.
    NotAtomic,
    /// `expire_after` with a zero ttl does nothing.
    KeepsDeletedKeys,
    // Behaviours of the primitive protocol before it was fixed, as a storage's own
    // `execute` could still have them:
    /// A success that reports held-back calls counts as one.
    OneCallPerSuccess,
    /// Forcing deletes the mode, then sets it: two at once can end in the wrong one.
    ForcesInTwoSteps,
    /// Trial outcomes count whichever round they came from.
    IgnoresRounds,
    /// A trial whose error does not count keeps its permit.
    KeepsReleasedPermits,
    /// The trip marker keeps the expiry it got at the trip.
    TripMarkerNotRenewed,
    /// The failure count expires counting from the first failure.
    CountFromFirstFailure,
}

impl MapStorage {
    fn new(flaw: Option<Flaw>) -> (&'static Self, ManualClock) {
        let manual = ManualClock::new();
        let storage = leak(MapStorage {
            clock: manual.clock(),
            manual: manual.clone(),
            flaw,
            map: Mutex::default(),
        });
        (storage, manual)
    }

    fn now(&self) -> Duration {
        self.clock.elapsed()
    }
}

impl Storage for MapStorage {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        let now = self.now();
        let never = Duration::from_secs(u32::MAX.into());
        if self.flaw == Some(Flaw::NotAtomic) {
            let current = self.get_count(key)?;
            std::thread::sleep(Duration::from_micros(200));
            let mut map = self.map.lock().unwrap();
            let entry = map.entry(key.to_owned()).or_insert((0, now + ttl));
            entry.0 = current + 1;
            return Ok(entry.0);
        }
        let mut map = self.map.lock().unwrap();
        let entry = map.entry(key.to_owned()).or_insert((0, Duration::ZERO));
        if entry.1 <= now {
            *entry = (0, now + ttl);
            if self.flaw == Some(Flaw::ForgetsExpiry) {
                entry.1 = never;
            }
        } else if self.flaw == Some(Flaw::MovesExpiry) {
            entry.1 = now + ttl;
        }
        entry.0 += 1;
        Ok(entry.0)
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let now = self.now();
        let map = self.map.lock().unwrap();
        Ok(map.get(key).filter(|e| e.1 > now).map_or(0, |e| e.0))
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let now = self.now();
        let renewal = !ttl.is_zero();
        if renewal
            && ((self.flaw == Some(Flaw::TripMarkerNotRenewed) && key.ends_with(":tripped"))
                || (self.flaw == Some(Flaw::CountFromFirstFailure) && key.ends_with(":failures")))
        {
            return Ok(());
        }
        let mut map = self.map.lock().unwrap();
        if ttl.is_zero() {
            if self.flaw != Some(Flaw::KeepsDeletedKeys) {
                map.remove(key);
            }
        } else if let Some(entry) = map.get_mut(key).filter(|e| e.1 > now) {
            entry.1 = now + ttl;
        }
        Ok(())
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let mut request = *request;
        match (self.flaw, request.op) {
            (Some(Flaw::OneCallPerSuccess), Op::Success) => request.count = 1,
            (Some(Flaw::IgnoresRounds), _) => request.round = None,
            (Some(Flaw::KeepsReleasedPermits), Op::ReleaseTrial) => request.op = Op::Read,
            (Some(Flaw::ForcesInTwoSteps), Op::ForceOpen | Op::ForceClosed) => {
                let mode = format!("{}:mode", request.namespaced_key());
                self.expire_after(&mode, Duration::ZERO)?;
                std::thread::sleep(Duration::from_millis(5));
                self.increment(&mode, Duration::from_secs(3600))?;
                if request.op == Op::ForceClosed {
                    self.increment(&mode, Duration::from_secs(3600))?;
                }
                let state = if request.op == Op::ForceOpen {
                    State::ForcedOpen
                } else {
                    State::ForcedClosed
                };
                return Ok(Snapshot::forced(state));
            }
            _ => {}
        }
        circuitpy::primitive::execute(self, &request)
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }
}

#[test]
fn a_correct_primitive_storage_passes_the_kit() {
    let (storage, manual) = MapStorage::new(None);
    assert!(storage.manual.clock().is_manual());
    let report =
        check_storage(storage, Options::with_clock(manual)).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.rules.contains(&"late-failures-do-not-extend-open"));
}

fn broken(flaw: Flaw) -> circuitpy::testing::Failure {
    let (storage, manual) = MapStorage::new(Some(flaw));
    match check_storage(storage, Options::with_clock(manual)) {
        Ok(report) => panic!("a broken storage passed: {:?}", report.rules),
        Err(failure) => failure,
    }
}

#[test]
fn an_increment_that_forgets_the_expiry_is_caught() {
    let failure = broken(Flaw::ForgetsExpiry);
    assert_eq!(failure.rule, "increment-creates-with-expiry", "{failure}");
    assert!(failure.detail.contains("still read 1"), "{failure}");
}

#[test]
fn an_increment_that_moves_the_expiry_is_caught() {
    let failure = broken(Flaw::MovesExpiry);
    assert_eq!(failure.rule, "increment-keeps-existing-expiry", "{failure}");
}

#[test]
fn a_non_atomic_increment_is_caught() {
    let failure = broken(Flaw::NotAtomic);
    assert_eq!(failure.rule, "increment-is-atomic", "{failure}");
}

#[test]
fn a_delete_that_keeps_the_key_is_caught() {
    let failure = broken(Flaw::KeepsDeletedKeys);
    assert_eq!(failure.rule, "zero-ttl-deletes", "{failure}");
    assert_eq!(
        failure.to_string(),
        format!("storage broke rule zero-ttl-deletes: {}", failure.detail)
    );
}

#[test]
fn a_success_counted_as_one_call_is_caught() {
    let failure = broken(Flaw::OneCallPerSuccess);
    assert_eq!(
        failure.rule, "a-success-reports-every-held-back-call",
        "{failure}"
    );
}

#[test]
fn forcing_in_two_steps_is_caught() {
    let failure = broken(Flaw::ForcesInTwoSteps);
    assert_eq!(
        failure.rule, "concurrent-forcing-decides-one-mode",
        "{failure}"
    );
}

#[test]
fn outcomes_that_ignore_their_round_are_caught() {
    let failure = broken(Flaw::IgnoresRounds);
    assert_eq!(
        failure.rule, "outcomes-of-a-lapsed-round-change-nothing",
        "{failure}"
    );
}

#[test]
fn a_permit_kept_after_an_uncounted_trial_is_caught() {
    let failure = broken(Flaw::KeepsReleasedPermits);
    assert_eq!(
        failure.rule, "an-uncounted-trial-gives-its-permit-back",
        "{failure}"
    );
}

#[test]
fn a_trip_marker_that_is_not_renewed_is_caught() {
    let failure = broken(Flaw::TripMarkerNotRenewed);
    assert_eq!(
        failure.rule, "a-dependency-down-for-days-keeps-the-breaker-open",
        "{failure}"
    );
}

#[test]
fn a_count_that_expires_from_the_first_failure_is_caught() {
    let failure = broken(Flaw::CountFromFirstFailure);
    assert_eq!(
        failure.rule, "a-failure-count-lives-from-the-last-failure",
        "{failure}"
    );
}

/// Many requests for a trial permit at once, on the primitives alone (the in-memory
/// storage runs them): however their steps interleave, exactly `HALF_OPEN_TRIALS` get one.
/// Repeated, since an unlucky interleaving is rare.
#[test]
fn concurrent_trial_requests_on_the_primitives_never_exceed_the_limit() {
    struct Trials;
    impl circuitpy::CircuitBreaker for Trials {
        const FAILURE_THRESHOLD: u32 = 1;
        const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
        const HALF_OPEN_TRIALS: u32 = 2;
        const FAILURE_KEY: &'static str = "trials";
        type Storage = MemoryStorage;
        fn storage(&self) -> &MemoryStorage {
            unreachable!("the storage is driven directly")
        }
    }
    const CALLERS: usize = 12;
    let config = circuitpy::Config::of::<Trials>();
    let manual = ManualClock::new();
    let storage = MemoryStorage::with_clock(manual.clock());
    for round in 0..300 {
        let key = format!("trials:{{round-{round}}}");
        let trip = Request::new(&key, Op::Failure, &config);
        assert_eq!(storage.execute(&trip).unwrap().state, State::Open);
        manual.advance(Duration::from_secs(11));
        let barrier = std::sync::Barrier::new(CALLERS);
        let permits: usize = std::thread::scope(|scope| {
            let callers: Vec<_> = (0..CALLERS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let acquire = Request::new(&key, Op::AcquireTrial, &config);
                        usize::from(storage.execute(&acquire).unwrap().permit)
                    })
                })
                .collect();
            callers
                .into_iter()
                .map(|caller| caller.join().unwrap())
                .sum()
        });
        assert_eq!(
            permits, 2,
            "round {round}: {CALLERS} requests got {permits} permits"
        );
    }
}
