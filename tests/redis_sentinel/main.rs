//! The Sentinel storage (feature `redis-sentinel`) against a real primary, its replica and
//! three sentinels the tests start: the conformance kit, and a `SENTINEL FAILOVER` under
//! load, after which the breaker keeps working on the promoted replica.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use circuitpy::redis::SentinelStorage;
use circuitpy::testing::{Options, check_storage};
use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, OnStorageFailure, Rejection, State};
use circuitpy_tests::redis_sentinel::{SERVICE, SentinelSetup};
use circuitpy_tests::services;
use redis::sentinel::{SentinelClient, SentinelServerType};

fn storage(setup: &SentinelSetup) -> SentinelStorage {
    let client = SentinelClient::build(
        setup.sentinel_urls(),
        SERVICE,
        None,
        SentinelServerType::Master,
    )
    .expect("valid URLs");
    SentinelStorage::new(client)
}

#[test]
fn sentinel_storage_passes_the_kit() {
    let Some(setup) = SentinelSetup::start() else {
        return;
    };
    let storage: &'static SentinelStorage = Box::leak(Box::new(storage(&setup)));
    let report =
        check_storage(storage, Options::default()).unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
}

static STORAGE: OnceLock<SentinelStorage> = OnceLock::new();
static STORAGE_ERRORS: AtomicU32 = AtomicU32::new(0);
const TIMEOUT: Duration = Duration::from_millis(200);

/// Fails closed, so every call the storage cannot decide is counted as rejected. Its
/// threshold is out of reach of the load, whose failures are counted in the breaker's hash
/// on whichever server took them.
struct Followed;

impl CircuitBreaker for Followed {
    const FAILURE_THRESHOLD: u32 = 1_000_000;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
    const FAILURE_KEY: &'static str = "followed";
    const STORAGE_TIMEOUT: Duration = TIMEOUT;
    const ON_STORAGE_FAILURE: OnStorageFailure = OnStorageFailure::Reject;
    type Storage = SentinelStorage;
    fn storage(&self) -> &SentinelStorage {
        STORAGE.get().expect("set by the test")
    }
    fn on_storage_error(&self, _key: &str, _error: &circuitpy::StorageError) {
        STORAGE_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Trips at its third failure.
struct Tripped;

impl CircuitBreaker for Tripped {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
    const FAILURE_KEY: &'static str = "tripped";
    type Storage = SentinelStorage;
    fn storage(&self) -> &SentinelStorage {
        STORAGE.get().expect("set by the test")
    }
}

#[derive(Debug)]
enum E {
    Down,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for E {
    fn from(open: CircuitBreakerOpen) -> Self {
        E::Open(open)
    }
}

#[derive(Default)]
struct Load {
    calls: u32,
    /// Failures run (and reported to the storage).
    failures: u32,
    storage_failed: u32,
    last_failure: Option<Instant>,
    longest: Duration,
}

fn load(breaker: &Breaker<Followed>, stop: &AtomicBool) -> Load {
    let mut seen = Load::default();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let result = breaker.call(|| Err::<(), E>(E::Down));
        let ended = Instant::now();
        seen.calls += 1;
        seen.longest = seen.longest.max(ended - started);
        match &result {
            Err(E::Open(open)) => {
                assert!(
                    matches!(open.reason(), Rejection::StorageFailed(_)),
                    "the load breaker never trips: {open:?}"
                );
                seen.storage_failed += 1;
                seen.last_failure = Some(ended);
            }
            Err(E::Down) => seen.failures += 1,
            Ok(()) => unreachable!(),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    seen
}

const LOAD_HASH: &str = "circuitpy:{followed}:state";

/// The failures the breaker's hash on `server` counts.
fn counted(server: &circuitpy_tests::redis::RedisServer) -> u32 {
    redis::cmd("HGET")
        .arg(LOAD_HASH)
        .arg("f")
        .query::<Option<u32>>(&mut server.connection())
        .unwrap()
        .unwrap_or(0)
}

#[test]
fn the_breaker_follows_the_primary_through_a_sentinel_failover() {
    let Some(setup) = SentinelSetup::start() else {
        return;
    };
    assert!(STORAGE.set(storage(&setup)).is_ok(), "set once");
    let tripped = Breaker::new(Tripped);
    let loaded = Breaker::new(Followed);
    for _ in 0..3 {
        let _ = tripped.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(tripped.state().unwrap(), State::Open);
    // Replication is asynchronous: waiting for the replica makes the trip survive.
    let acknowledged: u32 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut setup.primary.connection())
        .unwrap();
    assert_eq!(acknowledged, 1);

    let stop = AtomicBool::new(false);
    let old_primary = setup.primary.port();
    let (seen, failed_over_at, named_after, writes_after) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(&loaded, &stop));
        std::thread::sleep(Duration::from_millis(300));
        let failed_over_at = Instant::now();
        setup.failover();
        let deadline = failed_over_at + Duration::from_secs(30);
        while setup.named_primary() == old_primary {
            assert!(Instant::now() < deadline, "the sentinels never switched");
            std::thread::sleep(Duration::from_millis(10));
        }
        let named_after = failed_over_at.elapsed();
        // The new primary no longer replicates the old one: its count grows only once the
        // storage writes to it.
        let at_promotion = counted(&setup.replica);
        while counted(&setup.replica) == at_promotion {
            assert!(
                Instant::now() < deadline,
                "no write reached the new primary"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let writes_after = failed_over_at.elapsed();
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::SeqCst);
        (
            loader.join().unwrap(),
            failed_over_at,
            named_after,
            writes_after,
        )
    });

    let window = seen.last_failure.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(failed_over_at)
    });
    let lost = seen.failures.saturating_sub(counted(&setup.replica));
    services::notice(&format!(
        "SENTINEL FAILOVER (storage timeout {TIMEOUT:?}, sentinels asked again every \
         {:?}): the sentinels named the new primary {named_after:?} after SENTINEL FAILOVER; \
         breaker writes reached it after {writes_after:?}; {lost} of {} recorded failures \
         went to the old primary and were lost; calls went to the storage-failure policy \
         for {window:?} ({} of {} calls rejected with StorageFailed, {} storage errors); \
         longest call {:?}",
        circuitpy::redis::RECHECK,
        seen.failures,
        seen.storage_failed,
        seen.calls,
        STORAGE_ERRORS.load(Ordering::SeqCst),
        seen.longest,
    ));
    assert!(
        seen.longest < TIMEOUT + Duration::from_secs(1),
        "{:?}",
        seen.longest
    );
    // Writes follow the new primary within a recheck of the sentinels naming it (and the
    // time a busy machine takes).
    assert!(
        writes_after < named_after + circuitpy::redis::RECHECK + Duration::from_secs(2),
        "{writes_after:?}"
    );

    // The breaker works on the promoted replica, and its trip survived there.
    assert_eq!(setup.named_primary(), setup.replica.port());
    assert_eq!(tripped.state().unwrap(), State::Open);
    let before = counted(&setup.replica);
    let _ = loaded.call(|| Err::<(), E>(E::Down));
    assert_eq!(counted(&setup.replica), before + 1);
    let hash_on_new: bool = redis::cmd("EXISTS")
        .arg("circuitpy:{tripped}:state")
        .query(&mut setup.replica.connection())
        .unwrap();
    assert!(hash_on_new);
}
