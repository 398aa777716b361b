//! The default storage: breaker state in this process's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::Storage;
use crate::clock::{Clock, Nanos};
use crate::engine::view::Registry;
use crate::error::StorageError;
use crate::rules::nanos;

/// Keeps breakers in this process, shared by all its threads and tasks.
///
/// A breaker on this storage is one atomic word: a call while closed does two atomic loads
/// and writes nothing, reads no clock and allocates nothing; an open breaker rejects with
/// one more load of a clock that a background thread keeps up to date. A breaker is
/// identified by its handler type and key within one storage instance, and lives as long as
/// the storage.
///
/// It also implements the three storage primitives over a map, so it can stand in for a
/// shared storage in tests of storage-level code.
///
/// ```
/// use std::sync::LazyLock;
/// use circuitpy::{ManualClock, MemoryStorage};
///
/// static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
/// let in_tests = MemoryStorage::with_clock(ManualClock::new().clock());
/// # let _ = (&*STORAGE, in_tests);
/// ```
#[derive(Debug)]
pub struct MemoryStorage {
    clock: Clock,
    counts: Mutex<HashMap<String, (u64, Nanos)>>,
    breakers: Arc<Registry>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// A storage on the system clock.
    ///
    /// ```
    /// let _ = circuitpy::MemoryStorage::new();
    /// ```
    pub fn new() -> Self {
        Self::with_clock(Clock::system())
    }

    /// A storage whose breakers read `clock` — a [`ManualClock`](crate::ManualClock) in tests.
    ///
    /// ```
    /// let manual = circuitpy::ManualClock::new();
    /// let _ = circuitpy::MemoryStorage::with_clock(manual.clock());
    /// ```
    pub fn with_clock(clock: Clock) -> Self {
        MemoryStorage {
            clock: clock.clone(),
            counts: Mutex::default(),
            breakers: Registry::new(clock.clone(), true),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Nanos)>> {
        // A panic while holding the lock cannot leave a half-written entry.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The families of the breakers decided on this storage.
    pub(crate) fn breakers(&self) -> &Registry {
        &self.breakers
    }
}

impl Storage for MemoryStorage {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        Storage::increment_by(self, key, 1, ttl)
    }

    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        let now = self.clock.now();
        let mut counts = self.counts();
        let entry = counts.entry(key.to_owned()).or_insert((0, 0));
        if entry.1 <= now {
            *entry = (0, now.saturating_add(nanos(ttl)));
        }
        entry.0 = entry.0.saturating_add(count);
        Ok(entry.0)
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let now = self.clock.now();
        Ok(self
            .counts()
            .get(key)
            .filter(|entry| entry.1 > now)
            .map_or(0, |entry| entry.0))
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let now = self.clock.now();
        let mut counts = self.counts();
        if ttl.is_zero() {
            counts.remove(key);
        } else if let Some(entry) = counts.get_mut(key) {
            entry.1 = now.saturating_add(nanos(ttl));
        }
        Ok(())
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }
}

super::async_by_blocking!(
    MemoryStorage,
    "The same map, with futures that are ready at once."
);
