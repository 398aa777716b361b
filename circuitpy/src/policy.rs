//! How failures are counted, what a storage failure does, and the validated configuration a
//! handler's consts add up to.

use std::time::Duration;

use crate::handler::CircuitBreaker;

/// How failures are counted while the breaker is closed.
///
/// ```
/// use circuitpy::FailurePolicy;
/// use std::time::Duration;
///
/// // Trip when at least half of the calls of the last 30 s failed, once 20 calls were seen.
/// const POLICY: FailurePolicy = FailurePolicy::Rate {
///     rate: 0.5,
///     window: Duration::from_secs(30),
///     minimum_calls: 20,
/// };
/// # let _ = POLICY;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FailurePolicy {
    /// Trip after `FAILURE_THRESHOLD` failures in a row; a success resets the count.
    Consecutive,
    /// Trip after `FAILURE_THRESHOLD` failures with no gap longer than `window` between them:
    /// each failure renews the count's expiry, as the original circuitpy counted.
    CountInWindow {
        /// How long the count survives without a new failure.
        window: Duration,
    },
    /// Trip when, over the last `window`, at least `minimum_calls` calls were made and the
    /// share of them that failed is at least `rate`.
    Rate {
        /// The failure share that trips, in `(0, 1]`.
        rate: f64,
        /// The sliding window the share is measured over (ten buckets).
        window: Duration,
        /// Calls the window must hold before the share is judged.
        minimum_calls: u32,
    },
}

impl FailurePolicy {
    /// The policy as plain values for a server-side implementation: a code (0 consecutive,
    /// 1 count in window, 2 rate), the window, the rate and the minimum calls (zero where the
    /// policy has none).
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn flatten(self) -> (i32, Duration, f64, u32) {
        match self {
            FailurePolicy::Consecutive => (0, Duration::ZERO, 0.0, 0),
            FailurePolicy::CountInWindow { window } => (1, window, 0.0, 0),
            FailurePolicy::Rate {
                rate,
                window,
                minimum_calls,
            } => (2, window, rate, minimum_calls),
        }
    }
}

/// What a call does when the breaker's storage fails or times out.
///
/// ```
/// use circuitpy::OnStorageFailure;
/// assert_eq!(OnStorageFailure::default(), OnStorageFailure::Allow);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnStorageFailure {
    /// Run the call as if the breaker were closed (fail open), after calling
    /// [`on_storage_error`](crate::CircuitBreaker::on_storage_error).
    #[default]
    Allow,
    /// Reject the call with a [`CircuitBreakerOpen`](crate::CircuitBreakerOpen) whose reason
    /// carries the storage error (fail closed).
    Reject,
}

/// A handler's consts, validated. Storages receive it with every request.
///
/// ```
/// use circuitpy::{CircuitBreaker, Config, MemoryStorage};
/// use std::time::Duration;
/// # struct Api;
/// # impl CircuitBreaker for Api {
/// #   const FAILURE_THRESHOLD: u32 = 5;
/// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
/// #   const FAILURE_KEY: &'static str = "api";
/// #   type Storage = MemoryStorage;
/// #   fn storage(&self) -> &MemoryStorage { unimplemented!() }
/// # }
/// const CONFIG: Config = Config::of::<Api>();
/// assert_eq!(CONFIG.failure_threshold, 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// [`CircuitBreaker::FAILURE_THRESHOLD`].
    pub failure_threshold: u32,
    /// [`CircuitBreaker::RECOVERY_TIMEOUT`].
    pub recovery_timeout: Duration,
    /// [`CircuitBreaker::FAILURE_KEY`].
    pub key: &'static str,
    /// [`CircuitBreaker::HALF_OPEN_TRIALS`].
    pub half_open_trials: u32,
    /// [`CircuitBreaker::FAILURE_POLICY`].
    pub policy: FailurePolicy,
    /// [`CircuitBreaker::SLOW_CALL_THRESHOLD`].
    pub slow_call_threshold: Option<Duration>,
    /// [`CircuitBreaker::ON_STORAGE_FAILURE`].
    pub on_storage_failure: OnStorageFailure,
    /// [`CircuitBreaker::STORAGE_TIMEOUT`].
    pub storage_timeout: Duration,
    /// [`CircuitBreaker::KEY_PREFIX`].
    pub key_prefix: &'static str,
    /// [`CircuitBreaker::SYNC_INTERVAL`].
    pub sync_interval: Option<Duration>,
    /// [`CircuitBreaker::RECOVERY_BACKOFF`].
    pub backoff: Backoff,
    /// [`CircuitBreaker::RECOVERY_JITTER`].
    pub recovery_jitter: f64,
    /// [`CircuitBreaker::QUORUM`].
    pub quorum: u32,
}

/// The largest [`CircuitBreaker::QUORUM`]: a shared breaker remembers at most this many
/// distinct reporters.
///
/// ```
/// assert_eq!(circuitpy::MAX_QUORUM, 16);
/// ```
pub const MAX_QUORUM: u32 = 16;

/// An operator's runtime change to one breaker's settings, stored with the breaker in its
/// storage: every process that shares the breaker decides by it (on a shared storage the
/// server applies it in the same single command), until it is cleared or expires
/// ([`FORCED_TTL`](crate::FORCED_TTL) after it was set). Unset fields keep the handler's
/// consts. Each value has the bounds of its const; a value out of them is refused with
/// [`StorageError::InvalidOverride`](crate::StorageError::InvalidOverride), never applied.
///
/// ```
/// use circuitpy::Overrides;
/// use std::time::Duration;
/// let overrides = Overrides::NONE.failure_threshold(10).recovery_timeout(Duration::from_secs(30));
/// assert!(overrides.check().is_ok());
/// assert!(Overrides::NONE.failure_threshold(0).check().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Overrides {
    /// In place of [`CircuitBreaker::FAILURE_THRESHOLD`].
    pub failure_threshold: Option<u32>,
    /// In place of [`CircuitBreaker::RECOVERY_TIMEOUT`] (whole milliseconds on the shared
    /// storages).
    pub recovery_timeout: Option<Duration>,
    /// In place of [`CircuitBreaker::HALF_OPEN_TRIALS`].
    pub half_open_trials: Option<u32>,
    /// In place of [`CircuitBreaker::RECOVERY_BACKOFF`] (its max in whole milliseconds on
    /// the shared storages; a max below the recovery timeout in force is taken as it).
    pub backoff: Option<Backoff>,
}

impl Overrides {
    /// Nothing overridden: setting it clears a breaker's overrides.
    pub const NONE: Overrides = Overrides {
        failure_threshold: None,
        recovery_timeout: None,
        half_open_trials: None,
        backoff: None,
    };

    /// With the threshold overridden.
    pub const fn failure_threshold(mut self, threshold: u32) -> Self {
        self.failure_threshold = Some(threshold);
        self
    }

    /// With the recovery timeout overridden.
    pub const fn recovery_timeout(mut self, timeout: Duration) -> Self {
        self.recovery_timeout = Some(timeout);
        self
    }

    /// With the half-open trials overridden.
    pub const fn half_open_trials(mut self, trials: u32) -> Self {
        self.half_open_trials = Some(trials);
        self
    }

    /// With the backoff overridden ([`Backoff::OFF`] turns the handler's off).
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Whether nothing is overridden.
    pub const fn is_none(&self) -> bool {
        self.failure_threshold.is_none()
            && self.recovery_timeout.is_none()
            && self.half_open_trials.is_none()
            && self.backoff.is_none()
    }

    /// Checks each value against its const's bounds.
    pub fn check(&self) -> Result<(), crate::StorageError> {
        let bad = |detail| Err(crate::StorageError::InvalidOverride { detail });
        if self.failure_threshold == Some(0) {
            return bad("threshold must be at least 1");
        }
        if let Some(timeout) = self.recovery_timeout
            && (timeout.as_millis() == 0 || !in_range(timeout))
        {
            return bad("recovery timeout must be at least 1 ms and at most a year");
        }
        if let Some(trials) = self.half_open_trials
            && (trials == 0 || trials > MAX_HALF_OPEN_TRIALS)
        {
            return bad("half-open trials must be between 1 and 65535");
        }
        if let Some(backoff) = self.backoff
            && !backoff.is_off()
        {
            // Written so that NaN fails too.
            if !(backoff.factor > 1.0 && backoff.factor <= 16.0) {
                return bad("a backoff's factor must be above 1 and at most 16");
            }
            if backoff.max.as_millis() == 0 || !in_range(backoff.max) {
                return bad("a backoff's max must be at least 1 ms and at most a year");
            }
        }
        Ok(())
    }

    /// `config` with these values in place of its own.
    pub fn applied_to(&self, config: &Config) -> Config {
        let mut config = *config;
        if let Some(threshold) = self.failure_threshold {
            config.failure_threshold = threshold;
        }
        if let Some(timeout) = self.recovery_timeout {
            config.recovery_timeout = timeout;
        }
        if let Some(trials) = self.half_open_trials {
            config.half_open_trials = trials;
        }
        if let Some(backoff) = self.backoff {
            config.backoff = backoff;
        }
        config
    }
}

/// How the open time grows while a dependency stays down: each half-open round whose trial
/// fails multiplies the next open time by `factor`, up to `max`; the breaker closing starts
/// again from [`RECOVERY_TIMEOUT`](CircuitBreaker::RECOVERY_TIMEOUT). Off by default.
///
/// Open times are whole milliseconds, each step rounded down, so that every storage (and
/// every process of a fleet) computes the same deadline.
///
/// ```
/// use circuitpy::Backoff;
/// use std::time::Duration;
/// // 1 s, 2 s, 4 s, ... and never more than a minute.
/// const BACKOFF: Backoff = Backoff::exponential(2.0, Duration::from_secs(60));
/// assert!(!BACKOFF.is_off());
/// assert!(Backoff::OFF.is_off());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// What each failed trial round multiplies the open time by: above 1, at most 16, and
    /// large enough to reach `max` from the recovery timeout within 31 rounds.
    pub factor: f64,
    /// The longest open time: at least the recovery timeout, at most [`MAX_DURATION`].
    pub max: Duration,
}

impl Backoff {
    /// Every failed trial round reopens for the recovery timeout.
    pub const OFF: Backoff = Backoff {
        factor: 1.0,
        max: Duration::ZERO,
    };

    /// Multiplies the open time by `factor` per failed trial round, up to `max`.
    pub const fn exponential(factor: f64, max: Duration) -> Backoff {
        Backoff { factor, max }
    }

    /// Whether the open time stays the recovery timeout.
    pub const fn is_off(&self) -> bool {
        self.factor == 1.0 && self.max.is_zero()
    }
}

/// The most trial calls a half-open breaker can admit at once.
///
/// ```
/// assert_eq!(circuitpy::MAX_HALF_OPEN_TRIALS, 65_535);
/// ```
pub const MAX_HALF_OPEN_TRIALS: u32 = u16::MAX as u32;

/// The longest recovery timeout, failure window, storage timeout, sync interval or slow-call
/// threshold a handler may set: a year. Longer ones would overflow the clocks the storages
/// keep deadlines on.
///
/// ```
/// assert_eq!(circuitpy::MAX_DURATION.as_secs(), 365 * 24 * 3600);
/// ```
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest handler key, prefix or per-call key, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 512;

/// Whether `key` holds one of `forbidden`, byte by byte (a `const fn` cannot use `contains`).
const fn holds_any(key: &str, forbidden: &[u8]) -> bool {
    let bytes = key.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let mut j = 0;
        while j < forbidden.len() {
            if bytes[i] == forbidden[j] {
                return true;
            }
            j += 1;
        }
        i += 1;
    }
    false
}

/// Whether `duration` is longer than zero and at most [`MAX_DURATION`].
const fn in_range(duration: Duration) -> bool {
    !duration.is_zero() && duration.as_secs() <= MAX_DURATION.as_secs()
}

impl Config {
    /// The configuration of handler `H`. Evaluated at compile time wherever the handler is
    /// used, so an invalid const fails the build with the message below.
    ///
    /// ```compile_fail
    /// use circuitpy::{CircuitBreaker, Config, MemoryStorage};
    /// use std::time::Duration;
    /// struct Broken;
    /// impl CircuitBreaker for Broken {
    ///     const FAILURE_THRESHOLD: u32 = 0; // rejected: must be at least 1
    ///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    ///     const FAILURE_KEY: &'static str = "broken";
    ///     type Storage = MemoryStorage;
    ///     fn storage(&self) -> &MemoryStorage { unimplemented!() }
    /// }
    /// const CONFIG: Config = Config::of::<Broken>();
    /// ```
    pub const fn of<H: CircuitBreaker>() -> Config {
        let config = Config {
            failure_threshold: H::FAILURE_THRESHOLD,
            recovery_timeout: H::RECOVERY_TIMEOUT,
            key: H::FAILURE_KEY,
            half_open_trials: H::HALF_OPEN_TRIALS,
            policy: H::FAILURE_POLICY,
            slow_call_threshold: H::SLOW_CALL_THRESHOLD,
            on_storage_failure: H::ON_STORAGE_FAILURE,
            storage_timeout: H::STORAGE_TIMEOUT,
            key_prefix: H::KEY_PREFIX,
            sync_interval: H::SYNC_INTERVAL,
            backoff: H::RECOVERY_BACKOFF,
            recovery_jitter: H::RECOVERY_JITTER,
            quorum: H::QUORUM,
        };
        match config.check() {
            Ok(()) => config,
            Err(message) => panic!("{}", message),
        }
    }

    /// Whether the rate policy's buckets are wide enough (100 ms or more) for a success to
    /// be placed in its bucket by the coarse clock, a few milliseconds behind at most,
    /// instead of a system-clock read on every call.
    pub(crate) const fn coarse_successes(&self) -> bool {
        match self.policy {
            FailurePolicy::Rate { window, .. } => {
                window.as_nanos() / crate::rules::BUCKETS as u128 >= 100_000_000
            }
            _ => false,
        }
    }

    /// Checks every value; the message names the const at fault.
    ///
    /// ```
    /// # use circuitpy::{CircuitBreaker, Config, MemoryStorage};
    /// # use std::time::Duration;
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { unimplemented!() }
    /// # }
    /// assert!(Config::of::<Api>().check().is_ok());
    /// ```
    pub const fn check(&self) -> Result<(), &'static str> {
        if self.failure_threshold == 0 {
            return Err("circuitpy: FAILURE_THRESHOLD must be at least 1");
        }
        if !in_range(self.recovery_timeout) {
            return Err("circuitpy: RECOVERY_TIMEOUT must be longer than zero and at most a year");
        }
        if self.key.is_empty() || self.key.len() > MAX_KEY_BYTES {
            return Err("circuitpy: FAILURE_KEY must be 1 to 512 bytes long");
        }
        // `:` separates the handler's key from a per-call key, so `api` with the per-call
        // key `eu` and a handler keyed `api:eu` would share one breaker; the braces make
        // the Redis Cluster hash tag.
        if holds_any(self.key, b":{}") {
            return Err("circuitpy: FAILURE_KEY must not contain `:`, `{` or `}`");
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > MAX_KEY_BYTES {
            return Err("circuitpy: KEY_PREFIX must be 1 to 512 bytes long");
        }
        if holds_any(self.key_prefix, b"{}") {
            return Err("circuitpy: KEY_PREFIX must not contain `{` or `}`");
        }
        if self.half_open_trials == 0 || self.half_open_trials > MAX_HALF_OPEN_TRIALS {
            return Err("circuitpy: HALF_OPEN_TRIALS must be between 1 and 65535");
        }
        if !in_range(self.storage_timeout) {
            return Err("circuitpy: STORAGE_TIMEOUT must be longer than zero and at most a year");
        }
        if let Some(slow) = self.slow_call_threshold
            && !in_range(slow)
        {
            return Err(
                "circuitpy: SLOW_CALL_THRESHOLD must be longer than zero and at most a year",
            );
        }
        if let Some(interval) = self.sync_interval
            && !in_range(interval)
        {
            return Err("circuitpy: SYNC_INTERVAL must be longer than zero and at most a year");
        }
        // Written so that NaN fails too.
        if !(self.recovery_jitter >= 0.0 && self.recovery_jitter <= 0.5) {
            return Err("circuitpy: RECOVERY_JITTER must be between 0 and 0.5");
        }
        if self.quorum == 0 || self.quorum > MAX_QUORUM {
            return Err("circuitpy: QUORUM must be between 1 and 16");
        }
        if !self.backoff.is_off() {
            // Written so that NaN fails too.
            if !(self.backoff.factor > 1.0 && self.backoff.factor <= 16.0) {
                return Err("circuitpy: RECOVERY_BACKOFF needs a factor above 1 and at most 16");
            }
            if !in_range(self.backoff.max)
                || self.backoff.max.as_millis() < self.recovery_timeout.as_millis()
            {
                return Err(
                    "circuitpy: RECOVERY_BACKOFF needs a max of at least RECOVERY_TIMEOUT and at most a year",
                );
            }
            // The steps `rules::open_time` takes, in a `const fn`.
            let max = self.backoff.max.as_millis() as u64;
            let mut open = self.recovery_timeout.as_millis() as u64;
            let mut steps = 0;
            while open < max && steps < crate::rules::MAX_REOPENS {
                open = (open as f64 * self.backoff.factor) as u64;
                steps += 1;
            }
            if open < max {
                return Err(
                    "circuitpy: RECOVERY_BACKOFF must reach its max within 31 failed rounds: raise the factor or lower the max",
                );
            }
        }
        match self.policy {
            FailurePolicy::Consecutive => {}
            FailurePolicy::CountInWindow { window } => {
                if !in_range(window) {
                    return Err(
                        "circuitpy: FailurePolicy::CountInWindow needs a window longer than zero and at most a year",
                    );
                }
            }
            FailurePolicy::Rate {
                rate,
                window,
                minimum_calls,
            } => {
                // Written so that NaN fails too.
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err("circuitpy: FailurePolicy::Rate needs a rate in (0, 1]");
                }
                if !in_range(window) {
                    return Err(
                        "circuitpy: FailurePolicy::Rate needs a window longer than zero and at most a year",
                    );
                }
                if minimum_calls == 0 {
                    return Err("circuitpy: FailurePolicy::Rate needs minimum_calls of at least 1");
                }
            }
        }
        Ok(())
    }
}
