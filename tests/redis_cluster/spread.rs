//! Many breakers on one cluster: their keys spread over every primary, each breaker works
//! on its own, and the script is loaded again where a node lost it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, State};
use circuitpy_tests::redis_cluster::RedisCluster;
use redis::cluster::ClusterClient;

static CLIENT: OnceLock<ClusterClient> = OnceLock::new();

struct Spread;

impl CircuitBreaker for Spread {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
    const FAILURE_KEY: &'static str = "spread";
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
    type Storage = ClusterClient;
    fn storage(&self) -> &ClusterClient {
        CLIENT.get().expect("set by the test")
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

const BREAKERS: usize = 300;

#[test]
fn three_hundred_breakers_spread_over_every_primary_and_each_works() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    assert!(CLIENT.set(cluster.client()).is_ok(), "set once");
    let run = std::process::id();
    let keys: Vec<String> = (0..BREAKERS).map(|i| format!("{run}-{i}")).collect();

    // Every even breaker trips (two failures), every odd one sees successes only.
    std::thread::scope(|scope| {
        for chunk in keys.chunks(BREAKERS / 4) {
            scope.spawn(move || {
                for key in chunk {
                    let breaker = Breaker::keyed(Spread, key);
                    let index: usize = key.rsplit('-').next().unwrap().parse().unwrap();
                    for _ in 0..2 {
                        if index.is_multiple_of(2) {
                            let _ = breaker.call(|| Err::<(), E>(E::Down));
                        } else {
                            breaker.call(|| Ok::<(), E>(())).unwrap();
                        }
                    }
                }
            });
        }
    });

    let primaries: BTreeSet<u16> = cluster
        .topology()
        .iter()
        .filter(|node| node.primary)
        .map(|node| node.port)
        .collect();
    assert_eq!(primaries.len(), 3, "three primaries");
    let mut per_primary: BTreeMap<u16, usize> = BTreeMap::new();
    let topology = cluster.topology();
    for (index, key) in keys.iter().enumerate() {
        let hash = format!("circuitpy:{{spread:{key}}}:state");
        let slot = cluster.slot(&hash);
        let owner = topology
            .iter()
            .find(|node| node.primary && node.serves(slot))
            .expect("an owner");
        *per_primary.entry(owner.port).or_default() += 1;
        let tripped = index.is_multiple_of(2);
        // A tripped breaker's hash is on the primary owning its slot (a closed breaker that
        // never failed writes nothing).
        let exists: bool = redis::cmd("EXISTS")
            .arg(&hash)
            .query(&mut cluster.node(owner.port))
            .unwrap();
        assert_eq!(
            exists, tripped,
            "{hash} (slot {slot}) on its owner {}",
            owner.port
        );

        let expected = if tripped { State::Open } else { State::Closed };
        assert_eq!(
            Breaker::keyed(Spread, key).state().unwrap(),
            expected,
            "{key}"
        );
    }
    eprintln!("breakers per primary: {per_primary:?}");
    assert_eq!(
        per_primary.keys().copied().collect::<BTreeSet<_>>(),
        primaries,
        "keys landed on every primary"
    );
    assert!(per_primary.values().all(|&count| count >= BREAKERS / 10));
}

#[test]
fn the_script_is_loaded_again_after_a_node_forgot_it() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let client: &'static ClusterClient = Box::leak(Box::new(cluster.client()));
    let config = circuitpy::Config::of::<Spread>();
    let key = format!("noscript-{}", std::process::id());
    let read = |client: &ClusterClient| {
        use circuitpy::Storage;
        client
            .execute(&circuitpy::Request::new(
                &key,
                circuitpy::Op::Failure,
                &config,
            ))
            .unwrap()
            .state
    };
    assert_eq!(read(client), State::Closed);
    for port in cluster.live_ports() {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut cluster.node(port))
            .unwrap();
    }
    // NOSCRIPT from the owner, SCRIPT LOAD, EVALSHA again: the second failure trips it.
    assert_eq!(read(client), State::Open);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use circuitpy::AsyncStorage;
        let connection = cluster.client().get_async_connection().await.unwrap();
        for port in cluster.live_ports() {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query(&mut cluster.node(port))
                .unwrap();
        }
        let snapshot = connection
            .execute(&circuitpy::Request::new(&key, circuitpy::Op::Read, &config))
            .await
            .unwrap();
        assert_eq!(snapshot.state, State::Open);
    });
}
