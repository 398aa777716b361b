//! A handle on one breaker: read its state, force it, reset it, or guard a closure with it.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use crate::admin::Audit;
#[cfg(any(feature = "tower", feature = "reqwest"))]
use crate::engine::Entering;
use crate::engine::view::{CellRef, Family, decided_here, family};
use crate::engine::{self, Permit};
use crate::error::{CircuitBreakerOpen, StorageError};
use crate::handler::{CircuitBreaker, State};
use crate::storage::backend::{Async, Blocking, ready};
use crate::storage::{AsyncStorage, Op, Storage};

/// One breaker of handler `H`: its own key, or a per-call key under it.
///
/// Talks to the same state as `#[circuit_breaker(handler = H)]` does.
///
/// ```
/// use std::sync::LazyLock;
/// use std::time::Duration;
/// use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
///
/// static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
/// struct Payments;
/// impl CircuitBreaker for Payments {
///     const FAILURE_THRESHOLD: u32 = 5;
///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
///     const FAILURE_KEY: &'static str = "payments";
///     type Storage = MemoryStorage;
///     fn storage(&self) -> &MemoryStorage { &STORAGE }
/// }
///
/// let breaker = Breaker::new(Payments);
/// breaker.force_open().unwrap();
/// assert_eq!(breaker.state().unwrap(), State::ForcedOpen);
/// let result: Result<(), circuitpy::CircuitBreakerOpen> = breaker.call(|| Ok(()));
/// assert!(result.is_err());
/// breaker.reset().unwrap();
/// assert_eq!(breaker.state().unwrap(), State::Closed);
/// ```
pub struct Breaker<H: CircuitBreaker> {
    handler: H,
    /// Looked up on first use, once the handler has found its final place.
    family: OnceLock<Arc<Family>>,
    key: Option<Box<str>>,
}

impl<H: CircuitBreaker> std::fmt::Debug for Breaker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("key", &H::FAILURE_KEY)
            .field("per_call_key", &self.key)
            .finish()
    }
}

impl<H: CircuitBreaker> Breaker<H> {
    /// The breaker under the handler's own key.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// let breaker = Breaker::new(Api);
    /// assert_eq!(breaker.key(), "api");
    /// ```
    pub fn new(handler: H) -> Self {
        Breaker {
            handler,
            family: OnceLock::new(),
            key: None,
        }
    }

    /// The breaker for a per-call key, as `#[circuit_breaker(handler = H, key = ...)]` uses.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// let breaker = Breaker::keyed(Api, "eu.example.com");
    /// assert_eq!(breaker.key(), "api:eu.example.com");
    /// ```
    pub fn keyed(handler: H, key: &str) -> Self {
        Breaker {
            handler,
            family: OnceLock::new(),
            key: Some(key.into()),
        }
    }

    /// The full key: the handler's key, then `:` and the per-call key if any.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// assert_eq!(Breaker::keyed(Api, "eu").key(), "api:eu");
    /// ```
    pub fn key(&self) -> String {
        match &self.key {
            Some(key) => format!("{}:{key}", H::FAILURE_KEY),
            None => H::FAILURE_KEY.to_owned(),
        }
    }

    fn family(&self) -> &Family {
        self.family
            .get_or_init(|| family::<H>(self.handler.storage()))
    }

    fn cell(&self) -> Result<CellRef<'_>, StorageError> {
        self.family().cell(self.key.as_deref())
    }

    /// Runs `body` under the breaker, as a guarded function would.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, MemoryStorage};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// let answer: Result<u32, CircuitBreakerOpen> = Breaker::new(Api).call(|| Ok(42));
    /// assert_eq!(answer.unwrap(), 42);
    /// ```
    pub fn call<T, E, F>(&self, body: F) -> Result<T, E>
    where
        H::Storage: Storage,
        E: From<CircuitBreakerOpen> + 'static,
        F: FnOnce() -> Result<T, E>,
    {
        self.call_counting(|error| self.handler.is_failure(error), body)
    }

    /// [`Breaker::call`], with `is_failure` deciding which errors count instead of the
    /// handler's [`is_failure`](CircuitBreaker::is_failure); the error type need not be
    /// `'static`.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 1;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// #[derive(Debug)]
    /// enum ApiError { NotFound, Down, Open(CircuitBreakerOpen) }
    /// impl From<CircuitBreakerOpen> for ApiError {
    ///     fn from(open: CircuitBreakerOpen) -> Self { ApiError::Open(open) }
    /// }
    /// let breaker = Breaker::keyed(Api, "typed");
    /// let not_found = |error: &ApiError| !matches!(error, ApiError::NotFound);
    /// let _ = breaker.call_counting(not_found, || Err::<(), _>(ApiError::NotFound));
    /// assert_eq!(breaker.state().unwrap(), State::Closed);
    /// let _ = breaker.call_counting(not_found, || Err::<(), _>(ApiError::Down));
    /// assert_eq!(breaker.state().unwrap(), State::Open);
    /// ```
    pub fn call_counting<T, E, F>(
        &self,
        is_failure: impl FnOnce(&E) -> bool,
        body: F,
    ) -> Result<T, E>
    where
        H::Storage: Storage,
        E: From<CircuitBreakerOpen>,
        F: FnOnce() -> Result<T, E>,
    {
        let located = engine::locate(&self.handler, self.family(), self.key.as_deref(), "call");
        engine::call(located, body, is_failure, |rejection| {
            Err(E::from(rejection))
        })
    }

    /// Asks the breaker to let one call through, for code that runs the call itself: the
    /// [`Permit`] records its outcome. Rejected with the same [`CircuitBreakerOpen`] a
    /// guarded call would get.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, Outcome};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// let breaker = Breaker::new(Api);
    /// let permit = breaker.acquire().unwrap();
    /// permit.record(Outcome::Success);
    /// ```
    pub fn acquire(&self) -> Result<Permit<'_, H>, CircuitBreakerOpen>
    where
        H::Storage: Storage,
    {
        self.acquire_for("call")
    }

    /// [`Breaker::acquire`] for an async storage.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, Outcome};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// let breaker = Breaker::new(Api);
    /// let permit = breaker.acquire_async().await.unwrap();
    /// permit.record_async(Outcome::Success).await;
    /// # }
    /// ```
    pub async fn acquire_async(&self) -> Result<Permit<'_, H>, CircuitBreakerOpen>
    where
        H::Storage: AsyncStorage,
    {
        engine::enter_async(&self.handler, self.family(), self.key.as_deref(), "call")
            .admission()
            .await
    }

    /// Admission for an async call under the per-call key `key` (none: the breaker's own).
    #[cfg(any(feature = "tower", feature = "reqwest"))]
    #[inline(always)]
    pub(crate) fn entering<'a>(&'a self, key: Option<&str>, method: &'static str) -> Entering<'a, H>
    where
        H::Storage: AsyncStorage,
    {
        let key = key.or(self.key.as_deref());
        engine::enter_async(&self.handler, self.family(), key, method)
    }

    /// The handler and the breakers' family, to rebuild a permit from a ticket.
    #[cfg(feature = "tower")]
    #[inline]
    pub(crate) fn parts(&self) -> (&H, &Family) {
        (&self.handler, self.family())
    }

    fn acquire_for(&self, method: &'static str) -> Result<Permit<'_, H>, CircuitBreakerOpen>
    where
        H::Storage: Storage,
    {
        let storage = self.handler.storage();
        engine::enter(
            &self.handler,
            storage,
            self.family(),
            self.key.as_deref(),
            method,
        )
    }

    /// Runs `body` under the breaker, as a guarded `async fn` would.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, MemoryStorage};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// let answer: Result<u32, CircuitBreakerOpen> = Breaker::new(Api).call_async(async { Ok(42) }).await;
    /// assert_eq!(answer.unwrap(), 42);
    /// # }
    /// ```
    pub async fn call_async<T, E, F>(&self, body: F) -> Result<T, E>
    where
        H::Storage: AsyncStorage,
        E: From<CircuitBreakerOpen> + 'static,
        F: Future<Output = Result<T, E>>,
    {
        self.call_counting_async(|error| self.handler.is_failure(error), body)
            .await
    }

    /// [`Breaker::call_counting`] for an async storage.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, MemoryStorage};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 1;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// let answer: Result<u32, CircuitBreakerOpen> = Breaker::new(Api)
    ///     .call_counting_async(|_: &CircuitBreakerOpen| true, async { Ok(42) })
    ///     .await;
    /// assert_eq!(answer.unwrap(), 42);
    /// # }
    /// ```
    pub async fn call_counting_async<T, E, F>(
        &self,
        is_failure: impl FnOnce(&E) -> bool,
        body: F,
    ) -> Result<T, E>
    where
        H::Storage: AsyncStorage,
        E: From<CircuitBreakerOpen>,
        F: Future<Output = Result<T, E>>,
    {
        let located = engine::locate(&self.handler, self.family(), self.key.as_deref(), "call");
        engine::guarded(located, body, is_failure, |rejection| {
            Err(E::from(rejection))
        })
        .await
    }

    /// The current state: this process's own for the in-memory storage, the storage's
    /// (one round trip) for a shared one.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// assert_eq!(Breaker::new(Api).state().unwrap(), State::Closed);
    /// ```
    pub fn state(&self) -> Result<State, StorageError>
    where
        H::Storage: Storage,
    {
        self.control(Op::Read, Audit::NONE)
    }

    /// [`Breaker::state`] for an async storage.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// assert_eq!(Breaker::new(Api).state_async().await.unwrap(), State::Closed);
    /// # }
    /// ```
    pub async fn state_async(&self) -> Result<State, StorageError>
    where
        H::Storage: AsyncStorage,
    {
        self.control_async(Op::Read, Audit::NONE).await
    }

    /// Rejects every call until [`Breaker::reset`] (on a shared storage, for at most
    /// seven days).
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// let breaker = Breaker::keyed(Api, "forced");
    /// breaker.force_open().unwrap();
    /// assert_eq!(breaker.state().unwrap(), State::ForcedOpen);
    /// ```
    pub fn force_open(&self) -> Result<(), StorageError>
    where
        H::Storage: Storage,
    {
        self.control(Op::ForceOpen, Audit::NONE).map(drop)
    }

    /// Admits every call and records nothing until [`Breaker::reset`].
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// let breaker = Breaker::keyed(Api, "kept-closed");
    /// breaker.force_closed().unwrap();
    /// assert_eq!(breaker.state().unwrap(), State::ForcedClosed);
    /// ```
    pub fn force_closed(&self) -> Result<(), StorageError>
    where
        H::Storage: Storage,
    {
        self.control(Op::ForceClosed, Audit::NONE).map(drop)
    }

    /// Back to closed with every count cleared.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// let breaker = Breaker::keyed(Api, "reset");
    /// breaker.force_open().unwrap();
    /// breaker.reset().unwrap();
    /// assert_eq!(breaker.state().unwrap(), State::Closed);
    /// ```
    pub fn reset(&self) -> Result<(), StorageError>
    where
        H::Storage: Storage,
    {
        self.control(Op::Reset, Audit::NONE).map(drop)
    }

    /// [`Breaker::force_open`] for an async storage.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// let breaker = Breaker::keyed(Api, "forced-async");
    /// breaker.force_open_async().await.unwrap();
    /// assert_eq!(breaker.state_async().await.unwrap(), State::ForcedOpen);
    /// # }
    /// ```
    pub async fn force_open_async(&self) -> Result<(), StorageError>
    where
        H::Storage: AsyncStorage,
    {
        self.control_async(Op::ForceOpen, Audit::NONE)
            .await
            .map(drop)
    }

    /// [`Breaker::force_closed`] for an async storage.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// let breaker = Breaker::keyed(Api, "closed-async");
    /// breaker.force_closed_async().await.unwrap();
    /// assert_eq!(breaker.state_async().await.unwrap(), State::ForcedClosed);
    /// # }
    /// ```
    pub async fn force_closed_async(&self) -> Result<(), StorageError>
    where
        H::Storage: AsyncStorage,
    {
        self.control_async(Op::ForceClosed, Audit::NONE)
            .await
            .map(drop)
    }

    /// [`Breaker::reset`] for an async storage.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// let breaker = Breaker::keyed(Api, "reset-async");
    /// breaker.reset_async().await.unwrap();
    /// assert_eq!(breaker.state_async().await.unwrap(), State::Closed);
    /// # }
    /// ```
    pub async fn reset_async(&self) -> Result<(), StorageError>
    where
        H::Storage: AsyncStorage,
    {
        self.control_async(Op::Reset, Audit::NONE).await.map(drop)
    }

    /// [`Breaker::force_open`], storing who forced it and why (each at most
    /// [`MAX_AUDIT_BYTES`](crate::admin::MAX_AUDIT_BYTES)) and when with the breaker, for
    /// [`admin`](crate::admin) to show.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// use circuitpy::Audit;
    /// let breaker = Breaker::keyed(Api, "drill");
    /// breaker.force_open_by(Audit::by("alice").because("failover drill")).unwrap();
    /// assert_eq!(breaker.state().unwrap(), State::ForcedOpen);
    /// ```
    pub fn force_open_by(&self, audit: Audit<'_>) -> Result<(), StorageError>
    where
        H::Storage: Storage,
    {
        self.control(Op::ForceOpen, audit).map(drop)
    }

    /// [`Breaker::force_closed`] with an audit trail (see [`Breaker::force_open_by`]).
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// use circuitpy::Audit;
    /// let breaker = Breaker::keyed(Api, "kept-closed-by");
    /// breaker.force_closed_by(Audit::by("bob")).unwrap();
    /// assert_eq!(breaker.state().unwrap(), State::ForcedClosed);
    /// ```
    pub fn force_closed_by(&self, audit: Audit<'_>) -> Result<(), StorageError>
    where
        H::Storage: Storage,
    {
        self.control(Op::ForceClosed, audit).map(drop)
    }

    /// [`Breaker::force_open_by`] for an async storage.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// let breaker = Breaker::keyed(Api, "drill-async");
    /// breaker.force_open_by_async(circuitpy::Audit::by("alice")).await.unwrap();
    /// assert_eq!(breaker.state_async().await.unwrap(), State::ForcedOpen);
    /// # }
    /// ```
    pub async fn force_open_by_async(&self, audit: Audit<'_>) -> Result<(), StorageError>
    where
        H::Storage: AsyncStorage,
    {
        self.control_async(Op::ForceOpen, audit).await.map(drop)
    }

    /// [`Breaker::force_closed_by`] for an async storage.
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # async fn run() {
    /// let breaker = Breaker::keyed(Api, "kept-closed-by-async");
    /// breaker.force_closed_by_async(circuitpy::Audit::by("bob")).await.unwrap();
    /// assert_eq!(breaker.state_async().await.unwrap(), State::ForcedClosed);
    /// # }
    /// ```
    pub async fn force_closed_by_async(&self, audit: Audit<'_>) -> Result<(), StorageError>
    where
        H::Storage: AsyncStorage,
    {
        self.control_async(Op::ForceClosed, audit).await.map(drop)
    }

    /// Overrides the breaker's threshold, recovery timeout or half-open trials at runtime,
    /// for every process that shares it: stored with the breaker, decided by in the same
    /// single command on a shared storage (in this process for the in-memory storage), for
    /// [`FORCED_TTL`](crate::FORCED_TTL) or until set again; [`Overrides::NONE`](crate::Overrides::NONE) clears
    /// them. A value out of its const's bounds is refused, never applied. A storage built
    /// on the three primitives alone cannot keep them
    /// ([`StorageError::Unsupported`]).
    ///
    /// ```
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, Overrides, State};
    /// # use std::time::Duration;
    /// # static STORAGE: std::sync::LazyLock<MemoryStorage> = std::sync::LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// # #[derive(Debug)] struct Down;
    /// # impl From<circuitpy::CircuitBreakerOpen> for Down {
    /// #     fn from(_: circuitpy::CircuitBreakerOpen) -> Self { Down }
    /// # }
    /// let breaker = Breaker::keyed(Api, "overridden");
    /// // One failure trips it now, where the handler says five.
    /// breaker.set_overrides(Overrides::NONE.failure_threshold(1)).unwrap();
    /// let _ = breaker.call(|| Err::<(), _>(Down));
    /// assert_eq!(breaker.state().unwrap(), State::Open);
    /// assert!(breaker.set_overrides(Overrides::NONE.half_open_trials(0)).is_err());
    /// ```
    pub fn set_overrides(&self, overrides: crate::Overrides) -> Result<(), StorageError>
    where
        H::Storage: Storage,
    {
        let storage = self.handler.storage();
        ready(self.override_on(&Blocking(storage), overrides))
    }

    /// [`Breaker::set_overrides`] for an async storage.
    pub async fn set_overrides_async(&self, overrides: crate::Overrides) -> Result<(), StorageError>
    where
        H::Storage: AsyncStorage,
    {
        let storage = self.handler.storage();
        self.override_on(&Async(storage), overrides).await
    }

    async fn override_on<B: crate::storage::backend::Backend>(
        &self,
        backend: &B,
        overrides: crate::Overrides,
    ) -> Result<(), StorageError> {
        overrides.check()?;
        let cell = self.cell()?;
        if decided_here::<H::Storage>() {
            cell.set_overrides((!overrides.is_none()).then_some(overrides));
            return Ok(());
        }
        engine::control_shared(
            &self.handler,
            backend,
            &cell,
            Op::Override,
            Audit::NONE,
            overrides,
        )
        .await
        .map(drop)
    }

    /// Reads (`Op::Read`), forces or resets the breaker: in this process for the in-memory
    /// storage, on the storage otherwise.
    fn control(&self, op: Op, audit: Audit<'_>) -> Result<State, StorageError>
    where
        H::Storage: Storage,
    {
        let storage = self.handler.storage();
        ready(self.control_on(&Blocking(storage), Storage::clock(storage), op, audit))
    }

    async fn control_async(&self, op: Op, audit: Audit<'_>) -> Result<State, StorageError>
    where
        H::Storage: AsyncStorage,
    {
        let storage = self.handler.storage();
        self.control_on(&Async(storage), AsyncStorage::clock(storage), op, audit)
            .await
    }

    async fn control_on<B: crate::storage::backend::Backend>(
        &self,
        backend: &B,
        clock: &crate::Clock,
        op: Op,
        audit: Audit<'_>,
    ) -> Result<State, StorageError> {
        audit.check()?;
        let cell = self.cell()?;
        if !decided_here::<H::Storage>() {
            return engine::control_shared(
                &self.handler,
                backend,
                &cell,
                op,
                audit,
                crate::Overrides::NONE,
            )
            .await;
        }
        if op != Op::Read {
            engine::control_here(&self.handler, &cell, op, audit);
        }
        Ok(engine::state_here(&cell, clock))
    }
}
