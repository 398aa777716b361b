//! The conformance kit: one call from a storage author's own test checks a storage against
//! the rules every circuitpy storage keeps.
//!
//! ```
//! use circuitpy::testing::{Options, check_storage};
//! use circuitpy::{ManualClock, MemoryStorage};
//!
//! let manual = ManualClock::new();
//! let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::with_clock(manual.clock())));
//! let report = check_storage(storage, Options::with_clock(manual)).expect("conforms");
//! assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
//! ```
//!
//! The kit checks, in order:
//! - the three primitives: `increment` counts from 1, creates a key with its expiry in the
//!   same step and keeps the expiry of an existing key; `get_count` of an absent key is 0;
//!   `expire_after` renews or shortens an expiry, deletes with a zero ttl and creates
//!   nothing; increments from many threads lose nothing;
//! - [`Storage::execute`] directly: concurrent failures trip the breaker exactly once and
//!   late failures do not push the open period forward; the open period ends after one
//!   recovery timeout; concurrent trial requests get exactly `HALF_OPEN_TRIALS` permits;
//! - whole breakers ([`Breaker`](crate::Breaker)) on the storage: thresholds of the three
//!   [`FailurePolicy`](crate::FailurePolicy)s, rejection while open, half-open trials (exactly K under
//!   concurrency, all must succeed, any failure reopens), unreported trials giving their
//!   permit back or letting their lease lapse, forced states, reset;
//! - counts and rounds: a success reporting many held-back calls counts them all; forcing
//!   from several callers at once ends in one forced mode; a trial whose error does not
//!   count gives its permit back at once; outcomes of a round whose leases lapsed change
//!   nothing;
//! - with a manual clock only, expiries measured in days: a dependency down for more than
//!   a day keeps the breaker open (a failed trial renews the trip), and a failure count
//!   lives a retention period from the last failure, not the first.
//!
//! Time: with [`Options::with_clock`] (a [`MemoryStorage`](crate::MemoryStorage) built on the
//! same [`ManualClock`]) the kit moves the clock and never sleeps. A storage on a real clock
//! (a database's) is checked with short real timeouts: the recovery timeout of the kit's
//! breakers is [`RECOVERY`] and a whole run sleeps about four seconds.
//!
//! Every key the kit writes starts with a random prefix, so runs never see each other's
//! state, even on a shared server; keys are left to expire.

use std::time::Duration;

use crate::clock::ManualClock;
use crate::storage::backend::ready;
use crate::storage::{AsyncStorage, Storage};

mod checks;
mod kit;
pub mod processes;
mod reference;

pub use reference::Reference;

/// The recovery timeout of the kit's breakers, and the ttl of its short-lived keys.
pub const RECOVERY: Duration = Duration::from_millis(250);

/// A ttl long enough never to run out during a run.
pub(crate) const LONG: Duration = Duration::from_secs(600);

/// How long a body waiting for its concurrent peers waits before giving up.
pub(crate) const LATCH_TIMEOUT: Duration = Duration::from_secs(20);

/// How a run is set up.
///
/// ```
/// let options = circuitpy::testing::Options { threads: 4, ..Default::default() };
/// assert!(options.clock.is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// The manual clock the storage reads, if it reads one: the kit advances it instead of
    /// sleeping.
    pub clock: Option<ManualClock>,
    /// How many threads (or concurrent futures) the concurrency checks use; at least 4.
    pub threads: usize,
    /// The prefix of every key the run writes; random when `None`.
    pub prefix: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: None,
            threads: 8,
            prefix: None,
        }
    }
}

impl Options {
    /// Options for a storage that reads `clock`.
    ///
    /// ```
    /// let manual = circuitpy::ManualClock::new();
    /// let options = circuitpy::testing::Options::with_clock(manual);
    /// assert!(options.clock.is_some());
    /// ```
    pub fn with_clock(clock: ManualClock) -> Self {
        Options {
            clock: Some(clock),
            ..Options::default()
        }
    }
}

/// What a passing run checked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// The rules that held, in the order they were checked.
    pub rules: Vec<&'static str>,
    /// The prefix of every key the run wrote.
    pub prefix: String,
    /// How long the run took.
    pub elapsed: Duration,
}

/// The first rule a storage broke, and what the kit saw.
///
/// ```
/// let failure = circuitpy::testing::Failure { rule: "increment-counts-from-one", detail: "got 2".into() };
/// assert_eq!(failure.to_string(), "storage broke rule increment-counts-from-one: got 2");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The rule's name, as listed in [`Report::rules`] of a passing run.
    pub rule: &'static str,
    /// What was expected and what was seen.
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage broke rule {}: {}", self.rule, self.detail)
    }
}

impl std::error::Error for Failure {}

/// Checks a blocking storage. Runs on the calling thread and on threads it spawns; needs no
/// async runtime.
///
/// ```
/// # let manual = circuitpy::ManualClock::new();
/// # let storage: &'static circuitpy::MemoryStorage = Box::leak(Box::new(circuitpy::MemoryStorage::with_clock(manual.clock())));
/// circuitpy::testing::check_storage(storage, circuitpy::testing::Options::with_clock(manual)).unwrap();
/// ```
pub fn check_storage<S: Storage + 'static>(
    storage: &'static S,
    options: Options,
) -> Result<Report, Failure> {
    ready(kit::run(&kit::Blocking(storage), options))
}

/// Checks an async storage. Concurrency comes from futures polled together in the calling
/// task; waits use a helper thread, so any executor (and the runtime the storage's client
/// needs) will do.
///
/// ```
/// # async fn run() {
/// # let manual = circuitpy::ManualClock::new();
/// # let storage: &'static circuitpy::MemoryStorage = Box::leak(Box::new(circuitpy::MemoryStorage::with_clock(manual.clock())));
/// circuitpy::testing::check_async_storage(storage, circuitpy::testing::Options::with_clock(manual))
///     .await
///     .unwrap();
/// # }
/// ```
pub async fn check_async_storage<S: AsyncStorage + 'static>(
    storage: &'static S,
    options: Options,
) -> Result<Report, Failure> {
    kit::run(&kit::Async(storage), options).await
}
