//! Several OS processes share one breaker through the cluster: the parent re-runs this test
//! binary as children (`cluster_fleet_child`, ignored unless run that way), which fail at an
//! agreed wall-clock instant and report what they saw on stdout.

use std::process::Command;
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, State};
use circuitpy_tests::redis_cluster::RedisCluster;
use circuitpy_tests::test_name;
use redis::cluster::ClusterClient;

const CHILDREN: usize = 4;
const THREADS: usize = 5;
const THRESHOLD: u32 = (CHILDREN * THREADS) as u32 + 1;

/// The nodes' URLs, comma-separated: in the parent and the children alike.
const URLS_VAR: &str = "CIRCUITPY_CLUSTER_URLS";
/// The breaker's per-call key, the same in every process of one run.
const KEY_VAR: &str = "CIRCUITPY_CLUSTER_FLEET_KEY";

/// The URLs and the key in the parent; children get them from `URLS_VAR` and `KEY_VAR`.
static URLS: OnceLock<String> = OnceLock::new();
static KEY: OnceLock<String> = OnceLock::new();

fn given(cell: &OnceLock<String>, var: &str) -> String {
    cell.get()
        .cloned()
        .unwrap_or_else(|| std::env::var(var).expect("set by the parent test"))
}

static CLIENT: LazyLock<ClusterClient> =
    LazyLock::new(|| ClusterClient::new(given(&URLS, URLS_VAR).split(',')).expect("valid URLs"));

struct Fleet;

impl CircuitBreaker for Fleet {
    const FAILURE_THRESHOLD: u32 = THRESHOLD;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
    const FAILURE_KEY: &'static str = "cluster-fleet";
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
    type Storage = ClusterClient;
    fn storage(&self) -> &ClusterClient {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn breaker() -> Breaker<Fleet> {
    Breaker::keyed(Fleet, &given(&KEY, KEY_VAR))
}

#[test]
#[ignore = "run by the cluster fleet test as a child process"]
fn cluster_fleet_child() {
    let Ok(phase) = std::env::var("CIRCUITPY_CLUSTER_FLEET_PHASE") else {
        return;
    };
    match phase.as_str() {
        "fail" => {
            let start: u64 = std::env::var("CIRCUITPY_CLUSTER_FLEET_START")
                .unwrap()
                .parse()
                .unwrap();
            let breaker = breaker();
            let ran = std::sync::atomic::AtomicU32::new(0);
            std::thread::scope(|scope| {
                for _ in 0..THREADS {
                    scope.spawn(|| {
                        let wait = start.saturating_sub(now_ms());
                        std::thread::sleep(Duration::from_millis(wait));
                        let _ = breaker.call(|| {
                            ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Err::<(), E>(E::Down)
                        });
                    });
                }
            });
            println!("FLEET ran {}", ran.into_inner());
        }
        "read" => println!("FLEET state {:?}", breaker().state().unwrap()),
        other => panic!("unknown phase {other}"),
    }
}

/// Runs `CHILDREN` children in `phase`; their reports.
fn run_children(phase: &str) -> Vec<String> {
    let start = now_ms() + 1500;
    let child_test = test_name!(cluster_fleet_child);
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", &child_test, "--nocapture", "--ignored"])
                .env(URLS_VAR, URLS.get().unwrap())
                .env(KEY_VAR, KEY.get().unwrap())
                .env("CIRCUITPY_CLUSTER_FLEET_PHASE", phase)
                .env("CIRCUITPY_CLUSTER_FLEET_START", start.to_string())
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
    assert_eq!(lines.len(), CHILDREN, "every child reported: {lines:?}");
    lines
}

#[test]
fn processes_share_one_breaker_through_the_cluster() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let key = format!("run-{}", std::process::id());
    URLS.set(cluster.urls().join(",")).unwrap();
    KEY.set(key.clone()).unwrap();

    let reports = run_children("fail");
    let ran: u32 = reports
        .iter()
        .map(|line| line.strip_prefix("ran ").unwrap().parse::<u32>().unwrap())
        .sum();
    assert_eq!(ran, THRESHOLD - 1);
    // Every concurrent failure from every process was counted, on the owning primary.
    let hash = format!("circuitpy:{{cluster-fleet:{key}}}:state");
    let owner = cluster.owner(cluster.slot(&hash));
    let failures: u32 = redis::cmd("HGET")
        .arg(&hash)
        .arg("f")
        .query(&mut cluster.node(owner.port))
        .unwrap();
    assert_eq!(failures, THRESHOLD - 1);
    assert_eq!(breaker().state().unwrap(), State::Closed);

    // This process's failure is the threshold's: every process sees it open.
    let _ = breaker().call(|| Err::<(), E>(E::Down));
    assert_eq!(breaker().state().unwrap(), State::Open);
    for line in run_children("read") {
        assert_eq!(line, "state Open");
    }
}
