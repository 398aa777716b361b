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
