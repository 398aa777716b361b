//! Circuit breakers whose state lives in a pluggable storage.
//!
//! A handler — a unit struct implementing [`CircuitBreaker`] — names a threshold, a recovery
//! timeout, a key and a storage; `#[circuit_breaker(handler = ...)]` guards a function with
//! it. The state lives in memory by default ([`MemoryStorage`]), in Redis or SQL to share one
//! breaker across a fleet, or in any [`Storage`] you write.
//!
//! ```
//! use std::sync::LazyLock;
//! use std::time::Duration;
//! use circuitpy::{circuit_breaker, Breaker, CircuitBreaker, CircuitBreakerOpen, MemoryStorage, State};
//!
//! static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
//!
//! struct RequestCircuitBreaker;
//!
//! impl CircuitBreaker for RequestCircuitBreaker {
//!     const FAILURE_THRESHOLD: u32 = 3;
//!     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
//!     const FAILURE_KEY: &'static str = "request_cb";
//!     type Storage = MemoryStorage;
//!     fn storage(&self) -> &MemoryStorage {
//!         &STORAGE
//!     }
//! }
//!
//! #[derive(Debug)]
//! enum MyError {
//!     Unavailable,
//!     Open(CircuitBreakerOpen),
//! }
//!
//! impl From<CircuitBreakerOpen> for MyError {
//!     fn from(open: CircuitBreakerOpen) -> Self {
//!         MyError::Open(open)
//!     }
//! }
//!
//! #[circuit_breaker(handler = RequestCircuitBreaker)]
//! fn lazy_method() -> Result<(), MyError> {
//!     Err(MyError::Unavailable)
//! }
//!
//! for _ in 0..3 {
//!     assert!(matches!(lazy_method(), Err(MyError::Unavailable)));
//! }
//! // Three failures in a row: the breaker is open and the body no longer runs.
//! assert!(matches!(lazy_method(), Err(MyError::Open(_))));
//! assert_eq!(Breaker::new(RequestCircuitBreaker).state().unwrap(), State::Open);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod breaker;
mod clock;
mod engine;
mod error;
mod handler;
pub mod health;
mod key;
#[cfg(feature = "metrics")]
pub mod metrics;
mod policy;
#[cfg(feature = "reqwest")]
pub mod reqwest;
mod rules;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tower")]
pub mod tower;

pub use admin::Audit;
pub use breaker::Breaker;
pub use clock::{Clock, ManualClock};
pub use engine::view::MAX_PER_CALL_BREAKERS;
pub use engine::{Outcome, Permit, RunAsync};
pub use error::{CircuitBreakerOpen, Rejection, StorageError};
pub use handler::{CircuitBreaker, State};
pub use policy::{
    Backoff, Config, FailurePolicy, MAX_DURATION, MAX_HALF_OPEN_TRIALS, MAX_QUORUM,
    OnStorageFailure, Overrides,
};
pub use rules::{FORCED_TTL, retention};
pub use storage::memory::MemoryStorage;
#[cfg(feature = "postgres")]
pub use storage::postgres::{AsyncPostgresStorage, PostgresOptions, PostgresStorage};
#[cfg(feature = "redis")]
pub use storage::redis;
#[cfg(feature = "sqlite")]
pub use storage::sqlite::SqliteStorage;

/// The breaker protocol over the three storage primitives: what [`Storage::execute`] and
/// [`AsyncStorage::execute`] do unless a storage overrides them. An override can call these
/// to wrap the default, e.g. to count or log operations.
///
/// ```
/// use circuitpy::{MemoryStorage, Request, Snapshot, Storage, StorageError};
/// # use std::time::Duration;
/// struct Logged(MemoryStorage);
/// impl Storage for Logged {
/// #   fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> { Storage::increment(&self.0, key, ttl) }
/// #   fn get_count(&self, key: &str) -> Result<u64, StorageError> { Storage::get_count(&self.0, key) }
/// #   fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> { Storage::expire_after(&self.0, key, ttl) }
///     // increment, get_count, expire_after as usual, then:
///     fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
///         eprintln!("{:?} on {}", request.op, request.key);
///         circuitpy::primitive::execute(self, request)
///     }
/// }
/// ```
pub mod primitive {
    pub use crate::rules::primitive::{execute_async, execute_blocking as execute};
    pub use crate::rules::{FORCED_TTL, retention};
}
pub use storage::{AsyncStorage, Op, Request, Snapshot, Storage};

/// Guards a function returning `Result<T, E>` with a circuit breaker.
///
/// ```
/// # use std::sync::LazyLock;
/// # use std::time::Duration;
/// # use circuitpy::{circuit_breaker, CircuitBreaker, CircuitBreakerOpen, MemoryStorage};
/// # static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
/// # struct Hosts;
/// # impl CircuitBreaker for Hosts {
/// #   const FAILURE_THRESHOLD: u32 = 5;
/// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
/// #   const FAILURE_KEY: &'static str = "hosts";
/// #   type Storage = MemoryStorage;
/// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
/// # }
/// // One breaker per host; when a host's breaker is open, answer from a cache instead.
/// #[circuit_breaker(handler = Hosts, key = host, fallback = cached)]
/// fn fetch(host: &str, path: &str) -> Result<String, CircuitBreakerOpen> {
///     Ok(format!("https://{host}{path}"))
/// }
///
/// fn cached(host: &str, path: &str) -> Result<String, CircuitBreakerOpen> {
///     Ok(format!("cached {host}{path}"))
/// }
///
/// assert_eq!(fetch("example.com", "/").unwrap(), "https://example.com/");
/// ```
///
/// Options:
/// - `handler = Path` (required): a unit struct implementing [`CircuitBreaker`];
/// - `key = expr`: a per-call key (anything `AsRef<str>`, 1 to 512 bytes), so one handler
///   guards many dependencies, each with its own breaker `"{FAILURE_KEY}:{key}"`; once a
///   handler holds 65 536 of them, the idle ones (closed, nothing counted) are dropped;
/// - `fallback = path`: called with the same arguments instead of the body when the
///   breaker rejects (awaited if the function is async);
/// - `crate = "path"`: where to find circuitpy if the dependency is renamed.
///
/// A rejection without a fallback returns `Err(E::from(CircuitBreakerOpen { .. }))`. A panic
/// in the body counts as a failure, then keeps unwinding.
#[doc(inline)]
pub use circuitpy_macros::circuit_breaker;

#[doc(hidden)]
pub mod __private {
    use crate::engine::{self, Permit};
    use crate::{AsyncStorage, CircuitBreaker, CircuitBreakerOpen, Storage};

    pub use crate::engine::view::Site;
    pub use crate::engine::{Entering, Guarded, Located, call, guarded};

    /// Checks that `H` is a handler with valid consts. The attribute evaluates it in a
    /// `const` item spanned at its `handler = ...`, so an invalid const fails the build
    /// there, with the const's message, instead of deep inside the engine, and `cargo
    /// check` reports it too.
    pub const fn check_handler<H: CircuitBreaker>() {
        let _ = crate::Config::of::<H>();
    }

    /// Borrows a per-call key as `&str`.
    #[inline]
    pub fn key_str<K: AsRef<str> + ?Sized>(key: &K) -> &str {
        key.as_ref()
    }

    /// Admission for a guarded blocking function.
    #[inline(always)]
    pub fn enter<'a, H>(
        handler: &'a H,
        site: &'a Site,
        key: Option<&str>,
        method: &'static str,
    ) -> Result<Permit<'a, H>, CircuitBreakerOpen>
    where
        H: CircuitBreaker,
        H::Storage: Storage,
    {
        let storage = handler.storage();
        engine::enter(handler, storage, site.family(handler), key, method)
    }

    /// Admission for a guarded async function: decided at once where the storage decides
    /// in this process, a future to await otherwise.
    #[inline(always)]
    pub fn enter_async<'a, H>(
        handler: &'a H,
        site: &'a Site,
        key: Option<&str>,
        method: &'static str,
    ) -> Entering<'a, H>
    where
        H: CircuitBreaker,
        H::Storage: AsyncStorage,
    {
        engine::enter_async(handler, site.family(handler), key, method)
    }

    /// Where a guarded function's breaker is, found before the body takes the arguments (a
    /// per-call key borrows them); [`call`] or [`guarded`] then runs the call.
    #[inline(always)]
    pub fn locate<'a, H: CircuitBreaker>(
        handler: &'a H,
        site: &'a Site,
        key: Option<&str>,
        method: &'static str,
    ) -> Located<'a, H> {
        engine::locate(handler, site.family(handler), key, method)
    }

    /// The handler's own failure predicate, for a guarded function without `is_failure`.
    #[inline(always)]
    pub fn handler_counts<H: CircuitBreaker, E: 'static>(
        handler: &H,
    ) -> impl FnOnce(&E) -> bool + '_ {
        move |error: &E| handler.is_failure(error)
    }
}
