//! The same breaker from several processes: a test binary re-runs one of its own tests as
//! child processes, which all talk to the storage the parent checks.
//!
//! ```no_run
//! use circuitpy::testing::processes;
//! # fn open_storage() -> &'static circuitpy::MemoryStorage { unimplemented!() }
//!
//! #[test]
//! fn fleet() {
//!     // The children find the storage the same way the parent does (a path, a URL).
//!     processes::check_across_processes(open_storage(), "fleet_child", 4, &[]).unwrap();
//! }
//!
//! #[test]
//! #[ignore = "run by fleet() as a child process"]
//! fn fleet_child() {
//!     processes::run_child(open_storage());
//! }
//! ```

use std::io::Write;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::kit::{Kit, KitError, Profile, broke, random_prefix};
use super::{Failure, Report};
use crate::breaker::Breaker;
use crate::error::Rejection;
use crate::handler::State;
use crate::policy::{Config, FailurePolicy};
use crate::storage::{Op, Request, Storage};

/// The recovery timeout of the breaker the processes share.
pub const FLEET_RECOVERY: Duration = Duration::from_secs(2);

struct Fleet;
impl Profile for Fleet {
    const KEY: &'static str = "fleet";
    const THRESHOLD: u32 = 20;
    const TRIALS: u32 = 3;
}

/// Callers per child process.
const THREADS: usize = 3;

fn config<S: Storage + 'static>() -> Config {
    let mut config = Config::of::<Kit<S, Fleet>>();
    config.recovery_timeout = FLEET_RECOVERY;
    config
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// Runs one phase in a child process, when this process is one (the parent sets the
/// environment); does nothing otherwise.
pub fn run_child<S: Storage + 'static>(storage: &S) {
    let (Ok(phase), Ok(key), Ok(start), Ok(out)) = (
        std::env::var("CIRCUITPY_KIT_PHASE"),
        std::env::var("CIRCUITPY_KIT_KEY"),
        std::env::var("CIRCUITPY_KIT_START"),
        std::env::var("CIRCUITPY_KIT_OUT"),
    ) else {
        return;
    };
    let config = config::<S>();
    let op = if phase == "fail" {
        Op::Failure
    } else {
        Op::AcquireTrial
    };
    let start: u128 = start.parse().unwrap_or(0);
    while unix_millis() < start {
        std::thread::sleep(Duration::from_millis(1));
    }
    let lines: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let request = Request::new(&key, op, &config);
                    let mut lines = Vec::new();
                    for _ in 0..1000 {
                        let line = match storage.execute(&request) {
                            Ok(snapshot) => match (op, snapshot.state) {
                                (Op::Failure, State::Closed) => {
                                    format!("closed {}", snapshot.failures)
                                }
                                (Op::Failure, State::Open) => "open".to_owned(),
                                (_, State::HalfOpen) => format!("permit {}", snapshot.permit),
                                (_, state) => format!("unexpected {state}"),
                            },
                            Err(error) => format!("error {error}"),
                        };
                        let last = op == Op::AcquireTrial || line == "open";
                        lines.push(line);
                        if last {
                            break;
                        }
                    }
                    lines
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_default())
            .collect()
    });
    let mut file = std::fs::File::create(out).expect("the parent's output file");
    for line in lines {
        writeln!(file, "{line}").expect("the parent's output file");
    }
}

fn spawn_phase(
    test: &str,
    processes: usize,
    phase: &str,
    key: &str,
    env: &[(&str, &str)],
) -> Result<Vec<String>, Failure> {
    let rule = "processes-ran";
    let exe = std::env::current_exe().map_err(|e| broke(rule, e.to_string()))?;
    let start = unix_millis() + 400;
    let dir = std::env::temp_dir();
    let children: Vec<_> = (0..processes)
        .map(|n| {
            let out = dir.join(format!("{key}-{phase}-{n}.out"));
            let child = Command::new(&exe)
                .args([
                    test,
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("CIRCUITPY_KIT_PHASE", phase)
                .env("CIRCUITPY_KIT_KEY", key)
                .env("CIRCUITPY_KIT_START", start.to_string())
                .env("CIRCUITPY_KIT_OUT", &out)
                .env("CIRCUITPY_KIT_CHILD", n.to_string())
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::null())
                .spawn();
            (out, child)
        })
        .collect();
    let mut lines = Vec::new();
    for (out, child) in children {
        let status = child
            .and_then(|mut child| child.wait())
            .map_err(|e| broke(rule, format!("could not run a child process: {e}")))?;
        if !status.success() {
            return Err(broke(rule, format!("a child process exited with {status}")));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| {
            broke(
                rule,
                format!("the child wrote no result ({e}): is `{test}` an #[ignore]d test calling run_child?"),
            )
        })?;
        let _ = std::fs::remove_file(&out);
        lines.extend(text.lines().map(str::to_owned));
    }
    if let Some(error) = lines
        .iter()
        .find(|line| line.starts_with("error") || line.starts_with("unexpected"))
    {
        return Err(broke(rule, format!("a child saw: {error}")));
    }
    Ok(lines)
}

/// Runs `processes` copies of the test named `child_test` (which calls [`run_child`]
/// with the same storage) against one breaker: concurrent failures from every process
/// trip it at exactly the threshold, and each half-open round admits exactly
/// `HALF_OPEN_TRIALS` trials across all of them. `env` is added to the children's
/// environment, to tell them where the storage is.
pub fn check_across_processes<S: Storage + 'static>(
    storage: &S,
    child_test: &str,
    processes: usize,
    env: &[(&str, &str)],
) -> Result<Report, Failure> {
    let started = std::time::Instant::now();
    let prefix = random_prefix();
    let key = format!("{prefix}-fleet");
    let config = config::<S>();
    let request = |op| Request::new(&key, op, &config);
    let mut rules = Vec::new();

    let rule = "processes-trip-at-exactly-the-threshold";
    let lines = spawn_phase(child_test, processes, "fail", &key, env)?;
    let mut closed: Vec<u64> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("closed ")?.parse().ok())
        .collect();
    closed.sort_unstable();
    let expected: Vec<u64> = (1..u64::from(Fleet::THRESHOLD)).collect();
    if closed != expected {
        return Err(broke(
            rule,
            format!(
                "{processes} processes failing at once: the failures answered closed counted {closed:?}, expected {expected:?}"
            ),
        ));
    }
    let state = storage
        .execute(&request(Op::Read))
        .map_err(|e| broke(rule, e.to_string()))?
        .state;
    if state != State::Open {
        return Err(broke(
            rule,
            format!("after the failures the breaker read {state}"),
        ));
    }
    rules.push(rule);

    let rule = "processes-share-exactly-k-trials-per-round";
    for round in 1..=2 {
        std::thread::sleep(FLEET_RECOVERY + Duration::from_millis(300));
        let lines = spawn_phase(child_test, processes, "acquire", &key, env)?;
        let permits = lines.iter().filter(|line| *line == "permit true").count();
        if permits != Fleet::TRIALS as usize || lines.len() != processes * THREADS {
            return Err(broke(
                rule,
                format!(
                    "round {round}: {} trial requests from {processes} processes got {permits} permits, expected {}",
                    lines.len(),
                    Fleet::TRIALS
                ),
            ));
        }
        if round == 1 {
            let state = storage
                .execute(&request(Op::TrialFailure))
                .map_err(|e| broke(rule, e.to_string()))?
                .state;
            if state != State::Open {
                return Err(broke(
                    rule,
                    format!("a failed trial left the breaker {state}"),
                ));
            }
        }
    }
    for _ in 0..Fleet::TRIALS {
        storage
            .execute(&request(Op::TrialSuccess))
            .map_err(|e| broke(rule, e.to_string()))?;
    }
    let state = storage
        .execute(&request(Op::Read))
        .map_err(|e| broke(rule, e.to_string()))?
        .state;
    if state != State::Closed {
        return Err(broke(
            rule,
            format!("after every trial succeeded the breaker read {state}"),
        ));
    }
    rules.push(rule);
    Ok(Report {
        rules,
        prefix,
        elapsed: started.elapsed(),
    })
}

/// Five failures within a minute of each other, from at least three processes.
struct Quorum;
impl Profile for Quorum {
    const KEY: &'static str = "quorum";
    const THRESHOLD: u32 = 5;
    const POLICY: FailurePolicy = FailurePolicy::CountInWindow {
        window: Duration::from_secs(60),
    };
    const QUORUM: u32 = 3;
    // Long enough that no process's own breaker tries a trial during the check.
    const RECOVERY: Duration = Duration::from_secs(30);
}

/// Threshold five, opening for long enough that nothing half-opens during a check: the
/// handler an operator's runtime overrides change.
struct Tuned;
impl Profile for Tuned {
    const KEY: &'static str = "tuned";
    const THRESHOLD: u32 = 5;
    const RECOVERY: Duration = Duration::from_secs(30);
}

fn fleet_breaker<S: Send + Sync + 'static, P: Profile>(
    storage: &'static S,
    key: &str,
) -> Breaker<Kit<S, P>> {
    Breaker::keyed(
        Kit {
            storage,
            profile: std::marker::PhantomData,
        },
        key,
    )
}

/// Makes one guarded call per entry of `plan` (true: the body fails), each written as
/// `failed`, `ran` or `rejected <reason>`.
fn guarded_calls<S: Storage + 'static, P: Profile>(
    breaker: &Breaker<Kit<S, P>>,
    plan: &[bool],
) -> Vec<String> {
    plan.iter()
        .map(|&fails| {
            let result: Result<(), KitError> =
                breaker.call(|| if fails { Err(KitError::Failed) } else { Ok(()) });
            match result {
                Ok(()) => "ran".to_owned(),
                Err(KitError::Failed) => "failed".to_owned(),
                Err(KitError::Open(open)) => match open.reason() {
                    Rejection::StorageFailed(error) => format!("error {error}"),
                    reason => format!("rejected {}", reason.name()),
                },
                Err(KitError::Ignored) => "unexpected ignored error".to_owned(),
            }
        })
        .collect()
}

/// Runs one phase of [`check_quorum_across_processes`] or
/// [`check_overrides_across_processes`] in a child process, when this process is one (the
/// parent sets the environment); does nothing otherwise.
pub fn run_breaker_child<S: Storage + 'static>(storage: &'static S) {
    let (Ok(phase), Ok(key), Ok(start), Ok(out), Ok(child)) = (
        std::env::var("CIRCUITPY_KIT_PHASE"),
        std::env::var("CIRCUITPY_KIT_KEY"),
        std::env::var("CIRCUITPY_KIT_START"),
        std::env::var("CIRCUITPY_KIT_OUT"),
        std::env::var("CIRCUITPY_KIT_CHILD"),
    ) else {
        return;
    };
    let start: u128 = start.parse().unwrap_or(0);
    while unix_millis() < start {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Which calls fail: under the quorum, the sick process's (child 0 of the first phase)
    // all of them, a failing process's its first, the rest none; under overrides, the
    // first few.
    let quorum = |plan: &[bool]| guarded_calls(&fleet_breaker::<S, Quorum>(storage, &key), plan);
    let tuned = |plan: &[bool]| guarded_calls(&fleet_breaker::<S, Tuned>(storage, &key), plan);
    let lines = match (phase.as_str(), child.as_str()) {
        ("sick", "0") => quorum(&[true; 8]),
        ("sick", _) => quorum(&[false; 8]),
        ("fail", _) => quorum(&[true, false]),
        ("tuned", _) => tuned(&[true, true, false]),
        ("untuned", _) => tuned(&[true, true, true, false]),
        _ => quorum(&[false]),
    };
    let mut file = std::fs::File::create(out).expect("the parent's output file");
    for line in lines {
        writeln!(file, "{line}").expect("the parent's output file");
    }
}

/// Runs the test named `child_test` (which calls [`run_breaker_child`] with the same
/// storage) as a separate process after an operator's runtime override (as `circuitpy set`
/// stores it): with the threshold of 5 overridden to 2, the process's second failure trips
/// the breaker and its next call is rejected; with the override cleared and the breaker
/// reset, a new process's third failure leaves it closed (the handler's 5 again).
pub fn check_overrides_across_processes<S: Storage + 'static>(
    storage: &'static S,
    child_test: &str,
    env: &[(&str, &str)],
) -> Result<Report, Failure> {
    let started = std::time::Instant::now();
    let prefix = random_prefix();
    let key = format!("{prefix}-tuned");
    let breaker_key = fleet_breaker::<S, Tuned>(storage, &key).key();
    let config = Config::of::<Kit<S, Tuned>>();
    let request = |op| Request::new(&breaker_key, op, &config);
    let mut rules = Vec::new();

    let rule = "an-override-decides-in-every-process";
    storage
        .execute(&request(Op::Override).with_overrides(crate::Overrides::NONE.failure_threshold(2)))
        .map_err(|e| broke(rule, e.to_string()))?;
    let lines = spawn_phase(child_test, 1, "tuned", &key, env)?;
    if lines != ["failed", "failed", "rejected open"] {
        return Err(broke(
            rule,
            format!(
                "with the threshold of 5 overridden to 2, another process failing twice then calling saw {lines:?}"
            ),
        ));
    }
    rules.push(rule);

    let rule = "an-override-cleared-restores-the-consts-everywhere";
    for op in [Op::Override, Op::Reset] {
        storage
            .execute(&request(op))
            .map_err(|e| broke(rule, e.to_string()))?;
    }
    let lines = spawn_phase(child_test, 1, "untuned", &key, env)?;
    if lines != ["failed", "failed", "failed", "ran"] {
        return Err(broke(
            rule,
            format!(
                "with the override cleared, another process failing three times then calling saw {lines:?} (threshold 5: expected the fourth call to run)"
            ),
        ));
    }
    rules.push(rule);
    Ok(Report {
        rules,
        prefix,
        elapsed: started.elapsed(),
    })
}

/// Runs copies of the test named `child_test` (which calls [`run_breaker_child`] with the
/// same storage) as separate processes against one breaker with a quorum of three
/// (`QUORUM = 3`, five failures within a minute): one process whose every call fails while
/// three others succeed opens only its own view (it rejects, they run, the shared breaker
/// stays closed with five failures counted); a second failing process still leaves the
/// breaker closed; a third trips it, once, and then every process is rejected. `env` is
/// added to the children's environment, to tell them where the storage is.
pub fn check_quorum_across_processes<S: Storage + 'static>(
    storage: &'static S,
    child_test: &str,
    env: &[(&str, &str)],
) -> Result<Report, Failure> {
    let started = std::time::Instant::now();
    let prefix = random_prefix();
    let key = format!("{prefix}-quorum");
    let breaker_key = fleet_breaker::<S, Quorum>(storage, &key).key();
    let config = Config::of::<Kit<S, Quorum>>();
    let read = |rule| {
        storage
            .execute(&Request::new(&breaker_key, Op::Read, &config))
            .map_err(|e| broke(rule, e.to_string()))
    };
    let count = |lines: &[String], line: &str| lines.iter().filter(|l| *l == line).count();
    // One more process fails once, then calls again: what it saw, and the shared breaker.
    let one_more_fails = |rule| {
        let lines = spawn_phase(child_test, 1, "fail", &key, env)?;
        Ok::<_, Failure>((lines, read(rule)?))
    };
    let mut rules = Vec::new();

    let rule = "one-sick-process-opens-only-its-own-view";
    let lines = spawn_phase(child_test, 4, "sick", &key, env)?;
    let (failed, rejected, ran) = (
        count(&lines, "failed"),
        count(&lines, "rejected open_here"),
        count(&lines, "ran"),
    );
    let shared = read(rule)?;
    if (failed, rejected, ran) != (5, 3, 24)
        || shared.state != State::Closed
        || shared.failures != 5
    {
        return Err(broke(
            rule,
            format!(
                "one process failing 8 calls while 3 others made 8 each: {failed} failed, {rejected} rejected in that process only, {ran} ran (expected 5, 3, 24); the shared breaker read {} with {} failures (expected closed with 5)",
                shared.state, shared.failures
            ),
        ));
    }
    rules.push(rule);

    let rule = "failures-from-two-processes-are-short-of-three";
    let (lines, shared) = one_more_fails(rule)?;
    if lines != ["failed", "ran"] || shared.state != State::Closed {
        return Err(broke(
            rule,
            format!(
                "a second process failing once, then calling again, saw {lines:?} (expected the second call to run); the shared breaker read {}",
                shared.state
            ),
        ));
    }
    rules.push(rule);

    let rule = "a-third-process-trips-the-fleet-once";
    let (lines, tripped) = one_more_fails(rule)?;
    if lines != ["failed", "rejected open"] || tripped.state != State::Open {
        return Err(broke(
            rule,
            format!(
                "a third process failing once, then calling again, saw {lines:?} (expected its second call rejected by the open breaker); the shared breaker read {}",
                tripped.state
            ),
        ));
    }
    let lines = spawn_phase(child_test, 4, "after", &key, env)?;
    let after = read(rule)?;
    if count(&lines, "rejected open") != 4
        || after.state != State::Open
        || after.open_since < tripped.open_since
    {
        return Err(broke(
            rule,
            format!(
                "after the trip four new processes saw {lines:?} (expected each rejected); the breaker read {} open since {:?} (it had opened {:?} before)",
                after.state, after.open_since, tripped.open_since
            ),
        ));
    }
    rules.push(rule);
    Ok(Report {
        rules,
        prefix,
        elapsed: started.elapsed(),
    })
}
