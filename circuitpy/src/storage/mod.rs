//! Where a breaker's state lives.
//!
//! A storage implements three primitives — [`increment`](Storage::increment),
//! [`get_count`](Storage::get_count) and [`expire_after`](Storage::expire_after) — and the
//! breaker is correct on top of them: [`Storage::execute`] runs each breaker operation as a
//! short sequence of primitives (see `rules/primitive.rs`). A storage that can do better
//! overrides `execute` with one atomic round trip, as the Redis and SQL storages do.
//!
//! The primitive names avoid `get` and `expire`, which `redis::Commands` also defines: with
//! both traits in scope a call would be ambiguous.
//!
//! There are two flavours: [`Storage`] blocks the calling thread and needs no async runtime;
//! [`AsyncStorage`] returns futures and never blocks its executor.

use std::future::Future;
use std::time::Duration;

use crate::admin::Audit;
use crate::clock::Clock;
use crate::error::StorageError;
use crate::handler::State;
use crate::policy::Config;
use crate::rules::primitive;

pub(crate) mod backend;
pub(crate) mod memory;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

pub(crate) static SYSTEM_CLOCK: Clock = Clock::system();

/// `AsyncStorage` for a storage whose blocking operations are short enough to run on the
/// calling task (the in-memory map, a local SQLite file): every method forwards to its
/// `Storage` twin, with futures ready at once.
macro_rules! async_by_blocking {
    ($type:ty, $doc:literal) => {
        #[doc = $doc]
        impl $crate::storage::AsyncStorage for $type {
            async fn increment(
                &self,
                key: &str,
                ttl: ::std::time::Duration,
            ) -> Result<u64, $crate::error::StorageError> {
                $crate::storage::Storage::increment(self, key, ttl)
            }

            async fn increment_by(
                &self,
                key: &str,
                count: u64,
                ttl: ::std::time::Duration,
            ) -> Result<u64, $crate::error::StorageError> {
                $crate::storage::Storage::increment_by(self, key, count, ttl)
            }

            async fn get_count(&self, key: &str) -> Result<u64, $crate::error::StorageError> {
                $crate::storage::Storage::get_count(self, key)
            }

            async fn expire_after(
                &self,
                key: &str,
                ttl: ::std::time::Duration,
            ) -> Result<(), $crate::error::StorageError> {
                $crate::storage::Storage::expire_after(self, key, ttl)
            }

            async fn execute(
                &self,
                request: &$crate::storage::Request<'_>,
            ) -> Result<$crate::storage::Snapshot, $crate::error::StorageError> {
                $crate::storage::Storage::execute(self, request)
            }

            fn clock(&self) -> &$crate::clock::Clock {
                $crate::storage::Storage::clock(self)
            }
        }
    };
}
pub(crate) use async_by_blocking;

/// A blocking storage.
///
/// Implement the three primitives; the breaker needs nothing else. `increment` must be
/// atomic, and when it creates the key it must give it the expiry in the same step (the
/// original circuitpy set a counter and its expiry in two steps, and a crash between them
/// left a key that never expired).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::{Duration, Instant};
/// use circuitpy::{Storage, StorageError};
///
/// #[derive(Default)]
/// struct MapStorage(Mutex<HashMap<String, (u64, Instant)>>);
///
/// impl Storage for MapStorage {
///     fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
///         let mut map = self.0.lock().unwrap();
///         let now = Instant::now();
///         let entry = map.entry(key.to_owned()).or_insert((0, now + ttl));
///         if entry.1 <= now { *entry = (0, now + ttl); }
///         entry.0 += 1;
///         Ok(entry.0)
///     }
///     fn get_count(&self, key: &str) -> Result<u64, StorageError> {
///         let map = self.0.lock().unwrap();
///         Ok(map.get(key).filter(|e| e.1 > Instant::now()).map_or(0, |e| e.0))
///     }
///     fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
///         let mut map = self.0.lock().unwrap();
///         if ttl.is_zero() { map.remove(key); }
///         else if let Some(entry) = map.get_mut(key) { entry.1 = Instant::now() + ttl; }
///         Ok(())
///     }
/// }
/// ```
pub trait Storage: Send + Sync {
    /// Adds one to the count at `key` and returns the new count. A key this call creates
    /// starts at zero and expires after `ttl`, set atomically with the increment; an existing
    /// key keeps its expiry.
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError>;

    /// The count at `key`, zero when the key is absent or expired.
    fn get_count(&self, key: &str) -> Result<u64, StorageError>;

    /// Makes `key` expire after `ttl` from now; a zero `ttl` deletes it. No effect on an
    /// absent key.
    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError>;

    /// Adds `count` to the count at `key`, as `count` calls of
    /// [`increment`](Storage::increment) would, and returns the new count. The provided
    /// implementation does exactly that; override it when the storage can add `count` in
    /// one step (local mode reports held-back successes with one call of it).
    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        let mut total = self.increment(key, ttl)?;
        for _ in 1..count {
            total = self.increment(key, ttl)?;
        }
        Ok(total)
    }

    /// Runs one breaker operation and returns the breaker's state after it. The provided
    /// implementation composes the three primitives; override it to do the whole operation
    /// in one atomic round trip.
    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        primitive::execute_blocking(self, request)
    }

    /// The clock the breaker reads for this storage's breakers.
    fn clock(&self) -> &Clock {
        &SYSTEM_CLOCK
    }
}

/// An async storage: the same contract as [`Storage`], with futures.
///
/// ```
/// use std::time::Duration;
/// use circuitpy::{AsyncStorage, StorageError};
///
/// /// A storage reached over some async API (here a stub that remembers nothing).
/// struct Remote;
///
/// impl AsyncStorage for Remote {
///     async fn increment(&self, _key: &str, _ttl: Duration) -> Result<u64, StorageError> { Ok(1) }
///     async fn get_count(&self, _key: &str) -> Result<u64, StorageError> { Ok(0) }
///     async fn expire_after(&self, _key: &str, _ttl: Duration) -> Result<(), StorageError> { Ok(()) }
/// }
/// ```
pub trait AsyncStorage: Send + Sync {
    /// See [`Storage::increment`].
    fn increment(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// See [`Storage::get_count`].
    fn get_count(&self, key: &str) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// See [`Storage::expire_after`].
    fn expire_after(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// See [`Storage::increment_by`].
    fn increment_by(
        &self,
        key: &str,
        count: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send {
        async move {
            let mut total = self.increment(key, ttl).await?;
            for _ in 1..count {
                total = self.increment(key, ttl).await?;
            }
            Ok(total)
        }
    }

    /// See [`Storage::execute`].
    fn execute(
        &self,
        request: &Request<'_>,
    ) -> impl Future<Output = Result<Snapshot, StorageError>> + Send {
        primitive::execute_async(self, request)
    }

    /// See [`Storage::clock`].
    fn clock(&self) -> &Clock {
        &SYSTEM_CLOCK
    }
}

/// One breaker operation for a storage to carry out.
///
/// ```
/// use circuitpy::{Op, Request};
/// # fn f(config: &circuitpy::Config) {
/// let request = Request::new("payments", Op::Failure, config);
/// assert_eq!(request.namespaced_key(), format!("{}:{{payments}}", config.key_prefix));
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The breaker's key (the handler's key, or `handler_key:per_call_key`).
    pub key: &'a str,
    /// What to do.
    pub op: Op,
    /// The handler's configuration.
    pub config: &'a Config,
    /// How many calls an [`Op::Success`] reports: more than one when local mode
    /// ([`CircuitBreaker::SYNC_INTERVAL`](crate::CircuitBreaker::SYNC_INTERVAL)) held
    /// successes back. Always 1 for other operations.
    pub count: u64,
    /// For a trial's outcome ([`Op::TrialSuccess`], [`Op::TrialFailure`],
    /// [`Op::ReleaseTrial`]): the round its permit belongs to ([`Snapshot::round`]). An
    /// outcome of another round changes nothing; `None` means the current round.
    pub round: Option<u64>,
    /// The time to decide at, in place of the storage's own clock, on any scale the caller
    /// keeps to: tests set it to drive a storage by a [`ManualClock`](crate::ManualClock).
    /// The engine never sets it. A storage that keeps its own clock honours it.
    pub at: Option<Duration>,
    /// For [`Op::ForceOpen`] and [`Op::ForceClosed`]: who forced the breaker and why, stored
    /// with it together with the time (see [`crate::admin`]). Empty otherwise.
    pub audit: Audit<'a>,
    /// For [`Op::Override`]: the settings to store with the breaker
    /// ([`Overrides::NONE`](crate::Overrides::NONE) clears them). Empty otherwise.
    pub overrides: crate::Overrides,
    /// For [`Op::Failure`] under a [`QUORUM`](crate::CircuitBreaker::QUORUM): who reports
    /// it, one id per process (below 2^48, so that every storage's language holds it
    /// exactly). [`Request::new`] fills in this process's.
    pub reporter: u64,
    /// For [`Op::Success`]: the failures this process last saw counted on the breaker (0 when
    /// it saw none, or does not know). A hint, never a rule: another process may have
    /// counted some since, or reset them. A storage that settles a success which changes
    /// nothing more cheaply than one that resets a count (Redis) goes straight to the
    /// latter when the process expects a count.
    pub seen_failures: u64,
}

impl<'a> Request<'a> {
    /// A request.
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let _ = circuitpy::Request::new("k", circuitpy::Op::Read, config);
    /// # }
    /// ```
    pub fn new(key: &'a str, op: Op, config: &'a Config) -> Self {
        Request {
            key,
            op,
            config,
            count: 1,
            round: None,
            at: None,
            audit: Audit::NONE,
            overrides: crate::Overrides::NONE,
            reporter: crate::rules::reporter(),
            seen_failures: 0,
        }
    }

    /// A success from a process that last saw `failures` counted (see
    /// [`Request::seen_failures`]).
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let request = circuitpy::Request::new("k", circuitpy::Op::Success, config).having_seen(2);
    /// assert_eq!(request.seen_failures, 2);
    /// # }
    /// ```
    pub fn having_seen(self, failures: u64) -> Self {
        Request {
            seen_failures: failures,
            ..self
        }
    }

    /// A failure reported by `reporter` instead of this process (see [`Request::reporter`]):
    /// for tests that play several processes in one. Taken below 2^48.
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let request = circuitpy::Request::new("k", circuitpy::Op::Failure, config).reported_by(7);
    /// assert_eq!(request.reporter, 7);
    /// # }
    /// ```
    pub fn reported_by(self, reporter: u64) -> Self {
        Request {
            reporter: reporter & crate::rules::REPORTER_MASK,
            ..self
        }
    }

    /// An [`Op::Override`] request carrying the settings to store.
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let overrides = circuitpy::Overrides::NONE.failure_threshold(10);
    /// let request = circuitpy::Request::new("k", circuitpy::Op::Override, config)
    ///     .with_overrides(overrides);
    /// assert_eq!(request.overrides.failure_threshold, Some(10));
    /// # }
    /// ```
    pub fn with_overrides(self, overrides: crate::Overrides) -> Self {
        Request { overrides, ..self }
    }

    /// A forcing request carrying who forces the breaker and why (see [`Request::audit`]).
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let audit = circuitpy::Audit::by("alice").because("failover drill");
    /// let request = circuitpy::Request::new("k", circuitpy::Op::ForceOpen, config).with_audit(audit);
    /// assert_eq!(request.audit.actor, Some("alice"));
    /// # }
    /// ```
    pub fn with_audit(self, audit: Audit<'a>) -> Self {
        Request { audit, ..self }
    }

    /// A request reporting `count` calls at once (see [`Request::count`]).
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let request = circuitpy::Request::new("k", circuitpy::Op::Success, config).with_count(5);
    /// assert_eq!(request.count, 5);
    /// # }
    /// ```
    pub fn with_count(self, count: u64) -> Self {
        Request {
            count: count.max(1),
            ..self
        }
    }

    /// A trial outcome of round `round` (see [`Request::round`]).
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let request = circuitpy::Request::new("k", circuitpy::Op::TrialSuccess, config).in_round(7);
    /// assert_eq!(request.round, Some(7));
    /// # }
    /// ```
    pub fn in_round(self, round: u64) -> Self {
        Request {
            round: Some(round),
            ..self
        }
    }

    /// The request decided at `at` instead of by the storage's clock (see [`Request::at`]).
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let at = std::time::Duration::from_secs(90);
    /// let request = circuitpy::Request::new("k", circuitpy::Op::Read, config).at(at);
    /// assert_eq!(request.at, Some(at));
    /// # }
    /// ```
    pub fn at(self, at: Duration) -> Self {
        Request {
            at: Some(at),
            ..self
        }
    }

    /// [`Request::reporter`] as every storage keeps it: below 2^48 whatever the field was
    /// set to.
    pub(crate) fn reporter_id(&self) -> u64 {
        self.reporter & crate::rules::REPORTER_MASK
    }

    /// Whether the operation changes nothing on a breaker that holds nothing (no row, no
    /// hash): a read, a permit asked of it (closed, so every call passes), a success outside
    /// the rate policy (which counts calls). The SQL storages answer these without taking
    /// a lock or calling the rules when nothing is stored.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn changes_nothing_when_nothing_is_stored(&self) -> bool {
        match self.op {
            Op::Read | Op::AcquireTrial => true,
            Op::Success => !matches!(self.config.policy, crate::FailurePolicy::Rate { .. }),
            _ => false,
        }
    }

    /// Whether this request is a success that a read of the breaker's state and failure
    /// count may settle ([`settled_success`]): a success outside the rate policy (which
    /// counts successes), unless this process saw a consecutive count, which it most likely
    /// resets. Redis, PostgreSQL and SQLite read first, in one cheap command, and run their
    /// full operation only when the read does not settle it.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(crate) fn success_may_change_nothing(&self) -> bool {
        self.op == Op::Success
            && match self.config.policy {
                crate::FailurePolicy::Consecutive => self.seen_failures == 0,
                crate::FailurePolicy::CountInWindow { .. } => true,
                crate::FailurePolicy::Rate { .. } => false,
            }
    }

    /// `{prefix}:{{key}}`: the stem of every key this breaker writes. The braces are a Redis
    /// Cluster hash tag, so all of one breaker's keys live on one node.
    ///
    /// ```
    /// # fn f(config: &circuitpy::Config) {
    /// let request = circuitpy::Request::new("k", circuitpy::Op::Read, config);
    /// assert!(request.namespaced_key().ends_with(":{k}"));
    /// # }
    /// ```
    pub fn namespaced_key(&self) -> String {
        format!("{}:{{{}}}", self.config.key_prefix, self.key)
    }
}

/// What a success outside the rate policy answers when it changes nothing, from the
/// breaker's state and live failure count as read atomically (no breaker stored: closed,
/// 0): closed with nothing counted under the consecutive policy, closed under the
/// count-in-window policy (a success never changes its count), forced closed. `None` when
/// the success may change something (a consecutive count to reset) or the answer needs more
/// than the read (an open breaker's deadline, a half-open round): the storage's full
/// operation decides.
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(crate) fn settled_success(config: &Config, state: State, failures: u64) -> Option<Snapshot> {
    match state {
        State::Closed => match config.policy {
            crate::FailurePolicy::Consecutive if failures == 0 => Some(Snapshot::closed(0)),
            crate::FailurePolicy::CountInWindow { .. } => Some(Snapshot::closed(failures)),
            _ => None,
        },
        State::ForcedClosed => Some(Snapshot::forced(State::ForcedClosed)),
        _ => None,
    }
}

/// A breaker operation.
///
/// ```
/// assert_ne!(circuitpy::Op::Success, circuitpy::Op::Failure);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Read the state; change nothing.
    Read,
    /// A call admitted while closed succeeded.
    Success,
    /// A call admitted while closed failed; trips the breaker when the policy says so.
    Failure,
    /// Ask for a trial permit: granted while half-open (or once the open period is over) to
    /// at most `half_open_trials` callers per round; a permit is a lease that lapses after
    /// the recovery timeout.
    AcquireTrial,
    /// A trial call succeeded; the last of the round's permitted trials closes the breaker.
    TrialSuccess,
    /// A trial call failed: open for another recovery timeout.
    TrialFailure,
    /// A trial call ended with an error that does not count: its permit is handed out
    /// again.
    ReleaseTrial,
    /// Reject every call until [`Op::Reset`].
    ForceOpen,
    /// Admit every call and record nothing until [`Op::Reset`].
    ForceClosed,
    /// Back to closed with every count cleared (runtime overrides stay).
    Reset,
    /// Stores [`Request::overrides`] with the breaker, replacing any before
    /// ([`Overrides::NONE`](crate::Overrides::NONE) clears them), for
    /// [`FORCED_TTL`](crate::FORCED_TTL): until then every operation on the breaker decides
    /// by the overridden threshold, recovery timeout and half-open trials.
    Override,
}

/// A breaker's state as a storage reports it after an operation.
///
/// ```
/// let closed = circuitpy::Snapshot::closed(0);
/// assert!(closed.permit);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The state after the operation.
    pub state: State,
    /// For [`Op::AcquireTrial`]: whether the caller got a trial permit (always true when the
    /// state is closed).
    pub permit: bool,
    /// While open: how long until a trial may be asked for, by the storage's clock.
    pub retry_in: Option<Duration>,
    /// While open: how long ago it opened, when the storage knows.
    pub open_since: Option<Duration>,
    /// While closed: the failure count (the failures in the window, for the rate policy).
    pub failures: u64,
    /// For a granted trial permit: the round it belongs to, to be sent back with its outcome
    /// ([`Request::round`]). Zero otherwise.
    pub round: u64,
}

impl Snapshot {
    /// Closed, with `failures` counted.
    ///
    /// ```
    /// assert_eq!(circuitpy::Snapshot::closed(3).failures, 3);
    /// ```
    pub fn closed(failures: u64) -> Self {
        Snapshot {
            state: State::Closed,
            permit: true,
            retry_in: None,
            open_since: None,
            failures,
            round: 0,
        }
    }

    /// Open for `retry_in` more, opened `open_since` ago if known.
    ///
    /// ```
    /// use std::time::Duration;
    /// let open = circuitpy::Snapshot::open(Duration::from_secs(1), None);
    /// assert!(!open.permit);
    /// ```
    pub fn open(retry_in: Duration, open_since: Option<Duration>) -> Self {
        Snapshot {
            state: State::Open,
            permit: false,
            retry_in: Some(retry_in),
            open_since,
            failures: 0,
            round: 0,
        }
    }

    /// Half-open; `permit` says whether this caller holds a trial permit.
    ///
    /// ```
    /// assert!(circuitpy::Snapshot::half_open(true).permit);
    /// ```
    pub fn half_open(permit: bool) -> Self {
        Snapshot {
            state: State::HalfOpen,
            permit,
            retry_in: None,
            open_since: None,
            failures: 0,
            round: 0,
        }
    }

    /// Half-open, with a trial permit of round `round` for this caller.
    ///
    /// ```
    /// let trial = circuitpy::Snapshot::trial(3);
    /// assert!(trial.permit && trial.round == 3);
    /// ```
    pub fn trial(round: u64) -> Self {
        Snapshot {
            round,
            ..Snapshot::half_open(true)
        }
    }

    /// Forced open or forced closed.
    ///
    /// ```
    /// let forced = circuitpy::Snapshot::forced(circuitpy::State::ForcedOpen);
    /// assert!(!forced.permit);
    /// ```
    pub fn forced(state: State) -> Self {
        Snapshot {
            state,
            permit: state == State::ForcedClosed,
            retry_in: None,
            open_since: None,
            failures: 0,
            round: 0,
        }
    }
}
