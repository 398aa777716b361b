//! The handler trait: one unit struct per breaker, configured with associated consts.

use std::any::Any;
use std::time::Duration;

use crate::error::{CircuitBreakerOpen, StorageError};
use crate::policy::{Backoff, FailurePolicy, OnStorageFailure};

/// A circuit breaker's configuration and hooks, implemented on a unit struct.
///
/// The three required consts mirror the original circuitpy handler; the rest have defaults.
/// An invalid value (a zero threshold, a zero recovery timeout, an empty key, a rate outside
/// `(0, 1]`, ...) fails the build of every function that uses the handler.
///
/// The storage is reached through [`storage`](CircuitBreaker::storage); a unit struct returns
/// a `static`, built lazily when it needs a runtime value such as a URL:
///
/// ```
/// use std::sync::LazyLock;
/// use std::time::Duration;
/// use circuitpy::{circuit_breaker, CircuitBreaker, CircuitBreakerOpen, MemoryStorage};
///
/// static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
///
/// struct RequestCircuitBreaker;
///
/// impl CircuitBreaker for RequestCircuitBreaker {
///     const FAILURE_THRESHOLD: u32 = 100;
///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
///     const FAILURE_KEY: &'static str = "request_cb";
///     type Storage = MemoryStorage;
///     fn storage(&self) -> &MemoryStorage {
///         &STORAGE
///     }
/// }
///
/// #[derive(Debug)]
/// enum FetchError { Open(CircuitBreakerOpen), Http(u16) }
/// impl From<CircuitBreakerOpen> for FetchError {
///     fn from(open: CircuitBreakerOpen) -> Self { FetchError::Open(open) }
/// }
///
/// #[circuit_breaker(handler = RequestCircuitBreaker)]
/// fn fetch_user(id: u64) -> Result<String, FetchError> {
///     if id == 0 { Err(FetchError::Http(404)) } else { Ok(format!("user {id}")) }
/// }
///
/// assert_eq!(fetch_user(7).unwrap(), "user 7");
/// ```
pub trait CircuitBreaker: Send + Sync + 'static {
    /// How many failures trip the breaker (consecutive, or within the window, per
    /// [`FAILURE_POLICY`](CircuitBreaker::FAILURE_POLICY)). Not used by the rate policy.
    const FAILURE_THRESHOLD: u32;
    /// How long the breaker stays open before it admits trial calls.
    const RECOVERY_TIMEOUT: Duration;
    /// The name of the breaker's state in its storage. Handlers with the same key on the
    /// same storage share one breaker when the storage is shared (Redis, SQL).
    const FAILURE_KEY: &'static str;

    /// How many trial calls are admitted while half-open; all must succeed to close.
    const HALF_OPEN_TRIALS: u32 = 1;
    /// How failures are counted.
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::Consecutive;
    /// A successful call that took longer than this counts as a failure. Off by default;
    /// when on, each call reads the clock twice.
    const SLOW_CALL_THRESHOLD: Option<Duration> = None;
    /// What a call does when the storage fails or times out.
    const ON_STORAGE_FAILURE: OnStorageFailure = OnStorageFailure::Allow;
    /// The longest a storage command may take before it counts as failed. 50 ms is far
    /// above a healthy round trip to Redis or PostgreSQL on a LAN (well under 1 ms) and far
    /// below the 500 ms default of the redis client, so a stalled server costs a caller at
    /// most one short wait per call instead of stalling it.
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(50);
    /// Local mode for shared storages (Redis, SQL, custom): `Some(interval)` lets a
    /// successful call while closed send nothing, as long as this process last heard from
    /// the storage less than `interval` ago and saw no failure count to reset. The first
    /// success after the interval reports (with the successes held back, for the rate
    /// policy) and refreshes the state; failures are always reported at once. A breaker
    /// that trips anywhere is therefore seen by every calling process within `interval`.
    /// `None` (the default) is strict mode: every outcome is reported, one command each.
    /// No effect on the in-memory storage.
    const SYNC_INTERVAL: Option<Duration> = None;
    /// Namespace of every key a shared storage writes, so two applications on one server
    /// never collide.
    const KEY_PREFIX: &'static str = "circuitpy";
    /// How the open time grows while the dependency stays down: each failed trial round
    /// multiplies it, up to a cap; closing starts again from `RECOVERY_TIMEOUT`. Off by
    /// default. On a shared storage the server computes the deadline, so every process
    /// agrees on it.
    ///
    /// ```
    /// # use circuitpy::{Backoff, CircuitBreaker, MemoryStorage};
    /// # use std::time::Duration;
    /// struct Payments;
    /// impl CircuitBreaker for Payments {
    ///     const FAILURE_THRESHOLD: u32 = 5;
    ///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(5);
    ///     const FAILURE_KEY: &'static str = "payments";
    ///     // Open 5 s, then 10 s, 20 s, 40 s, 80 s, then 2 minutes while it stays down.
    ///     const RECOVERY_BACKOFF: Backoff = Backoff::exponential(2.0, Duration::from_secs(120));
    ///     type Storage = MemoryStorage;
    ///     fn storage(&self) -> &MemoryStorage { unimplemented!() }
    /// }
    /// ```
    const RECOVERY_BACKOFF: Backoff = Backoff::OFF;
    /// Spreads the open times of breakers that open at once: each opening is shortened by
    /// up to this fraction of its open time (0 to 0.5), by an amount that follows from the
    /// breaker's key and the instant it opens. Breakers of many keys tripped by one outage
    /// then send their trials over a span instead of in the same millisecond, and every
    /// process and storage still computes the same deadline. Off (0) by default.
    const RECOVERY_JITTER: f64 = 0.0;
    /// On a shared storage: how many distinct processes must have reported failures that
    /// count before the breaker trips for the whole fleet. 1 (the default) trips on the
    /// failures alone, wherever they come from. With 2 or more, failures that would trip the
    /// breaker but came from fewer processes leave it closed for the fleet, and a process
    /// whose own failures would trip it (counted by the same policy over its own calls) opens
    /// its own view only: its calls are rejected and it runs its own trials, while the
    /// other processes keep calling. One sick instance (its network, its bug) then cannot
    /// open the breaker for every other. At most [`MAX_QUORUM`](crate::MAX_QUORUM).
    ///
    /// A process is one reporter (an id drawn at random when it first reports). No effect
    /// on the in-memory storage, whose breakers live in one process; the primitive protocol
    /// cannot keep reporters and answers a quorum breaker's failure with
    /// [`StorageError::Unsupported`](crate::StorageError::Unsupported).
    ///
    /// ```
    /// # use circuitpy::{CircuitBreaker, FailurePolicy, MemoryStorage};
    /// # use std::time::Duration;
    /// struct Search;
    /// impl CircuitBreaker for Search {
    ///     const FAILURE_THRESHOLD: u32 = 20;
    ///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    ///     const FAILURE_KEY: &'static str = "search";
    ///     const FAILURE_POLICY: FailurePolicy =
    ///         FailurePolicy::CountInWindow { window: Duration::from_secs(30) };
    ///     // 20 failures within 30 s of each other, from at least 3 processes.
    ///     const QUORUM: u32 = 3;
    ///     type Storage = MemoryStorage;
    ///     fn storage(&self) -> &MemoryStorage { unimplemented!() }
    /// }
    /// ```
    const QUORUM: u32 = 1;

    /// Where the breaker's state lives: [`MemoryStorage`](crate::MemoryStorage), a Redis
    /// client or connection, or any [`Storage`](crate::Storage) /
    /// [`AsyncStorage`](crate::AsyncStorage).
    type Storage;

    /// The storage instance; for a unit struct, usually a `static`.
    fn storage(&self) -> &Self::Storage;

    /// Whether an error returned by a guarded function counts as a failure. All errors do
    /// by default; errors that do not count pass through untouched and are not recorded.
    ///
    /// ```
    /// use std::any::Any;
    /// # use std::time::Duration;
    /// # #[derive(Debug)] enum ApiError { NotFound, Unavailable }
    /// # struct Api;
    /// impl circuitpy::CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = circuitpy::MemoryStorage;
    /// #   fn storage(&self) -> &circuitpy::MemoryStorage { unimplemented!() }
    ///     // A 404 says nothing about the dependency's health.
    ///     fn is_failure(&self, error: &dyn Any) -> bool {
    ///         !matches!(error.downcast_ref::<ApiError>(), Some(ApiError::NotFound))
    ///     }
    /// }
    /// ```
    fn is_failure(&self, error: &dyn Any) -> bool {
        let _ = error;
        true
    }

    /// Called when this process sees the breaker change state.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # struct Api;
    /// impl circuitpy::CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = circuitpy::MemoryStorage;
    /// #   fn storage(&self) -> &circuitpy::MemoryStorage { unimplemented!() }
    ///     fn on_state_change(&self, key: &str, from: circuitpy::State, to: circuitpy::State) {
    ///         eprintln!("breaker {key}: {from} -> {to}");
    ///     }
    /// }
    /// ```
    fn on_state_change(&self, key: &str, from: State, to: State) {
        let _ = (key, from, to);
    }

    /// Called for every rejected call, before the function returns its error or fallback.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # struct Api;
    /// impl circuitpy::CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = circuitpy::MemoryStorage;
    /// #   fn storage(&self) -> &circuitpy::MemoryStorage { unimplemented!() }
    ///     fn on_rejected(&self, rejection: &circuitpy::CircuitBreakerOpen) {
    ///         eprintln!("{rejection}");
    ///     }
    /// }
    /// ```
    fn on_rejected(&self, rejection: &CircuitBreakerOpen) {
        let _ = rejection;
    }

    /// Called when the storage fails, whatever the storage-failure policy then decides.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # struct Api;
    /// impl circuitpy::CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = circuitpy::MemoryStorage;
    /// #   fn storage(&self) -> &circuitpy::MemoryStorage { unimplemented!() }
    ///     fn on_storage_error(&self, key: &str, error: &circuitpy::StorageError) {
    ///         eprintln!("breaker {key}: {error}");
    ///     }
    /// }
    /// ```
    fn on_storage_error(&self, key: &str, error: &StorageError) {
        let _ = (key, error);
    }
}

/// The state of a breaker.
///
/// Non-exhaustive: a later version may add a state, so a `match` needs a catch-all arm.
///
/// ```
/// assert_eq!(circuitpy::State::HalfOpen.to_string(), "half-open");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls run; outcomes are counted.
    Closed,
    /// Calls are rejected until the recovery timeout has passed.
    Open,
    /// A limited number of trial calls run; the rest are rejected.
    HalfOpen,
    /// Every call is rejected until [`Breaker::reset`](crate::Breaker::reset), or, on a
    /// shared storage, until [`FORCED_TTL`](crate::FORCED_TTL) after the last forcing.
    ForcedOpen,
    /// Every call runs and nothing is recorded until [`Breaker::reset`](crate::Breaker::reset),
    /// or, on a shared storage, until [`FORCED_TTL`](crate::FORCED_TTL) after the last
    /// forcing.
    ForcedClosed,
}

impl State {
    pub(crate) const fn code(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::ForcedClosed => 4,
        }
    }

    pub(crate) const fn from_code(code: u64) -> Option<State> {
        Some(match code {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::ForcedClosed,
            _ => return None,
        })
    }
}

impl State {
    /// The state as a label for logs and metrics: `closed`, `open`, `half_open`,
    /// `forced_open` or `forced_closed`.
    ///
    /// ```
    /// assert_eq!(circuitpy::State::HalfOpen.name(), "half_open");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::ForcedClosed => "forced_closed",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced open",
            State::ForcedClosed => "forced closed",
        })
    }
}
