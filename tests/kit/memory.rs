//! The conformance kit against the in-memory storage, against a correct storage written from
//! the three primitives, and against deliberately broken ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use circuitpy::testing::{Options, check_async_storage, check_storage};
use circuitpy::{Clock, ManualClock, MemoryStorage, Storage, StorageError};

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
