//! Breaker operations composed from the three primitives, for storages that implement only
//! those.
//!
//! Keys, all under the breaker's namespaced stem `{prefix}:{key}`:
//!
//! | suffix        | holds                                    | expires after          |
//! |---------------|------------------------------------------|------------------------|
//! | `:mode`       | 1 forced open, 2 forced closed           | [`FORCED_TTL`]         |
//! | `:open`       | present while open                       | recovery timeout       |
//! | `:tripped`    | present from the trip until closed       | [`retention`]          |
//! | `:failures`   | failure count while closed               | retention, or window   |
//! | `:trials`     | trial permits handed out this round      | recovery timeout       |
//! | `:passed`     | trials that succeeded this round         | recovery timeout       |
//! | `:calls:N`    | calls in rate bucket N                   | window + one bucket    |
//! | `:errors:N`   | failures in rate bucket N                | window + one bucket    |
//!
//! Why it is correct on these primitives alone:
//! - increments are atomic, so no failure is lost, and exactly one caller sees `:tripped`
//!   go to 1: only that caller clears the trial counts, so there is no double trip; the
//!   failure counts stay until the breaker closes, so a late caller's failure answers open
//!   and never starts a new count; `:open` is
//!   created before `:tripped` by an increment that keeps an existing expiry, so the open
//!   period is never pushed forward by a late caller and the breaker never looks
//!   half-open while it trips;
//! - permits are counted by one increment each on a key created with the round's expiry, so
//!   at most `half_open_trials` callers get one per round, and a dead holder's permit lapses
//!   with the key;
//! - every key is created with its expiry in the same step, and the state is derived from
//!   which keys exist, so a crash between two steps leaves no state that outlives its expiry:
//!   a breaker is never stuck open or half-open.
//!
//! What needs a better storage: the open period is measured from the tripping process's
//! point of view (other processes learn the remaining time only as "up to one recovery
//! timeout"), and rate buckets are numbered by each host's wall clock. The Redis and SQL
//! storages do each operation in one round trip on the server's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{AsyncStorage, Backend, Blocking, NonBlocking, Op, Request, Snapshot, Storage, ready};
use crate::error::StorageError;
use crate::handler::State;
use crate::machine::{BUCKETS, bucket_width, trips_on_rate};
use crate::policy::FailurePolicy;

/// How long a forced state lasts on a shared storage without a reset.
///
/// ```
/// assert_eq!(circuitpy::FORCED_TTL.as_secs(), 7 * 24 * 3600);
/// ```
pub const FORCED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a consecutive-failure count and the trip marker survive without activity: a
/// day, or four recovery timeouts if that is longer.
///
/// ```
/// # fn f(config: &circuitpy::Config) {
/// assert!(circuitpy::retention(config) >= std::time::Duration::from_secs(86_400));
/// # }
/// ```
pub fn retention(config: &crate::Config) -> Duration {
    (config.recovery_timeout * 4).max(Duration::from_secs(24 * 3600))
}

const MODE_FORCED_OPEN: u64 = 1;
const MODE_FORCED_CLOSED: u64 = 2;

/// Runs `request` on a blocking storage with its three primitives.
///
/// ```
/// use circuitpy::{MemoryStorage, Op, Request, State};
/// # fn f(config: &circuitpy::Config) {
/// let storage = MemoryStorage::new();
/// let snapshot = circuitpy::primitive::execute(&storage, &Request::new("k", Op::Read, config)).unwrap();
/// assert_eq!(snapshot.state, State::Closed);
/// # }
/// ```
pub fn execute_blocking<S: Storage + ?Sized>(
    storage: &S,
    request: &Request<'_>,
) -> Result<Snapshot, StorageError> {
    ready(execute(&Blocking(storage), request))
}

/// Runs `request` on an async storage with its three primitives.
///
/// ```
/// use circuitpy::{MemoryStorage, Op, Request, State};
/// # async fn f(config: &circuitpy::Config) {
/// let storage = MemoryStorage::new();
/// let request = Request::new("k", Op::Read, config);
/// let snapshot = circuitpy::primitive::execute_async(&storage, &request).await.unwrap();
/// assert_eq!(snapshot.state, State::Closed);
/// # }
/// ```
pub async fn execute_async<S: AsyncStorage + ?Sized>(
    storage: &S,
    request: &Request<'_>,
) -> Result<Snapshot, StorageError> {
    execute(&NonBlocking(storage), request).await
}

struct Keys {
    stem: String,
}

impl Keys {
    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.stem)
    }
}

async fn execute<B: Backend>(store: &B, request: &Request<'_>) -> Result<Snapshot, StorageError> {
    let config = request.config;
    let keys = Keys {
        stem: request.namespaced_key(),
    };
    let recovery = config.recovery_timeout;
    let state = read_state(store, &keys).await?;
    let snapshot = |state: State| match state {
        State::Open => Snapshot::open(recovery, None),
        State::HalfOpen => Snapshot::half_open(false),
        State::Closed => Snapshot::closed(0),
        forced => Snapshot::forced(forced),
    };
    match (request.op, state) {
        (Op::ForceOpen, _) => {
            store
                .expire_after(&keys.key("mode"), Duration::ZERO)
                .await?;
            store.increment(&keys.key("mode"), FORCED_TTL).await?;
            Ok(Snapshot::forced(State::ForcedOpen))
        }
        (Op::ForceClosed, _) => {
            store
                .expire_after(&keys.key("mode"), Duration::ZERO)
                .await?;
            store.increment(&keys.key("mode"), FORCED_TTL).await?;
            store.increment(&keys.key("mode"), FORCED_TTL).await?;
            Ok(Snapshot::forced(State::ForcedClosed))
        }
        (Op::Reset, _) => {
            for suffix in ["mode", "open", "tripped", "failures", "trials", "passed"] {
                store
                    .expire_after(&keys.key(suffix), Duration::ZERO)
                    .await?;
            }
            clear_rate_buckets(store, &keys, config).await?;
            Ok(Snapshot::closed(0))
        }
        (Op::Success, State::Closed) => {
            match config.policy {
                FailurePolicy::Consecutive => {
                    store
                        .expire_after(&keys.key("failures"), Duration::ZERO)
                        .await?
                }
                FailurePolicy::CountInWindow { .. } => {}
                FailurePolicy::Rate { window, .. } => {
                    let bucket = current_bucket(window);
                    store
                        .increment(
                            &keys.key(&format!("calls:{bucket}")),
                            window + window / BUCKETS as u32,
                        )
                        .await?;
                }
            }
            Ok(Snapshot::closed(0))
        }
        (Op::Failure, State::Closed) => {
            let (trips, failures) = match config.policy {
                FailurePolicy::Consecutive => {
                    let failures = store
                        .increment(&keys.key("failures"), retention(config))
                        .await?;
                    (failures >= u64::from(config.failure_threshold), failures)
                }
                FailurePolicy::CountInWindow { window } => {
                    let failures = store.increment(&keys.key("failures"), window).await?;
                    store.expire_after(&keys.key("failures"), window).await?;
                    (failures >= u64::from(config.failure_threshold), failures)
                }
                FailurePolicy::Rate {
                    rate,
                    window,
                    minimum_calls,
                } => {
                    let bucket = current_bucket(window);
                    let ttl = window + window / BUCKETS as u32;
                    store
                        .increment(&keys.key(&format!("calls:{bucket}")), ttl)
                        .await?;
                    store
                        .increment(&keys.key(&format!("errors:{bucket}")), ttl)
                        .await?;
                    let (mut calls, mut failures) = (0, 0);
                    for older in bucket.saturating_sub(BUCKETS as u64 - 1)..=bucket {
                        calls += store
                            .get_count(&keys.key(&format!("calls:{older}")))
                            .await?;
                        failures += store
                            .get_count(&keys.key(&format!("errors:{older}")))
                            .await?;
                    }
                    (
                        trips_on_rate(calls, failures, rate, minimum_calls),
                        failures,
                    )
                }
            };
            if !trips {
                return Ok(Snapshot::closed(failures));
            }
            // `open` first: were `tripped` set first, a reader between the two steps would
            // see a half-open breaker and could be handed a trial permit at the very moment
            // of the trip. A second tripping caller's increment keeps the open key's expiry,
            // so the open period is not pushed forward.
            store.increment(&keys.key("open"), recovery).await?;
            if store
                .increment(&keys.key("tripped"), retention(config))
                .await?
                == 1
            {
                // The failure counts stay until the breaker closes: a concurrent caller that
                // read "closed" before the trip and counts its failure after it then sees a
                // count at or over the threshold and answers open, where a cleared count
                // would have answered closed with a count of one.
                store
                    .expire_after(&keys.key("trials"), Duration::ZERO)
                    .await?;
                store
                    .expire_after(&keys.key("passed"), Duration::ZERO)
                    .await?;
            }
            Ok(Snapshot::open(recovery, None))
        }
        (Op::AcquireTrial, State::HalfOpen) => {
            let permits = store.increment(&keys.key("trials"), recovery).await?;
            Ok(Snapshot::half_open(
                permits <= u64::from(config.half_open_trials),
            ))
        }
        (Op::TrialSuccess, State::HalfOpen) => {
            let passed = store.increment(&keys.key("passed"), recovery).await?;
            if passed < u64::from(config.half_open_trials) {
                return Ok(Snapshot::half_open(false));
            }
            // Counts first, the trip marker last: until it goes the breaker reads half-open
            // and no failure is counted, so the closed breaker starts from zero.
            clear_rate_buckets(store, &keys, config).await?;
            for suffix in ["failures", "trials", "passed", "tripped"] {
                store
                    .expire_after(&keys.key(suffix), Duration::ZERO)
                    .await?;
            }
            Ok(Snapshot::closed(0))
        }
        (Op::TrialFailure, State::HalfOpen) => {
            store.increment(&keys.key("open"), recovery).await?;
            store
                .expire_after(&keys.key("trials"), Duration::ZERO)
                .await?;
            store
                .expire_after(&keys.key("passed"), Duration::ZERO)
                .await?;
            Ok(Snapshot::open(recovery, None))
        }
        // Reads, and outcomes that arrive after the state moved on, change nothing.
        (_, state) => Ok(snapshot(state)),
    }
}

async fn read_state<B: Backend>(store: &B, keys: &Keys) -> Result<State, StorageError> {
    match store.get_count(&keys.key("mode")).await? {
        MODE_FORCED_OPEN => return Ok(State::ForcedOpen),
        MODE_FORCED_CLOSED => return Ok(State::ForcedClosed),
        _ => {}
    }
    // `:tripped` before `:open`, the reverse of the order a trip writes them in: a reader
    // that sees the trip marker then also sees the open key, so a breaker in the middle of
    // tripping reads closed or open, never half-open.
    if store.get_count(&keys.key("tripped")).await? == 0 {
        return Ok(State::Closed);
    }
    if store.get_count(&keys.key("open")).await? > 0 {
        return Ok(State::Open);
    }
    Ok(State::HalfOpen)
}

async fn clear_rate_buckets<B: Backend>(
    store: &B,
    keys: &Keys,
    config: &crate::Config,
) -> Result<(), StorageError> {
    if let FailurePolicy::Rate { window, .. } = config.policy {
        let bucket = current_bucket(window);
        for older in bucket.saturating_sub(BUCKETS as u64 - 1)..=bucket {
            store
                .expire_after(&keys.key(&format!("calls:{older}")), Duration::ZERO)
                .await?;
            store
                .expire_after(&keys.key(&format!("errors:{older}")), Duration::ZERO)
                .await?;
        }
    }
    Ok(())
}

/// Rate buckets are numbered by wall-clock time so that hosts agree on them as closely as
/// their clocks agree.
fn current_bucket(window: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as u64 / bucket_width(window)
}
