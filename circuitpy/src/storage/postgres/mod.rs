//! Breakers shared by a fleet through PostgreSQL.
//!
//! Each breaker is one row. [`migrate`](PostgresStorage::migrate) installs a PL/pgSQL
//! function, `{table}_op` (`schema.sql`), that carries out one breaker operation on that
//! row under a row lock and returns the breaker's state: every decision is one statement
//! and one round trip, atomic whatever the number of processes. The database clock is the
//! one clock; every deadline is a column honoured on read, so the state of a crashed
//! process lapses by itself, and each operation that creates a row deletes a few rows whose
//! deadlines have all passed (no cleanup daemon).
//!
//! Both flavours run over a `deadpool-postgres` pool of `tokio-postgres` connections, their
//! own or the application's. Every operation — waiting for a connection, the statement — is
//! bounded by the handler's storage timeout; connections are opened on a task of their own,
//! so a caller never waits longer than that for one, and a connection whose statement ran
//! out of time or whose session broke is dropped, never reused. [`PostgresStorage`] blocks
//! the calling thread (it drives the pool on a private runtime, and works from inside an
//! async runtime too); [`AsyncPostgresStorage`] runs on the caller's tokio runtime.
//!
//! TLS (feature `postgres-tls`, rustls with the `ring` provider) follows the URL's
//! `sslmode` (`disable`, `prefer`, `require`; libpq's `verify-ca` and `verify-full` read as
//! `require`) and `sslrootcert`. Whenever TLS is used the server's certificate is verified,
//! against Mozilla's roots unless the URL or [`PostgresOptions`] name a CA, and so is the
//! host name. A URL without `sslmode` connects in plain text, unless a CA is named: then
//! TLS is required.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};

use crate::admin::{
    ADMIN_TIMEOUT, Action, Audit, BreakerInfo, Listing, breaker_key, check_key, describe,
};
use crate::error::StorageError;
use crate::handler::State;
use crate::policy::Config;
use crate::rules::row::{MODE_FORCED_CLOSED, MODE_FORCED_OPEN, Row};
use crate::rules::{BUCKETS, FORCED_TTL, micros, retention};
use crate::storage::{Op, Request, Snapshot, settled_success};

mod asynchronous;
mod blocking;
mod tls;

pub use asynchronous::AsyncPostgresStorage;
pub use blocking::PostgresStorage;

/// How a PostgreSQL storage connects and where it keeps its rows.
///
/// ```
/// let options = circuitpy::PostgresOptions::default().table("app.breakers");
/// assert_eq!(options.table_name(), "app.breakers");
/// ```
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    table: String,
    timeout: Duration,
    migrate: bool,
    pool_size: usize,
    #[cfg(feature = "postgres-tls")]
    trust: tls::Trust,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            table: "circuitpy_breakers".to_owned(),
            timeout: Duration::from_secs(2),
            migrate: true,
            pool_size: 16,
            #[cfg(feature = "postgres-tls")]
            trust: tls::Trust::Default,
        }
    }
}

impl PostgresOptions {
    /// The table of breakers, optionally schema-qualified (`schema.table`); the primitives'
    /// counts go to `{table}_counts` and the function to `{table}_op`. Default
    /// `circuitpy_breakers`.
    pub fn table(mut self, table: &str) -> Self {
        table.clone_into(&mut self.table);
        self
    }

    /// The table name in use.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The bound on opening a connection (on a task of its own, never the caller's), on a
    /// migration, and on the primitives (which carry no handler configuration). Breaker
    /// operations are bounded by the handler's
    /// [`STORAGE_TIMEOUT`](crate::CircuitBreaker::STORAGE_TIMEOUT). Default 2 s.
    ///
    /// ```
    /// let _ = circuitpy::PostgresOptions::default().timeout(std::time::Duration::from_millis(500));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether connecting runs [`migrate`](PostgresStorage::migrate) (the default). Turn it
    /// off where the application's role may not create tables, and migrate once with a
    /// role that may.
    pub fn migrate_on_connect(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// The most connections the storage's own pool opens (default 16); ignored for a pool
    /// the application brings.
    ///
    /// ```
    /// let _ = circuitpy::PostgresOptions::default().pool_size(4);
    /// ```
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Trusts the CA certificates of a PEM file (libpq's `sslrootcert`) instead of
    /// Mozilla's roots, for servers whose certificate a private CA signed. The file is read
    /// when the storage connects; a missing file, or one without a certificate, fails the
    /// connection with the file named. The server's host name is still checked.
    ///
    /// ```
    /// let _ = circuitpy::PostgresOptions::default().ca_file("/etc/ssl/db-ca.pem");
    /// ```
    #[cfg(feature = "postgres-tls")]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.trust = tls::Trust::CaFile(path.into());
        self
    }

    /// Trusts the roots of `roots` instead of Mozilla's (e.g. the platform's, from
    /// `rustls-native-certs`). The server's host name is still checked.
    ///
    /// ```
    /// let roots = rustls::RootCertStore::empty();
    /// let _ = circuitpy::PostgresOptions::default().root_certificates(roots);
    /// ```
    #[cfg(feature = "postgres-tls")]
    pub fn root_certificates(mut self, roots: rustls::RootCertStore) -> Self {
        self.trust = tls::Trust::Roots(Arc::new(roots));
        self
    }

    /// Connects with the application's own rustls configuration: client certificates,
    /// its own verifier or crypto provider. The URL's `sslrootcert` is then ignored.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let config = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .unwrap()
    ///     .with_root_certificates(rustls::RootCertStore::empty())
    ///     .with_no_client_auth();
    /// let _ = circuitpy::PostgresOptions::default().tls_config(config);
    /// ```
    #[cfg(feature = "postgres-tls")]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.trust = tls::Trust::Config(Arc::new(config));
        self
    }
}

/// The tables, the index and the function, with the table's name in place.
const SCHEMA: &str = include_str!("schema.sql");

/// The SQL of one table.
#[derive(Debug)]
struct Sql {
    table: String,
    schema: String,
    /// What the migration writes as the table's comment: a digest of the schema it
    /// installed. A table that carries it is current, and connecting takes no lock on it.
    version: String,
    op: String,
    /// `op` only where the breaker has a row: for the operations that change nothing on a
    /// breaker without one (a read, a success outside the rate policy, a permit), which then
    /// cost an index probe in plain SQL and no function call. No row back is closed with
    /// nothing counted.
    op_if_stored: String,
    /// The state and live failure count of one breaker, by the database's clock or the
    /// request's time: one index probe, two parameters, which settles a success that
    /// changes nothing ([`settled_success`]) without calling the function.
    peek: String,
    increment: String,
    get: String,
    expire: String,
    delete: String,
    list: String,
    inspect: String,
}

fn check_table_name(table: &str) -> Result<(), StorageError> {
    let part_ok = |part: &str| {
        let mut chars = part.chars();
        part.len() <= 48
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|part| part_ok(part)) {
        Ok(())
    } else {
        Err(StorageError::InvalidKey {
            key: table.chars().take(64).collect(),
            detail: "a table name is `table` or `schema.table`, each 1 to 48 lowercase letters, digits or _, not starting with a digit",
        })
    }
}

/// Now by the database's clock, in microseconds since the Unix epoch.
const NOW_US: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

impl Sql {
    fn new(table: &str) -> Result<Sql, StorageError> {
        check_table_name(table)?;
        let t = table;
        let bare = table.rsplit('.').next().unwrap_or(table);
        let schema = SCHEMA
            .replace("{t}", t)
            .replace("{bare}", bare)
            .replace("{lock}", &format!("circuitpy:{t}"));
        let version = format!("circuitpy schema {:016x}", fnv1a(schema.as_bytes()));
        Ok(Sql {
            table: t.to_owned(),
            schema,
            version,
            op: format!(
                "SELECT * FROM {t}_op($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)"
            ),
            // The condition refers to no column of the function's row, so it is a one-time
            // filter: the function is not called when it is false.
            op_if_stored: format!(
                "SELECT * FROM {t}_op($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)
                 WHERE EXISTS (SELECT 1 FROM {t} WHERE key = $1)"
            ),
            peek: format!(
                "SELECT CASE WHEN b.mode_until > c.n AND b.mode = {MODE_FORCED_CLOSED} THEN 4
                             WHEN b.mode_until > c.n AND b.mode = {MODE_FORCED_OPEN} THEN 3
                             WHEN b.open_until > c.n THEN 1
                             WHEN b.tripped_until > c.n THEN 2
                             ELSE 0 END,
                        CASE WHEN b.failures_until > c.n THEN b.failures ELSE 0 END
                 FROM {t} AS b, (SELECT COALESCE($2::bigint, {NOW_US}) AS n) AS c
                 WHERE b.key = $1"
            ),
            increment: format!(
                "WITH gone AS (
                    DELETE FROM {t}_counts WHERE key IN (
                        SELECT key FROM {t}_counts
                        WHERE expires_at < {NOW_US} AND key <> $1
                        LIMIT 2 FOR UPDATE SKIP LOCKED))
                 INSERT INTO {t}_counts AS c (key, count, expires_at)
                 VALUES ($1, $3, {NOW_US} + $2)
                 ON CONFLICT (key) DO UPDATE SET
                    count = CASE WHEN c.expires_at <= {NOW_US} THEN $3 ELSE c.count + $3 END,
                    expires_at = CASE WHEN c.expires_at <= {NOW_US}
                                      THEN EXCLUDED.expires_at ELSE c.expires_at END
                 RETURNING count"
            ),
            get: format!("SELECT count FROM {t}_counts WHERE key = $1 AND expires_at > {NOW_US}"),
            expire: format!(
                "UPDATE {t}_counts SET expires_at = {NOW_US} + $2
                 WHERE key = $1 AND expires_at > {NOW_US}"
            ),
            delete: format!("DELETE FROM {t}_counts WHERE key = $1"),
            list: format!(
                "SELECT {ADMIN_COLUMNS}, {NOW_US} FROM {t}
                 WHERE left(key, length($1)) = $1 AND expires_at > {NOW_US} ORDER BY key"
            ),
            inspect: format!(
                "SELECT {ADMIN_COLUMNS}, {NOW_US} FROM {t} WHERE key = $1 AND expires_at > {NOW_US}"
            ),
        })
    }

    /// The migration as one transaction that waits for locks no longer than `timeout`, so
    /// that a migration stuck behind another session fails with the lock named, and a
    /// failure rolls everything back.
    fn migration(&self, timeout: Duration) -> String {
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
        format!(
            "BEGIN;
             SET LOCAL lock_timeout = {ms};
             SET LOCAL statement_timeout = {ms};
             {}
             COMMENT ON TABLE {} IS '{}';
             COMMIT;",
            self.schema, self.table, self.version
        )
    }

    /// Migrates unless the table is current. Another process's breakers keep running
    /// meanwhile: a current table is only read about (its comment, in the catalog), never
    /// locked, so a process that starts during an incident does not stall the fleet.
    async fn migrate_on(
        &self,
        client: &tokio_postgres::Client,
        timeout: Duration,
    ) -> Result<(), tokio_postgres::Error> {
        let current = client
            .query_opt(
                "SELECT 1 WHERE obj_description(to_regclass($1), 'pg_class') = $2",
                &[&self.table, &self.version],
            )
            .await?;
        if current.is_some() {
            return Ok(());
        }
        client.batch_execute(&self.migration(timeout)).await
    }
}

/// The 64-bit FNV-1a digest: stable across builds and platforms, unlike std's hasher, so
/// that every process of a fleet agrees on which schema is current.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn op_code(op: Op) -> i32 {
    match op {
        Op::Read => 0,
        Op::Success => 1,
        Op::Failure => 2,
        Op::AcquireTrial => 3,
        Op::TrialSuccess => 4,
        Op::TrialFailure => 5,
        Op::ForceOpen => 6,
        Op::ForceClosed => 7,
        Op::Reset => 8,
        Op::ReleaseTrial => 9,
        Op::Override => 10,
    }
}

/// One storage operation, owning what it needs, so that it can run on a task of its own.
/// Made and consumed once per operation, by value: boxing the large variant's `Config` would
/// only add an allocation to every breaker operation.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Work {
    Execute {
        key: String,
        op: Op,
        config: Config,
        count: u64,
        round: Option<u64>,
        at: Option<Duration>,
        /// A forcing's actor and reason, when it names either (boxed: rarely there).
        audit: Option<Box<(Option<String>, Option<String>)>>,
        /// The key's jitter seed, when the handler has a jitter.
        seed: u64,
        /// For an override: the settings to store.
        overrides: crate::Overrides,
        reporter: u64,
        /// [`Request::changes_nothing_when_nothing_is_stored`]: sent guarded by the row's
        /// existence.
        unchanging: bool,
        /// [`Request::success_may_change_nothing`]: the peek first.
        peek: bool,
    },
    /// The admin's reads: every breaker whose key starts with `stem`, or the one at `key`.
    List {
        stem: String,
    },
    Inspect {
        key: String,
    },
    Increment {
        key: String,
        count: u64,
        ttl: Duration,
    },
    Get {
        key: String,
    },
    Expire {
        key: String,
        ttl: Duration,
    },
}

/// The admin's reads: the database's clock, and each row with its key and expiry.
type Found = (i64, Vec<(String, i64, Row)>);

/// What an operation returned.
enum Done {
    Snapshot(Snapshot),
    /// The admin's reads: the database's clock, and each row with its key and expiry.
    Rows(Found),
    Count(u64),
    Nothing,
}

impl Work {
    fn execute(request: &Request<'_>) -> Work {
        Work::Execute {
            key: request.namespaced_key(),
            op: request.op,
            config: *request.config,
            count: request.count,
            round: request.round,
            at: request.at,
            seed: if request.config.recovery_jitter > 0.0 {
                crate::rules::jitter_seed(request.key)
            } else {
                0
            },
            overrides: request.overrides,
            reporter: request.reporter_id(),
            unchanging: request.changes_nothing_when_nothing_is_stored(),
            peek: request.success_may_change_nothing(),
            audit: (request.audit.actor.is_some() || request.audit.reason.is_some()).then(|| {
                Box::new((
                    request.audit.actor.map(str::to_owned),
                    request.audit.reason.map(str::to_owned),
                ))
            }),
        }
    }

    fn key(&self) -> &str {
        match self {
            Work::Execute { key, .. }
            | Work::List { stem: key }
            | Work::Inspect { key }
            | Work::Increment { key, .. }
            | Work::Get { key }
            | Work::Expire { key, .. } => key,
        }
    }
}

/// A pool with the SQL of its table: what both flavours work with.
#[derive(Clone)]
struct Db {
    pool: Pool,
    sql: Arc<Sql>,
    options: PostgresOptions,
    /// How to open a connection of its own for a migration; `None` for an application's
    /// pool, whose connections the migration borrows.
    connect: Option<tokio_postgres::Config>,
    /// TLS (or none) for the migration's connection and for cancel requests.
    tls: tls::Connector,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// A pool of the storage's own for `url`. Connects nothing yet.
    fn own(url: &str, options: PostgresOptions) -> Result<Db, StorageError> {
        let parsed = tls::parse(url)?;
        let mut config = parsed.config;
        #[cfg(feature = "postgres-tls")]
        if !parsed.mode_given && !matches!(options.trust, tls::Trust::Default) {
            // The options name a CA or a configuration: TLS was meant.
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        config.connect_timeout(options.timeout);
        let sql = Sql::new(&options.table)?;
        let tls = tls::connector(&options, parsed.root_cert.as_deref())?;
        let manager = Manager::from_config(
            config.clone(),
            tls::share(&tls),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| StorageError::backend(&options.table, error))?;
        Ok(Db {
            pool,
            sql: Arc::new(sql),
            options,
            connect: Some(config),
            tls,
        })
    }

    /// The application's pool.
    fn users(pool: Pool, options: PostgresOptions) -> Result<Db, StorageError> {
        let sql = Sql::new(&options.table)?;
        // Only cancel requests use it: the pool's connections are the application's.
        let tls = tls::connector(&options, None)?;
        Ok(Db {
            pool,
            sql: Arc::new(sql),
            options,
            connect: None,
            tls,
        })
    }

    /// Creates the tables and the function, within the options' timeout, on a connection
    /// of its own (or one taken out of the application's pool for good): a failed
    /// migration never leaves a session behind that later operations would use.
    async fn migrate(&self) -> Result<(), StorageError> {
        let table = &self.sql.table;
        let timeout = self.options.timeout;
        // The client's own bound sits past the server's, so that a lock wait is reported
        // as what it is.
        let bound = timeout + Duration::from_millis(250);
        let work = async {
            match &self.connect {
                Some(config) => {
                    let (client, connection) = config
                        .connect(tls::share(&self.tls))
                        .await
                        .map_err(|error| postgres_error(table, error))?;
                    let driver = tokio::spawn(connection);
                    let result = self
                        .sql
                        .migrate_on(&client, timeout)
                        .await
                        .map_err(|error| postgres_error(table, error));
                    drop(client);
                    driver.abort();
                    result
                }
                None => {
                    let object = self
                        .pool
                        .get()
                        .await
                        .map_err(|error| pool_error(table, error))?;
                    let result = self
                        .sql
                        .migrate_on(&object, timeout)
                        .await
                        .map_err(|error| postgres_error(table, error));
                    if result.is_err() {
                        // Out of the pool for good: it may sit in an aborted transaction.
                        drop(Object::take(object));
                    }
                    result
                }
            }
        };
        match tokio::time::timeout(bound, work).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::timeout(table.clone(), timeout)),
        }
    }

    /// Every breaker under `prefix`: one query.
    async fn list(&self, prefix: &str) -> Result<Listing, StorageError> {
        let stem = format!("{prefix}:{{");
        let work = Work::List { stem: stem.clone() };
        let (now, rows) = self.perform(work, ADMIN_TIMEOUT).await?.rows(&stem)?;
        let mut listing = Listing::default();
        for (stored, expires_at, row) in rows {
            match breaker_key(prefix, &stored, "") {
                Some(key) => listing
                    .breakers
                    .push(describe(key, &row, now, Some(expires_at))),
                None => listing.invalid.push(StorageError::invalid_data(
                    stored,
                    "not a breaker key (`{prefix}:{key}`)",
                )),
            }
        }
        // By breaker key: storage keys sort `a:{x:y}` before `a:{x}`.
        listing.breakers.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }

    /// One breaker, if stored: one query.
    async fn inspect(&self, prefix: &str, key: &str) -> Result<Option<BreakerInfo>, StorageError> {
        check_key(prefix, key)?;
        let stored = format!("{prefix}:{{{key}}}");
        let work = Work::Inspect {
            key: stored.clone(),
        };
        let (now, rows) = self.perform(work, ADMIN_TIMEOUT).await?.rows(&stored)?;
        Ok(rows
            .first()
            .map(|(_, expires_at, row)| describe(key, row, now, Some(*expires_at))))
    }

    /// Forces or resets through the breaker's function, then reads the breaker back.
    async fn act(
        &self,
        prefix: &str,
        key: &str,
        action: Action,
        audit: Audit<'_>,
    ) -> Result<Option<BreakerInfo>, StorageError> {
        let config = action.checked(prefix, key, audit)?;
        let request = action.request(key, &config, audit);
        let work = Work::execute(&request);
        let stored = work.key().to_owned();
        self.perform(work, ADMIN_TIMEOUT).await?.snapshot(&stored)?;
        self.inspect(prefix, key).await
    }

    /// Runs `work` within `timeout`: a connection is taken from the pool (opened on a task
    /// of its own if none is idle), then the statement runs.
    async fn perform(&self, work: Work, timeout: Duration) -> Result<Done, StorageError> {
        let started = Instant::now();
        let key = work.key().to_owned();
        // An idle session is handed out at once. Otherwise getting one may mean connecting,
        // which runs in a task of its own, so that a caller who stops waiting does not
        // abandon a connection half made.
        let idle = if self.pool.status().available > 0 {
            tokio::time::timeout(timeout, self.pool.get())
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let object = match idle {
            Some(object) => object,
            None => {
                let pool = self.pool.clone();
                let getting = tokio::spawn(async move { pool.get().await });
                match tokio::time::timeout(timeout.saturating_sub(started.elapsed()), getting).await
                {
                    Err(_) => return Err(StorageError::timeout(key, timeout)),
                    Ok(Err(join)) => return Err(StorageError::backend(key, join)),
                    Ok(Ok(Err(error))) => return Err(pool_error(&key, error)),
                    Ok(Ok(Ok(object))) => object,
                }
            }
        };
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, run(&object, &self.sql, &work)).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(Failed::Data(error))) => Err(error),
            Ok(Err(Failed::Client(error))) => {
                if session_broken(&object, &error) {
                    drop(Object::take(object));
                }
                Err(match error.as_db_error() {
                    Some(db)
                        if db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED
                            || db.code()
                                == &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE =>
                    {
                        StorageError::timeout(key, timeout)
                    }
                    _ => postgres_error(&key, error),
                })
            }
            Err(_) => {
                // The statement may still be running: stop it, and never hand this session
                // out again.
                let cancel = object.cancel_token();
                let tls = tls::share(&self.tls);
                tokio::spawn(async move {
                    let _ = cancel.cancel_query(tls).await;
                });
                drop(Object::take(object));
                Err(StorageError::timeout(key, timeout))
            }
        }
    }
}

enum Failed {
    Client(tokio_postgres::Error),
    Data(StorageError),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(error: tokio_postgres::Error) -> Self {
        Failed::Client(error)
    }
}

/// Whether a session that returned `error` must not be used again: the server ended it
/// (FATAL, admin shutdown, a connection exception), or it sits in an aborted transaction
/// (25P02). A statement error leaves it usable.
fn session_broken(object: &Object, error: &tokio_postgres::Error) -> bool {
    object.is_closed()
        || error.is_closed()
        || error.as_db_error().is_none_or(|db| {
            let code = db.code().code();
            matches!(db.severity(), "FATAL" | "PANIC")
                || code.starts_with("57P")
                || code.starts_with("08")
                || code == "25P02"
        })
}

/// A client error with the server's own words: the top-level text of a server error is
/// only "db error".
fn postgres_error(key: &str, error: tokio_postgres::Error) -> StorageError {
    match error.as_db_error() {
        Some(db) => StorageError::backend(
            key,
            std::io::Error::other(format!(
                "{} {}: {}{}",
                db.severity(),
                db.code().code(),
                db.message(),
                tls::hint(db.message()).map_or(String::new(), |hint| format!(" ({hint})"))
            )),
        ),
        None => StorageError::backend(key, std::io::Error::other(tls::describe(&error))),
    }
}

/// The pool's error; a connection that could not be opened says why (a TLS handshake's
/// reason included).
fn pool_error(key: &str, error: deadpool_postgres::PoolError) -> StorageError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => postgres_error(key, error),
        other => StorageError::backend(key, std::io::Error::other(other.to_string())),
    }
}

/// One statement on a pooled connection.
async fn run(object: &Object, sql: &Sql, work: &Work) -> Result<Done, Failed> {
    match work {
        Work::Execute {
            key,
            op,
            config,
            count,
            round,
            at,
            audit,
            seed,
            overrides,
            reporter,
            unchanging,
            peek,
        } => {
            if *peek {
                let statement = object.prepare_cached(&sql.peek).await?;
                let row = object
                    .query_opt(&statement, &[key, &at.map(micros)])
                    .await?;
                let settled = match row {
                    None => Some(Snapshot::closed(0)),
                    Some(row) => {
                        let state: i32 = row.try_get(0)?;
                        let failures: i64 = row.try_get(1)?;
                        State::from_code(state.max(0) as u64).and_then(|state| {
                            settled_success(config, state, failures.max(0) as u64)
                        })
                    }
                };
                if let Some(snapshot) = settled {
                    return Ok(Done::Snapshot(snapshot));
                }
            }
            let (actor, reason) = audit.as_deref().cloned().unwrap_or_default();
            let (policy, window, rate, minimum_calls) = config.policy.flatten();
            // After a peek the breaker has a row: the function, unguarded.
            let statement = object
                .prepare_cached(if *unchanging && !*peek {
                    &sql.op_if_stored
                } else {
                    &sql.op
                })
                .await?;
            let row = object
                .query_opt(
                    &statement,
                    &[
                        key,
                        &op_code(*op),
                        &(config.failure_threshold.min(i32::MAX as u32) as i32),
                        &micros(config.recovery_timeout),
                        &(config.half_open_trials as i32),
                        &policy,
                        &micros(window),
                        &rate,
                        &(minimum_calls.min(i32::MAX as u32) as i32),
                        &micros(retention(config)),
                        &micros(FORCED_TTL),
                        &((*count).min(i64::MAX as u64) as i64),
                        &round.map(|round| round.min(i64::MAX as u64) as i64),
                        &at.map(micros),
                        &lock_wait(config.storage_timeout),
                        &actor,
                        &reason,
                        &config.backoff.factor,
                        &micros(config.backoff.max),
                        &config.recovery_jitter,
                        &(*seed as i64),
                        &overrides
                            .failure_threshold
                            .map_or(0, |n| n.min(i32::MAX as u32) as i32),
                        &overrides.recovery_timeout.map_or(0, |timeout| {
                            micros(Duration::from_millis(timeout.as_millis() as u64))
                        }),
                        &overrides
                            .half_open_trials
                            .map_or(0, |n| n.min(i32::MAX as u32) as i32),
                        &overrides.backoff.map_or(0.0, |backoff| backoff.factor),
                        &overrides.backoff.map_or(0, |backoff| {
                            micros(Duration::from_millis(backoff.max.as_millis() as u64))
                        }),
                        &(config.quorum.min(i32::MAX as u32) as i32),
                        &(*reporter as i64),
                    ],
                )
                .await?;
            match row {
                Some(row) => Ok(Done::Snapshot(snapshot_of(key, &row)?)),
                None => Ok(Done::Snapshot(Snapshot::closed(0))),
            }
        }
        Work::List { stem } => {
            let statement = object.prepare_cached(&sql.list).await?;
            let rows = object.query(&statement, &[stem]).await?;
            rows_of(&rows)
        }
        Work::Inspect { key } => {
            let statement = object.prepare_cached(&sql.inspect).await?;
            let rows = object.query(&statement, &[key]).await?;
            rows_of(&rows)
        }
        Work::Increment { key, count, ttl } => {
            let statement = object.prepare_cached(&sql.increment).await?;
            let count = (*count).min(i64::MAX as u64) as i64;
            let row = object
                .query_one(&statement, &[key, &micros(*ttl), &count])
                .await?;
            Ok(Done::Count(row.try_get::<_, i64>(0)?.max(0) as u64))
        }
        Work::Get { key } => {
            let statement = object.prepare_cached(&sql.get).await?;
            let row = object.query_opt(&statement, &[key]).await?;
            Ok(Done::Count(match row {
                Some(row) => row.try_get::<_, i64>(0)?.max(0) as u64,
                None => 0,
            }))
        }
        Work::Expire { key, ttl } => {
            if ttl.is_zero() {
                let statement = object.prepare_cached(&sql.delete).await?;
                object.execute(&statement, &[key]).await?;
            } else {
                let statement = object.prepare_cached(&sql.expire).await?;
                object.execute(&statement, &[key, &micros(*ttl)]).await?;
            }
            Ok(Done::Nothing)
        }
    }
}

/// How long the function may wait for a row lock, in milliseconds: a little less than the
/// caller waits, so that the server gives up first and the connection stays usable.
fn lock_wait(timeout: Duration) -> i32 {
    (timeout.as_millis() * 9 / 10).clamp(1, i32::MAX as u128) as i32
}

/// The columns [`rows_of`] reads, in its order, and the clock.
const ADMIN_COLUMNS: &str = "key, expires_at, mode, mode_until, open_until, opened_at,
    tripped_until, failures, failures_until, round, trials, passed, round_until, b_ids,
    b_calls, b_errs, forced_at, forced_by, forced_reason, reopens, o_threshold, o_recovery_us,
    o_trials, o_until, o_backoff, o_backoff_max_us, q_ids, q_until";

/// The admin's rows, as the rules' rows.
fn rows_of(rows: &[tokio_postgres::Row]) -> Result<Done, Failed> {
    let mut now = 0;
    let mut found = Vec::with_capacity(rows.len());
    for r in rows {
        now = r.try_get::<_, i64>(28)?;
        let (q_ids, q_until): (Vec<i64>, Vec<i64>) = (r.try_get(26)?, r.try_get(27)?);
        let (ids, calls, errs): (Vec<i64>, Vec<i64>, Vec<i64>) =
            (r.try_get(13)?, r.try_get(14)?, r.try_get(15)?);
        let mut buckets = [(0, 0, 0); BUCKETS];
        for (slot, bucket) in buckets.iter_mut().enumerate() {
            *bucket = (
                ids.get(slot).copied().unwrap_or(0),
                calls.get(slot).copied().unwrap_or(0),
                errs.get(slot).copied().unwrap_or(0),
            );
        }
        let row = Row {
            mode: i64::from(r.try_get::<_, i16>(2)?),
            mode_until: r.try_get(3)?,
            open_until: r.try_get(4)?,
            opened_at: r.try_get(5)?,
            tripped_until: r.try_get(6)?,
            failures: r.try_get(7)?,
            failures_until: r.try_get(8)?,
            round: r.try_get(9)?,
            trials: i64::from(r.try_get::<_, i32>(10)?),
            passed: i64::from(r.try_get::<_, i32>(11)?),
            round_until: r.try_get(12)?,
            buckets,
            forced_at: r.try_get(16)?,
            forced_by: r.try_get(17)?,
            forced_reason: r.try_get(18)?,
            reopens: i64::from(r.try_get::<_, i32>(19)?),
            overrides: crate::rules::row::Stored {
                threshold: i64::from(r.try_get::<_, i32>(20)?),
                recovery: r.try_get(21)?,
                trials: i64::from(r.try_get::<_, i32>(22)?),
                until: r.try_get(23)?,
                backoff: r.try_get(24)?,
                backoff_max: r.try_get(25)?,
            },
            reporters: q_ids.into_iter().zip(q_until).collect(),
        };
        found.push((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?, row));
    }
    Ok(Done::Rows((now, found)))
}

fn snapshot_of(key: &str, row: &tokio_postgres::Row) -> Result<Snapshot, Failed> {
    let state: i32 = row.try_get(0)?;
    let permit: bool = row.try_get(1)?;
    let retry_in: Option<i64> = row.try_get(2)?;
    let open_since: Option<i64> = row.try_get(3)?;
    let failures: i64 = row.try_get(4)?;
    let round: i64 = row.try_get(5)?;
    let state = State::from_code(state.max(0) as u64).ok_or_else(|| {
        Failed::Data(StorageError::invalid_data(
            key,
            format!("unknown state code {state}"),
        ))
    })?;
    let duration = |us: Option<i64>| us.map(|us| Duration::from_micros(us.max(0) as u64));
    let mut snapshot = match state {
        State::Closed => Snapshot::closed(failures.max(0) as u64),
        State::Open => Snapshot::open(duration(retry_in).unwrap_or_default(), duration(open_since)),
        State::HalfOpen if permit => Snapshot::trial(round.max(0) as u64),
        State::HalfOpen => Snapshot::half_open(false),
        forced => Snapshot::forced(forced),
    };
    snapshot.permit = permit;
    Ok(snapshot)
}

impl Done {
    fn snapshot(self, key: &str) -> Result<Snapshot, StorageError> {
        match self {
            Done::Snapshot(snapshot) => Ok(snapshot),
            _ => Err(StorageError::invalid_data(
                key,
                "no breaker state in the reply",
            )),
        }
    }

    fn rows(self, key: &str) -> Result<Found, StorageError> {
        match self {
            Done::Rows(found) => Ok(found),
            _ => Err(StorageError::invalid_data(key, "no rows in the reply")),
        }
    }

    fn count(self, key: &str) -> Result<u64, StorageError> {
        match self {
            Done::Count(count) => Ok(count),
            _ => Err(StorageError::invalid_data(key, "no count in the reply")),
        }
    }
}
