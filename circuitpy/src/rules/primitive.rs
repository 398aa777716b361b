//! The rules (see `rules/mod.rs`) composed from the three storage primitives, for storages
//! that implement only those.
//!
//! Keys, all under the breaker's namespaced stem `{prefix}:{key}`:
//!
//! | suffix        | holds                                              | expires after          |
//! |---------------|----------------------------------------------------|------------------------|
//! | `:mode`       | odd: forced open, even: forced closed              | [`FORCED_TTL`] after the last forcing |
//! | `:open`       | present while open                                 | recovery timeout       |
//! | `:tripped`    | present from the trip until closed                 | [`retention`] after the last trip or failed trial |
//! | `:failures`   | failure count while closed                         | retention (or window) after the last failure |
//! | `:reopens`    | failed trial rounds in a row since the last close (the backoff's step) | as `:tripped` |
//! | `:round`      | the number of the current (or next) half-open round | retention after it last changed |
//! | `:fresh`      | present from a (re)opening until its first round begins | retention        |
//! | `:trials`     | trial permits handed out this round                | recovery timeout after the round's last event |
//! | `:released`   | permits given back this round                      | likewise               |
//! | `:refused`    | requests refused a permit this round               | likewise               |
//! | `:passed`     | trials that succeeded this round                   | likewise               |
//! | `:calls:N`    | calls in rate bucket N                             | window + one bucket    |
//! | `:errors:N`   | failures in rate bucket N                          | window + one bucket    |
//!
//! Why it is correct on these primitives alone:
//! - increments are atomic, so no failure is lost, and exactly one caller sees `:tripped`
//!   go to 1: only that caller clears the trial counts, so there is no double trip; the
//!   failure counts stay until the breaker closes, so a late caller's failure answers open
//!   and never starts a new count; `:open` is created before `:tripped` by an increment
//!   that keeps an existing expiry, so the open period is never pushed forward by a late
//!   caller and the breaker never looks half-open while it trips;
//! - the forced mode is decided by one increment: the count's parity is the mode, and an
//!   operation increments until the parity is the one it wants, so two concurrent
//!   operations end in the mode of the one that incremented last, never in no mode;
//! - requests for a permit are counted by one increment each on a key created with the
//!   round's expiry; a request refused a permit counts itself in `:refused`, a permit given
//!   back is counted in `:released`, and a request gets a permit when its number, less the
//!   refusals counted before it drew it, is within `half_open_trials` plus the permits given
//!   back by then. Those refusals are all of requests with lower numbers, which hold no
//!   permit; a refusal not yet counted only makes later requests stricter. So at most
//!   `half_open_trials` callers hold one at a time; the round lapses with the key when
//!   nothing happens in it;
//! - an outcome names its round and is ignored when the round is over. The number of the
//!   next round is counted up when the breaker (re)opens, by the one caller that opens it,
//!   long before anyone asks for a permit, so every caller of that round reads the same
//!   number; only a round that lapses is renumbered by the caller that starts the next one;
//! - every key is created with its expiry in the same step, and the state is derived from
//!   which keys exist, so a crash between two steps leaves no state that outlives its expiry:
//!   a breaker is never stuck open or half-open.
//!
//! What needs a better storage: the open period is measured from the tripping process's
//! point of view (other processes learn the remaining time only as "up to one recovery
//! timeout"); rate buckets are numbered by each host's wall clock; a caller that joins a
//! round in the instant a lapsed round is replaced may read the previous round's number, so
//! that its outcome is taken for a stale one and the new round lapses too. The Redis and SQL
//! storages do each operation in one round trip on the server's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::StorageError;
use crate::handler::State;
use crate::policy::FailurePolicy;
use crate::rules::{
    BUCKETS, FORCED_TTL, MAX_REOPENS, bucket_width, jitter_seed, nanos, open_for, retention,
    trips_on_rate,
};
use crate::storage::backend::{Async, Backend, Blocking, ready};
use crate::storage::{AsyncStorage, Op, Request, Snapshot, Storage};

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
    execute(&Async(storage), request).await
}

/// The breaker's keys.
struct Keys {
    stem: String,
}

impl Keys {
    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.stem)
    }
}

/// Everything but the forced mode and the round number, then the forced mode.
const STATE_KEYS: [&str; 10] = [
    "open", "tripped", "failures", "trials", "released", "refused", "passed", "fresh", "reopens",
    "mode",
];

async fn delete<B: Backend>(store: &B, keys: &Keys, suffixes: &[&str]) -> Result<(), StorageError> {
    for suffix in suffixes {
        store
            .expire_after(&keys.key(suffix), Duration::ZERO)
            .await?;
    }
    Ok(())
}

async fn execute<B: Backend>(store: &B, request: &Request<'_>) -> Result<Snapshot, StorageError> {
    if request.op == Op::Override {
        return Err(StorageError::Unsupported {
            key: request.key.to_owned(),
            detail: "runtime overrides need a storage that runs the rules itself (Redis, \
                     PostgreSQL, SQLite, memory): on the three primitives every operation \
                     would first have to read the overrides in a round trip of its own, and \
                     an override could not be set atomically with the state it changes",
        });
    }
    if request.op == Op::Failure && request.config.quorum > 1 {
        return Err(StorageError::Unsupported {
            key: request.key.to_owned(),
            detail: "a quorum needs a storage that runs the rules itself (Redis, PostgreSQL, \
                     SQLite): on the three primitives the distinct reporters of a count could \
                     not be kept, nor checked atomically with the failure that trips",
        });
    }
    let config = request.config;
    let keys = Keys {
        stem: request.namespaced_key(),
    };
    let recovery = config.recovery_timeout;
    let round_ttl = recovery;
    let state = read_state(store, &keys).await?;
    let snapshot = |state: State| match state {
        State::Open => Snapshot::open(recovery, None),
        State::HalfOpen => Snapshot::half_open(false),
        State::Closed => Snapshot::closed(0),
        forced => Snapshot::forced(forced),
    };
    match (request.op, state) {
        (Op::ForceOpen | Op::ForceClosed, _) => {
            let open = request.op == Op::ForceOpen;
            force(store, &keys, open).await?;
            delete(store, &keys, &STATE_KEYS[..8]).await?;
            clear_rate_buckets(store, &keys, request).await?;
            Ok(Snapshot::forced(if open {
                State::ForcedOpen
            } else {
                State::ForcedClosed
            }))
        }
        (Op::Reset, _) => {
            delete(store, &keys, &STATE_KEYS).await?;
            clear_rate_buckets(store, &keys, request).await?;
            Ok(Snapshot::closed(0))
        }
        (Op::Success, State::Closed) => {
            match config.policy {
                FailurePolicy::Consecutive => delete(store, &keys, &["failures"]).await?,
                FailurePolicy::CountInWindow { .. } => {}
                FailurePolicy::Rate { window, .. } => {
                    let bucket = current_bucket(window, request);
                    store
                        .increment_by(
                            &keys.key(&format!("calls:{bucket}")),
                            request.count.max(1),
                            window + window / BUCKETS as u32,
                        )
                        .await?;
                }
            }
            Ok(Snapshot::closed(0))
        }
        (Op::Failure, State::Closed) => {
            let (trips, failures) = match config.policy {
                FailurePolicy::Consecutive | FailurePolicy::CountInWindow { .. } => {
                    let ttl = match config.policy {
                        FailurePolicy::CountInWindow { window } => window,
                        _ => retention(config),
                    };
                    let failures = store.increment(&keys.key("failures"), ttl).await?;
                    // The count lives `ttl` after the last failure, not the first.
                    store.expire_after(&keys.key("failures"), ttl).await?;
                    (failures >= u64::from(config.failure_threshold), failures)
                }
                FailurePolicy::Rate {
                    rate,
                    window,
                    minimum_calls,
                } => {
                    let bucket = current_bucket(window, request);
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
            let open = open_for(config, 0, jitter_seed(request.key), now_ms(request));
            store.increment(&keys.key("open"), open).await?;
            if store
                .increment(&keys.key("tripped"), retention(config).max(open))
                .await?
                == 1
            {
                // The failure counts stay until the breaker closes: a concurrent caller that
                // read "closed" before the trip and counts its failure after it then sees a
                // count at or over the threshold and answers open, where a cleared count
                // would have answered closed with a count of one.
                delete(store, &keys, &["trials", "released", "refused", "passed"]).await?;
                next_round(store, &keys, config).await?;
            }
            Ok(Snapshot::open(open, None))
        }
        (Op::AcquireTrial, State::HalfOpen) => {
            // Refusals and releases are read before this request draws its number: every one
            // counted by then belongs to a request that drew a lower number. Read after, they
            // could include the refusals of later requests, and this one would wrongly count
            // itself within the limit. Nothing is counted yet when no round is under way:
            // what is left belongs to a lapsed round.
            let (released, refused) = if store.get_count(&keys.key("trials")).await? > 0 {
                (
                    store.get_count(&keys.key("released")).await?,
                    store.get_count(&keys.key("refused")).await?,
                )
            } else {
                (0, 0)
            };
            let permits = store.increment(&keys.key("trials"), round_ttl).await?;
            let round = if permits == 1 {
                // This caller starts the round: the one numbered when the breaker opened, or,
                // after a round that lapsed, a new one.
                delete(store, &keys, &["released", "refused", "passed"]).await?;
                if store.get_count(&keys.key("fresh")).await? > 0 {
                    delete(store, &keys, &["fresh"]).await?;
                    store.get_count(&keys.key("round")).await?
                } else {
                    renumber(store, &keys, config).await?
                }
            } else {
                store.get_count(&keys.key("round")).await?
            };
            if permits.saturating_sub(refused) > u64::from(config.half_open_trials) + released {
                store.increment(&keys.key("refused"), round_ttl).await?;
                return Ok(Snapshot::half_open(false));
            }
            renew_round(store, &keys, round_ttl).await?;
            Ok(Snapshot::trial(round))
        }
        (Op::TrialSuccess | Op::TrialFailure | Op::ReleaseTrial, State::HalfOpen) => {
            let current = store.get_count(&keys.key("round")).await?;
            let over = store.get_count(&keys.key("trials")).await? == 0;
            if over || request.round.is_some_and(|round| round != current) {
                // An outcome of another round, or of one whose leases lapsed, changes
                // nothing.
                return Ok(snapshot(state));
            }
            match request.op {
                Op::TrialSuccess => {
                    let passed = store.increment(&keys.key("passed"), round_ttl).await?;
                    if passed < u64::from(config.half_open_trials) {
                        renew_round(store, &keys, round_ttl).await?;
                        return Ok(Snapshot::half_open(false));
                    }
                    // Counts first, the trip marker last: until it goes the breaker reads
                    // half-open and no failure is counted, so the closed breaker starts from
                    // zero.
                    clear_rate_buckets(store, &keys, request).await?;
                    delete(
                        store,
                        &keys,
                        &[
                            "failures", "trials", "released", "passed", "fresh", "reopens",
                            "tripped",
                        ],
                    )
                    .await?;
                    Ok(Snapshot::closed(0))
                }
                Op::TrialFailure => {
                    // The backoff's step: failed rounds in a row, kept as long as the trip.
                    let kept = retention(config);
                    let reopens = store.increment(&keys.key("reopens"), kept).await?;
                    let open = open_for(
                        config,
                        reopens.min(MAX_REOPENS),
                        jitter_seed(request.key),
                        now_ms(request),
                    );
                    store.increment(&keys.key("open"), open).await?;
                    // A dependency that stays down keeps the breaker tripped, however long.
                    store
                        .expire_after(&keys.key("tripped"), kept.max(open))
                        .await?;
                    store
                        .expire_after(&keys.key("reopens"), kept.max(open))
                        .await?;
                    delete(store, &keys, &["trials", "released", "refused", "passed"]).await?;
                    next_round(store, &keys, config).await?;
                    Ok(Snapshot::open(open, None))
                }
                _ => {
                    store.increment(&keys.key("released"), round_ttl).await?;
                    renew_round(store, &keys, round_ttl).await?;
                    Ok(Snapshot::half_open(false))
                }
            }
        }
        // Reads, and outcomes that arrive after the state moved on, change nothing.
        (_, state) => Ok(snapshot(state)),
    }
}

/// The breaker (re)opened: the round that follows gets the next number now, so that every
/// caller of that round reads the same one.
async fn next_round<B: Backend>(
    store: &B,
    keys: &Keys,
    config: &crate::Config,
) -> Result<(), StorageError> {
    renumber(store, keys, config).await?;
    store
        .increment(&keys.key("fresh"), retention(config))
        .await?;
    Ok(())
}

/// Counts the round number up, keeping it for a retention period.
async fn renumber<B: Backend>(
    store: &B,
    keys: &Keys,
    config: &crate::Config,
) -> Result<u64, StorageError> {
    let round = store
        .increment(&keys.key("round"), retention(config))
        .await?;
    store
        .expire_after(&keys.key("round"), retention(config))
        .await?;
    Ok(round)
}

/// Something happened in the round: its leases run for another recovery timeout.
async fn renew_round<B: Backend>(
    store: &B,
    keys: &Keys,
    ttl: Duration,
) -> Result<(), StorageError> {
    for suffix in ["trials", "released", "refused", "passed"] {
        store.expire_after(&keys.key(suffix), ttl).await?;
    }
    Ok(())
}

/// Increments the mode until its parity is the wanted one: odd for forced open, even for
/// forced closed. Whoever increments last decides.
async fn force<B: Backend>(store: &B, keys: &Keys, open: bool) -> Result<(), StorageError> {
    let key = keys.key("mode");
    // Each step flips the parity, so two are enough unless another forcing interleaves; a
    // few more keep that case bounded.
    for _ in 0..8 {
        let mode = store.increment(&key, FORCED_TTL).await?;
        if (mode % 2 == 1) == open {
            break;
        }
    }
    store.expire_after(&key, FORCED_TTL).await
}

async fn read_state<B: Backend>(store: &B, keys: &Keys) -> Result<State, StorageError> {
    match store.get_count(&keys.key("mode")).await? {
        0 => {}
        mode if mode % 2 == 1 => return Ok(State::ForcedOpen),
        _ => return Ok(State::ForcedClosed),
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
    request: &Request<'_>,
) -> Result<(), StorageError> {
    if let FailurePolicy::Rate { window, .. } = request.config.policy {
        let bucket = current_bucket(window, request);
        for older in bucket.saturating_sub(BUCKETS as u64 - 1)..=bucket {
            delete(
                store,
                keys,
                &[&format!("calls:{older}"), &format!("errors:{older}")],
            )
            .await?;
        }
    }
    Ok(())
}

/// The request's time, or this host's wall clock, in milliseconds: when an opening's jitter
/// is taken.
fn now_ms(request: &Request<'_>) -> u64 {
    request
        .at
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
        })
        .as_millis() as u64
}

/// Rate buckets are numbered by wall-clock time (or the request's time) so that hosts agree
/// on them as closely as their clocks agree.
fn current_bucket(window: Duration, request: &Request<'_>) -> u64 {
    let now = request.at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    });
    nanos(now) / bucket_width(window)
}
