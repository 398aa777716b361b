//! Several OS processes share one breaker through Redis. The parent test starts a server and
//! re-runs this test binary as children (`fleet_child`, ignored unless run that way), which
//! act at agreed wall-clock instants and report what they saw on stdout.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, State, circuit_breaker};
use circuitpy_tests::redis::RedisServer;
use circuitpy_tests::test_name;
use redis::Commands;

const CHILDREN: usize = 4;
const THREADS: usize = 5;
const THRESHOLD: u32 = 21;
const TRIALS: u32 = 2;
const RECOVERY: Duration = Duration::from_millis(200);
const ROUNDS: u64 = 5;
const ROUND_SPACING_MS: u64 = 700;
const TRIAL_MS: u64 = 100;

/// The server's URL in the parent; children get it from `CIRCUITPY_FLEET_URL`.
static URL: OnceLock<String> = OnceLock::new();

static CLIENT: LazyLock<redis::Client> = LazyLock::new(|| {
    let url = URL
        .get()
        .cloned()
        .unwrap_or_else(|| std::env::var("CIRCUITPY_FLEET_URL").expect("set by the parent test"));
    redis::Client::open(url).expect("a valid URL")
});

struct Fleet;

impl CircuitBreaker for Fleet {
    const FAILURE_THRESHOLD: u32 = THRESHOLD;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
    const FAILURE_KEY: &'static str = "fleet";
    const HALF_OPEN_TRIALS: u32 = TRIALS;
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
    type Storage = redis::Client;
    fn storage(&self) -> &redis::Client {
        &CLIENT
    }
    fn on_storage_error(&self, key: &str, error: &circuitpy::StorageError) {
        panic!("storage failed for {key}: {error}");
    }
}

#[derive(Debug)]
enum E {
    Down,
    #[allow(dead_code)]
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for E {
    fn from(open: CircuitBreakerOpen) -> Self {
        E::Open(open)
    }
}

static BODIES: AtomicU32 = AtomicU32::new(0);

#[circuit_breaker(handler = Fleet)]
fn failing_call(hold: Duration) -> Result<(), E> {
    BODIES.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(hold);
    Err(E::Down)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sleep_until(at_ms: u64) {
    let now = now_ms();
    if at_ms > now {
        std::thread::sleep(Duration::from_millis(at_ms - now));
    }
}

/// `THREADS` threads each make one call at `at_ms`; how many bodies ran.
fn burst(at_ms: u64, hold: Duration) -> u32 {
    let before = BODIES.load(Ordering::SeqCst);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(move || {
                sleep_until(at_ms);
                let _ = failing_call(hold);
            });
        }
    });
    BODIES.load(Ordering::SeqCst) - before
}

/// The child's side: what it does depends on `CIRCUITPY_FLEET_PHASE`.
#[test]
#[ignore = "run by the fleet tests as a child process"]
fn fleet_child() {
    let Ok(phase) = std::env::var("CIRCUITPY_FLEET_PHASE") else {
        return;
    };
    let start: u64 = std::env::var("CIRCUITPY_FLEET_START")
        .unwrap()
        .parse()
        .unwrap();
    match phase.as_str() {
        "fail" => {
            let ran = burst(start, Duration::ZERO);
            println!("FLEET ran {ran}");
        }
        "rounds" => {
            // Learn the shared state first: a process that never asked would let its first
            // call through as closed.
            Breaker::new(Fleet).state().unwrap();
            for round in 0..ROUNDS {
                let ran = burst(
                    start + round * ROUND_SPACING_MS,
                    Duration::from_millis(TRIAL_MS),
                );
                println!("FLEET round {round} ran {ran}");
            }
        }
        other => panic!("unknown phase {other}"),
    }
}

/// Runs `CHILDREN` children in `phase`, all starting at the same instant; their reports.
fn run_children(server: &RedisServer, phase: &str) -> Vec<String> {
    let start = now_ms() + 1500;
    let child_test = test_name!(fleet_child);
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", &child_test, "--nocapture", "--ignored"])
                .env("CIRCUITPY_FLEET_URL", server.url())
                .env("CIRCUITPY_FLEET_PHASE", phase)
                .env("CIRCUITPY_FLEET_START", start.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("the test binary runs again")
        })
        .collect();
    let mut lines = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "a child failed");
        let stdout = String::from_utf8(output.stdout).unwrap();
        lines.extend(
            stdout
                .lines()
                .filter_map(|line| line.strip_prefix("FLEET ").map(str::to_owned)),
        );
    }
    assert!(!lines.is_empty(), "the children reported nothing");
    lines
}

const HASH: &str = "circuitpy:{fleet}:state";

#[test]
fn a_fleet_trips_once_at_the_threshold_and_admits_k_trials_per_round() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // This process's own calls go to the same server.
    URL.set(server.url()).unwrap();
    let mut redis = server.connection();

    // 20 concurrent failures from 4 processes: none lost, no trip (threshold 21).
    let reports = run_children(&server, "fail");
    let ran: u32 = reports
        .iter()
        .map(|line| line.strip_prefix("ran ").unwrap().parse::<u32>().unwrap())
        .sum();
    assert_eq!(ran, (CHILDREN * THREADS) as u32);
    let failures: u32 = redis.hget(HASH, "f").unwrap();
    assert_eq!(
        failures,
        THRESHOLD - 1,
        "every concurrent failure was counted"
    );
    assert_eq!(Breaker::new(Fleet).state().unwrap(), State::Closed);

    // The 21st trips it, exactly once.
    let _ = failing_call(Duration::ZERO);
    assert_eq!(Breaker::new(Fleet).state().unwrap(), State::Open);
    // The time it tripped from closed identifies the trip (a failed trial reopens it but
    // keeps that time).
    let tripped_at: u64 = redis.hget(HASH, "a").unwrap();

    // More concurrent failures from processes that had not seen it open: no second trip.
    run_children(&server, "fail");
    let still: u64 = redis.hget(HASH, "a").unwrap();
    assert_eq!(still, tripped_at, "late failures do not trip it again");

    // Recovery rounds: each round, exactly TRIALS trial calls run fleet-wide; they fail and
    // the breaker opens again for the next round.
    let reports = run_children(&server, "rounds");
    for round in 0..ROUNDS {
        let prefix = format!("round {round} ran ");
        let ran: u32 = reports
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|n| n.parse::<u32>().unwrap())
            .sum();
        assert_eq!(ran, TRIALS, "round {round}: {reports:?}");
    }
    let still: u64 = redis.hget(HASH, "a").unwrap();
    assert_eq!(
        still, tripped_at,
        "failed trials reopen it, they do not trip it anew"
    );
}

#[test]
fn a_sick_process_opens_only_its_own_view_and_a_quorum_trips_the_fleet() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client: &'static redis::Client = Box::leak(Box::new(server.client()));
    let report = circuitpy::testing::processes::check_quorum_across_processes(
        client,
        &test_name!(breaker_child),
        &[("CIRCUITPY_FLEET_URL", &server.url())],
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.rules.len(), 3);
}

#[test]
#[ignore = "run by the quorum and overrides tests as a child process"]
fn breaker_child() {
    let url = std::env::var("CIRCUITPY_FLEET_URL").expect("run as a child process");
    let client = redis::Client::open(url).expect("a valid URL");
    circuitpy::testing::processes::run_breaker_child(Box::leak(Box::new(client)));
}

#[test]
fn an_operators_override_decides_in_another_process() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client: &'static redis::Client = Box::leak(Box::new(server.client()));
    let report = circuitpy::testing::processes::check_overrides_across_processes(
        client,
        &test_name!(breaker_child),
        &[("CIRCUITPY_FLEET_URL", &server.url())],
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.rules.len(), 2);
}
