//! `AsyncStorage` for `redis::aio::MultiplexedConnection`, `redis::aio::ConnectionManager`,
//! `redis::Client` and (feature `redis-cluster`) `redis::cluster_async::ClusterConnection`.
//! Each command is bounded by the handler's storage timeout with
//! `tokio::time::timeout`, whatever response timeout the connection was built with.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, FromRedisValue, RedisResult, Value};

use super::{
    Endpoint, connection_broke, execute_invocation, expire_command, get_command,
    increment_invocation, parse_count, parse_snapshot, peek_command, repeatable, settled_by_peek,
    storage_error,
};
use crate::error::StorageError;
use crate::storage::{AsyncStorage, Request, Snapshot};

/// The timeout for the primitives, which carry no configuration.
const PRIMITIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// A command, over any async connection.
#[derive(Clone, Copy)]
pub(super) enum Command<'a> {
    Increment(&'a str, u64, Duration),
    Get(&'a str),
    Expire(&'a str, Duration),
    /// A breaker operation on its hash.
    Execute(&'a Request<'a>, &'a str),
}

impl Command<'_> {
    async fn run<C: ConnectionLike + Send>(self, connection: &mut C) -> RedisResult<Value> {
        match self {
            Command::Increment(key, count, ttl) => {
                increment_invocation(key, count, ttl)
                    .invoke_async(connection)
                    .await
            }
            Command::Get(key) => get_command(key).query_async(connection).await,
            Command::Expire(key, ttl) => expire_command(key, ttl).query_async(connection).await,
            Command::Execute(request, key) => {
                if let Some(peek) = peek_command(request, key) {
                    let fields: Vec<Option<Vec<u8>>> = peek.query_async(connection).await?;
                    if let Some(reply) = settled_by_peek(request, &fields) {
                        return Ok(Value::Array(reply.into_iter().map(Value::Int).collect()));
                    }
                }
                execute_invocation(request, key)
                    .invoke_async(connection)
                    .await
            }
        }
    }

    /// Whether sending it twice changes nothing more than sending it once.
    fn repeatable(self) -> bool {
        match self {
            Command::Increment(..) => false,
            Command::Get(_) | Command::Expire(..) => true,
            Command::Execute(request, _) => repeatable(request),
        }
    }
}

/// Runs `command` within `timeout`.
async fn bounded<T>(
    key: &str,
    timeout: Duration,
    secret: Option<&str>,
    command: impl Future<Output = RedisResult<T>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(timeout, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(storage_error(key, error, secret, timeout)),
        Err(_) => Err(StorageError::timeout(key, timeout)),
    }
}

/// The storage operations over a source of connections, each bounded by its timeout.
pub(super) trait Source: Sync {
    fn send<T: FromRedisValue>(
        &self,
        command: Command<'_>,
        timeout: Duration,
    ) -> impl Future<Output = RedisResult<T>> + Send;
    fn secret(&self) -> Option<String>;

    async fn increment_by(
        &self,
        key: &str,
        count: u64,
        ttl: Duration,
    ) -> Result<u64, StorageError> {
        let secret = self.secret();
        let command = Command::Increment(key, count, ttl);
        bounded(
            key,
            PRIMITIVE_TIMEOUT,
            secret.as_deref(),
            self.send(command, PRIMITIVE_TIMEOUT),
        )
        .await
    }

    async fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let secret = self.secret();
        let value = bounded(
            key,
            PRIMITIVE_TIMEOUT,
            secret.as_deref(),
            self.send(Command::Get(key), PRIMITIVE_TIMEOUT),
        )
        .await?;
        parse_count(key, value)
    }

    async fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let secret = self.secret();
        bounded(
            key,
            PRIMITIVE_TIMEOUT,
            secret.as_deref(),
            self.send(Command::Expire(key, ttl), PRIMITIVE_TIMEOUT),
        )
        .await
    }

    async fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let secret = self.secret();
        let key = super::state_key(request);
        let timeout = request.config.storage_timeout;
        let reply: Vec<i64> = bounded(
            &key,
            timeout,
            secret.as_deref(),
            self.send(Command::Execute(request, &key), timeout),
        )
        .await?;
        parse_snapshot(&key, &reply)
    }
}

/// A connection the application made: one command on a clone of it (which is cheap). A
/// `ConnectionManager` reconnects by itself; neither is sent a command twice.
pub(super) struct Given<'a, C>(pub(super) &'a C);

impl<C: ConnectionLike + Clone + Send + Sync> Source for Given<'_, C> {
    async fn send<T: FromRedisValue>(&self, command: Command<'_>, _: Duration) -> RedisResult<T> {
        let mut connection = self.0.clone();
        let value = command.run(&mut connection).await?;
        redis::from_redis_value(value).map_err(Into::into)
    }

    fn secret(&self) -> Option<String> {
        None
    }
}

/// `AsyncStorage` for a Redis type, through the `Source` that reaches its server.
macro_rules! connection_storage {
    ($type:ty, $source:ident, $doc:literal) => {
        #[doc = $doc]
        impl AsyncStorage for $type {
            async fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
                $source(self).increment_by(key, 1, ttl).await
            }

            async fn increment_by(
                &self,
                key: &str,
                count: u64,
                ttl: Duration,
            ) -> Result<u64, StorageError> {
                $source(self).increment_by(key, count, ttl).await
            }

            async fn get_count(&self, key: &str) -> Result<u64, StorageError> {
                $source(self).get_count(key).await
            }

            async fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
                $source(self).expire_after(key, ttl).await
            }

            async fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
                $source(self).execute(request).await
            }
        }
    };
}

connection_storage!(
    MultiplexedConnection,
    Given,
    "An async storage over one multiplexed connection (cloned per command, which is cheap)."
);
connection_storage!(
    ConnectionManager,
    Given,
    "An async storage over a connection manager, which reconnects by itself.\n\n\
     ```no_run\n\
     use std::time::Duration;\n\
     use circuitpy::CircuitBreaker;\n\
     use tokio::sync::OnceCell;\n\
     \n\
     static REDIS: OnceCell<redis::aio::ConnectionManager> = OnceCell::const_new();\n\
     \n\
     struct Search;\n\
     impl CircuitBreaker for Search {\n\
     \x20   const FAILURE_THRESHOLD: u32 = 5;\n\
     \x20   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);\n\
     \x20   const FAILURE_KEY: &'static str = \"search\";\n\
     \x20   type Storage = redis::aio::ConnectionManager;\n\
     \x20   fn storage(&self) -> &redis::aio::ConnectionManager {\n\
     \x20       REDIS.get().expect(\"connected at startup\")\n\
     \x20   }\n\
     }\n\
     ```"
);

#[cfg(feature = "redis-cluster")]
connection_storage!(
    redis::cluster_async::ClusterConnection,
    Given,
    "An async storage over a Redis Cluster (feature `redis-cluster`): each operation is one \
     `EVALSHA` (or a success's `HMGET`) on the one key of its breaker, which redis-rs routes to the primary owning that \
     key's slot, following `MOVED`/`ASK` redirections and reloading the script after \
     `NOSCRIPT` on every node. The connection reconnects and refreshes its slot map by itself.\n\n\
     ```no_run\n\
     use std::time::Duration;\n\
     use circuitpy::CircuitBreaker;\n\
     use redis::cluster_async::ClusterConnection;\n\
     use tokio::sync::OnceCell;\n\
     \n\
     static CLUSTER: OnceCell<ClusterConnection> = OnceCell::const_new();\n\
     \n\
     struct Search;\n\
     impl CircuitBreaker for Search {\n\
     \x20   const FAILURE_THRESHOLD: u32 = 5;\n\
     \x20   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);\n\
     \x20   const FAILURE_KEY: &'static str = \"search\";\n\
     \x20   type Storage = ClusterConnection;\n\
     \x20   fn storage(&self) -> &ClusterConnection {\n\
     \x20       CLUSTER.get().expect(\"connected at startup\")\n\
     \x20   }\n\
     }\n\
     \n\
     # async fn connect() -> redis::RedisResult<()> {\n\
     let client = redis::cluster::ClusterClient::new([\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"])?;\n\
     CLUSTER.get_or_try_init(|| client.get_async_connection()).await?;\n\
     # Ok(()) }\n\
     ```"
);

/// One multiplexed connection per server, shared by every async call through a
/// `redis::Client`.
static SHARED: LazyLock<Mutex<HashMap<Endpoint, MultiplexedConnection>>> =
    LazyLock::new(Mutex::default);

/// The shared connection to `client`'s server, and whether it was just made.
async fn shared(
    client: &redis::Client,
    endpoint: &Endpoint,
    timeout: Duration,
) -> RedisResult<(MultiplexedConnection, bool)> {
    let cached = SHARED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(endpoint)
        .cloned();
    if let Some(connection) = cached {
        return Ok((connection, false));
    }
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    SHARED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(endpoint.clone(), connection.clone());
    Ok((connection, true))
}

fn forget(endpoint: &Endpoint) {
    SHARED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(endpoint);
}

/// The shared connection of a `redis::Client`. A cached connection that turns out to be
/// broken (the server restarted, or the runtime that drove it is gone) is replaced; the
/// command is sent once more on the new one only if sending it twice is safe.
struct SharedOf<'a>(&'a redis::Client);

impl Source for SharedOf<'_> {
    async fn send<T: FromRedisValue>(
        &self,
        command: Command<'_>,
        timeout: Duration,
    ) -> RedisResult<T> {
        let client = self.0;
        let endpoint = Endpoint::of(client);
        let (mut connection, fresh) = shared(client, &endpoint, timeout).await?;
        let value = match command.run(&mut connection).await {
            Err(error) if connection_broke(&error) => {
                forget(&endpoint);
                if fresh || !command.repeatable() {
                    return Err(error);
                }
                let (mut connection, _) = shared(client, &endpoint, timeout).await?;
                let result = command.run(&mut connection).await;
                if result.as_ref().is_err_and(connection_broke) {
                    forget(&endpoint);
                }
                result?
            }
            result => result?,
        };
        redis::from_redis_value(value).map_err(Into::into)
    }

    fn secret(&self) -> Option<String> {
        self.0
            .get_connection_info()
            .redis_settings()
            .password()
            .map(str::to_owned)
    }
}

connection_storage!(
    redis::Client,
    SharedOf,
    "An async storage shared by every process that reaches the same Redis server: one \
     multiplexed connection per server, made on first use with the handler's storage timeout \
     as its connection and response timeout."
);

/// The application's deadpool-redis pool: one connection taken from it per command, the
/// wait for it included in the command's time bound.
#[cfg(feature = "deadpool-redis")]
struct Pooled<'a>(&'a deadpool_redis::Pool);

#[cfg(feature = "deadpool-redis")]
impl Source for Pooled<'_> {
    async fn send<T: FromRedisValue>(&self, command: Command<'_>, _: Duration) -> RedisResult<T> {
        let mut connection = self.0.get().await.map_err(|error| {
            let kind = match error {
                deadpool_redis::PoolError::Backend(error) => return error,
                _ => redis::ErrorKind::Io,
            };
            redis::RedisError::from((kind, "no connection from the pool", error.to_string()))
        })?;
        let value = command.run(&mut connection).await?;
        redis::from_redis_value(value).map_err(Into::into)
    }

    fn secret(&self) -> Option<String> {
        None
    }
}

#[cfg(feature = "deadpool-redis")]
connection_storage!(
    deadpool_redis::Pool,
    Pooled,
    "An async storage over the application's deadpool-redis pool (feature `deadpool-redis`): \
     each operation takes a connection from the pool, and waiting for one counts towards the \
     handler's `STORAGE_TIMEOUT`. A command is never sent twice.\n\n\
     ```no_run\n\
     use std::time::Duration;\n\
     use circuitpy::CircuitBreaker;\n\
     \n\
     static POOL: std::sync::LazyLock<deadpool_redis::Pool> = std::sync::LazyLock::new(|| {\n\
     \x20   deadpool_redis::Config::from_url(\"redis://127.0.0.1/\")\n\
     \x20       .create_pool(Some(deadpool_redis::Runtime::Tokio1))\n\
     \x20       .expect(\"a valid configuration\")\n\
     });\n\
     \n\
     struct Payments;\n\
     impl CircuitBreaker for Payments {\n\
     \x20   const FAILURE_THRESHOLD: u32 = 5;\n\
     \x20   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);\n\
     \x20   const FAILURE_KEY: &'static str = \"payments\";\n\
     \x20   type Storage = deadpool_redis::Pool;\n\
     \x20   fn storage(&self) -> &deadpool_redis::Pool { &POOL }\n\
     }\n\
     ```"
);
