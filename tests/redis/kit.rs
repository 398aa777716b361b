//! The Redis storages pass the conformance kit, blocking and async, against a real server.

use circuitpy::testing::{Options, check_async_storage, check_storage};
use circuitpy_tests::redis::RedisServer;

#[test]
fn redis_client_passes_the_kit_blocking() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client: &'static redis::Client = Box::leak(Box::new(server.client()));
    let report =
        check_storage(client, Options::default()).unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
    assert!(
        report
            .rules
            .contains(&"a-second-reporter-completes-the-quorum")
    );
}

#[test]
fn redis_connections_pass_the_kit_async() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client: &'static redis::Client = Box::leak(Box::new(server.client()));
        let report = check_async_storage(client, Options::default())
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
        let manager = redis::aio::ConnectionManager::new(server.client())
            .await
            .unwrap();
        let manager: &'static redis::aio::ConnectionManager = Box::leak(Box::new(manager));
        check_async_storage(manager, Options::default())
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
    });
}

/// The pool of the deadpool-redis test, made by it.
#[cfg(feature = "deadpool-redis")]
static POOL: std::sync::OnceLock<deadpool_redis::Pool> = std::sync::OnceLock::new();

/// A handler on that pool, waiting at most 100 ms for the storage.
#[cfg(feature = "deadpool-redis")]
struct Pooled;

#[cfg(feature = "deadpool-redis")]
impl circuitpy::CircuitBreaker for Pooled {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    const FAILURE_KEY: &'static str = "pooled";
    const STORAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);
    type Storage = deadpool_redis::Pool;
    fn storage(&self) -> &deadpool_redis::Pool {
        POOL.get().expect("made by the test")
    }
}

/// The application's own deadpool-redis pool: the kit passes, and waiting for a connection
/// from an exhausted pool ends at the handler's storage timeout.
#[cfg(feature = "deadpool-redis")]
#[test]
fn a_deadpool_redis_pool_passes_the_kit_and_bounds_the_wait_for_a_connection() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // The kit's futures over a pool are deep in a debug build: they run on a worker with
    // room for them, not on the test's own thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(16 << 20)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    runtime.block_on(async move { tokio::spawn(pool_checks(url)).await.unwrap() });
}

#[cfg(feature = "deadpool-redis")]
async fn pool_checks(url: String) {
    use std::time::{Duration, Instant};

    use circuitpy::{Breaker, State};

    let mut config = deadpool_redis::Config::from_url(url);
    config.pool = Some(deadpool_redis::PoolConfig::new(1));
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let pool = POOL.get_or_init(|| pool);
    let report = check_async_storage(pool, Options::default())
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));

    // The pool's one connection is taken: the breaker's wait ends at its timeout.
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let error = Breaker::new(Pooled).state_async().await.unwrap_err();
    let waited = started.elapsed();
    assert!(error.is_timeout(), "{error}");
    assert!(
        waited >= <Pooled as circuitpy::CircuitBreaker>::STORAGE_TIMEOUT
            && waited < Duration::from_secs(2),
        "waited {waited:?}"
    );
    drop(held);
    assert_eq!(
        Breaker::new(Pooled).state_async().await.unwrap(),
        State::Closed
    );
}
