//! This process's breakers, as it sees them: for a readiness endpoint ("degraded while a
//! dependency's breaker is open") or a page about one instance.
//!
//! Breakers on the in-memory storage are listed with their state; breakers on a shared
//! storage are listed as this process last heard of them (a view refreshed by every call;
//! [`Breaker::state`](crate::Breaker::state) asks the storage). Listing takes no storage
//! round trip and never blocks a guarded call for long.
//!
//! ```
//! use std::sync::LazyLock;
//! use std::time::Duration;
//! use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, State, health};
//!
//! static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
//! struct Search;
//! impl CircuitBreaker for Search {
//!     const FAILURE_THRESHOLD: u32 = 1;
//!     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
//!     const FAILURE_KEY: &'static str = "search";
//!     type Storage = MemoryStorage;
//!     fn storage(&self) -> &MemoryStorage { &STORAGE }
//! }
//!
//! Breaker::new(Search).force_open().unwrap();
//! let report = health::report();
//! let search = report.breakers.iter().find(|b| b.key == "search").unwrap();
//! assert_eq!(search.state, State::ForcedOpen);
//! assert!(!report.ready());
//! ```

use crate::engine::state_here;
use crate::engine::view::registries;
use crate::handler::State;

/// One breaker as this process sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerHealth {
    /// The breaker's key: the handler's, then `:` and the per-call key if any.
    pub key: String,
    /// The handler's key prefix (the namespace on a shared storage).
    pub prefix: &'static str,
    /// Its state: decided here for the in-memory storage, as last heard from the storage
    /// otherwise.
    pub state: State,
    /// Whether its state lives in a shared storage (this is then a view of it).
    pub shared: bool,
    /// For a shared breaker: whether this process's last operation on the storage failed
    /// (calls then follow the handler's storage-failure policy).
    pub storage_failing: bool,
    /// Under a [`QUORUM`](crate::CircuitBreaker::QUORUM): whether this process's own
    /// breaker is open or half-open, so that this process rejects its calls (all but its
    /// own trials) whatever the shared state.
    pub open_here: bool,
}

impl BreakerHealth {
    /// Whether the breaker lets calls through as usual: closed (or forced closed), not open
    /// in this process alone, and, when shared, with its storage answering.
    ///
    /// ```
    /// # let report = circuitpy::health::report();
    /// let healthy = report.breakers.iter().filter(|b| b.is_healthy()).count();
    /// # let _ = healthy;
    /// ```
    pub fn is_healthy(&self) -> bool {
        matches!(self.state, State::Closed | State::ForcedClosed)
            && !self.storage_failing
            && !self.open_here
    }
}

/// Every breaker this process holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// The breakers, sorted by prefix and key.
    pub breakers: Vec<BreakerHealth>,
}

impl Report {
    /// Whether every breaker is healthy ([`BreakerHealth::is_healthy`]): a readiness probe
    /// answers "degraded" otherwise.
    ///
    /// ```
    /// assert!(circuitpy::health::Report::default().ready());
    /// ```
    pub fn ready(&self) -> bool {
        self.breakers.iter().all(BreakerHealth::is_healthy)
    }

    /// The breakers that are not healthy.
    ///
    /// ```
    /// assert_eq!(circuitpy::health::Report::default().unhealthy().count(), 0);
    /// ```
    pub fn unhealthy(&self) -> impl Iterator<Item = &BreakerHealth> {
        self.breakers.iter().filter(|breaker| !breaker.is_healthy())
    }
}

/// Every breaker of this process: on every in-memory storage that still exists, and the
/// views of shared breakers it has used.
///
/// ```
/// let report = circuitpy::health::report();
/// for breaker in &report.breakers {
///     println!("{} {}", breaker.key, breaker.state);
/// }
/// ```
pub fn report() -> Report {
    let mut breakers = Vec::new();
    for registry in registries() {
        for family in registry.families() {
            for cell in family.cells() {
                let state = if registry.decides {
                    state_here(&cell, &registry.clock)
                } else {
                    cell.load().phase()
                };
                breakers.push(BreakerHealth {
                    key: cell.key.as_str().to_owned(),
                    prefix: family.prefix,
                    state,
                    shared: !registry.decides,
                    storage_failing: !registry.decides && cell.failing(),
                    open_here: cell
                        .local_if_made()
                        .is_some_and(|local| local.load().phase() != State::Closed),
                });
            }
        }
    }
    breakers.sort_by(|a, b| (a.prefix, &a.key).cmp(&(b.prefix, &b.key)));
    Report { breakers }
}
