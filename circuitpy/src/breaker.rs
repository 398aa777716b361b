//! A handle on one breaker: read its state, force it, reset it, or guard a closure with it.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use crate::cell::{CellRef, Family, Registry, family};
use crate::engine::{self, Cfg, adopt};
use crate::error::{CircuitBreakerOpen, StorageError};
use crate::handler::{CircuitBreaker, State};
use crate::storage::{AsyncStorage, Backend, Blocking, NonBlocking, Op, Request, Storage, ready};

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

    fn cell(&self, own: Option<&Registry>) -> Result<CellRef<'_>, StorageError> {
        self.family
            .get_or_init(|| family::<H>(self.handler.storage(), own))
            .cell(self.key.as_deref())
    }

    fn blocking_cell(&self) -> Result<CellRef<'_>, StorageError>
    where
        H::Storage: Storage,
    {
        self.cell(Storage::__registry(self.handler.storage()))
    }

    fn async_cell(&self) -> Result<CellRef<'_>, StorageError>
    where
        H::Storage: AsyncStorage,
    {
        self.cell(AsyncStorage::__registry(self.handler.storage()))
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
        let guard = match self.enter() {
            Ok(guard) => guard,
            Err(rejection) => return Err(E::from(rejection)),
        };
        guard.complete(engine::catch(body))
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
        let guard = match self.enter_async().await {
            Ok(guard) => guard,
            Err(rejection) => return Err(E::from(rejection)),
        };
        guard.complete_async(engine::catch_async(body).await).await
    }

    fn enter(&self) -> Result<engine::Guard<'_, H>, CircuitBreakerOpen>
    where
        H::Storage: Storage,
    {
        let storage = self.handler.storage();
        let clock = Storage::clock(storage);
        let cell = match self.blocking_cell() {
            Ok(cell) => cell,
            Err(error) => {
                return engine::storage_failed_before_call(
                    &self.handler,
                    None,
                    clock,
                    "call",
                    error,
                );
            }
        };
        if <H::Storage as Storage>::__IN_PROCESS {
            engine::enter_in_process(&self.handler, cell, clock, "call")
        } else {
            ready(engine::enter_shared(
                &self.handler,
                &Blocking(storage),
                clock,
                cell,
                "call",
            ))
        }
    }

    async fn enter_async(&self) -> Result<engine::Guard<'_, H>, CircuitBreakerOpen>
    where
        H::Storage: AsyncStorage,
    {
        let storage = self.handler.storage();
        let clock = AsyncStorage::clock(storage);
        let cell = match self.async_cell() {
            Ok(cell) => cell,
            Err(error) => {
                return engine::storage_failed_before_call(
                    &self.handler,
                    None,
                    clock,
                    "call",
                    error,
                );
            }
        };
        if <H::Storage as AsyncStorage>::__IN_PROCESS {
            engine::enter_in_process(&self.handler, cell, clock, "call")
        } else {
            engine::enter_shared(&self.handler, &NonBlocking(storage), clock, cell, "call").await
        }
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
        let storage = self.handler.storage();
        let cell = self.blocking_cell()?;
        if <H::Storage as Storage>::__IN_PROCESS {
            return Ok(Self::local_state(cell, Storage::clock(storage)));
        }
        ready(self.apply_shared(cell, &Blocking(storage), Op::Read))
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
        let storage = self.handler.storage();
        let cell = self.async_cell()?;
        if <H::Storage as AsyncStorage>::__IN_PROCESS {
            return Ok(Self::local_state(cell, AsyncStorage::clock(storage)));
        }
        self.apply_shared(cell, &NonBlocking(storage), Op::Read)
            .await
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
        self.control(Op::ForceOpen)
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
        self.control(Op::ForceClosed)
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
        self.control(Op::Reset)
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
        self.control_async(Op::ForceOpen).await
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
        self.control_async(Op::ForceClosed).await
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
        self.control_async(Op::Reset).await
    }

    fn control(&self, op: Op) -> Result<(), StorageError>
    where
        H::Storage: Storage,
    {
        let storage = self.handler.storage();
        let cell = self.blocking_cell()?;
        if <H::Storage as Storage>::__IN_PROCESS {
            return self.control_local(cell, op);
        }
        ready(self.apply_shared(cell, &Blocking(storage), op)).map(drop)
    }

    async fn control_async(&self, op: Op) -> Result<(), StorageError>
    where
        H::Storage: AsyncStorage,
    {
        let storage = self.handler.storage();
        let cell = self.async_cell()?;
        if <H::Storage as AsyncStorage>::__IN_PROCESS {
            return self.control_local(cell, op);
        }
        self.apply_shared(cell, &NonBlocking(storage), op)
            .await
            .map(drop)
    }

    fn local_state(cell: CellRef<'_>, clock: &crate::Clock) -> State {
        let word = cell.load();
        match word.deadline() {
            Some(deadline) if word.phase() == State::Open && clock.now() >= deadline => {
                State::HalfOpen
            }
            _ => word.phase(),
        }
    }

    fn control_local(&self, cell: CellRef<'_>, op: Op) -> Result<(), StorageError> {
        let state = match op {
            Op::ForceOpen => State::ForcedOpen,
            Op::ForceClosed => State::ForcedClosed,
            _ => State::Closed,
        };
        let current = cell.load();
        let previous = cell.swap(current.next(state, 0));
        cell.clear_window();
        if previous.phase() != state {
            self.handler
                .on_state_change(cell.key.as_str(), previous.phase(), state);
        }
        Ok(())
    }

    async fn apply_shared<B: Backend>(
        &self,
        cell: CellRef<'_>,
        backend: &B,
        op: Op,
    ) -> Result<State, StorageError> {
        let snapshot = backend
            .execute(&Request::new(cell.key.as_str(), op, &Cfg::<H>::CONFIG))
            .await?;
        adopt(&self.handler, &cell, backend.clock(), &snapshot);
        Ok(snapshot.state)
    }
}
