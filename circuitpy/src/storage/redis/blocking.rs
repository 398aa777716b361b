//! `Storage` for `redis::Client`, blocking, over a pool of connections per server: at most
//! [`POOL_SIZE`] open at once; a caller takes an idle one, or opens one itself within its
//! storage timeout, or waits (within the same timeout) for one to come free. A connection
//! that broke is dropped, and with it the idle ones to the same server. Also `Storage` for
//! an application's own `r2d2::Pool<redis::Client>` (feature `r2d2`).
//!
//! Why not `r2d2` for the storage's own pool: it opens connections on its own threads,
//! retrying with a backoff that grows to seconds, while callers wait out their whole
//! timeout; a breaker's caller must instead learn at once that the server refuses
//! connections, and reconnect the moment it is back.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};

use super::{
    Endpoint, connection_broke, execute_invocation, expire_command, get_command,
    increment_invocation, parse_count, parse_snapshot, peek_command, repeatable, settled_by_peek,
    state_key, storage_error,
};
use crate::error::StorageError;
use crate::storage::{Request, Snapshot, Storage};

/// The most connections a process opens to one Redis server through a `redis::Client`
/// storage; callers beyond it wait (within their storage timeout) for one to come free. An
/// application that wants another bound brings its own `r2d2::Pool<redis::Client>`, which
/// is a storage too.
///
/// ```
/// assert_eq!(circuitpy::redis::POOL_SIZE, 32);
/// ```
pub const POOL_SIZE: usize = 32;

/// The timeout for the primitives, which carry no configuration.
const PRIMITIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The connections to one server.
#[derive(Default)]
pub(super) struct Pool {
    state: Mutex<Connections>,
    freed: Condvar,
}

#[derive(Default)]
struct Connections {
    idle: Vec<Connection>,
    /// Idle, in use, or being opened.
    open: usize,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Connections> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection, or a new one opened on this thread, within `timeout`.
    fn take(&self, client: &redis::Client, timeout: Duration) -> RedisResult<Option<Connection>> {
        let deadline = Instant::now() + timeout;
        let mut connections = self.lock();
        loop {
            if let Some(connection) = connections.idle.pop() {
                return Ok(Some(connection));
            }
            if connections.open < POOL_SIZE {
                connections.open += 1;
                drop(connections);
                // The client applies its timeout to each round trip of its handshake in
                // turn (there are two), so half of what is left bounds the whole setup.
                let left = deadline.saturating_duration_since(Instant::now());
                return match client
                    .get_connection_with_timeout((left / 2).max(Duration::from_millis(1)))
                {
                    Ok(connection) => Ok(Some(connection)),
                    Err(error) => {
                        self.closed();
                        Err(error)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            connections = self
                .freed
                .wait_timeout(connections, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn give_back(&self, connection: Connection) {
        self.lock().idle.push(connection);
        self.freed.notify_one();
    }

    /// A connection was dropped: room for another.
    fn closed(&self) {
        let mut connections = self.lock();
        connections.open = connections.open.saturating_sub(1);
        drop(connections);
        self.freed.notify_one();
    }

    /// The server went away or restarted: its idle connections are most likely dead too.
    fn drop_idle(&self) {
        let mut connections = self.lock();
        let dropped = connections.idle.len();
        connections.idle.clear();
        connections.open = connections.open.saturating_sub(dropped);
        drop(connections);
        self.freed.notify_all();
    }
}

/// One pool per server and login.
static POOLS: LazyLock<Mutex<HashMap<Endpoint, Arc<Pool>>>> = LazyLock::new(Mutex::default);

fn pool_of(endpoint: &Endpoint) -> Arc<Pool> {
    POOLS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(endpoint.clone())
        .or_default()
        .clone()
}

/// The read and write timeout of a connection, set for each command.
fn set_timeouts(connection: &Connection, timeout: Duration) -> RedisResult<()> {
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))
}

/// A source of pooled connections: this module's own pools, or an application's.
pub(super) trait Source {
    /// A connection, within `timeout`; `Ok(None)` when none came free in time.
    fn take(&self, timeout: Duration) -> Result<Option<Pooled<'_>>, StorageFailure>;
    /// The password, for keeping it out of error texts.
    fn secret(&self) -> Option<String>;
}

/// Why no connection could be had.
pub(super) enum StorageFailure {
    Redis(redis::RedisError),
    /// An application's pool failed (r2d2).
    #[cfg(feature = "r2d2")]
    Pool(String),
}

/// A connection checked out of either kind of pool; it goes back when dropped, unless it
/// broke.
pub(super) enum Pooled<'a> {
    Own {
        connection: Option<Connection>,
        pool: Arc<Pool>,
        _client: &'a redis::Client,
    },
    #[cfg(feature = "r2d2")]
    Users(r2d2::PooledConnection<redis::Client>),
}

impl Pooled<'_> {
    fn connection(&mut self) -> &mut Connection {
        match self {
            Pooled::Own { connection, .. } => connection.as_mut().expect("taken until dropped"),
            #[cfg(feature = "r2d2")]
            Pooled::Users(connection) => connection,
        }
    }

    /// The connection broke: it is not given back, nor are the idle ones to its server.
    // Without `r2d2` there is one kind of pooled connection.
    #[allow(irrefutable_let_patterns)]
    fn broke(mut self) {
        if let Pooled::Own {
            connection, pool, ..
        } = &mut self
        {
            // Not given back by the drop below.
            drop(connection.take());
            pool.closed();
            pool.drop_idle();
        }
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Pooled::Own {
            connection, pool, ..
        } = self
            && let Some(connection) = connection.take()
        {
            pool.give_back(connection);
        }
    }
}

pub(super) struct OwnPool<'a> {
    client: &'a redis::Client,
    endpoint: Endpoint,
}

impl Source for OwnPool<'_> {
    fn take(&self, timeout: Duration) -> Result<Option<Pooled<'_>>, StorageFailure> {
        let pool = pool_of(&self.endpoint);
        match pool.take(self.client, timeout) {
            Ok(Some(connection)) => Ok(Some(Pooled::Own {
                connection: Some(connection),
                pool,
                _client: self.client,
            })),
            Ok(None) => Ok(None),
            Err(error) => Err(StorageFailure::Redis(error)),
        }
    }

    fn secret(&self) -> Option<String> {
        self.endpoint.password.clone()
    }
}

#[cfg(feature = "r2d2")]
impl Source for r2d2::Pool<redis::Client> {
    fn take(&self, timeout: Duration) -> Result<Option<Pooled<'_>>, StorageFailure> {
        match self.get_timeout(timeout) {
            Ok(connection) => Ok(Some(Pooled::Users(connection))),
            Err(error) => match error.to_string().split_once(": ") {
                // The pool says why it had no connection when opening one failed.
                Some((_, why)) => Err(StorageFailure::Pool(why.to_owned())),
                None => Ok(None),
            },
        }
    }

    fn secret(&self) -> Option<String> {
        None
    }
}

/// Runs `command` on a pooled connection, all within `timeout`: waiting for a connection
/// included, and sending it once more on another connection when the first broke and
/// `repeat` says that is safe.
pub(super) fn run<T>(
    source: &impl Source,
    key: &str,
    timeout: Duration,
    repeat: bool,
    command: impl Fn(&mut Connection) -> RedisResult<T>,
) -> Result<T, StorageError> {
    let started = Instant::now();
    let secret = source.secret();
    let fail = |error| storage_error(key, error, secret.as_deref(), timeout);
    let mut attempts = if repeat { 2 } else { 1 };
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(StorageError::timeout(key, timeout));
        }
        let mut pooled = match source.take(left) {
            Ok(Some(pooled)) => pooled,
            Ok(None) => return Err(StorageError::timeout(key, timeout)),
            Err(StorageFailure::Redis(error)) => return Err(fail(error)),
            #[cfg(feature = "r2d2")]
            Err(StorageFailure::Pool(why)) => {
                return Err(StorageError::backend(
                    key,
                    super::RedisFailure::from_text(&why, secret.as_deref()),
                ));
            }
        };
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        set_timeouts(pooled.connection(), left).map_err(fail)?;
        match command(pooled.connection()) {
            Ok(value) => return Ok(value),
            Err(error) if connection_broke(&error) => {
                pooled.broke();
                attempts -= 1;
                if attempts == 0 {
                    return Err(fail(error));
                }
            }
            Err(error) => return Err(fail(error)),
        }
    }
}

pub(super) fn own_pool(client: &redis::Client) -> OwnPool<'_> {
    OwnPool {
        client,
        endpoint: Endpoint::of(client),
    }
}

/// The storage operations over any source of pooled connections.
fn increment(
    pool: &impl Source,
    key: &str,
    count: u64,
    ttl: Duration,
) -> Result<u64, StorageError> {
    let invocation = increment_invocation(key, count, ttl);
    run(pool, key, PRIMITIVE_TIMEOUT, false, |connection| {
        invocation.invoke(connection)
    })
}

fn get_count(pool: &impl Source, key: &str) -> Result<u64, StorageError> {
    let command = get_command(key);
    let value = run(pool, key, PRIMITIVE_TIMEOUT, true, |connection| {
        command.query::<Option<Vec<u8>>>(connection)
    })?;
    parse_count(key, value)
}

fn expire_after(pool: &impl Source, key: &str, ttl: Duration) -> Result<(), StorageError> {
    let command = expire_command(key, ttl);
    run(pool, key, PRIMITIVE_TIMEOUT, true, |connection| {
        command.query::<()>(connection)
    })
}

fn execute(pool: &impl Source, request: &Request<'_>) -> Result<Snapshot, StorageError> {
    let key = state_key(request);
    let peek = peek_command(request, &key);
    let reply = run(
        pool,
        &key,
        request.config.storage_timeout,
        repeatable(request),
        |connection| {
            if let Some(peek) = &peek {
                let fields = peek.query::<Vec<Option<Vec<u8>>>>(connection)?;
                if let Some(reply) = settled_by_peek(request, &fields) {
                    return Ok(reply.to_vec());
                }
            }
            // Built only when the peek did not settle the success: a dozen arguments.
            execute_invocation(request, &key).invoke::<Vec<i64>>(connection)
        },
    )?;
    parse_snapshot(&key, &reply)
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
        increment(&own_pool(self), key, 1, ttl)
    }

    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        increment(&own_pool(self), key, count, ttl)
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        get_count(&own_pool(self), key)
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        expire_after(&own_pool(self), key, ttl)
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        execute(&own_pool(self), request)
    }
}

/// A blocking storage over the application's own `r2d2` pool of Redis connections (the
/// `redis` crate's `r2d2` support; feature `r2d2`): waiting for a connection counts against
/// the handler's storage timeout.
///
/// ```no_run
/// use std::sync::LazyLock;
/// use std::time::Duration;
/// use circuitpy::CircuitBreaker;
///
/// static POOL: LazyLock<r2d2::Pool<redis::Client>> = LazyLock::new(|| {
///     let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
///     r2d2::Pool::builder().max_size(8).build(client).unwrap()
/// });
///
/// struct Payments;
/// impl CircuitBreaker for Payments {
///     const FAILURE_THRESHOLD: u32 = 5;
///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
///     const FAILURE_KEY: &'static str = "payments";
///     type Storage = r2d2::Pool<redis::Client>;
///     fn storage(&self) -> &r2d2::Pool<redis::Client> {
///         &POOL
///     }
/// }
/// ```
#[cfg(feature = "r2d2")]
impl Storage for r2d2::Pool<redis::Client> {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        increment(self, key, 1, ttl)
    }

    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        increment(self, key, count, ttl)
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        get_count(self, key)
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        expire_after(self, key, ttl)
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        execute(self, request)
    }
}
