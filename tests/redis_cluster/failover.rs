//! A primary killed under load: how long calls go to the storage-failure policy until its
//! replica is promoted, and whether a tripped breaker survives on the promoted replica. On
//! a cluster of its own, since the test kills one of its nodes.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, Config, OnStorageFailure, Op, Rejection, Request,
    State, Storage,
};
use circuitpy_tests::redis_cluster::{NODE_TIMEOUT_MS, RedisCluster};
use circuitpy_tests::services;
use redis::cluster::ClusterClient;

static CLIENT: OnceLock<ClusterClient> = OnceLock::new();
static STORAGE_ERRORS: AtomicU32 = AtomicU32::new(0);

const TIMEOUT: Duration = Duration::from_millis(200);

/// Fails closed, so every call the storage cannot decide is counted as rejected.
struct Failover;

impl CircuitBreaker for Failover {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
    const FAILURE_KEY: &'static str = "failover";
    const STORAGE_TIMEOUT: Duration = TIMEOUT;
    const ON_STORAGE_FAILURE: OnStorageFailure = OnStorageFailure::Reject;
    type Storage = ClusterClient;
    fn storage(&self) -> &ClusterClient {
        CLIENT.get().expect("set by the test")
    }
    fn on_storage_error(&self, _key: &str, _error: &circuitpy::StorageError) {
        STORAGE_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
enum E {
    Down,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for E {
    fn from(open: CircuitBreakerOpen) -> Self {
        E::Open(open)
    }
}

fn state_hash(key: &str) -> String {
    format!("circuitpy:{{failover:{key}}}:state")
}

/// Commands per command name on one node, from `INFO commandstats`.
fn command_stats(connection: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(connection)
        .unwrap();
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// What the load thread saw.
#[derive(Default)]
struct Load {
    calls: u32,
    /// Calls rejected because the storage failed (fail-closed policy).
    storage_failed: u32,
    /// The start and end of the first and last call the storage failed.
    first_failure: Option<Instant>,
    last_failure: Option<Instant>,
    longest: Duration,
}

fn load(breaker: &Breaker<Failover>, stop: &AtomicBool) -> Load {
    let mut seen = Load::default();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let result = breaker.call(|| Ok::<(), E>(()));
        let ended = Instant::now();
        seen.calls += 1;
        seen.longest = seen.longest.max(ended - started);
        if let Err(E::Open(open)) = &result {
            assert!(
                matches!(open.reason(), Rejection::StorageFailed(_)),
                "the load breaker never trips: {open:?}"
            );
            seen.storage_failed += 1;
            seen.first_failure.get_or_insert(started);
            seen.last_failure = Some(ended);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    seen
}

#[test]
fn a_killed_primary_fails_over_and_a_tripped_breaker_survives() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    assert!(CLIENT.set(cluster.client()).is_ok(), "set once");
    let config = Config::of::<Failover>();

    // The tripped breaker, and a load breaker on the same primary.
    let tripped = Breaker::keyed(Failover, "tripped");
    let victim = cluster.owner(cluster.slot(&state_hash("tripped")));
    let load_key = (0..)
        .map(|i| format!("load-{i}"))
        .find(|key| cluster.owner(cluster.slot(&state_hash(key))).port == victim.port)
        .unwrap();
    let loaded = Breaker::keyed(Failover, &load_key);

    // One EVALSHA per operation, on the owning primary only (once the connection is made
    // and the script loaded: the first call finds NOSCRIPT, loads it and sends it again).
    let client = CLIENT.get().unwrap();
    let full_key = format!("failover:{load_key}");
    client
        .execute(&Request::new(&full_key, Op::Read, &config))
        .unwrap();
    let mut owner = cluster.node(victim.port);
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut owner)
        .unwrap();
    for _ in 0..10 {
        client
            .execute(&Request::new(&full_key, Op::Read, &config))
            .unwrap();
    }
    let stats = command_stats(&mut owner);
    assert_eq!(stats.get("evalsha"), Some(&10), "{stats:?}");
    let others: Vec<_> = stats
        .keys()
        // A replica's acknowledgements (`replconf`) reach the primary by themselves.
        .filter(|name| {
            !["evalsha", "config|resetstat", "info", "replconf"].contains(&name.as_str())
        })
        .collect();
    // The script's own commands show too; nothing else was sent.
    assert!(
        others
            .iter()
            .all(|name| { ["exists", "hgetall", "time", "pttl", "type"].contains(&name.as_str()) }),
        "{stats:?}"
    );

    for _ in 0..3 {
        let _ = tripped.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(tripped.state().unwrap(), State::Open);
    // Replication is asynchronous: a write acknowledged just before its primary dies may
    // never have reached the replica. Waiting for one replica makes this one survive.
    let acknowledged: u32 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut owner)
        .unwrap();
    assert_eq!(acknowledged, 1, "the replica has the tripped breaker");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let async_connection = runtime
        .block_on(cluster.client().get_async_connection())
        .unwrap();

    let stop = AtomicBool::new(false);
    let (seen, killed_at, promoted_after) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(&loaded, &stop));
        std::thread::sleep(Duration::from_millis(300));
        let killed_at = Instant::now();
        cluster.kill(victim.port);
        // Until a replica serves the slot and the cluster is whole again.
        let deadline = killed_at + Duration::from_secs(30);
        loop {
            let owner = cluster.topology().into_iter().find(|node| {
                node.primary && !node.failed && node.serves(cluster.slot(&state_hash("tripped")))
            });
            if owner.is_some_and(|owner| owner.port != victim.port) {
                break;
            }
            assert!(Instant::now() < deadline, "no replica was promoted");
            std::thread::sleep(Duration::from_millis(20));
        }
        let promoted_after = killed_at.elapsed();
        cluster.wait_ok(Duration::from_secs(10));
        // Calls go through again; keep loading a little to see none fails after.
        let calm = Instant::now();
        while calm.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        (loader.join().unwrap(), killed_at, promoted_after)
    });

    let window = seen.last_failure.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(killed_at)
    });
    services::notice(&format!(
        "CLUSTER FAILOVER (cluster-node-timeout {NODE_TIMEOUT_MS} ms, storage timeout {TIMEOUT:?}): \
         calls went to the storage-failure policy for {window:?} after the primary was killed \
         ({} of {} calls rejected with StorageFailed, {} storage errors); the replica was \
         promoted after {promoted_after:?}; longest call {:?}",
        seen.storage_failed,
        seen.calls,
        STORAGE_ERRORS.load(Ordering::SeqCst),
        seen.longest,
    ));
    assert!(seen.storage_failed > 0, "the kill was felt");
    assert!(
        seen.first_failure
            .is_some_and(|first| first >= killed_at - TIMEOUT),
        "no call failed before the kill"
    );
    // A bound on a hang, not a measure of speed.
    assert!(
        seen.longest < TIMEOUT + Duration::from_secs(1),
        "{:?}",
        seen.longest
    );

    // The tripped breaker survived on the promoted replica: blocking and async alike.
    let new_owner = cluster.owner(cluster.slot(&state_hash("tripped")));
    assert_ne!(new_owner.port, victim.port);
    assert_eq!(new_owner.primary_id, None);
    assert_eq!(tripped.state().unwrap(), State::Open);
    let exists: bool = redis::cmd("EXISTS")
        .arg(state_hash("tripped"))
        .query(&mut cluster.node(new_owner.port))
        .unwrap();
    assert!(exists);
    runtime.block_on(async {
        use circuitpy::AsyncStorage;
        let snapshot = async_connection
            .execute(&Request::new("failover:tripped", Op::Read, &config))
            .await
            .unwrap();
        assert_eq!(snapshot.state, State::Open);
    });
    assert!(loaded.call(|| Ok::<(), E>(())).is_ok());
}
