//! Operating a fleet's breakers: list what a storage holds under a key prefix, inspect one
//! breaker in full, and force or reset it with an audit trail (who, why, when) stored with
//! the breaker.
//!
//! [`Admin`] is implemented by the storages that can enumerate what they hold:
//! `redis::Client` (a `SCAN` over the prefix, never `KEYS`, then one read-only script per
//! breaker, pipelined), [`PostgresStorage`](crate::PostgresStorage) and
//! [`SqliteStorage`](crate::SqliteStorage) (a query over the table), and
//! [`MemoryStorage`](crate::MemoryStorage) (this process's breakers on it). A storage built
//! on the three primitives only does not implement it: its keys do not say which breaker
//! they belong to.
//!
//! Every storage's state is decoded by one function into a [`BreakerInfo`]: Redis hashes
//! and SQL rows are both read as the rules' row (`rules/row.rs`), times converted from
//! milliseconds (Redis) or microseconds (SQL) on the storage's own clock.
//!
//! ```
//! use circuitpy::admin::{Action, Admin};
//! use circuitpy::{Audit, Breaker, CircuitBreaker, MemoryStorage, State};
//! use std::sync::LazyLock;
//! use std::time::Duration;
//!
//! static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
//! struct Search;
//! impl CircuitBreaker for Search {
//!     const FAILURE_THRESHOLD: u32 = 3;
//!     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
//!     const FAILURE_KEY: &'static str = "search";
//!     type Storage = MemoryStorage;
//!     fn storage(&self) -> &MemoryStorage { &STORAGE }
//! }
//!
//! Breaker::new(Search).state().unwrap();
//! let audit = Audit::by("alice").because("index rebuild");
//! STORAGE.act("circuitpy", "search", Action::ForceOpen, audit).unwrap();
//! let info = STORAGE.inspect("circuitpy", "search").unwrap().unwrap();
//! assert_eq!(info.state, State::ForcedOpen);
//! assert_eq!(info.forced.unwrap().by.as_deref(), Some("alice"));
//! assert_eq!(STORAGE.list("circuitpy").unwrap().breakers.len(), 1);
//! ```

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::error::StorageError;
use crate::handler::State;
use crate::storage::Op;

// Only the shared storages decode rows and hashes and carry requests of their own.
#[cfg_attr(
    not(any(feature = "redis", feature = "postgres", feature = "sqlite", test)),
    allow(dead_code, unused_imports)
)]
mod decode;
mod memory;

#[allow(unused_imports)]
pub(crate) use decode::*;

/// The longest actor or reason kept with a forced breaker, in bytes.
///
/// ```
/// assert_eq!(circuitpy::admin::MAX_AUDIT_BYTES, 256);
/// ```
pub const MAX_AUDIT_BYTES: usize = 256;

/// `time` as RFC 3339 in UTC with milliseconds (`2026-11-26T10:00:00.000Z`), as breaker
/// errors print times.
///
/// ```
/// let epoch = std::time::UNIX_EPOCH;
/// assert_eq!(circuitpy::admin::rfc3339(epoch).to_string(), "1970-01-01T00:00:00.000Z");
/// ```
pub fn rfc3339(time: SystemTime) -> impl std::fmt::Display {
    crate::error::Rfc3339(time)
}

/// Who forces a breaker and why: free text, each at most [`MAX_AUDIT_BYTES`], stored with
/// the breaker together with the time (on the storage's clock).
///
/// ```
/// let audit = circuitpy::Audit::by("alice").because("payments provider outage");
/// assert_eq!(audit.actor, Some("alice"));
/// assert!(audit.check().is_ok());
/// assert!(circuitpy::Audit::by(&"x".repeat(300)).check().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Audit<'a> {
    /// Who (a user name, a tool, ...).
    pub actor: Option<&'a str>,
    /// Why.
    pub reason: Option<&'a str>,
}

impl<'a> Audit<'a> {
    /// No actor, no reason: forcing still records when.
    pub const NONE: Audit<'static> = Audit {
        actor: None,
        reason: None,
    };

    /// Forced by `actor`.
    ///
    /// ```
    /// assert_eq!(circuitpy::Audit::by("ops").reason, None);
    /// ```
    pub fn by(actor: &'a str) -> Self {
        Audit {
            actor: Some(actor),
            reason: None,
        }
    }

    /// With the reason `reason`.
    ///
    /// ```
    /// let audit = circuitpy::Audit::NONE.because("drill");
    /// assert_eq!(audit.reason, Some("drill"));
    /// ```
    pub fn because(self, reason: &'a str) -> Self {
        Audit {
            reason: Some(reason),
            ..self
        }
    }

    /// Fails with [`StorageError::AuditTooLong`] when the actor or the reason is longer than
    /// [`MAX_AUDIT_BYTES`].
    ///
    /// ```
    /// assert!(circuitpy::Audit::by("ops").check().is_ok());
    /// ```
    pub fn check(&self) -> Result<(), StorageError> {
        for (what, text) in [("actor", self.actor), ("reason", self.reason)] {
            if let Some(text) = text
                && text.len() > MAX_AUDIT_BYTES
            {
                return Err(StorageError::AuditTooLong {
                    what,
                    len: text.len(),
                });
            }
        }
        Ok(())
    }
}

/// What an operator does to a breaker.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Reject every call until a reset (see [`Op::ForceOpen`]).
    ForceOpen,
    /// Admit every call and record nothing until a reset (see [`Op::ForceClosed`]).
    ForceClosed,
    /// Back to closed with every count and the audit trail cleared (runtime overrides
    /// stay).
    Reset,
    /// Stores runtime overrides with the breaker ([`Overrides::NONE`](crate::Overrides::NONE)
    /// clears them; see [`Op::Override`]).
    Override(crate::Overrides),
}

impl Action {
    pub(crate) fn op(self) -> Op {
        match self {
            Action::ForceOpen => Op::ForceOpen,
            Action::ForceClosed => Op::ForceClosed,
            Action::Reset => Op::Reset,
            Action::Override(_) => Op::Override,
        }
    }

    /// Refuses overrides out of their consts' bounds.
    pub(crate) fn check(self) -> Result<(), StorageError> {
        match self {
            Action::Override(overrides) => overrides.check(),
            _ => Ok(()),
        }
    }

    /// Checks what an operator asked of `key` (the key, the audit trail, any overrides) and
    /// gives the configuration its request is made with.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(crate) fn checked(
        self,
        prefix: &str,
        key: &str,
        audit: Audit<'_>,
    ) -> Result<crate::Config, StorageError> {
        check_key(prefix, key)?;
        audit.check()?;
        self.check()?;
        Ok(config(prefix))
    }

    /// The storage request that carries out this action on `key`.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(crate) fn request<'a>(
        self,
        key: &'a str,
        config: &'a crate::Config,
        audit: Audit<'a>,
    ) -> crate::Request<'a> {
        let request = crate::Request::new(key, self.op(), config).with_audit(audit);
        match self {
            Action::Override(overrides) => request.with_overrides(overrides),
            _ => request,
        }
    }
}

/// The rate policy's window, as of the breaker's most recent call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateWindow {
    /// Calls in the ten buckets up to the most recent one.
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
}

/// A forced breaker's audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Forced {
    /// When it was forced, on the storage's clock (`None` for a breaker forced before the
    /// storage kept the time).
    pub at: Option<SystemTime>,
    /// By whom, if the forcing said.
    pub by: Option<String>,
    /// Why, if the forcing said.
    pub reason: Option<String>,
}

/// One breaker as its storage holds it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerInfo {
    /// The breaker's key: the handler's, then `:` and the per-call key if any.
    pub key: String,
    /// Its state now.
    pub state: State,
    /// While closed: failures counted (under the rate policy, the failures in the window).
    pub failures: u64,
    /// Under the rate policy, while closed: the window's calls and failures.
    pub window: Option<RateWindow>,
    /// While open or half-open: when it last opened.
    pub opened_at: Option<SystemTime>,
    /// While open: when a trial may be asked for.
    pub next_trial_at: Option<SystemTime>,
    /// While half-open: the current round's id, if a round is under way.
    pub round: Option<u64>,
    /// While half-open: trial permits handed out this round.
    pub permits_out: u64,
    /// While half-open: trials of this round that succeeded.
    pub trials_passed: u64,
    /// While open or half-open: trial rounds that failed in a row since it last closed,
    /// the step of its [`Backoff`](crate::Backoff).
    pub failed_rounds: u64,
    /// Under a [`QUORUM`](crate::CircuitBreaker::QUORUM), while closed: how many distinct
    /// processes reported the failures counted (up to the quorum; the breaker trips only
    /// once it is reached).
    pub reporters: u64,
    /// While forced: who forced it, why and when.
    pub forced: Option<Forced>,
    /// An operator's runtime overrides in force, if any.
    pub overrides: Option<crate::Overrides>,
    /// How long until the storage forgets the breaker (it then reads closed), if it
    /// expires.
    pub expires_in: Option<Duration>,
    /// The storage's clock when it answered.
    pub now: SystemTime,
}

/// What [`Admin::list`] found under a prefix.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Listing {
    /// The breakers, sorted by key.
    pub breakers: Vec<BreakerInfo>,
    /// Keys under the prefix that hold something that is not a breaker
    /// ([`StorageError::InvalidData`], naming the key).
    pub invalid: Vec<StorageError>,
}

/// Listing, inspecting and steering the breakers a storage holds. Blocking.
///
/// `prefix` is the handlers' [`KEY_PREFIX`](crate::CircuitBreaker::KEY_PREFIX)
/// (`"circuitpy"` by default), `key` a breaker's key as [`BreakerInfo::key`] gives it.
pub trait Admin {
    /// Every breaker under `prefix` that holds state. A breaker with nothing stored (closed,
    /// nothing counted) leaves no trace and is not listed.
    fn list(&self, prefix: &str) -> Result<Listing, StorageError>;

    /// One breaker in full; `None` when nothing is stored for it (it reads closed).
    fn inspect(&self, prefix: &str, key: &str) -> Result<Option<BreakerInfo>, StorageError>;

    /// Forces or resets the breaker, storing `audit` with it (a reset clears it), and
    /// returns it as it is afterwards (`None` after a reset).
    fn act(
        &self,
        prefix: &str,
        key: &str,
        action: Action,
        audit: Audit<'_>,
    ) -> Result<Option<BreakerInfo>, StorageError>;
}

/// [`Admin`] without blocking, for async code: implemented by
/// [`AsyncPostgresStorage`](crate::AsyncPostgresStorage). (For Redis, call the blocking
/// [`Admin`] of `redis::Client` on a blocking thread.)
pub trait AsyncAdmin {
    /// See [`Admin::list`].
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Listing, StorageError>> + Send;

    /// See [`Admin::inspect`].
    fn inspect(
        &self,
        prefix: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<BreakerInfo>, StorageError>> + Send;

    /// See [`Admin::act`].
    fn act(
        &self,
        prefix: &str,
        key: &str,
        action: Action,
        audit: Audit<'_>,
    ) -> impl Future<Output = Result<Option<BreakerInfo>, StorageError>> + Send;
}

/// Checks what an operator typed as a breaker key and a prefix: no braces (they would
/// escape the hash tag), not empty, not too long.
pub(crate) fn check_key(prefix: &str, key: &str) -> Result<(), StorageError> {
    let bad = |key: &str, detail| {
        Err(StorageError::InvalidKey {
            key: key.chars().take(64).collect(),
            detail,
        })
    };
    for text in [prefix, key] {
        if text.is_empty() {
            return bad(text, "a breaker key and a prefix are not empty");
        }
        if text.len() > crate::policy::MAX_KEY_BYTES {
            return bad(text, "a breaker key and a prefix are at most 512 bytes");
        }
        if text.contains(['{', '}']) {
            return bad(text, "a breaker key and a prefix contain no `{` or `}`");
        }
    }
    Ok(())
}

/// [`Admin::act`] for a blocking storage that runs the rules itself: checks the action,
/// carries it out with one `execute`, and reads the breaker back.
#[cfg(any(feature = "redis", feature = "sqlite"))]
pub(crate) fn act_by_executing<S: crate::Storage + Admin>(
    storage: &S,
    prefix: &str,
    key: &str,
    action: Action,
    audit: Audit<'_>,
) -> Result<Option<BreakerInfo>, StorageError> {
    let config = action.checked(prefix, key, audit)?;
    crate::Storage::execute(storage, &action.request(key, &config, audit))?;
    storage.inspect(prefix, key)
}

/// `text` without `secret` (a password) and without the user information of any URL in it
/// (`scheme://user:pass@host` becomes `scheme://***@host`): for messages that name a
/// storage's URL or carry a server's own error text.
///
/// ```
/// let text = "WRONGPASS s3cret for redis://ops:s3cret@cache:6379";
/// assert_eq!(
///     circuitpy::admin::redact(text, Some("s3cret")),
///     "WRONGPASS *** for redis://***@cache:6379"
/// );
/// ```
pub fn redact(text: &str, secret: Option<&str>) -> String {
    let mut text = text.to_owned();
    if let Some(secret) = secret.filter(|secret| !secret.is_empty()) {
        text = text.replace(secret, "***");
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                rest = &tail[user_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}
