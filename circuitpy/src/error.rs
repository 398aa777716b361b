//! The errors a guarded call can see: a rejection ([`CircuitBreakerOpen`]) and a storage
//! failure ([`StorageError`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::{self, Nanos};
use crate::key::Key;

/// The breaker refused a call; the function's body did not run.
///
/// A guarded function returns `Err(E::from(CircuitBreakerOpen { .. }))`, so its error type
/// implements `From<CircuitBreakerOpen>` — by hand or with thiserror's `#[from]`.
///
/// ```
/// use circuitpy::{CircuitBreakerOpen, Rejection};
///
/// fn explain(error: &CircuitBreakerOpen) -> String {
///     match error.reason() {
///         Rejection::Open | Rejection::TrialsInProgress => format!("retry at {:?}", error.retry_at()),
///         Rejection::ForcedOpen => "switched off by an operator".to_owned(),
///         Rejection::StorageFailed(cause) => format!("state unavailable: {cause}"),
///         Rejection::OpenHere { .. } => "failing from this process only".to_owned(),
///         _ => error.to_string(),
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreakerOpen {
    pub(crate) key: Key,
    pub(crate) method: &'static str,
    /// Clock readings (see `clock.rs`), turned into wall-clock times only when asked for, so
    /// that a rejection reads no clock.
    pub(crate) opened_at: Option<Nanos>,
    pub(crate) retry_at: Option<Nanos>,
    pub(crate) reason: Rejection,
}

/// Why a call was rejected.
///
/// ```
/// use circuitpy::Rejection;
/// assert!(Rejection::Open.is_open());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// Too many failures: the breaker is open until its recovery timeout has passed.
    Open,
    /// Half-open, and every permitted trial call is already under way.
    TrialsInProgress,
    /// Forced open by [`Breaker::force_open`](crate::Breaker::force_open).
    ForcedOpen,
    /// The storage failed and the handler's policy is
    /// [`OnStorageFailure::Reject`](crate::OnStorageFailure::Reject).
    StorageFailed(Box<StorageError>),
    /// Open in this process only: its own failures would trip the breaker, but fewer than
    /// [`QUORUM`](crate::CircuitBreaker::QUORUM) processes reported failures, so the
    /// fleet's breaker stays closed for the others. This process runs its own trials
    /// (the rejection then says so, as for [`Rejection::TrialsInProgress`]).
    OpenHere {
        /// Whether this process's own trial calls are under way.
        trials_in_progress: bool,
    },
}

impl Rejection {
    /// True when the breaker itself is open (tripped, or half-open with no permit left, or
    /// forced), false when the rejection came from a storage failure.
    ///
    /// ```
    /// use circuitpy::Rejection;
    /// assert!(Rejection::ForcedOpen.is_open());
    /// ```
    pub fn is_open(&self) -> bool {
        !matches!(self, Rejection::StorageFailed(_))
    }

    /// The reason as a label for logs and metrics: `open`, `trials_in_progress`,
    /// `forced_open`, `storage_failed` or `open_here`.
    ///
    /// ```
    /// assert_eq!(circuitpy::Rejection::TrialsInProgress.name(), "trials_in_progress");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Rejection::Open => "open",
            Rejection::TrialsInProgress => "trials_in_progress",
            Rejection::ForcedOpen => "forced_open",
            Rejection::StorageFailed(_) => "storage_failed",
            Rejection::OpenHere { .. } => "open_here",
        }
    }
}

impl CircuitBreakerOpen {
    /// The key of the breaker that rejected the call.
    ///
    /// ```
    /// # fn f(e: circuitpy::CircuitBreakerOpen) { let _: &str = e.key(); }
    /// ```
    pub fn key(&self) -> &str {
        self.key.as_str()
    }

    /// The name of the guarded function.
    ///
    /// ```
    /// # fn f(e: circuitpy::CircuitBreakerOpen) { let _: &'static str = e.method(); }
    /// ```
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// When the breaker opened, if known.
    ///
    /// ```
    /// # fn f(e: circuitpy::CircuitBreakerOpen) { let _ = e.opened_at(); }
    /// ```
    pub fn opened_at(&self) -> Option<SystemTime> {
        self.opened_at.map(clock::wall)
    }

    /// When the breaker next admits a trial call, if known.
    ///
    /// ```
    /// # fn f(e: circuitpy::CircuitBreakerOpen) { let _ = e.retry_at(); }
    /// ```
    pub fn retry_at(&self) -> Option<SystemTime> {
        self.retry_at.map(clock::wall)
    }

    /// Why the call was rejected.
    ///
    /// ```
    /// # fn f(e: circuitpy::CircuitBreakerOpen) { let _ = e.reason().is_open(); }
    /// ```
    pub fn reason(&self) -> &Rejection {
        &self.reason
    }
}

impl fmt::Display for CircuitBreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Rejection::StorageFailed(cause) => {
                return write!(
                    f,
                    "circuit breaker rejected method \"{}\" (key \"{}\"): {cause}",
                    self.method,
                    self.key.as_str()
                );
            }
            Rejection::ForcedOpen => write!(
                f,
                "circuit breaker is forced open for method \"{}\" (key \"{}\")",
                self.method,
                self.key.as_str()
            )?,
            Rejection::Open | Rejection::TrialsInProgress => write!(
                f,
                "circuit breaker is open for method \"{}\" (key \"{}\")",
                self.method,
                self.key.as_str()
            )?,
            Rejection::OpenHere { .. } => write!(
                f,
                "circuit breaker is open in this process for method \"{}\" (key \"{}\"), short of a quorum for the fleet",
                self.method,
                self.key.as_str()
            )?,
        }
        if let Some(at) = self.opened_at() {
            write!(f, ", opened at {}", Rfc3339(at))?;
        }
        if matches!(
            self.reason,
            Rejection::TrialsInProgress
                | Rejection::OpenHere {
                    trials_in_progress: true
                }
        ) {
            f.write_str(", trial calls in progress")?;
        } else if let Some(at) = self.retry_at() {
            write!(f, ", next trial at {}", Rfc3339(at))?;
        }
        Ok(())
    }
}

impl std::error::Error for CircuitBreakerOpen {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            Rejection::StorageFailed(cause) => Some(&**cause),
            _ => None,
        }
    }
}

/// A storage could not answer. Goes through the handler's
/// [`ON_STORAGE_FAILURE`](crate::CircuitBreaker::ON_STORAGE_FAILURE) policy; never a panic.
///
/// ```
/// use circuitpy::StorageError;
/// let error = StorageError::invalid_data("app:{payments}:failures", "expected an integer, found \"abc\"");
/// assert!(error.to_string().contains("app:{payments}:failures"));
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The storage did not answer within the handler's storage timeout.
    #[error("storage timed out after {after:?} (key \"{key}\")")]
    Timeout {
        /// The key being read or written.
        key: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// A key held a value the breaker did not write.
    #[error("unexpected value in key \"{key}\": {detail}")]
    InvalidData {
        /// The key that held it.
        key: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The breaker key is unusable (empty, or too long for the storage).
    #[error("invalid breaker key \"{key}\": {detail}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it is unusable.
        detail: &'static str,
    },
    /// An operator's actor or reason for forcing a breaker is too long
    /// ([`MAX_AUDIT_BYTES`](crate::admin::MAX_AUDIT_BYTES)).
    #[error("{what} is {len} bytes long, at most {max} are kept", max = crate::admin::MAX_AUDIT_BYTES)]
    AuditTooLong {
        /// `"actor"` or `"reason"`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// An operator's override of a breaker's settings is out of the bounds the handler's
    /// consts have; nothing was applied.
    #[error("invalid override: {detail}")]
    InvalidOverride {
        /// Which setting, and its bounds.
        detail: &'static str,
    },
    /// The storage cannot do what was asked (e.g. keep runtime overrides), and says why.
    #[error("not supported by this storage (key \"{key}\"): {detail}")]
    Unsupported {
        /// The breaker's key.
        key: String,
        /// Why.
        detail: &'static str,
    },
    /// The storage's own client failed (connection refused, protocol error, ...).
    #[error("storage failed (key \"{key}\"): {source}")]
    Backend {
        /// The key being read or written.
        key: String,
        /// The client's error, with any password already removed from its text.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    /// A key held a value the breaker did not write.
    ///
    /// ```
    /// let e = circuitpy::StorageError::invalid_data("k", "not a number");
    /// assert_eq!(e.to_string(), "unexpected value in key \"k\": not a number");
    /// ```
    pub fn invalid_data(key: impl Into<String>, detail: impl Into<String>) -> Self {
        StorageError::InvalidData {
            key: key.into(),
            detail: detail.into(),
        }
    }

    /// The storage's client failed.
    ///
    /// ```
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// let e = circuitpy::StorageError::backend("k", io);
    /// assert!(e.to_string().contains("refused"));
    /// ```
    pub fn backend(
        key: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Backend {
            key: key.into(),
            source: Arc::new(source),
        }
    }

    /// The storage did not answer in time.
    ///
    /// ```
    /// let e = circuitpy::StorageError::timeout("k", std::time::Duration::from_millis(50));
    /// assert!(e.is_timeout());
    /// ```
    pub fn timeout(key: impl Into<String>, after: Duration) -> Self {
        StorageError::Timeout {
            key: key.into(),
            after,
        }
    }

    /// True for [`StorageError::Timeout`].
    ///
    /// ```
    /// assert!(!circuitpy::StorageError::invalid_data("k", "x").is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, StorageError::Timeout { .. })
    }

    /// The kind of failure as a label for logs and metrics: `timeout`, `invalid_data`,
    /// `invalid_key`, `audit_too_long` or `backend`.
    ///
    /// ```
    /// let e = circuitpy::StorageError::timeout("k", std::time::Duration::from_millis(50));
    /// assert_eq!(e.kind(), "timeout");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::Timeout { .. } => "timeout",
            StorageError::InvalidData { .. } => "invalid_data",
            StorageError::InvalidKey { .. } => "invalid_key",
            StorageError::AuditTooLong { .. } => "audit_too_long",
            StorageError::InvalidOverride { .. } => "invalid_override",
            StorageError::Unsupported { .. } => "unsupported",
            StorageError::Backend { .. } => "backend",
        }
    }
}

/// Formats a `SystemTime` as RFC 3339 in UTC with millisecond precision. RFC 3339 has
/// four-digit years, so times outside years 0000 to 9999 show as the nearest end of that
/// range.
pub(crate) struct Rfc3339(pub(crate) SystemTime);

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, in milliseconds since the epoch.
const EARLIEST_MS: i128 = -62_167_219_200_000;
const LATEST_MS: i128 = 253_402_300_799_999;

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos: i128 = match self.0.duration_since(UNIX_EPOCH) {
            Ok(since) => since.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        let millis = nanos.div_euclid(1_000_000).clamp(EARLIEST_MS, LATEST_MS);
        let secs = millis.div_euclid(1000) as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            millis.rem_euclid(1000)
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |secs: u64, millis: u64| {
            Rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
                .to_string()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_651_199, 999), "2026-11-25T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_keeps_four_digit_years_and_times_before_1970() {
        let before = |secs: u64, millis: u64| {
            Rfc3339(UNIX_EPOCH - Duration::from_secs(secs) - Duration::from_millis(millis))
                .to_string()
        };
        assert_eq!(before(1, 0), "1969-12-31T23:59:59.000Z");
        assert_eq!(before(0, 1), "1969-12-31T23:59:59.999Z");
        assert_eq!(before(86_400 * 365, 0), "1969-01-01T00:00:00.000Z");
        let far = Rfc3339(UNIX_EPOCH + Duration::from_secs(400_000_000_000)).to_string();
        assert_eq!(far, "9999-12-31T23:59:59.999Z");
        assert_eq!(far.len(), "2026-11-25T23:59:59.999Z".len());
    }
}
