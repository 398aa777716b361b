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

mod breaker;
mod cell;
mod clock;
mod engine;
mod error;
mod handler;
mod key;
mod machine;
mod policy;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;

pub use breaker::Breaker;
pub use clock::{Clock, ManualClock};
pub use error::{CircuitBreakerOpen, Rejection, StorageError};
pub use handler::{CircuitBreaker, State};
pub use policy::{Config, FailurePolicy, MAX_HALF_OPEN_TRIALS, OnStorageFailure};
pub use storage::memory::MemoryStorage;
#[cfg(feature = "postgres")]
pub use storage::postgres::{AsyncPostgresStorage, PostgresOptions, PostgresStorage};
pub use storage::primitive::{FORCED_TTL, retention};
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
    pub use crate::storage::primitive::{
        FORCED_TTL, execute_async, execute_blocking as execute, retention,
    };
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
    pub use crate::cell::Site;
    pub use crate::engine::{
        Guard, Panic, catch, catch_async, enter, enter_async, enter_now, in_process,
        in_process_blocking,
    };

    /// Checks that `H` is a handler with valid consts. The attribute evaluates it in a
    /// `const` block spanned at its `handler = ...`, so an invalid const fails the build
    /// there, with the const's message, instead of deep inside the engine.
    pub const fn check_handler<H: crate::CircuitBreaker>() {
        let _ = crate::Config::of::<H>();
    }

    /// Borrows a per-call key as `&str`.
    #[inline]
    pub fn key_str<K: AsRef<str> + ?Sized>(key: &K) -> &str {
        key.as_ref()
    }
}
