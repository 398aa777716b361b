//! `AsyncStorage` for `redis::aio::MultiplexedConnection`, `redis::aio::ConnectionManager`
//! and `redis::Client`. Each command is bounded by the handler's storage timeout with
//! `tokio::time::timeout`, whatever response timeout the connection was built with.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, FromRedisValue, RedisResult, Value};

use super::{
    Endpoint, execute_invocation, expire_command, get_command, increment_invocation, parse_count,
    parse_snapshot, storage_error,
};
use crate::error::StorageError;
use crate::storage::{AsyncStorage, Request, Snapshot};

/// The timeout for the primitives, which carry no configuration.
const PRIMITIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The commands, over any async connection.
async fn increment<C: ConnectionLike + Send>(
    connection: &mut C,
    key: &str,
    ttl: Duration,
) -> RedisResult<u64> {
    increment_invocation(key, ttl)
        .invoke_async(connection)
        .await
}

async fn get<C: ConnectionLike + Send>(
    connection: &mut C,
    key: &str,
) -> RedisResult<Option<Vec<u8>>> {
    get_command(key).query_async(connection).await
}

async fn expire<C: ConnectionLike + Send>(
    connection: &mut C,
    key: &str,
    ttl: Duration,
) -> RedisResult<()> {
    expire_command(key, ttl).query_async(connection).await
}

async fn execute<C: ConnectionLike + Send>(
    connection: &mut C,
    request: &Request<'_>,
) -> RedisResult<Vec<i64>> {
    let (_, invocation) = execute_invocation(request);
    invocation.invoke_async(connection).await
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

macro_rules! connection_storage {
    ($type:ty, $doc:literal) => {
        #[doc = $doc]
        impl AsyncStorage for $type {
            async fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
                let mut connection = self.clone();
                bounded(
                    key,
                    PRIMITIVE_TIMEOUT,
                    None,
                    increment(&mut connection, key, ttl),
                )
                .await
            }

            async fn get_count(&self, key: &str) -> Result<u64, StorageError> {
                let mut connection = self.clone();
                let value =
                    bounded(key, PRIMITIVE_TIMEOUT, None, get(&mut connection, key)).await?;
                parse_count(key, value)
            }

            async fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
                let mut connection = self.clone();
                bounded(
                    key,
                    PRIMITIVE_TIMEOUT,
                    None,
                    expire(&mut connection, key, ttl),
                )
                .await
            }

            async fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
                let mut connection = self.clone();
                let key = super::state_key(request);
                let reply = bounded(
                    &key,
                    request.config.storage_timeout,
                    None,
                    execute(&mut connection, request),
                )
                .await?;
                parse_snapshot(&key, &reply)
            }
        }
    };
}

connection_storage!(
    MultiplexedConnection,
    "An async storage over one multiplexed connection (cloned per command, which is cheap)."
);
connection_storage!(
    ConnectionManager,
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

/// A command for the shared connection.
enum Command<'a> {
    Increment(&'a str, Duration),
    Get(&'a str),
    Expire(&'a str, Duration),
    Execute(&'a Request<'a>),
}

impl Command<'_> {
    async fn run(&self, connection: &mut MultiplexedConnection) -> RedisResult<Value> {
        match *self {
            Command::Increment(key, ttl) => {
                increment_invocation(key, ttl)
                    .invoke_async(connection)
                    .await
            }
            Command::Get(key) => get_command(key).query_async(connection).await,
            Command::Expire(key, ttl) => expire_command(key, ttl).query_async(connection).await,
            Command::Execute(request) => {
                let (_, invocation) = execute_invocation(request);
                invocation.invoke_async(connection).await
            }
        }
    }
}

fn broken(error: &redis::RedisError) -> bool {
    error.is_connection_dropped() || error.is_unrecoverable_error()
}

/// Runs `command` on the shared connection. A cached connection that turns out to be
/// broken (the server restarted, or the runtime that drove it is gone) is replaced and the
/// command tried once more on a new one.
async fn on_shared<T: FromRedisValue>(
    client: &redis::Client,
    timeout: Duration,
    command: Command<'_>,
) -> RedisResult<T> {
    let endpoint = Endpoint::of(client);
    let (mut connection, fresh) = shared(client, &endpoint, timeout).await?;
    let value = match command.run(&mut connection).await {
        Err(error) if broken(&error) => {
            forget(&endpoint);
            if fresh {
                return Err(error);
            }
            let (mut connection, _) = shared(client, &endpoint, timeout).await?;
            let result = command.run(&mut connection).await;
            if result.as_ref().is_err_and(broken) {
                forget(&endpoint);
            }
            result?
        }
        result => result?,
    };
    Ok(redis::from_redis_value(value)?)
}

/// An async storage shared by every process that reaches the same Redis server: one
/// multiplexed connection per server, made on first use with the handler's storage timeout
/// as its connection and response timeout.
impl AsyncStorage for redis::Client {
    async fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        let secret = self.get_connection_info().redis_settings().password();
        bounded(
            key,
            PRIMITIVE_TIMEOUT,
            secret,
            on_shared(self, PRIMITIVE_TIMEOUT, Command::Increment(key, ttl)),
        )
        .await
    }

    async fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let secret = self.get_connection_info().redis_settings().password();
        let value = bounded(
            key,
            PRIMITIVE_TIMEOUT,
            secret,
            on_shared(self, PRIMITIVE_TIMEOUT, Command::Get(key)),
        )
        .await?;
        parse_count(key, value)
    }

    async fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let secret = self.get_connection_info().redis_settings().password();
        bounded(
            key,
            PRIMITIVE_TIMEOUT,
            secret,
            on_shared(self, PRIMITIVE_TIMEOUT, Command::Expire(key, ttl)),
        )
        .await
    }

    async fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let secret = self.get_connection_info().redis_settings().password();
        let key = super::state_key(request);
        let timeout = request.config.storage_timeout;
        let reply: Vec<i64> = bounded(
            &key,
            timeout,
            secret,
            on_shared(self, timeout, Command::Execute(request)),
        )
        .await?;
        parse_snapshot(&key, &reply)
    }
}
