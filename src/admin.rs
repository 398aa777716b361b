//! One admin scenario every storage that implements `circuitpy::admin::Admin` runs: each
//! state as `inspect` shows it, forcing with an audit trail seen through a second storage
//! instance, listing exactly what lies under a prefix, and foreign data reported as invalid.

use std::time::{Duration, SystemTime};

use circuitpy::admin::{Action, Admin};
use circuitpy::{
    Audit, CircuitBreaker, Config, MemoryStorage, Op, Request, State, Storage, StorageError,
};

struct Shape;

impl CircuitBreaker for Shape {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "shape";
    const HALF_OPEN_TRIALS: u32 = 2;
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(5);
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        unimplemented!("only the configuration is used")
    }
}

/// The scenario's configuration under `prefix`.
pub fn config(prefix: &str) -> Config {
    let mut config = Config::of::<Shape>();
    config.key_prefix = Box::leak(prefix.to_owned().into_boxed_str());
    config
}

/// A prefix of its own for one test.
pub fn fresh_prefix(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "adm_{name}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

fn run(storage: &impl Storage, config: &Config, key: &str, op: Op, times: usize) {
    for _ in 0..times {
        storage.execute(&Request::new(key, op, config)).unwrap();
    }
}

fn near(time: Option<SystemTime>, expected: SystemTime, slack: Duration) -> bool {
    time.is_some_and(|time| {
        let gap = time
            .duration_since(expected)
            .unwrap_or_else(|early| early.duration());
        gap <= slack
    })
}

/// Runs the scenario on `storage`, with `other` a second instance on the same data (another
/// process, as far as the storage can tell), under a fresh `prefix`. `plant_invalid` puts
/// something that is not a breaker under the prefix and returns its storage key.
pub fn check_admin<S: Storage + Admin>(
    storage: &S,
    other: &S,
    prefix: &str,
    plant_invalid: impl FnOnce() -> String,
) {
    let config = config(prefix);
    let outside = self::config(&format!("{prefix}_other"));

    run(storage, &config, "closed", Op::Failure, 2);
    run(storage, &config, "open", Op::Failure, 3);
    run(storage, &config, "half", Op::Failure, 3);
    run(storage, &outside, "elsewhere", Op::Failure, 3);
    let opened = SystemTime::now();
    std::thread::sleep(Duration::from_millis(1_100));
    run(storage, &config, "half", Op::AcquireTrial, 1);
    // Reopens "open" now, so that it is open when inspected.
    run(storage, &config, "open", Op::AcquireTrial, 1);
    run(storage, &config, "open", Op::TrialFailure, 1);
    let reopened = SystemTime::now();

    let closed = storage
        .inspect(prefix, "closed")
        .unwrap()
        .expect("closed is stored");
    assert_eq!(
        (closed.state, closed.failures, closed.reporters),
        (State::Closed, 2, 0),
        "{closed:?}"
    );

    // Under a quorum, the distinct processes that reported the failures counted.
    let mut quorate = config;
    quorate.quorum = 3;
    for reporter in [7, 8, 7] {
        storage
            .execute(&Request::new("quorate", Op::Failure, &quorate).reported_by(reporter))
            .unwrap();
    }
    let counted = storage.inspect(prefix, "quorate").unwrap().unwrap();
    assert_eq!(
        (counted.state, counted.failures, counted.reporters),
        (State::Closed, 3, 2),
        "three failures from two processes, short of a quorum of three: {counted:?}"
    );
    // The server keeps at most QUORUM reporters however many report.
    let mut bounded = config;
    bounded.quorum = 2;
    bounded.failure_threshold = 100;
    for reporter in 1..=5 {
        storage
            .execute(&Request::new("bounded", Op::Failure, &bounded).reported_by(reporter))
            .unwrap();
    }
    let kept = storage.inspect(prefix, "bounded").unwrap().unwrap();
    assert_eq!(
        (kept.failures, kept.reporters),
        (5, 2),
        "five reporters under a quorum of two: {kept:?}"
    );

    let open = storage.inspect(prefix, "open").unwrap().unwrap();
    assert_eq!(open.state, State::Open, "{open:?}");
    let slack = Duration::from_millis(500);
    assert!(
        near(open.next_trial_at, reopened + Duration::from_secs(1), slack),
        "{open:?}"
    );
    assert!(near(open.opened_at, reopened, slack), "{open:?}");

    let half = storage.inspect(prefix, "half").unwrap().unwrap();
    assert_eq!(half.state, State::HalfOpen, "{half:?}");
    assert_eq!(half.permits_out, 1, "{half:?}");
    assert!(half.round.is_some(), "{half:?}");
    assert!(near(half.opened_at, opened, Duration::from_millis(300)) || half.opened_at.is_none());

    // Forcing through one instance is seen by the other's inspect, with its trail.
    let before = SystemTime::now();
    let forced = storage
        .act(
            prefix,
            "forced",
            Action::ForceOpen,
            Audit::by("alice").because("failover drill"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(forced.state, State::ForcedOpen);
    let seen = other.inspect(prefix, "forced").unwrap().unwrap();
    assert_eq!(seen.state, State::ForcedOpen);
    let trail = seen.forced.clone().expect("a forced breaker has its trail");
    assert_eq!(trail.by.as_deref(), Some("alice"));
    assert_eq!(trail.reason.as_deref(), Some("failover drill"));
    assert!(near(trail.at, before, Duration::from_secs(2)), "{trail:?}");
    assert!(
        seen.expires_in
            .is_some_and(|left| left > Duration::from_secs(6 * 24 * 3600))
    );

    // Forcing closed without a reason replaces the trail.
    let kept = other
        .act(prefix, "kept", Action::ForceClosed, Audit::by("bob"))
        .unwrap()
        .unwrap();
    assert_eq!(kept.state, State::ForcedClosed);
    assert_eq!(kept.forced.as_ref().unwrap().reason, None);

    let too_long = "x".repeat(circuitpy::admin::MAX_AUDIT_BYTES + 1);
    let error = storage
        .act(prefix, "kept", Action::ForceOpen, Audit::by(&too_long))
        .unwrap_err();
    assert!(
        matches!(error, StorageError::AuditTooLong { what: "actor", .. }),
        "{error}"
    );

    let listing = storage.list(prefix).unwrap();
    let keys: Vec<&str> = listing.breakers.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "bounded", "closed", "forced", "half", "kept", "open", "quorate"
        ],
        "{listing:?}"
    );
    assert!(listing.invalid.is_empty(), "{:?}", listing.invalid);

    let planted = plant_invalid();
    let listing = storage.list(prefix).unwrap();
    assert_eq!(listing.breakers.len(), 7);
    assert_eq!(listing.invalid.len(), 1, "{:?}", listing.invalid);
    match &listing.invalid[0] {
        StorageError::InvalidData { key, .. } => assert_eq!(key, &planted),
        other => panic!("expected invalid data, got {other}"),
    }

    // A reset forgets the breaker and its trail.
    assert!(
        storage
            .act(prefix, "forced", Action::Reset, Audit::NONE)
            .unwrap()
            .is_none()
    );
    assert!(other.inspect(prefix, "forced").unwrap().is_none());
    assert!(storage.inspect(prefix, "never-used").unwrap().is_none());
}
