//! `Storage` for `redis::Client`: blocking, over a process-wide pool of connections per
//! server. A call takes an idle connection (or opens one), runs one command on it and puts
//! it back; a connection that failed is dropped, so the next call reconnects.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};

use super::{
    Endpoint, connection_usable, execute_invocation, expire_command, get_command,
    increment_invocation, parse_count, parse_snapshot, storage_error,
};
use crate::error::StorageError;
use crate::storage::{Request, Snapshot, Storage};

/// The timeout handlers use for the primitives, which carry no configuration.
const PRIMITIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Idle connections kept per server; more are closed when returned.
const MAX_IDLE: usize = 64;

struct Idle {
    connection: Connection,
    /// The read and write timeout the connection's socket has.
    timeout: Duration,
}

static POOL: LazyLock<Mutex<HashMap<Endpoint, Vec<Idle>>>> = LazyLock::new(Mutex::default);

/// Runs `command` on a pooled connection to `client`'s server, within `timeout`.
fn with_connection<T>(
    client: &redis::Client,
    key: &str,
    timeout: Duration,
    command: impl FnOnce(&mut Connection) -> RedisResult<T>,
) -> Result<T, StorageError> {
    let secret = client.get_connection_info().redis_settings().password();
    let fail = |error| storage_error(key, error, secret, timeout);
    let endpoint = Endpoint::of(client);
    let idle = POOL
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(&endpoint)
        .and_then(Vec::pop);
    let mut idle = match idle {
        Some(mut idle) => {
            if idle.timeout != timeout {
                set_timeouts(&idle.connection, timeout).map_err(fail)?;
                idle.timeout = timeout;
            }
            idle
        }
        None => {
            let started = Instant::now();
            // The client applies its timeout to each round trip of its handshake in turn
            // (there are two), so half of ours bounds the whole connection setup.
            let connection = client
                .get_connection_with_timeout(timeout / 2)
                .map_err(fail)?;
            // What is left of the timeout bounds the first command.
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(StorageError::timeout(key, timeout));
            }
            set_timeouts(&connection, left).map_err(fail)?;
            Idle {
                connection,
                timeout: left,
            }
        }
    };
    match command(&mut idle.connection) {
        Ok(value) => {
            give_back(endpoint, idle);
            Ok(value)
        }
        Err(error) => {
            if connection_usable(&error) {
                give_back(endpoint, idle);
            } else {
                // The server went away or stopped answering: the idle connections to it are
                // most likely dead too, and each would cost a call its failure.
                POOL.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&endpoint);
            }
            Err(fail(error))
        }
    }
}

fn set_timeouts(connection: &Connection, timeout: Duration) -> RedisResult<()> {
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))
}

fn give_back(endpoint: Endpoint, idle: Idle) {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let idle_list = pool.entry(endpoint).or_default();
    if idle_list.len() < MAX_IDLE {
        idle_list.push(idle);
    }
}

/// A blocking storage shared by every process that reaches the same Redis server.
///
/// ```no_run
/// use std::sync::LazyLock;
/// use std::time::Duration;
/// use circuitpy::CircuitBreaker;
///
/// static CLIENT: LazyLock<redis::Client> =
///     LazyLock::new(|| redis::Client::open("redis://127.0.0.1:6379").unwrap());
///
/// struct Payments;
/// impl CircuitBreaker for Payments {
///     const FAILURE_THRESHOLD: u32 = 5;
///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
///     const FAILURE_KEY: &'static str = "payments";
///     type Storage = redis::Client;
///     fn storage(&self) -> &redis::Client {
///         &CLIENT
///     }
/// }
/// ```
impl Storage for redis::Client {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        let invocation = increment_invocation(key, ttl);
        with_connection(self, key, PRIMITIVE_TIMEOUT, |connection| {
            invocation.invoke(connection)
        })
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let command = get_command(key);
        let value = with_connection(self, key, PRIMITIVE_TIMEOUT, |connection| {
            command.query::<Option<Vec<u8>>>(connection)
        })?;
        parse_count(key, value)
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let command = expire_command(key, ttl);
        with_connection(self, key, PRIMITIVE_TIMEOUT, |connection| {
            command.query::<()>(connection)
        })
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let (key, invocation) = execute_invocation(request);
        let reply = with_connection(self, &key, request.config.storage_timeout, |connection| {
            invocation.invoke::<Vec<i64>>(connection)
        })?;
        parse_snapshot(&key, &reply)
    }
}
