//! With the `metrics` feature, calls, states, transitions and storage errors are metrics;
//! checked with `metrics-util`'s debugging recorder, set for the test's thread only
//! (`with_local_recorder`), over scripted sequences on handlers of their own.
//!
//! A snapshot of the debugging recorder takes the values it reads (it leaves counters and
//! gauges at zero), so each test takes one, at its end, and asserts every value in it.

use std::collections::BTreeMap;
use std::time::Duration;

use circuitpy::metrics::{CALLS, STATE, STORAGE_DURATION, STORAGE_ERRORS, TRANSITIONS};
use circuitpy::{Breaker, CircuitBreaker, OnStorageFailure, Storage, StorageError};
use circuitpy_tests::handler;
use circuitpy_tests::handlers::{Error, leak};
use circuitpy_tests::shared_handler;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Runs `script` with a debugging recorder for this thread, and returns what it recorded:
/// `name{label=value,...}` (labels in the order emitted) to the counter's or gauge's value,
/// or to the histogram's number of samples.
fn recorded(script: impl FnOnce()) -> BTreeMap<String, f64> {
    let recorder = DebuggingRecorder::new();
    let snapshotter: Snapshotter = recorder.snapshotter();
    ::metrics::with_local_recorder(&recorder, script);
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            let value = match value {
                DebugValue::Counter(count) => count as f64,
                DebugValue::Gauge(value) => value.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn calls(name: &str, outcome: &str) -> String {
    format!("{CALLS}{{circuitbreaker_name={name},outcome={outcome}}}")
}

fn state(name: &str, state: &str) -> String {
    format!("{STATE}{{circuitbreaker_name={name},state={state}}}")
}

fn transition(name: &str, from: &str, to: &str) -> String {
    format!("{TRANSITIONS}{{circuitbreaker_name={name},from={from},to={to}}}")
}

fn storage_errors(name: &str, kind: &str) -> String {
    format!("{STORAGE_ERRORS}{{circuitbreaker_name={name},kind={kind}}}")
}

/// Every series of a breaker's handles, at zero, with its state gauge one-hot on `current`
/// (the storage round trips' histogram comes with the first round trip).
fn registered(name: &str, current: &str) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, f64> =
        ["success", "failure", "ignored", "rejected", "unrecorded"]
            .into_iter()
            .map(|outcome| (calls(name, outcome), 0.0))
            .collect();
    for each in [
        "closed",
        "open",
        "half_open",
        "forced_open",
        "forced_closed",
    ] {
        all.insert(state(name, each), if each == current { 1.0 } else { 0.0 });
    }
    all
}

handler!(Metered {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    fn is_failure(&self, error: &dyn std::any::Any) -> bool {
        !matches!(error.downcast_ref::<Error>(), Some(Error::NotFound))
    }
});

#[test]
fn closed_open_half_open_closed_counts_each_call_by_outcome_and_each_transition() {
    let breaker = Breaker::new(Metered);
    let seen = recorded(|| {
        for _ in 0..3 {
            breaker.call(|| Ok::<(), Error>(())).unwrap();
        }
        assert!(matches!(
            breaker.call(|| Err::<(), Error>(Error::NotFound)),
            Err(Error::NotFound)
        ));
        for _ in 0..2 {
            assert!(matches!(
                breaker.call(|| Err::<(), Error>(Error::Down)),
                Err(Error::Down)
            ));
        }
        assert!(matches!(
            breaker.call(|| Ok::<(), Error>(())),
            Err(Error::Open(_))
        ));
        Metered::clock().advance(Metered::RECOVERY_TIMEOUT);
        breaker.call(|| Ok::<(), Error>(())).unwrap();
        breaker.call(|| Ok::<(), Error>(())).unwrap();
        // A permit dropped without an outcome, as a cancelled call's.
        drop(breaker.acquire().unwrap());
    });
    let mut expected = registered("Metered", "closed");
    expected.extend([
        // Three before the trip, the trial, one after.
        (calls("Metered", "success"), 5.0),
        (calls("Metered", "failure"), 2.0),
        // The error that does not count, and the dropped permit.
        (calls("Metered", "ignored"), 2.0),
        (calls("Metered", "rejected"), 1.0),
        (transition("Metered", "closed", "open"), 1.0),
        (transition("Metered", "open", "half_open"), 1.0),
        (transition("Metered", "half_open", "closed"), 1.0),
    ]);
    assert_eq!(seen, expected);
}

handler!(Tripped {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn a_tripped_breaker_shows_open_alone_and_counts_its_rejections() {
    let breaker = Breaker::new(Tripped);
    let seen = recorded(|| {
        breaker.call(|| Ok::<(), Error>(())).unwrap();
        let _ = breaker.call(|| Err::<(), Error>(Error::Down));
        for _ in 0..3 {
            assert!(matches!(
                breaker.call(|| Ok::<(), Error>(())),
                Err(Error::Open(_))
            ));
        }
    });
    let mut expected = registered("Tripped", "open");
    expected.extend([
        (calls("Tripped", "success"), 1.0),
        (calls("Tripped", "failure"), 1.0),
        (calls("Tripped", "rejected"), 3.0),
        (transition("Tripped", "closed", "open"), 1.0),
    ]);
    assert_eq!(seen, expected);
}

handler!(PerHost {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn per_call_keys_count_calls_under_the_handler_and_states_under_the_breaker() {
    let seen = recorded(|| {
        let eu = Breaker::keyed(PerHost, "eu");
        let us = Breaker::keyed(PerHost, "us");
        eu.call(|| Ok::<(), Error>(())).unwrap();
        us.call(|| Ok::<(), Error>(())).unwrap();
        let _ = us.call(|| Err::<(), Error>(Error::Down));
    });
    assert_eq!(seen[&calls("PerHost", "success")], 2.0);
    assert_eq!(seen[&calls("PerHost", "failure")], 1.0);
    assert_eq!(seen[&state("PerHost:eu", "closed")], 1.0);
    assert_eq!(seen[&state("PerHost:us", "open")], 1.0);
    assert_eq!(seen[&state("PerHost:us", "closed")], 0.0);
    assert_eq!(seen[&transition("PerHost:us", "closed", "open")], 1.0);
    assert!(
        !seen
            .keys()
            .any(|key| key.contains("circuitbreaker_name=PerHost,") && key.starts_with(STATE))
    );
}

handler!(Unkeyable {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn an_unusable_key_is_a_storage_error_of_kind_invalid_key_and_its_call_runs_unrecorded() {
    let seen = recorded(|| {
        Breaker::keyed(Unkeyable, "")
            .call(|| Ok::<(), Error>(()))
            .unwrap();
    });
    assert_eq!(
        seen,
        BTreeMap::from([
            (storage_errors("Unkeyable", "invalid_key"), 1.0),
            (calls("Unkeyable", "unrecorded"), 1.0),
        ])
    );
}

/// A storage whose every operation fails as its client would.
struct Down;

impl Storage for Down {
    fn increment(&self, key: &str, _: Duration) -> Result<u64, StorageError> {
        Err(refused(key))
    }
    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        Err(refused(key))
    }
    fn expire_after(&self, key: &str, _: Duration) -> Result<(), StorageError> {
        Err(refused(key))
    }
}

fn refused(key: &str) -> StorageError {
    StorageError::backend(
        key,
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
    )
}

shared_handler!(Unreachable {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
    const ON_STORAGE_FAILURE: OnStorageFailure = OnStorageFailure::Reject;
});

#[test]
fn a_failing_storage_is_counted_by_kind_timed_and_its_rejected_call_counted() {
    let breaker = Breaker::new(Unreachable(leak(Down)));
    let seen = recorded(|| {
        assert!(matches!(
            breaker.call(|| Ok::<(), Error>(())),
            Err(Error::Open(_))
        ));
    });
    let mut expected = registered("Unreachable", "closed");
    expected.extend([
        (storage_errors("Unreachable", "backend"), 1.0),
        (calls("Unreachable", "rejected"), 1.0),
        // The one round trip: the request for a permit that failed.
        (
            format!("{STORAGE_DURATION}{{circuitbreaker_name=Unreachable}}"),
            1.0,
        ),
    ]);
    assert_eq!(seen, expected);
}

shared_handler!(Remote {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn calls_on_a_shared_storage_are_counted_and_each_round_trip_timed() {
    let manual = circuitpy::ManualClock::new();
    let breaker = Breaker::new(Remote(leak(crate::primitives::Primitives::new(&manual))));
    let seen = recorded(|| {
        // The view asks the storage once for a permit, then each outcome is one report.
        breaker.call(|| Ok::<(), Error>(())).unwrap();
        breaker.call(|| Ok::<(), Error>(())).unwrap();
        let _ = breaker.call(|| Err::<(), Error>(Error::Down));
    });
    let mut expected = registered("Remote", "open");
    expected.extend([
        (calls("Remote", "success"), 2.0),
        (calls("Remote", "failure"), 1.0),
        (transition("Remote", "closed", "open"), 1.0),
        (
            format!("{STORAGE_DURATION}{{circuitbreaker_name=Remote}}"),
            4.0,
        ),
    ]);
    assert_eq!(seen, expected);
}

handler!(Pinned {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[test]
fn a_breaker_forced_closed_counts_its_calls_as_unrecorded() {
    let breaker = Breaker::new(Pinned);
    let seen = recorded(|| {
        breaker.force_closed().unwrap();
        let _ = breaker.call(|| Err::<(), Error>(Error::Down));
        breaker.reset().unwrap();
    });
    let mut expected = registered("Pinned", "closed");
    expected.extend([
        (calls("Pinned", "unrecorded"), 1.0),
        (transition("Pinned", "closed", "forced_closed"), 1.0),
        (transition("Pinned", "forced_closed", "closed"), 1.0),
    ]);
    assert_eq!(seen, expected);
}
