//! One set of rules, six implementations, the same answers.
//!
//! Random sequences of breaker operations and clock steps go to every implementation of the
//! rules (see `circuitpy/src/rules/mod.rs`) at once:
//! - the packed word, through a `Breaker` on the in-memory storage and its manual clock;
//! - the row machine, through `testing::Reference`;
//! - the primitive protocol, through `Storage::execute` of the in-memory storage's map;
//! - the Lua script, on a real Redis server;
//! - the PL/pgSQL function, on a real PostgreSQL server;
//! - SQLite.
//!
//! The shared storages take the time from each request (`Request::at`), the in-memory ones
//! from a manual clock moved in step, so every implementation decides at the same instant.
//! After each step all must agree on the state and on whether a trial permit was granted;
//! those that report failure counts (the row machine, Redis, PostgreSQL, SQLite) must agree
//! on the count too.

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::Duration;

use circuitpy::testing::Reference;
use circuitpy::{
    Backoff, Breaker, CircuitBreaker, Config, FailurePolicy, ManualClock, MemoryStorage, Op,
    Outcome, Overrides, Permit, PostgresStorage, Request, Snapshot, SqliteStorage, State, Storage,
};
use circuitpy_tests::redis::RedisServer;
use proptest::prelude::*;

const THRESHOLD: u32 = 3;
const TRIALS: u32 = 2;
/// Whole milliseconds, and windows whole tenths of them: every implementation keeps time in
/// milliseconds or finer, so every deadline and bucket falls on the same instant.
const RECOVERY_MS: u64 = 1_000;
const RECOVERY: Duration = Duration::from_millis(RECOVERY_MS);

/// A handler on an in-memory storage of its own, whose manual clock the case moves in step
/// with the requests' time (each policy's test runs on a thread of its own).
macro_rules! policy_handler {
    ($name:ident, $policy:expr) => {
        policy_handler!($name, $policy, Backoff::OFF, 0.0);
    };
    ($name:ident, $policy:expr, $backoff:expr, $jitter:expr) => {
        policy_handler!($name, $policy, $backoff, $jitter, 1);
    };
    ($name:ident, $policy:expr, $backoff:expr, $jitter:expr, $quorum:expr) => {
        struct $name;
        impl $name {
            fn clock() -> &'static ManualClock {
                static CLOCK: LazyLock<ManualClock> = LazyLock::new(ManualClock::new);
                &CLOCK
            }
            /// Decides the breaker in this process, and holds the primitive protocol's
            /// keys in its map.
            fn memory() -> &'static MemoryStorage {
                static MEMORY: LazyLock<MemoryStorage> =
                    LazyLock::new(|| MemoryStorage::with_clock($name::clock().clock()));
                &MEMORY
            }
        }
        impl CircuitBreaker for $name {
            const FAILURE_THRESHOLD: u32 = THRESHOLD;
            const RECOVERY_TIMEOUT: Duration = RECOVERY;
            const FAILURE_KEY: &'static str = stringify!($name);
            const HALF_OPEN_TRIALS: u32 = TRIALS;
            const FAILURE_POLICY: FailurePolicy = $policy;
            const RECOVERY_BACKOFF: Backoff = $backoff;
            const RECOVERY_JITTER: f64 = $jitter;
            const QUORUM: u32 = $quorum;
            const STORAGE_TIMEOUT: Duration = Duration::from_secs(5);
            const KEY_PREFIX: &'static str = "differential";
            type Storage = MemoryStorage;
            fn storage(&self) -> &MemoryStorage {
                $name::memory()
            }
        }
    };
}

policy_handler!(Consecutive, FailurePolicy::Consecutive);
policy_handler!(
    Windowed,
    FailurePolicy::CountInWindow {
        window: Duration::from_millis(3_000)
    }
);
policy_handler!(
    Rated,
    FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_millis(2_000),
        minimum_calls: 4,
    }
);

// Open 1 s, then 1.5 s, 2.25 s, 3.375 s, then 5 s while the trials keep failing.
policy_handler!(
    Backedoff,
    FailurePolicy::Consecutive,
    Backoff::exponential(1.5, Duration::from_millis(5_000)),
    0.0
);
// The same, each opening shortened by up to half its length for its key and instant.
policy_handler!(
    Jittered,
    FailurePolicy::Consecutive,
    Backoff::exponential(1.5, Duration::from_millis(5_000)),
    0.5
);

// The spelled-out override sequences' own handlers: every test moves its handler's clock.
policy_handler!(Overridden, FailurePolicy::Consecutive);
policy_handler!(
    OverriddenBackoff,
    FailurePolicy::Consecutive,
    Backoff::exponential(1.5, Duration::from_millis(5_000)),
    0.0
);

// Quorums: the row machine is the reference (the packed word lives in one process and
// has none), with failures from four reporters.
policy_handler!(
    QuorateConsecutive,
    FailurePolicy::Consecutive,
    Backoff::OFF,
    0.0,
    2
);
policy_handler!(
    QuorateWindowed,
    FailurePolicy::CountInWindow {
        window: Duration::from_millis(3_000)
    },
    Backoff::OFF,
    0.0,
    3
);
policy_handler!(
    QuorateRated,
    FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_millis(2_000),
        minimum_calls: 4,
    },
    Backoff::OFF,
    0.0,
    2
);

/// One step of a sequence.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A call admitted while closed ended (an outcome arriving when the breaker is no longer
    /// closed changes nothing).
    Success,
    Failure,
    /// A failure reported by the n-th of four processes (a quorum's reporters).
    FailureBy(u64),
    /// Asks for a trial permit; a granted one is kept until an outcome names it.
    Acquire,
    /// The outcome of the n-th permit still held (modulo their number).
    TrialSuccess(usize),
    TrialFailure(usize),
    Release(usize),
    Read,
    Advance(u64),
    ForceOpen,
    ForceClosed,
    Reset,
    /// An operator's runtime overrides, one of [`OVERRIDES`].
    Override(usize),
}

/// The overrides the cases set, clearing included.
const OVERRIDES: [Overrides; 8] = [
    Overrides::NONE,
    Overrides::NONE.backoff(Backoff::exponential(2.0, Duration::from_millis(4_000))),
    Overrides::NONE.backoff(Backoff::OFF),
    Overrides::NONE.failure_threshold(1),
    Overrides::NONE.failure_threshold(5),
    Overrides::NONE.recovery_timeout(Duration::from_millis(500)),
    Overrides::NONE
        .recovery_timeout(Duration::from_millis(2_000))
        .half_open_trials(1),
    Overrides::NONE.half_open_trials(3).failure_threshold(2),
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Failure),
        3 => Just(Step::Success),
        3 => Just(Step::Acquire),
        2 => any::<usize>().prop_map(Step::TrialSuccess),
        1 => any::<usize>().prop_map(Step::TrialFailure),
        1 => any::<usize>().prop_map(Step::Release),
        1 => Just(Step::Read),
        4 => prop_oneof![
            // The edges where the rules change their mind: a millisecond either side of
            // the recovery timeout, a rate bucket and each window.
            prop::sample::select(vec![
                1u64, 199, 200, 201, 999, 1_000, 1_001, 1_499, 1_500, 1_501, 1_999, 2_000,
                2_001, 2_249, 2_250, 2_251, 2_999, 3_000, 3_001, 3_374, 3_375, 3_376, 4_999,
                5_000, 5_001,
            ]),
            1u64..=3 * RECOVERY_MS,
        ]
        .prop_map(Step::Advance),
        1 => prop_oneof![Just(Step::ForceOpen), Just(Step::ForceClosed), Just(Step::Reset)],
        1 => (0..OVERRIDES.len()).prop_map(Step::Override),
    ]
}

/// The steps of a quorum's cases: failures come from four reporters.
fn quorum_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (1u64..=4).prop_map(Step::FailureBy),
        6 => step(),
    ]
}

/// What every implementation must agree on after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    state: State,
    /// For an acquisition: whether a trial (or closed) permit was granted.
    permit: Option<bool>,
    /// For a failure reported while closed: the count after it, where the implementation
    /// reports one.
    failures: Option<u64>,
    /// While open: how long until a trial, where the implementation keeps the deadline
    /// exactly (every one but the primitive protocol and the packed word's view of it).
    retry_in: Option<Duration>,
}

/// A storage implementation under test, driven at the request level.
struct Shared<'s> {
    name: &'static str,
    storage: &'s dyn Fn(&Request<'_>) -> Snapshot,
    /// Whether its replies carry failure counts to compare.
    counts: bool,
    /// Permits held, by the round they belong to.
    held: Vec<u64>,
    /// Whether it keeps runtime overrides; one that cannot (the primitive protocol) leaves
    /// the comparison at the first override.
    overrides: bool,
    retired: bool,
}

/// The in-memory breaker, driven through the public API.
struct InMemory<'b, H: CircuitBreaker> {
    breaker: &'b Breaker<H>,
    held: Vec<Permit<'b, H>>,
}

fn outcome_op(step: Step) -> (Op, Outcome) {
    match step {
        Step::TrialSuccess(_) => (Op::TrialSuccess, Outcome::Success),
        Step::TrialFailure(_) => (Op::TrialFailure, Outcome::Failure),
        _ => (Op::ReleaseTrial, Outcome::Ignored),
    }
}

impl Shared<'_> {
    fn apply(&mut self, step: Step, key: &str, config: &Config, at: Duration) -> Seen {
        let run_by = |op, round: Option<u64>, reporter: u64| {
            let mut request = Request::new(key, op, config).at(at).reported_by(reporter);
            if let Some(round) = round {
                request = request.in_round(round);
            }
            (self.storage)(&request)
        };
        let run = |op, round| run_by(op, round, 0);
        let counts = self.counts;
        let read = |snapshot: Snapshot| Seen {
            state: snapshot.state,
            permit: None,
            failures: None,
            retry_in: if counts && snapshot.state == State::Open {
                snapshot.retry_in
            } else {
                None
            },
        };
        match step {
            Step::Success | Step::Failure | Step::FailureBy(_) => {
                let snapshot = match step {
                    Step::Success => run(Op::Success, None),
                    Step::FailureBy(reporter) => run_by(Op::Failure, None, reporter),
                    _ => run(Op::Failure, None),
                };
                // A success's count only under the consecutive policy, where it resets it:
                // under the others the storages report the count as kept, which a window
                // may have let lapse (the row machine reports it lapsed).
                let compared = !matches!(step, Step::Success)
                    || matches!(config.policy, FailurePolicy::Consecutive);
                Seen {
                    failures: (self.counts && compared && snapshot.state == State::Closed)
                        .then_some(snapshot.failures),
                    ..read(snapshot)
                }
            }
            Step::Acquire => {
                let snapshot = run(Op::AcquireTrial, None);
                if snapshot.state == State::HalfOpen && snapshot.permit {
                    self.held.push(snapshot.round);
                }
                Seen {
                    permit: Some(snapshot.permit),
                    ..read(snapshot)
                }
            }
            Step::TrialSuccess(pick) | Step::TrialFailure(pick) | Step::Release(pick) => {
                if self.held.is_empty() {
                    return read(run(Op::Read, None));
                }
                let round = self.held.remove(pick % self.held.len());
                read(run(outcome_op(step).0, Some(round)))
            }
            Step::Read | Step::Advance(_) => read(run(Op::Read, None)),
            Step::ForceOpen => read(run(Op::ForceOpen, None)),
            Step::ForceClosed => read(run(Op::ForceClosed, None)),
            Step::Reset => read(run(Op::Reset, None)),
            Step::Override(pick) => {
                let request = Request::new(key, Op::Override, config)
                    .at(at)
                    .with_overrides(OVERRIDES[pick]);
                read((self.storage)(&request))
            }
        }
    }
}

impl<'b, H: CircuitBreaker<Storage = MemoryStorage>> InMemory<'b, H> {
    fn apply(&mut self, step: Step) -> Seen {
        let state = |breaker: &Breaker<H>| breaker.state().unwrap();
        let seen = |state| Seen {
            state,
            permit: None,
            failures: None,
            retry_in: None,
        };
        match step {
            Step::Success | Step::Failure | Step::FailureBy(_) => {
                // An outcome of a call admitted while closed: only while it still is.
                if state(self.breaker) == State::Closed {
                    let permit = self.breaker.acquire().expect("closed admits");
                    permit.record(if matches!(step, Step::Success) {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    });
                }
                seen(state(self.breaker))
            }
            Step::Acquire => {
                let granted = match self.breaker.acquire() {
                    Ok(permit) => {
                        if permit.is_trial() {
                            self.held.push(permit);
                        }
                        true
                    }
                    Err(_) => false,
                };
                Seen {
                    state: state(self.breaker),
                    permit: Some(granted),
                    failures: None,
                    retry_in: None,
                }
            }
            Step::TrialSuccess(pick) | Step::TrialFailure(pick) | Step::Release(pick) => {
                if !self.held.is_empty() {
                    let permit = self.held.remove(pick % self.held.len());
                    permit.record(outcome_op(step).1);
                }
                seen(state(self.breaker))
            }
            Step::Read | Step::Advance(_) => seen(state(self.breaker)),
            Step::ForceOpen => {
                self.breaker.force_open().unwrap();
                seen(state(self.breaker))
            }
            Step::ForceClosed => {
                self.breaker.force_closed().unwrap();
                seen(state(self.breaker))
            }
            Step::Reset => {
                self.breaker.reset().unwrap();
                seen(state(self.breaker))
            }
            Step::Override(pick) => {
                self.breaker.set_overrides(OVERRIDES[pick]).unwrap();
                seen(state(self.breaker))
            }
        }
    }
}

/// The servers and files the shared implementations live in, one set per policy's test.
///
/// Each test's time is its own manual clock, which only moves forward; a table or file
/// shared by two tests would see one test's writes delete the other's rows as expired,
/// since the SQL storages delete expired rows as they go.
struct Backends {
    _redis: RedisServer,
    redis: redis::Client,
    postgres: PostgresStorage,
    _cleanup: circuitpy_tests::postgres::Cleanup,
    sqlite: SqliteStorage,
    reference: Reference,
}

impl Backends {
    fn start(name: &str) -> Option<Backends> {
        let redis = RedisServer::start()?;
        let url = circuitpy_tests::postgres::server()?;
        let table = circuitpy_tests::postgres::fresh_table(name);
        let cleanup = circuitpy_tests::postgres::cleanup(&url, &table);
        let postgres =
            PostgresStorage::connect_with(&url, circuitpy_tests::postgres::options(&table))
                .expect("PostgreSQL storage");
        let sqlite = SqliteStorage::open(circuitpy_tests::sqlite::fresh_database(name))
            .expect("SQLite storage");
        Some(Backends {
            redis: redis.client(),
            _redis: redis,
            postgres,
            _cleanup: cleanup,
            sqlite,
            reference: Reference::new(),
        })
    }
}

thread_local! {
    /// A fresh key for each case: every shared implementation starts closed.
    static CASE: Cell<u64> = const { Cell::new(0) };
}

fn run_case<H: CircuitBreaker<Storage = MemoryStorage>>(
    handler: H,
    clock: &ManualClock,
    map: &'static MemoryStorage,
    backends: &Option<Backends>,
    steps: &[Step],
) {
    let Some(backends) = backends else { return };
    let case = CASE.with(|case| {
        case.set(case.get() + 1);
        case.get()
    });
    let key = format!("case-{}-{case}", std::process::id());
    let config = Config::of::<H>();
    let breaker = Breaker::keyed(handler, &key);
    let breaker_key = breaker.key();
    let mut memory = InMemory {
        breaker: &breaker,
        held: Vec::new(),
    };
    let reference = |request: &Request<'_>| backends.reference.execute(request).unwrap();
    let primitives = |request: &Request<'_>| circuitpy::primitive::execute(map, request).unwrap();
    let redis = |request: &Request<'_>| Storage::execute(&backends.redis, request).unwrap();
    let postgres = |request: &Request<'_>| backends.postgres.execute(request).unwrap();
    let sqlite = |request: &Request<'_>| backends.sqlite.execute(request).unwrap();
    let mut shared = [
        Shared {
            name: "row machine",
            storage: &reference,
            counts: true,
            held: Vec::new(),
            overrides: true,
            retired: false,
        },
        Shared {
            name: "primitive protocol",
            storage: &primitives,
            counts: false,
            held: Vec::new(),
            overrides: false,
            retired: false,
        },
        Shared {
            name: "Redis script",
            storage: &redis,
            counts: true,
            held: Vec::new(),
            overrides: true,
            retired: false,
        },
        Shared {
            name: "PostgreSQL function",
            storage: &postgres,
            counts: true,
            held: Vec::new(),
            overrides: true,
            retired: false,
        },
        Shared {
            name: "SQLite",
            storage: &sqlite,
            counts: true,
            held: Vec::new(),
            overrides: true,
            retired: false,
        },
    ];
    // Under a quorum the row machine is the reference, and the primitive protocol (which
    // cannot keep reporters) sits out.
    let quorate = config.quorum > 1;
    shared[1].retired = quorate;
    let mut history = Vec::new();
    for step in steps {
        if let Step::Advance(ms) = step {
            clock.advance(Duration::from_millis(*ms));
        }
        let at = clock.clock().elapsed();
        history.push(*step);
        let expected = if quorate {
            shared[0].apply(*step, &breaker_key, &config, at)
        } else {
            memory.apply(*step)
        };
        let mut counted: Option<(&str, u64)> = None;
        let mut deadline: Option<(&str, Duration)> = None;
        if quorate {
            counted = expected.failures.map(|count| ("row machine", count));
            deadline = expected.retry_in.map(|retry_in| ("row machine", retry_in));
        }
        for implementation in shared.iter_mut().skip(usize::from(quorate)) {
            if matches!(step, Step::Override(_)) && !implementation.overrides {
                implementation.retired = true;
            }
            if implementation.retired {
                continue;
            }
            let seen = implementation.apply(*step, &breaker_key, &config, at);
            let agrees = seen.state == expected.state
                && (seen.permit.is_none()
                    || expected.permit.is_none()
                    || seen.permit == expected.permit);
            assert!(
                agrees,
                "{} disagrees with the {} after {history:?}: it saw {seen:?}, the reference {expected:?}",
                implementation.name,
                if quorate {
                    "row machine"
                } else {
                    "packed word"
                }
            );
            if let Some(retry_in) = seen.retry_in {
                match deadline {
                    None => deadline = Some((implementation.name, retry_in)),
                    Some((first, expected)) => assert_eq!(
                        retry_in, expected,
                        "{} opens until {retry_in:?} from now, {first} {expected:?}, after {history:?}",
                        implementation.name
                    ),
                }
            }
            if let Some(failures) = seen.failures {
                match counted {
                    None => counted = Some((implementation.name, failures)),
                    Some((first, count)) => assert_eq!(
                        failures, count,
                        "{} counts {failures} failures, {first} {count}, after {history:?}",
                        implementation.name
                    ),
                }
            }
        }
    }
}

macro_rules! backends {
    ($name:literal) => {{
        static BACKENDS: LazyLock<Option<Backends>> = LazyLock::new(|| Backends::start($name));
        &*BACKENDS
    }};
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn consecutive(steps in prop::collection::vec(step(), 1..80)) {
        run_case(Consecutive, Consecutive::clock(), Consecutive::memory(), backends!("consecutive"), &steps);
    }

    #[test]
    fn count_in_window(steps in prop::collection::vec(step(), 1..80)) {
        run_case(Windowed, Windowed::clock(), Windowed::memory(), backends!("windowed"), &steps);
    }

    #[test]
    fn backoff(steps in prop::collection::vec(step(), 1..80)) {
        run_case(Backedoff, Backedoff::clock(), Backedoff::memory(), backends!("backoff"), &steps);
    }

    #[test]
    fn jitter(steps in prop::collection::vec(step(), 1..80)) {
        run_case(Jittered, Jittered::clock(), Jittered::memory(), backends!("jitter"), &steps);
    }

    #[test]
    fn rate(steps in prop::collection::vec(step(), 1..80)) {
        run_case(Rated, Rated::clock(), Rated::memory(), backends!("rated"), &steps);
    }

    #[test]
    fn quorum_consecutive(steps in prop::collection::vec(quorum_step(), 1..80)) {
        run_case(QuorateConsecutive, QuorateConsecutive::clock(), QuorateConsecutive::memory(), backends!("quorum_consecutive"), &steps);
    }

    #[test]
    fn quorum_count_in_window(steps in prop::collection::vec(quorum_step(), 1..80)) {
        run_case(QuorateWindowed, QuorateWindowed::clock(), QuorateWindowed::memory(), backends!("quorum_windowed"), &steps);
    }

    #[test]
    fn quorum_rate(steps in prop::collection::vec(quorum_step(), 1..80)) {
        run_case(QuorateRated, QuorateRated::clock(), QuorateRated::memory(), backends!("quorum_rated"), &steps);
    }
}

/// The sequences an overridden backoff must decide alike, spelled out: random cases reach a
/// failed trial round under an override too rarely to be relied on.
#[test]
fn overridden_backoffs_decide_alike() {
    use Step::*;
    let reopen = [
        Failure,
        Failure,
        Failure,
        Advance(1_000),
        Acquire,
        TrialFailure(0),
        Read,
    ];
    let mut doubled = vec![Override(1)];
    doubled.extend(reopen);
    // Open for 2 s after the failed round: open a millisecond before, half-open at 2 s.
    doubled.extend([
        Advance(1_999),
        Read,
        Advance(1),
        Read,
        Acquire,
        TrialFailure(0),
        Read,
    ]);
    doubled.extend([Advance(3_999), Read, Advance(1), Read]);
    let backends = backends!("overridden");
    run_case(
        Overridden,
        Overridden::clock(),
        Overridden::memory(),
        backends,
        &doubled,
    );
    // The handler's backoff overridden off: 1 s after every failed round.
    let mut off = vec![Override(2)];
    off.extend(reopen);
    off.extend([Advance(999), Read, Advance(1), Read]);
    run_case(
        OverriddenBackoff,
        OverriddenBackoff::clock(),
        OverriddenBackoff::memory(),
        backends,
        &off,
    );
}
