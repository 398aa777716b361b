//! Metrics through the [`metrics`](https://docs.rs/metrics/0.24) facade (feature
//! `metrics`): calls by outcome, each breaker's state, its transitions, storage errors and
//! storage round trips, for any exporter the application installs (Prometheus,
//! OpenTelemetry, StatsD, ...).
//!
//! Names follow Prometheus conventions and the OpenTelemetry proposal for circuit breakers:
//!
//! | metric | kind | labels | when |
//! |---|---|---|---|
//! | `circuitbreaker_calls_total` | counter | `circuitbreaker_name`, `outcome` | every guarded call: `success`, `failure`, `ignored` (an error that does not count, or a permit dropped without an outcome), `rejected`, `unrecorded` (let through without being recorded: the storage failed under `OnStorageFailure::Allow`, or the breaker is forced closed in memory) |
//! | `circuitbreaker_state` | gauge | `circuitbreaker_name`, `state` | one series per state (`closed`, `open`, `half_open`, `forced_open`, `forced_closed`): 1 for the breaker's state, 0 for the others; set when a breaker is first used and on every transition |
//! | `circuitbreaker_transitions_total` | counter | `circuitbreaker_name`, `from`, `to` | every transition this process sees |
//! | `circuitbreaker_storage_errors_total` | counter | `circuitbreaker_name`, `kind` | every storage error the [`on_storage_error`](crate::CircuitBreaker::on_storage_error) hook sees (a failed operation, and each call decided by `ON_STORAGE_FAILURE` while the storage is failing); `kind` is [`StorageError::kind`](crate::StorageError::kind) |
//! | `circuitbreaker_storage_duration_seconds` | histogram | `circuitbreaker_name` | every round trip to a shared storage (Redis, SQL, a custom one), failed ones included |
//!
//! `circuitbreaker_name` is the handler's [`FAILURE_KEY`](crate::CircuitBreaker::FAILURE_KEY)
//! on the calls, storage-error and duration metrics, so their cardinality stays bounded by
//! the number of handlers even with per-call keys (`key = host`). The state gauge and the
//! transitions are per breaker: there it is the breaker's full key (`"payments:eu"` for the
//! per-call key `eu` of handler `payments`).
//!
//! The in-memory closed path stays a counter increment: each breaker registers its
//! handles once, on first use, and a call then adds one to a cached handle, with no clock
//! read and no allocation. Time is read only around storage round trips. The handles live
//! in the box a breaker otherwise allocates only for a window or a storage failure, so with
//! the feature every breaker used allocates it (448 bytes), and the recorder keeps five
//! state series per breaker: count per-call keys (`key = host`) with that in mind.
//!
//! Install the recorder before the first guarded call: as everywhere with `metrics`, a
//! handle registered while no recorder is installed stays a no-op, and a breaker keeps the
//! handles it registered on first use. [`describe`] gives the recorder each metric's help
//! text and unit. `examples/metrics_prometheus.rs` exports them for Prometheus.
//!
//! On a shared storage each process reports what it sees: its own calls, and the
//! transitions its replies show (as the hooks do), so a fleet's totals are the sum over its
//! processes, and its state gauges agree once every process has seen the change.

use ::metrics::{
    Counter, Gauge, Histogram, SharedString, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};

use std::sync::OnceLock;

use crate::handler::State;
use crate::key::Key;
use crate::rules::word::Report;

/// Guarded calls by outcome: `circuitbreaker_calls_total`.
///
/// ```
/// assert_eq!(circuitpy::metrics::CALLS, "circuitbreaker_calls_total");
/// ```
pub const CALLS: &str = "circuitbreaker_calls_total";

/// Each breaker's state, one-hot over the states: `circuitbreaker_state`.
///
/// ```
/// assert_eq!(circuitpy::metrics::STATE, "circuitbreaker_state");
/// ```
pub const STATE: &str = "circuitbreaker_state";

/// Transitions by breaker, from and to: `circuitbreaker_transitions_total`.
///
/// ```
/// assert_eq!(circuitpy::metrics::TRANSITIONS, "circuitbreaker_transitions_total");
/// ```
pub const TRANSITIONS: &str = "circuitbreaker_transitions_total";

/// Failed storage operations by kind: `circuitbreaker_storage_errors_total`.
///
/// ```
/// assert_eq!(circuitpy::metrics::STORAGE_ERRORS, "circuitbreaker_storage_errors_total");
/// ```
pub const STORAGE_ERRORS: &str = "circuitbreaker_storage_errors_total";

/// Shared-storage round trips, in seconds: `circuitbreaker_storage_duration_seconds`.
///
/// ```
/// assert_eq!(
///     circuitpy::metrics::STORAGE_DURATION,
///     "circuitbreaker_storage_duration_seconds"
/// );
/// ```
pub const STORAGE_DURATION: &str = "circuitbreaker_storage_duration_seconds";

const NAME: &str = "circuitbreaker_name";
const OUTCOME: &str = "outcome";

/// The states, in the order of a breaker's gauges.
const STATES: [State; 5] = [
    State::Closed,
    State::Open,
    State::HalfOpen,
    State::ForcedOpen,
    State::ForcedClosed,
];

/// Describes every metric (help text and unit) to the installed recorder; call it once,
/// after installing the recorder. Optional: the metrics are emitted without it.
///
/// ```
/// circuitpy::metrics::describe(); // no recorder installed: does nothing
/// ```
pub fn describe() {
    describe_counter!(
        CALLS,
        Unit::Count,
        "Calls guarded by a circuit breaker, by outcome"
    );
    describe_gauge!(
        STATE,
        "1 for the circuit breaker's current state, 0 for the others"
    );
    describe_counter!(
        TRANSITIONS,
        Unit::Count,
        "Circuit breaker state transitions"
    );
    describe_counter!(
        STORAGE_ERRORS,
        Unit::Count,
        "Failed circuit breaker storage operations, by kind"
    );
    describe_histogram!(
        STORAGE_DURATION,
        Unit::Seconds,
        "Round trips to a circuit breaker's shared storage"
    );
}

/// One breaker's handles, registered once, when the breaker is first used.
#[derive(Debug)]
pub(crate) struct Meters {
    success: Counter,
    failure: Counter,
    ignored: Counter,
    rejected: Counter,
    unrecorded: Counter,
    /// One gauge per state, in the order of [`STATES`].
    states: [Gauge; 5],
    /// Registered on the first round trip: an in-memory breaker makes none, and shows none.
    storage_duration: OnceLock<Histogram>,
    handler: SharedString,
}

impl Meters {
    /// Registers the handles of the breaker `key` and shows it in `state`.
    pub(crate) fn register(key: &Key, state: State) -> Meters {
        let handler = handler_name(key);
        let calls =
            |outcome: &'static str| counter!(CALLS, NAME => handler.clone(), OUTCOME => outcome);
        let breaker = label(key);
        let meters = Meters {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            rejected: calls("rejected"),
            unrecorded: calls("unrecorded"),
            states: STATES
                .map(|state| gauge!(STATE, NAME => breaker.clone(), "state" => state.name())),
            storage_duration: OnceLock::new(),
            handler,
        };
        meters.show(state);
        meters
    }

    /// A call whose outcome was recorded as `report` (`None`: not counted).
    #[inline(always)]
    pub(crate) fn recorded(&self, report: Option<Report>) {
        match report {
            Some(Report::Success) => self.success.increment(1),
            Some(Report::Failure { .. }) => self.failure.increment(1),
            Some(Report::Abandoned) | None => self.ignored.increment(1),
        }
    }

    /// A permit dropped without an outcome.
    pub(crate) fn dropped(&self) {
        self.ignored.increment(1);
    }

    pub(crate) fn rejected(&self) {
        self.rejected.increment(1);
    }

    pub(crate) fn unrecorded(&self) {
        self.unrecorded.increment(1);
    }

    /// Sets the state gauges: 1 for `state`, 0 for the others.
    pub(crate) fn show(&self, state: State) {
        for (gauge, each) in self.states.iter().zip(STATES) {
            gauge.set(if each == state { 1.0 } else { 0.0 });
        }
    }

    pub(crate) fn storage_round_trip(&self, took: std::time::Duration) {
        self.storage_duration
            .get_or_init(|| histogram!(STORAGE_DURATION, NAME => self.handler.clone()))
            .record(took);
    }
}

/// A call rejected or let through unrecorded without a breaker (its per-call key was
/// unusable): counted under the handler's name, looked up, on this rare path.
pub(crate) fn call_without_breaker(handler: &'static str, outcome: &'static str) {
    counter!(CALLS, NAME => handler, OUTCOME => outcome).increment(1);
}

pub(crate) fn transition(key: &Key, from: State, to: State) {
    counter!(
        TRANSITIONS,
        NAME => label(key),
        "from" => from.name(),
        "to" => to.name()
    )
    .increment(1);
}

pub(crate) fn storage_error(handler: &'static str, kind: &'static str) {
    counter!(STORAGE_ERRORS, NAME => handler, "kind" => kind).increment(1);
}

/// The breaker's key as a label value, without copying it.
fn label(key: &Key) -> SharedString {
    match key {
        Key::Static(key) => SharedString::from(*key),
        Key::Shared(key) => SharedString::from(key.clone()),
    }
}

/// The handler's key: a breaker's key up to its per-call part (a handler's key has no `:`).
fn handler_name(key: &Key) -> SharedString {
    match key {
        Key::Static(key) => SharedString::from(*key),
        Key::Shared(key) => {
            let handler = key.split_once(':').map_or(&**key, |(handler, _)| handler);
            SharedString::from(handler.to_owned())
        }
    }
}
