//! The Sentinel storage (feature `redis-sentinel`) against a real primary, its replica and
//! three sentinels the tests start: the conformance kit, and a `SENTINEL FAILOVER` under
//! load, after which the breaker keeps working on the promoted replica.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use circuitpy::redis::SentinelStorage;
use circuitpy::testing::{Options, check_storage};
use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, OnStorageFailure, Rejection, State};
use circuitpy_tests::redis_sentinel::{DOWN_AFTER_MS, SERVICE, SentinelSetup};
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

const TIMEOUT: Duration = Duration::from_millis(200);

/// Fails closed, so every call the storage cannot decide is counted as rejected. Its
/// threshold is out of reach of the load, whose failures are counted in the breaker's hash
/// on whichever server took them.
struct Followed(&'static SentinelStorage);

impl CircuitBreaker for Followed {
    const FAILURE_THRESHOLD: u32 = 1_000_000;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
    const FAILURE_KEY: &'static str = "followed";
    const STORAGE_TIMEOUT: Duration = TIMEOUT;
    const ON_STORAGE_FAILURE: OnStorageFailure = OnStorageFailure::Reject;
    type Storage = SentinelStorage;
    fn storage(&self) -> &SentinelStorage {
        self.0
    }
}

/// Trips at its third failure.
struct Tripped(&'static SentinelStorage);

impl CircuitBreaker for Tripped {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
    const FAILURE_KEY: &'static str = "tripped";
    type Storage = SentinelStorage;
    fn storage(&self) -> &SentinelStorage {
        self.0
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

/// Trips `Tripped` and waits until the replica has the trip (replication is asynchronous:
/// a write its primary acknowledged may not have reached the replica yet).
fn trip(setup: &SentinelSetup, storage: &'static SentinelStorage) -> Breaker<Tripped> {
    let tripped = Breaker::new(Tripped(storage));
    for _ in 0..3 {
        let _ = tripped.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(tripped.state().unwrap(), State::Open);
    let acknowledged: u32 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut setup.primary.connection())
        .unwrap();
    assert_eq!(acknowledged, 1);
    tripped
}

/// What a failover did to the load: when the sentinels named the replica, when the load's
/// writes reached it, and what the load saw.
struct Failover {
    seen: Load,
    named_after: Duration,
    writes_after: Duration,
    window: Duration,
}

/// Runs the load while `fail_over` replaces the primary; measures from its start.
fn under_load(
    setup: &SentinelSetup,
    loaded: &Breaker<Followed>,
    fail_over: impl FnOnce(),
) -> Failover {
    let stop = AtomicBool::new(false);
    let old_primary = setup.primary.port();
    let (seen, started, named_after, writes_after) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(loaded, &stop));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        fail_over();
        let deadline = started + Duration::from_secs(30);
        while setup.named_primary() == old_primary {
            assert!(Instant::now() < deadline, "the sentinels never switched");
            std::thread::sleep(Duration::from_millis(10));
        }
        let named_after = started.elapsed();
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
        let writes_after = started.elapsed();
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::SeqCst);
        (loader.join().unwrap(), started, named_after, writes_after)
    });
    let window = seen.last_failure.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(started)
    });
    Failover {
        seen,
        named_after,
        writes_after,
        window,
    }
}

fn report(what: &str, followed: &Failover, lost: Option<u32>) {
    let Failover {
        seen,
        named_after,
        writes_after,
        window,
    } = followed;
    let lost = lost.map_or(String::new(), |lost| {
        format!(
            "{lost} of {} recorded failures went to the old primary and were lost; ",
            seen.failures
        )
    });
    services::notice(&format!(
        "SENTINEL, {what} (storage timeout {TIMEOUT:?}, sentinels asked again every {:?}, \
         down-after {DOWN_AFTER_MS} ms): the sentinels named the new primary {named_after:?} \
         after; breaker writes reached it after {writes_after:?}; {lost}calls went to the \
         storage-failure policy for {window:?} ({} of {} calls rejected with StorageFailed); \
         longest call {:?}",
        circuitpy::redis::RECHECK,
        seen.storage_failed,
        seen.calls,
        seen.longest,
    ));
    assert!(
        seen.longest < TIMEOUT + Duration::from_secs(1),
        "{:?}",
        seen.longest
    );
}

/// After the failover: the sentinels name the replica, the trip survived there, and the
/// breaker's writes go there.
fn works_on_the_replica(
    setup: &SentinelSetup,
    tripped: &Breaker<Tripped>,
    loaded: &Breaker<Followed>,
) {
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

#[test]
fn the_breaker_follows_the_primary_through_a_sentinel_failover() {
    let Some(setup) = SentinelSetup::start() else {
        return;
    };
    let storage: &'static SentinelStorage = Box::leak(Box::new(storage(&setup)));
    let tripped = trip(&setup, storage);
    let loaded = Breaker::new(Followed(storage));
    let followed = under_load(&setup, &loaded, || setup.failover());
    let lost = followed
        .seen
        .failures
        .saturating_sub(counted(&setup.replica));
    report("SENTINEL FAILOVER", &followed, Some(lost));
    // Writes follow the new primary within a recheck of the sentinels naming it (and the
    // time a busy machine takes).
    assert!(
        followed.writes_after
            < followed.named_after + circuitpy::redis::RECHECK + Duration::from_secs(2),
        "{:?}",
        followed.writes_after
    );
    works_on_the_replica(&setup, &tripped, &loaded);
}

/// The pid of a server, from `INFO server`.
fn process_id(server: &circuitpy_tests::redis::RedisServer) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut server.connection())
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .expect("INFO server names the process")
        .trim()
        .to_owned()
}

#[test]
fn the_breaker_follows_the_primary_when_it_is_killed() {
    let Some(setup) = SentinelSetup::start() else {
        return;
    };
    let storage: &'static SentinelStorage = Box::leak(Box::new(storage(&setup)));
    let tripped = trip(&setup, storage);
    let loaded = Breaker::new(Followed(storage));
    let pid = process_id(&setup.primary);
    let followed = under_load(&setup, &loaded, || {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success());
    });
    report("primary killed", &followed, None);
    assert!(followed.seen.storage_failed > 0, "the kill was felt");
    works_on_the_replica(&setup, &tripped, &loaded);
}
