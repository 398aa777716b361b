//! The breaker's rules, stated once. Every storage follows them; the implementations differ
//! only in where the state lives:
//!
//! | implementation | file | runs |
//! |---|---|---|
//! | the packed word | `rules/word.rs` (+ `rules/window.rs`) | in this process: [`MemoryStorage`](crate::MemoryStorage), one atomic word per breaker |
//! | the row machine | `rules/row.rs` | SQLite, in the transaction of each operation; it is also the reference the server-side code follows: |
//! | the Lua script | `storage/redis/script.lua` | Redis, one `EVALSHA` per operation (a success that changes nothing: one `HMGET`) |
//! | the PL/pgSQL function | `storage/postgres/schema.sql` | PostgreSQL, one statement per operation |
//! | the primitive protocol | `rules/primitive.rs` | any storage that implements only the three primitives |
//!
//! `tests/differential/` feeds the same random operations and clock steps to every
//! one of them and requires the same states, permits and rejections.
//!
//! # The rules
//!
//! **Closed.** Calls run and their outcomes are counted; an error the handler's
//! `is_failure` does not count is not recorded at all.
//! - `Consecutive`: a failure adds one, a success sets the count to zero; the breaker trips
//!   when the count reaches `FAILURE_THRESHOLD`.
//! - `CountInWindow { window }`: a failure adds one, unless the previous failure is `window`
//!   or more ago, in which case the count starts again at one; a success changes nothing;
//!   the breaker trips when the count reaches `FAILURE_THRESHOLD`.
//! - `Rate { rate, window, minimum_calls }`: calls and failures are counted in ten buckets
//!   of `window / 10`, numbered by `time / (window / 10)`; the window is the current bucket
//!   and the nine before it. A success reports how many successful calls it stands for
//!   (more than one when local mode held some back); a failure counts one call and one
//!   failure and then trips the breaker when the window holds at least `minimum_calls`
//!   calls and `failures >= rate * calls` (the rate is inclusive). A success never trips.
//!   In memory a success counts without a lock (`rules/window.rs`) and failures are
//!   decided one at a time under the window's lock: a failure counts every success that
//!   finished before it began, and a success still finishing when a trip or reset ends its
//!   closed period counts in that period, which is then cleared. An outcome is counted in
//!   the bucket of the clock reading it was recorded with; one recorded after a call ten
//!   buckets later was counted (its thread stalled in between) has left the window and is
//!   not counted.
//!
//! **Quorum** (shared storages, `QUORUM` > 1). A failure carries its process's reporter id.
//! The breaker keeps the distinct reporters of the failures it counts, at most `QUORUM` of
//! them: a reporter is remembered while its failures count — as long as the count does
//! under the counting policies (a success that resets a consecutive count, a window that
//! lapses, a trip, a close and a reset forget them all), and until the bucket of its last
//! failure leaves the window under the rate policy. A failure trips the breaker only when
//! the policy says so and `QUORUM` reporters are remembered; otherwise the count goes on
//! growing. Each process also decides by its own calls alone in a breaker of its own
//! (`engine/view.rs`, `Cell::local`), which rejects its calls
//! ([`Rejection::OpenHere`](crate::Rejection::OpenHere)) while it is open.
//!
//! **Trip.** The breaker opens until `now + RECOVERY_TIMEOUT`; every count is cleared.
//!
//! **Open.** Calls are rejected ([`Rejection::Open`](crate::Rejection::Open)) and nothing
//! is written. Outcomes of calls admitted before the trip change nothing.
//!
//! **Half-open.** From the open deadline on, the first caller to ask starts a *round*: it
//! gets the round's first permit, and at most `HALF_OPEN_TRIALS` callers get one per round;
//! the others are rejected ([`Rejection::TrialsInProgress`](crate::Rejection::TrialsInProgress)).
//! Each permit belongs to its round; an outcome of another round changes nothing.
//! - a trial success counts; when every permit of the round has succeeded, the breaker
//!   closes with every count cleared;
//! - a trial failure opens the breaker again until `now + open time`: the recovery timeout,
//!   or with a [`Backoff`](crate::Backoff) the recovery timeout multiplied by its factor
//!   once per failed round since the breaker last closed, in whole milliseconds, each step
//!   rounded down, at most its max ([`open_time`]); with a jitter, every opening (a trip
//!   too) is shortened by a share of it that follows from the key and the instant
//!   ([`open_for`]);
//! - a trial whose error does not count gives its permit back, as does (in memory) a trial
//!   whose caller never reports (a dropped future);
//! - a round in which nothing happened (no permit granted, no outcome) for one
//!   `RECOVERY_TIMEOUT` is over: its permits were leases, their outcomes change nothing
//!   from then on, and the next caller starts a new round. A caller that dies holding a
//!   permit therefore never keeps the breaker half-open for longer than that.
//!
//! **Forced.** `ForceOpen` rejects every call
//! ([`Rejection::ForcedOpen`](crate::Rejection::ForcedOpen)), `ForceClosed` runs every call
//! and records nothing; both clear every count and last until `Reset` (on a shared storage,
//! at most [`FORCED_TTL`] after the last forcing, then the breaker is closed). Forcing
//! stores its audit trail with the breaker: the time (on the storage's clock) and, when the
//! request names them ([`Request::audit`](crate::Request::audit)), who forced it and why;
//! forcing again replaces the trail. `Reset` closes the breaker with every count and the
//! trail cleared.
//!
//! **Expiry** (shared storages): everything a breaker writes expires. A consecutive count
//! is forgotten [`retention`] after the last failure, a windowed count `window` after it,
//! a rate bucket once it leaves the window; a tripped breaker reads closed [`retention`]
//! after its last trip or failed trial; a round's leases lapse as above. A crash, an
//! eviction or a lost row therefore leaves at worst a closed breaker, never a stuck one. In
//! memory a breaker lives as long as its storage.
//!
//! **Time.** Every deadline is measured on one clock: the process's for the in-memory
//! storage, the server's for Redis and PostgreSQL, the host's wall clock for SQLite and
//! the primitive protocol's rate buckets, or [`Request::at`](crate::Request::at) when a
//! test gives one.

use std::time::Duration;

use crate::policy::Config;

pub(crate) mod primitive;
// The admin decodes every shared storage's state through the row; only SQLite and the
// reference run its machine.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "testing", test)),
    allow(dead_code)
)]
pub(crate) mod row;
pub(crate) mod window;
pub(crate) mod word;

/// How long a forced state lasts on a shared storage without a reset.
///
/// ```
/// assert_eq!(circuitpy::FORCED_TTL.as_secs(), 7 * 24 * 3600);
/// ```
pub const FORCED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a consecutive-failure count and the trip marker survive without activity on a
/// shared storage: a day, or four recovery timeouts if that is longer.
///
/// ```
/// # fn f(config: &circuitpy::Config) {
/// assert!(circuitpy::retention(config) >= std::time::Duration::from_secs(86_400));
/// # }
/// ```
pub fn retention(config: &Config) -> Duration {
    // `Config::check` bounds the recovery timeout, so this cannot overflow.
    config
        .recovery_timeout
        .saturating_mul(4)
        .max(Duration::from_secs(24 * 3600))
}

/// Failed trial rounds in a row are counted up to this (five bits of the in-memory word);
/// a [`Backoff`](crate::Backoff) must reach its max within as many steps, which
/// `Config::check` makes sure of, so the count never matters past it.
pub(crate) const MAX_REOPENS: u64 = 31;

/// How long a breaker opens for after `reopens` failed trial rounds in a row (0 for a trip
/// from closed): the recovery timeout, multiplied per round by the backoff's factor in whole
/// milliseconds (each step rounded down), up to its max. The Lua script and the PL/pgSQL
/// function compute the same steps.
#[inline]
pub(crate) fn open_time(config: &Config, reopens: u64) -> Duration {
    if reopens == 0 || config.backoff.is_off() {
        return config.recovery_timeout;
    }
    backed_off(config, reopens)
}

/// [`open_time`] past the first opening, with a backoff.
#[cold]
#[inline(never)]
fn backed_off(config: &Config, reopens: u64) -> Duration {
    let backoff = config.backoff;
    let mut open = config.recovery_timeout.as_millis() as u64;
    // Never below the recovery timeout: an override may lower the max under it.
    let max = (backoff.max.as_millis() as u64).max(open);
    for _ in 0..reopens.min(MAX_REOPENS) {
        if open >= max {
            break;
        }
        open = ((open as f64 * backoff.factor).floor() as u64).min(max);
    }
    Duration::from_millis(open.min(max))
}

/// A breaker key's jitter seed: its bytes folded as `h × 31 + byte`, modulo 2^32. Computed
/// in this process and sent to a shared storage with each request, so that the server needs
/// no string hashing of its own.
pub(crate) fn jitter_seed(key: &str) -> u64 {
    key.bytes()
        .fold(0u64, |h, byte| (h * 31 + u64::from(byte)) % (1 << 32))
}

/// The open time of a breaker that opens at `at_ms` (milliseconds on the storage's clock)
/// after `reopens` failed rounds: [`open_time`], shortened by the jitter's share for its key
/// and that instant. Without jitter exactly [`open_time`]; with it, in whole milliseconds:
/// `open − ⌊open × jitter × share⌋`, where `share` is `x / 2^26` after three rounds of
/// `x ← (x × 40503 + 12345) mod 2^26; x ← ⌊x² / 8192⌋ mod 2^26` from
/// `x = (seed + at_ms) mod 2^26`: arithmetic every storage's language does exactly (`x²` stays
/// below 2^52).
pub(crate) fn open_for(config: &Config, reopens: u64, seed: u64, at_ms: u64) -> Duration {
    let open = open_time(config, reopens);
    if config.recovery_jitter == 0.0 {
        return open;
    }
    const SPAN: u64 = 1 << 26;
    let mut x = (seed + at_ms) % SPAN;
    for _ in 0..3 {
        x = (x * 40503 + 12345) % SPAN;
        // The middle bits of the square: neighbouring keys and instants land far apart.
        x = (x * x / 8192) % SPAN;
    }
    let share = x as f64 / SPAN as f64;
    let ms = open.as_millis() as u64;
    let cut = (ms as f64 * config.recovery_jitter * share).floor() as u64;
    Duration::from_millis(ms - cut.min(ms))
}

/// Reporter ids are below 2^48: exact in a Lua number, 15 decimal digits at most.
pub(crate) const REPORTER_MASK: u64 = (1 << 48) - 1;

/// This process's reporter id for a [`QUORUM`](crate::CircuitBreaker::QUORUM): drawn once,
/// from the standard library's per-process random hash keys.
pub(crate) fn reporter() -> u64 {
    static ID: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish() & REPORTER_MASK
    });
    *ID
}

/// The rate policy's buckets per window.
pub(crate) const BUCKETS: usize = 10;

/// The width of one of the rate policy's buckets, in nanoseconds, at least one.
pub(crate) const fn bucket_width(window: Duration) -> u64 {
    let width = window.as_nanos() as u64 / BUCKETS as u64;
    if width == 0 { 1 } else { width }
}

/// The rate rule: inclusive, once the window holds `minimum_calls` calls.
pub(crate) fn trips_on_rate(calls: u64, failures: u64, rate: f64, minimum_calls: u32) -> bool {
    calls >= u64::from(minimum_calls) && failures as f64 >= rate * calls as f64
}

/// A duration in whole microseconds, saturating: the unit of the SQL storages.
pub(crate) fn micros(duration: Duration) -> i64 {
    duration.as_micros().min(i64::MAX as u128) as i64
}

/// A duration in whole nanoseconds, saturating.
pub(crate) fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().min(u128::from(u64::MAX)) as u64
}
