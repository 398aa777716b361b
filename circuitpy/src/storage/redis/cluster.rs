//! `Storage` for `redis::cluster::ClusterClient` (feature `redis-cluster`), blocking.
//!
//! The calls do not go through redis-rs's blocking cluster connection: it retries
//! redirections, `TRYAGAIN` and `CLUSTERDOWN` on the calling thread, sleeping a second and
//! more between attempts by default, so a call during a failover would block far past the
//! handler's storage timeout. Instead every `ClusterClient` gets one async cluster connection
//! (made on first use, shared by all threads), driven by a private one-thread tokio runtime,
//! and each call waits for its command with the same [`Source`] code as the async storages:
//! bounded by the storage timeout with tokio's timer, whatever redis-rs retries behind it.
//! The client's own settings (timeouts, retries, TLS) are those of the connection.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisError, RedisResult};
use tokio::sync::OnceCell;

use super::asynchronous::{Command, Given, Source};
use super::{RedisFailure, tls_provider};
use crate::error::StorageError;
use crate::storage::{Request, Snapshot, Storage};

/// Drives the shared cluster connections: their reader and writer tasks run here while the
/// calling threads wait for their replies.
static RUNTIME: LazyLock<std::io::Result<tokio::runtime::Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("circuitpy-redis-cluster")
        .enable_all()
        .build()
});

/// One async connection per `ClusterClient`, by the client's address: a handler's client
/// lives as long as the handler (typically in a `static`).
static SHARED: LazyLock<Mutex<HashMap<usize, Arc<OnceCell<ClusterConnection>>>>> =
    LazyLock::new(Mutex::default);

/// The shared connection of a `ClusterClient`, made on first use with the client's own
/// settings, in a task of the private runtime: it is made even when the calls waiting for
/// it give up at their storage timeout, so a slow first connection does not fail every call.
struct SharedCluster<'a>(&'a ClusterClient);

impl SharedCluster<'_> {
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        let id = self.0 as *const ClusterClient as usize;
        let cell = SHARED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .clone();
        if let Some(connection) = cell.get() {
            return Ok(connection.clone());
        }
        tls_provider();
        let client = self.0.clone();
        // One task connects; the others wait for it (and try again if it failed).
        tokio::spawn(async move {
            cell.get_or_try_init(|| client.get_async_connection())
                .await
                .cloned()
        })
        .await
        .map_err(|error| RedisError::from(std::io::Error::other(error.to_string())))?
    }
}

impl Source for SharedCluster<'_> {
    async fn send<T: FromRedisValue>(
        &self,
        command: Command<'_>,
        timeout: Duration,
    ) -> RedisResult<T> {
        let connection = self.connection().await?;
        Given(&connection).send(command, timeout).await
    }

    fn secret(&self) -> Option<String> {
        None
    }
}

/// Runs `work` (already bounded by its timeout) on the private runtime and waits for it.
/// Inside another runtime, where blocking on this one would panic, a scoped thread waits.
fn wait<T: Send>(
    key: &str,
    work: impl Future<Output = Result<T, StorageError>> + Send,
) -> Result<T, StorageError> {
    let runtime = match &*RUNTIME {
        Ok(runtime) => runtime,
        Err(error) => {
            let why = format!("no runtime for the cluster connection: {error}");
            return Err(StorageError::backend(
                key,
                RedisFailure::from_text(&why, None),
            ));
        }
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(work);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(work))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A blocking storage over a Redis Cluster (feature `redis-cluster`): every breaker lives in
/// one hash-tagged key, so each operation is one `EVALSHA` (or a success's `HMGET`) on the
/// primary owning its slot.
/// One async cluster connection per client carries every thread's calls (see the module
/// docs for why not redis-rs's blocking cluster connection); each call waits at most the
/// handler's storage timeout.
///
/// ```no_run
/// use std::sync::LazyLock;
/// use std::time::Duration;
/// use circuitpy::CircuitBreaker;
/// use redis::cluster::ClusterClient;
///
/// static CLUSTER: LazyLock<ClusterClient> = LazyLock::new(|| {
///     ClusterClient::new(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]).unwrap()
/// });
///
/// struct Payments;
/// impl CircuitBreaker for Payments {
///     const FAILURE_THRESHOLD: u32 = 5;
///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
///     const FAILURE_KEY: &'static str = "payments";
///     type Storage = ClusterClient;
///     fn storage(&self) -> &ClusterClient {
///         &CLUSTER
///     }
/// }
/// ```
impl Storage for ClusterClient {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        wait(key, SharedCluster(self).increment_by(key, 1, ttl))
    }

    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        wait(key, SharedCluster(self).increment_by(key, count, ttl))
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        wait(key, SharedCluster(self).get_count(key))
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        wait(key, SharedCluster(self).expire_after(key, ttl))
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        wait(request.key, SharedCluster(self).execute(request))
    }
}
