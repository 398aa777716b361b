//! Both cluster storages pass the conformance kit.

use circuitpy::testing::{Options, check_async_storage, check_storage};
use circuitpy_tests::redis_cluster::RedisCluster;

#[test]
fn cluster_client_passes_the_kit_blocking() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let client: &'static redis::cluster::ClusterClient = Box::leak(Box::new(cluster.client()));
    let report =
        check_storage(client, Options::default()).unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
}

#[test]
fn cluster_connection_passes_the_kit_async() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connection = cluster.client().get_async_connection().await.unwrap();
        let connection: &'static redis::cluster_async::ClusterConnection =
            Box::leak(Box::new(connection));
        let report = check_async_storage(connection, Options::default())
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
    });
}

/// The blocking storage waits on its own runtime: it works from inside the caller's too.
#[test]
fn cluster_client_works_inside_an_async_runtime() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let client: &'static redis::cluster::ClusterClient = Box::leak(Box::new(cluster.client()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use circuitpy::Storage;
        assert_eq!(
            client
                .increment("inside-runtime:{n}", std::time::Duration::from_secs(5))
                .unwrap(),
            1
        );
        assert_eq!(client.get_count("inside-runtime:{n}").unwrap(), 1);
    });
}
