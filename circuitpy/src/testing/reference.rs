//! The rules' reference implementation as a storage, to hold a storage's own `execute` to:
//! one row per breaker in this process, decided by the row machine that SQLite runs and the
//! Lua script and the PL/pgSQL function follow.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::StorageError;
use crate::rules::micros;
use crate::rules::row::{self, Row};
use crate::storage::{Request, Snapshot, Storage};

/// The rules' reference implementation as a storage: [`Storage::execute`] applies one
/// operation to an in-memory row by the same rules every circuitpy storage keeps, at the
/// request's [`at`](Request::at) (or the wall clock). Deterministic when every request
/// carries `at`, so a differential test can feed it and a storage under test the same
/// operations and compare the replies.
///
/// ```
/// use std::time::Duration;
/// use circuitpy::{Op, Request, State, Storage};
/// use circuitpy::testing::Reference;
/// # struct Api;
/// # impl circuitpy::CircuitBreaker for Api {
/// #   const FAILURE_THRESHOLD: u32 = 2;
/// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
/// #   const FAILURE_KEY: &'static str = "api";
/// #   type Storage = circuitpy::MemoryStorage;
/// #   fn storage(&self) -> &circuitpy::MemoryStorage { unimplemented!() }
/// # }
/// let reference = Reference::new();
/// let config = circuitpy::Config::of::<Api>();
/// let at = |ms| Duration::from_millis(ms);
/// for ms in [1_000, 1_001] {
///     reference.execute(&Request::new("k", Op::Failure, &config).at(at(ms))).unwrap();
/// }
/// let read = reference.execute(&Request::new("k", Op::Read, &config).at(at(1_500))).unwrap();
/// assert_eq!(read.state, State::Open);
/// let later = reference.execute(&Request::new("k", Op::Read, &config).at(at(2_001))).unwrap();
/// assert_eq!(later.state, State::HalfOpen);
/// ```
#[derive(Debug, Default)]
pub struct Reference {
    rows: Mutex<HashMap<String, Row>>,
    counts: Mutex<HashMap<String, (u64, Duration)>>,
}

impl Reference {
    /// An empty reference: every breaker closed.
    ///
    /// ```
    /// let _ = circuitpy::testing::Reference::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
}

fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Storage for Reference {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        self.increment_by(key, 1, ttl)
    }

    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        let now = wall_now();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = counts.entry(key.to_owned()).or_insert((0, Duration::ZERO));
        if entry.1 <= now {
            *entry = (0, now + ttl);
        }
        entry.0 = entry.0.saturating_add(count);
        Ok(entry.0)
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let now = wall_now();
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(counts
            .get(key)
            .filter(|entry| entry.1 > now)
            .map_or(0, |entry| entry.0))
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let now = wall_now();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if ttl.is_zero() {
            counts.remove(key);
        } else if let Some(entry) = counts.get_mut(key).filter(|entry| entry.1 > now) {
            entry.1 = now + ttl;
        }
        Ok(())
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let now = micros(request.at.unwrap_or_else(wall_now));
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        let key = request.namespaced_key();
        let mut row = rows.get(&key).cloned().unwrap_or_default();
        let (change, snapshot) = row::apply(&mut row, now, request);
        match change {
            row::Change::Keep => {}
            row::Change::Write { .. } => {
                rows.insert(key, row);
            }
            row::Change::Delete => {
                rows.remove(&key);
            }
        }
        Ok(snapshot)
    }
}
