//! [`SentinelStorage`]: the blocking Redis storage on whichever server Redis Sentinel names
//! primary (feature `redis-sentinel`).
//!
//! The primary's address is asked of the sentinels (redis-rs's `SentinelClient`), and every
//! call goes through the `redis::Client` storage to that primary: its pool, its timeouts, its
//! rule for sending a command again, its commands. The sentinels are asked
//! again
//! - after a call failed for any reason but the data (the connection broke, the server
//!   refused it or timed out, or answered `READONLY` because a failover demoted it);
//! - by one call a second ([`RECHECK`]): a failover that the old primary survives (an
//!   operator's `SENTINEL FAILOVER`, a network partition) leaves it answering as primary
//!   until the sentinels demote it, which they may do only seconds later; without asking,
//!   breaker writes would go on landing there and be lost.

use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use redis::sentinel::SentinelClient;

use super::storage_error;
use crate::error::StorageError;
use crate::storage::{Request, Snapshot, Storage};

/// A blocking storage on the primary that Redis Sentinel names, following it across
/// failovers (feature `redis-sentinel`).
///
/// Asking the sentinels happens on the first call and after a failed one; it is bounded by
/// how fast the sentinels and the named primary answer, not by the storage timeout (redis-rs
/// sets no timeout on those connections), so list sentinels that are reachable.
///
/// ```no_run
/// use std::sync::LazyLock;
/// use std::time::Duration;
/// use circuitpy::CircuitBreaker;
/// use circuitpy::redis::SentinelStorage;
/// use redis::sentinel::{SentinelClient, SentinelServerType};
///
/// static STORAGE: LazyLock<SentinelStorage> = LazyLock::new(|| {
///     let sentinels = vec![
///         "redis://10.0.0.1:26379",
///         "redis://10.0.0.2:26379",
///         "redis://10.0.0.3:26379",
///     ];
///     let client =
///         SentinelClient::build(sentinels, "mymaster", None, SentinelServerType::Master).unwrap();
///     SentinelStorage::new(client)
/// });
///
/// struct Payments;
/// impl CircuitBreaker for Payments {
///     const FAILURE_THRESHOLD: u32 = 5;
///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
///     const FAILURE_KEY: &'static str = "payments";
///     type Storage = SentinelStorage;
///     fn storage(&self) -> &SentinelStorage {
///         &STORAGE
///     }
/// }
/// ```
pub struct SentinelStorage {
    /// Asks the sentinels; one caller at a time.
    sentinel: Mutex<SentinelClient>,
    /// The primary they named last and when, until a call to it fails.
    primary: Mutex<Option<(Arc<redis::Client>, Instant)>>,
}

/// How often the sentinels are asked again while calls succeed: the longest that breaker
/// writes may go to a primary the sentinels have replaced, before it is demoted. The call
/// that asks pays for it: one `SENTINEL MASTERS` on a kept connection to a sentinel, and a
/// new connection to the named primary to check its `ROLE` (redis-rs's `SentinelClient`).
///
/// ```
/// assert_eq!(circuitpy::redis::RECHECK, std::time::Duration::from_secs(1));
/// ```
pub const RECHECK: Duration = Duration::from_secs(1);

/// How long asking the sentinels may take before the error says it timed out: only for
/// the error's text, since the ask itself is not bounded.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

impl SentinelStorage {
    /// A storage on the primary `client` names (build it with
    /// `SentinelServerType::Master`). Nothing is asked of the sentinels until the first call.
    pub fn new(client: SentinelClient) -> Self {
        SentinelStorage {
            sentinel: Mutex::new(client),
            primary: Mutex::new(None),
        }
    }

    fn current(&self) -> Option<(Arc<redis::Client>, Instant)> {
        self.primary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The primary, asking the sentinels if none is known (callers that find none wait for
    /// one of them to ask, and use its answer) or if it was named more than [`RECHECK`] ago
    /// (one caller asks; the others use the one known meanwhile).
    fn primary(&self, key: &str) -> Result<Arc<redis::Client>, StorageError> {
        let sentinel = match self.current() {
            Some((primary, named)) if named.elapsed() < RECHECK => return Ok(primary),
            Some((primary, _)) => match self.sentinel.try_lock() {
                Ok(sentinel) => sentinel,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return Ok(primary),
            },
            None => {
                let sentinel = self.sentinel.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((primary, _)) = self.current() {
                    return Ok(primary);
                }
                sentinel
            }
        };
        let mut sentinel = sentinel;
        let named = match sentinel.get_client() {
            Ok(client) => client,
            Err(error) => {
                *self.primary.lock().unwrap_or_else(PoisonError::into_inner) = None;
                return Err(storage_error(key, error, None, RESOLVE_TIMEOUT));
            }
        };
        let mut current = self.primary.lock().unwrap_or_else(PoisonError::into_inner);
        // The same server as before keeps its client (and so its pooled connections).
        let primary = match current.take() {
            Some((known, _))
                if known.get_connection_info().addr() == named.get_connection_info().addr() =>
            {
                known
            }
            _ => Arc::new(named),
        };
        *current = Some((primary.clone(), Instant::now()));
        Ok(primary)
    }

    /// Runs `operation` on the primary; a failure that is not about the data makes the next
    /// call ask the sentinels again (unless another caller already did).
    fn on_primary<T>(
        &self,
        key: &str,
        operation: impl FnOnce(&redis::Client) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let primary = self.primary(key)?;
        let result = operation(&primary);
        if let Err(error) = &result
            && !matches!(
                error,
                StorageError::InvalidData { .. } | StorageError::InvalidKey { .. }
            )
        {
            let mut current = self.primary.lock().unwrap_or_else(PoisonError::into_inner);
            if current
                .as_ref()
                .is_some_and(|(known, _)| Arc::ptr_eq(known, &primary))
            {
                *current = None;
            }
        }
        result
    }
}

impl Storage for SentinelStorage {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        self.on_primary(key, |primary| primary.increment(key, ttl))
    }

    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        self.on_primary(key, |primary| primary.increment_by(key, count, ttl))
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        self.on_primary(key, |primary| primary.get_count(key))
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        self.on_primary(key, |primary| primary.expire_after(key, ttl))
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        self.on_primary(request.key, |primary| primary.execute(request))
    }
}
