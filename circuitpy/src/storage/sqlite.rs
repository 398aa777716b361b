//! Breakers shared by the processes of one host through a SQLite file.
//!
//! Each breaker is one row; every operation is one `BEGIN IMMEDIATE` transaction that reads
//! the row, applies the rules (`rules/row.rs`) and writes it back, so concurrent writers
//! from any number of processes are serialised by SQLite's write lock (WAL mode, so readers
//! never wait for writers). Times are the host's wall clock in microseconds; every deadline
//! is a column and is honoured on read, so a row left behind by a dead process expires by
//! itself. Rows whose every deadline has passed are deleted a few at a time by later
//! writes.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Op, Request, Snapshot, Storage, settled_success};
use crate::admin::{
    ADMIN_TIMEOUT, Action, Admin, Audit, BreakerInfo, Listing, breaker_key, check_key, describe,
};
use crate::error::StorageError;
use crate::rules::row::{self, Change, Row, Stored};
use crate::rules::{BUCKETS, micros};

/// A storage in a SQLite file: one host, many processes, one breaker.
///
/// ```
/// # fn main() -> Result<(), circuitpy::StorageError> {
/// let dir = std::env::temp_dir().join(format!("circuitpy-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let storage = circuitpy::SqliteStorage::open(dir.join("breakers.db"))?;
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
///
/// Cost: one transaction on a local file per breaker operation, without an fsync per
/// commit (WAL mode, `synchronous = NORMAL`): about 3 to 5 µs for a read or a success that
/// changes nothing, about 20 µs for a write, uncontended. A call on a closed breaker
/// records its outcome with one operation.
///
/// Each operation, waiting included, is bounded by the handler's
/// [`STORAGE_TIMEOUT`](crate::CircuitBreaker::STORAGE_TIMEOUT): waiting for this process's
/// connection (shared by its threads) and then for SQLite's write lock (held by another
/// process) share the one bound; past it the call counts as a storage failure.
#[derive(Debug)]
pub struct SqliteStorage {
    connection: Mutex<Connected>,
    table: String,
    /// The statements of `execute`, made once: reading a breaker, reading only its state
    /// and failure count, updating it, inserting it.
    select: String,
    peek: String,
    update: String,
    /// The update when the row's expiry stays: the expiry's index is left alone.
    update_in_place: String,
    insert: String,
}

#[derive(Debug)]
struct Connected {
    connection: Connection,
    busy_timeout: Duration,
}

const DEFAULT_TABLE: &str = "circuitpy_breakers";
/// Expired rows a write deletes on its way.
const CLEANUP_BATCH: u32 = 4;
/// The bound on the primitives, which carry no handler configuration.
const PRIMITIVE_TIMEOUT: Duration = Duration::from_secs(5);

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`, with the breakers in the table
    /// `circuitpy_breakers`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with_table(path, DEFAULT_TABLE)
    }

    /// Opens the database at `path` with the breakers in `table` (and the primitives'
    /// counts in `{table}_counts`); the tables are created if missing. A table name is
    /// letters, digits and `_`, at most 48 bytes.
    ///
    /// ```
    /// let error = circuitpy::SqliteStorage::open_with_table("unused.db", "no spaces").unwrap_err();
    /// assert!(error.to_string().contains("table"));
    /// ```
    pub fn open_with_table(path: impl AsRef<Path>, table: &str) -> Result<Self, StorageError> {
        check_table_name(table)?;
        let path = path.as_ref();
        let fail =
            |error: rusqlite::Error| StorageError::backend(path.display().to_string(), error);
        let connection = Connection::open(path).map_err(fail)?;
        let busy_timeout = PRIMITIVE_TIMEOUT;
        connection.busy_timeout(busy_timeout).map_err(fail)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail)?;
        connection
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    key TEXT PRIMARY KEY,
                    mode INTEGER NOT NULL DEFAULT 0,
                    mode_until INTEGER NOT NULL DEFAULT 0,
                    open_until INTEGER NOT NULL DEFAULT 0,
                    opened_at INTEGER NOT NULL DEFAULT 0,
                    tripped_until INTEGER NOT NULL DEFAULT 0,
                    failures INTEGER NOT NULL DEFAULT 0,
                    failures_until INTEGER NOT NULL DEFAULT 0,
                    round INTEGER NOT NULL DEFAULT 0,
                    trials INTEGER NOT NULL DEFAULT 0,
                    passed INTEGER NOT NULL DEFAULT 0,
                    round_until INTEGER NOT NULL DEFAULT 0,
                    buckets TEXT NOT NULL DEFAULT '',
                    forced_at INTEGER NOT NULL DEFAULT 0,
                    forced_by TEXT,
                    forced_reason TEXT,
                    reopens INTEGER NOT NULL DEFAULT 0,
                    o_threshold INTEGER NOT NULL DEFAULT 0,
                    o_recovery INTEGER NOT NULL DEFAULT 0,
                    o_trials INTEGER NOT NULL DEFAULT 0,
                    o_backoff REAL NOT NULL DEFAULT 0,
                    o_backoff_max INTEGER NOT NULL DEFAULT 0,
                    o_until INTEGER NOT NULL DEFAULT 0,
                    reporters TEXT NOT NULL DEFAULT '',
                    expires_at INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS {table}_expires ON {table} (expires_at);
                 CREATE TABLE IF NOT EXISTS {table}_counts (
                    key TEXT PRIMARY KEY,
                    count INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS {table}_counts_expires ON {table}_counts (expires_at);"
            ))
            .map_err(fail)?;
        // A table made before rounds were numbered gains the column.
        let has_round: bool = connection
            .query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'round'"),
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(fail)?
            > 0;
        if !has_round {
            connection
                .execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN round INTEGER NOT NULL DEFAULT 0"
                ))
                .map_err(fail)?;
        }
        // A table made before forcing kept its audit trail gains the columns.
        let has_audit: bool = connection
            .query_row(
                &format!(
                    "SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'forced_at'"
                ),
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(fail)?
            > 0;
        if !has_audit {
            connection
                .execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN forced_at INTEGER NOT NULL DEFAULT 0;
                     ALTER TABLE {table} ADD COLUMN forced_by TEXT;
                     ALTER TABLE {table} ADD COLUMN forced_reason TEXT;"
                ))
                .map_err(fail)?;
        }
        // A table made before the backoff counted failed rounds gains the column.
        let has_reopens: bool = connection
            .query_row(
                &format!(
                    "SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'reopens'"
                ),
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(fail)?
            > 0;
        if !has_reopens {
            connection
                .execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN reopens INTEGER NOT NULL DEFAULT 0"
                ))
                .map_err(fail)?;
        }
        // A table made before runtime overrides gains their columns, and one made before
        // the quorum its reporters.
        for (column, declaration) in [
            ("o_threshold", "INTEGER NOT NULL DEFAULT 0"),
            ("o_recovery", "INTEGER NOT NULL DEFAULT 0"),
            ("o_trials", "INTEGER NOT NULL DEFAULT 0"),
            ("o_until", "INTEGER NOT NULL DEFAULT 0"),
            ("o_backoff", "REAL NOT NULL DEFAULT 0"),
            ("o_backoff_max", "INTEGER NOT NULL DEFAULT 0"),
            ("reporters", "TEXT NOT NULL DEFAULT ''"),
        ] {
            let present: bool = connection
                .query_row(
                    &format!(
                        "SELECT count(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"
                    ),
                    [],
                    |row| row.get::<_, i64>(0),
                )
                .map_err(fail)?
                > 0;
            if !present {
                connection
                    .execute_batch(&format!(
                        "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
                    ))
                    .map_err(fail)?;
            }
        }
        Ok(SqliteStorage {
            connection: Mutex::new(Connected {
                connection,
                busy_timeout,
            }),
            table: table.to_owned(),
            select: format!("SELECT {COLUMNS} FROM {table} WHERE key = ?1"),
            peek: format!(
                "SELECT mode, mode_until, open_until, tripped_until, failures, failures_until
                 FROM {table} WHERE key = ?1"
            ),
            update: format!("UPDATE {table} SET {UPDATED}, expires_at = ?14 WHERE key = ?1"),
            update_in_place: format!("UPDATE {table} SET {UPDATED} WHERE key = ?1"),
            insert: format!(
                "INSERT INTO {table} (key, mode, mode_until, open_until, opened_at,
                    tripped_until, failures, failures_until, round, trials, passed, round_until,
                    buckets, expires_at, forced_at, forced_by, forced_reason, reopens,
                    o_threshold, o_recovery, o_trials, o_until, o_backoff, o_backoff_max,
                    reporters)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                    ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"
            ),
        })
    }

    /// Runs `run` on the connection within `timeout`, waiting for the connection and then
    /// for SQLite's lock included.
    fn with<T>(
        &self,
        key: &str,
        timeout: Duration,
        run: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StorageError> {
        // Uncontended, the connection is taken without reading the clock.
        let (mut connected, waited) = match self.connection.try_lock() {
            Some(connected) => (connected, Duration::ZERO),
            None => {
                let started = Instant::now();
                let Some(connected) = self.connection.try_lock_for(timeout) else {
                    return Err(StorageError::timeout(key, timeout));
                };
                (connected, started.elapsed())
            }
        };
        // What is left of the bound goes to SQLite's lock, in whole milliseconds (its unit),
        // at least one.
        let left = timeout.saturating_sub(waited).max(Duration::from_millis(1));
        let left = Duration::from_millis(left.as_millis() as u64).max(Duration::from_millis(1));
        if left != connected.busy_timeout {
            connected
                .connection
                .busy_timeout(left)
                .map_err(|error| StorageError::backend(key, error))?;
            connected.busy_timeout = left;
        }
        run(&mut connected.connection).map_err(|error| match error {
            rusqlite::Error::SqliteFailure(code, _)
                if matches!(
                    code.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                StorageError::timeout(key, timeout)
            }
            error => StorageError::backend(key, error),
        })
    }
}

pub(crate) fn check_table_name(table: &str) -> Result<(), StorageError> {
    let mut chars = table.chars();
    let valid = table.len() <= 48
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(StorageError::InvalidKey {
            key: table.chars().take(64).collect(),
            detail: "a table name is 1 to 48 letters, digits or _, not starting with a digit",
        })
    }
}

super::async_by_blocking!(
    SqliteStorage,
    "The same storage for async code (the tower layer, the reqwest middleware, a guarded \
     `async fn`): each operation is one local transaction, run on the calling task and \
     bounded, lock wait included, by the handler's `STORAGE_TIMEOUT`, as a short blocking \
     section of the executor's thread."
);

/// Now, in microseconds: the request's time if it gives one, the host's wall clock
/// otherwise.
fn now(request_at: Option<Duration>) -> i64 {
    micros(request_at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }))
}

impl Storage for SqliteStorage {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        Storage::increment_by(self, key, 1, ttl)
    }

    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        let table = &self.table;
        let count = count.min(i64::MAX as u64) as i64;
        self.with(key, PRIMITIVE_TIMEOUT, |connection| {
            let now = now(None);
            let total: i64 = connection
                .prepare_cached(&format!(
                    "INSERT INTO {table}_counts (key, count, expires_at) VALUES (?1, ?4, ?2 + ?3)
                     ON CONFLICT (key) DO UPDATE SET
                        count = CASE WHEN expires_at <= ?2 THEN ?4 ELSE count + ?4 END,
                        expires_at = CASE WHEN expires_at <= ?2 THEN excluded.expires_at ELSE expires_at END
                     RETURNING count"
                ))?
                .query_row(params![key, now, micros(ttl), count], |row| row.get(0))?;
            if total == count {
                connection
                    .prepare_cached(&format!(
                        "DELETE FROM {table}_counts WHERE key IN
                         (SELECT key FROM {table}_counts WHERE expires_at <= ?1 LIMIT {CLEANUP_BATCH})"
                    ))?
                    .execute(params![now])?;
            }
            Ok(total.max(0) as u64)
        })
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let table = &self.table;
        self.with(key, PRIMITIVE_TIMEOUT, |connection| {
            let count: Option<i64> = connection
                .prepare_cached(&format!(
                    "SELECT count FROM {table}_counts WHERE key = ?1 AND expires_at > ?2"
                ))?
                .query_row(params![key, now(None)], |row| row.get(0))
                .optional()?;
            Ok(count.unwrap_or(0).max(0) as u64)
        })
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let table = &self.table;
        self.with(key, PRIMITIVE_TIMEOUT, |connection| {
            if ttl.is_zero() {
                connection
                    .prepare_cached(&format!("DELETE FROM {table}_counts WHERE key = ?1"))?
                    .execute(params![key])?;
            } else {
                connection
                    .prepare_cached(&format!(
                        "UPDATE {table}_counts SET expires_at = ?2 + ?3 WHERE key = ?1 AND expires_at > ?2"
                    ))?
                    .execute(params![key, now(None), micros(ttl)])?;
            }
            Ok(())
        })
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let key = request.namespaced_key();
        let table = &self.table;
        self.with(&key, request.config.storage_timeout, |connection| {
            let select = &self.select;
            let now = now(request.at);
            // The operations that usually change nothing (a read, a success on a breaker
            // with nothing to reset, a permit asked of a closed or open breaker) are decided
            // on one read outside a write transaction: one statement sees one state, and an
            // operation that changes nothing might as well have run at that instant. Only a
            // change takes the file's write lock, and decides again under it.
            // A success that usually changes nothing is settled, where it can be, by the
            // breaker's state and failure count alone, as on Redis and PostgreSQL: a
            // narrower read, no blob decoded.
            if request.success_may_change_nothing() {
                let row = connection
                    .prepare_cached(&self.peek)?
                    .query_row(params![key], |r| {
                        Ok(Row {
                            mode: r.get(0)?,
                            mode_until: r.get(1)?,
                            open_until: r.get(2)?,
                            tripped_until: r.get(3)?,
                            failures: r.get(4)?,
                            failures_until: r.get(5)?,
                            ..Row::default()
                        })
                    })
                    .optional()?
                    .unwrap_or_default();
                let failures = row.live_failures(now).max(0) as u64;
                if let Some(snapshot) = settled_success(request.config, row.state(now), failures) {
                    return Ok(snapshot);
                }
            }
            if request.changes_nothing_when_nothing_is_stored() {
                let mut row = read_row(connection, select, &key)?
                    .map(|(row, _)| row)
                    .unwrap_or_default();
                let (change, snapshot) = row::apply(&mut row, now, request);
                if change == Change::Keep || request.op == Op::Read {
                    return Ok(snapshot);
                }
            }
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row = read_row(&transaction, select, &key)?;
            let stored_expiry = row.as_ref().map(|(_, expires_at)| *expires_at);
            let existed = row.is_some();
            let mut row = row.map(|(row, _)| row).unwrap_or_default();
            let (change, snapshot) = row::apply(&mut row, now, request);
            match change {
                Change::Keep => {}
                Change::Write { expires_at } => {
                    // The expiry only bounds when a row may be deleted: kept in whole
                    // seconds, rounded up, so that most writes leave its index alone.
                    let expires_at = expires_at.saturating_add(999_999) / 1_000_000 * 1_000_000;
                    let statement = match stored_expiry {
                        Some(stored) if stored == expires_at => &self.update_in_place,
                        Some(_) => &self.update,
                        None => &self.insert,
                    };
                    transaction
                        // In place when the row exists: cheaper than replacing it.
                        .prepare_cached(statement)?
                        .execute(params![
                            key,
                            row.mode,
                            row.mode_until,
                            row.open_until,
                            row.opened_at,
                            row.tripped_until,
                            row.failures,
                            row.failures_until,
                            row.round,
                            row.trials,
                            row.passed,
                            row.round_until,
                            encode_buckets(&row.buckets),
                            expires_at,
                            row.forced_at,
                            row.forced_by,
                            row.forced_reason,
                            row.reopens,
                            row.overrides.threshold,
                            row.overrides.recovery,
                            row.overrides.trials,
                            row.overrides.until,
                            row.overrides.backoff,
                            row.overrides.backoff_max,
                            encode_reporters(&row.reporters)
                        ])?;
                    if !existed {
                        transaction
                            .prepare_cached(&format!(
                                "DELETE FROM {table} WHERE key IN
                                 (SELECT key FROM {table} WHERE expires_at <= ?1 LIMIT {CLEANUP_BATCH})"
                            ))?
                            .execute(params![now])?;
                    }
                }
                Change::Delete => {
                    if existed {
                        delete_row(&transaction, table, &key)?;
                    }
                }
            }
            transaction.commit()?;
            Ok(snapshot)
        })
    }
}

/// Every column a write sets but the key and the expiry (`?1` and `?14`), as the
/// parameters of the insert number them.
const UPDATED: &str = "mode = ?2, mode_until = ?3, open_until = ?4, opened_at = ?5,
    tripped_until = ?6, failures = ?7, failures_until = ?8, round = ?9, trials = ?10,
    passed = ?11, round_until = ?12, buckets = ?13, forced_at = ?15, forced_by = ?16,
    forced_reason = ?17, reopens = ?18, o_threshold = ?19, o_recovery = ?20, o_trials = ?21,
    o_until = ?22, o_backoff = ?23, o_backoff_max = ?24, reporters = ?25";

/// The columns [`row_of`] reads, in its order.
const COLUMNS: &str = "mode, mode_until, open_until, opened_at, tripped_until, failures,
    failures_until, round, trials, passed, round_until, buckets, forced_at, forced_by,
    forced_reason, expires_at, key, reopens, o_threshold, o_recovery, o_trials, o_until,
    o_backoff, o_backoff_max, reporters";

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let buckets: String = r.get(11)?;
    Ok(Row {
        mode: r.get(0)?,
        mode_until: r.get(1)?,
        open_until: r.get(2)?,
        opened_at: r.get(3)?,
        tripped_until: r.get(4)?,
        failures: r.get(5)?,
        failures_until: r.get(6)?,
        round: r.get(7)?,
        trials: r.get(8)?,
        passed: r.get(9)?,
        round_until: r.get(10)?,
        buckets: decode_buckets(&buckets),
        forced_at: r.get(12)?,
        forced_by: r.get(13)?,
        forced_reason: r.get(14)?,
        reopens: r.get(17)?,
        overrides: Stored {
            threshold: r.get(18)?,
            recovery: r.get(19)?,
            trials: r.get(20)?,
            until: r.get(21)?,
            backoff: r.get(22)?,
            backoff_max: r.get(23)?,
        },
        reporters: decode_reporters(&r.get::<_, String>(24)?),
    })
}

/// A breaker's row and its stored expiry.
fn read_row(
    connection: &Connection,
    select: &str,
    key: &str,
) -> rusqlite::Result<Option<(Row, i64)>> {
    connection
        .prepare_cached(select)?
        .query_row(params![key], |r| Ok((row_of(r)?, r.get(15)?)))
        .optional()
}

/// The breakers under a prefix, as operators see them.
impl Admin for SqliteStorage {
    fn list(&self, prefix: &str) -> Result<Listing, StorageError> {
        let table = &self.table;
        let stem = format!("{prefix}:{{");
        let rows = self.with(&stem, ADMIN_TIMEOUT, |connection| {
            let now = now(None);
            let mut statement = connection.prepare(&format!(
                "SELECT {COLUMNS} FROM {table}
                 WHERE substr(key, 1, length(?1)) = ?1 AND expires_at > ?2 ORDER BY key"
            ))?;
            let rows = statement
                .query_map(params![stem, now], |r| {
                    Ok((r.get::<_, String>(16)?, r.get::<_, i64>(15)?, row_of(r)))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((now, rows))
        })?;
        let (now, rows) = rows;
        let mut listing = Listing::default();
        for (stored, expires_at, row) in rows {
            match (breaker_key(prefix, &stored, ""), row) {
                (Some(key), Ok(row)) => {
                    listing
                        .breakers
                        .push(describe(key, &row, now, Some(expires_at)));
                }
                (_, Err(error)) => listing
                    .invalid
                    .push(StorageError::invalid_data(stored, error.to_string())),
                (None, _) => listing.invalid.push(StorageError::invalid_data(
                    stored,
                    "not a breaker key (`{prefix}:{key}`)",
                )),
            }
        }
        // By breaker key: storage keys sort `a:{x:y}` before `a:{x}`.
        listing.breakers.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }

    fn inspect(&self, prefix: &str, key: &str) -> Result<Option<BreakerInfo>, StorageError> {
        check_key(prefix, key)?;
        let table = &self.table;
        let stored = format!("{prefix}:{{{key}}}");
        self.with(&stored, ADMIN_TIMEOUT, |connection| {
            let now = now(None);
            let found = connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM {table} WHERE key = ?1 AND expires_at > ?2"
                ))?
                .query_row(params![stored, now], |r| {
                    Ok((r.get::<_, i64>(15)?, row_of(r)))
                })
                .optional()?;
            Ok((now, found))
        })
        .and_then(|(now, found)| match found {
            None => Ok(None),
            Some((expires_at, Ok(row))) => Ok(Some(describe(key, &row, now, Some(expires_at)))),
            Some((_, Err(error))) => Err(StorageError::invalid_data(stored, error.to_string())),
        })
    }

    fn act(
        &self,
        prefix: &str,
        key: &str,
        action: Action,
        audit: Audit<'_>,
    ) -> Result<Option<BreakerInfo>, StorageError> {
        crate::admin::act_by_executing(self, prefix, key, action, audit)
    }
}

fn delete_row(connection: &Connection, table: &str, key: &str) -> rusqlite::Result<()> {
    connection
        .prepare_cached(&format!("DELETE FROM {table} WHERE key = ?1"))?
        .execute(params![key])?;
    Ok(())
}

/// The rate buckets as `bucket:calls:errors` triples, comma-separated, empty slots left out.
fn encode_buckets(buckets: &[(i64, i64, i64); BUCKETS]) -> String {
    let mut text = String::new();
    for &(bucket, calls, errors) in buckets {
        if calls > 0 {
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(&format!("{bucket}:{calls}:{errors}"));
        }
    }
    text
}

fn decode_buckets(text: &str) -> [(i64, i64, i64); BUCKETS] {
    let mut buckets = [(0, 0, 0); BUCKETS];
    for part in text.split(',').filter(|part| !part.is_empty()) {
        let mut fields = part.split(':').map(|field| field.parse::<i64>().ok());
        if let (Some(Some(bucket)), Some(Some(calls)), Some(Some(errors))) =
            (fields.next(), fields.next(), fields.next())
            && bucket >= 0
        {
            buckets[(bucket % BUCKETS as i64) as usize] = (bucket, calls, errors);
        }
    }
    buckets
}

/// A quorum's reporters as `id:until` pairs, comma-separated.
fn encode_reporters(reporters: &[(i64, i64)]) -> String {
    reporters
        .iter()
        .map(|(id, until)| format!("{id}:{until}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_reporters(text: &str) -> Vec<(i64, i64)> {
    text.split(',')
        .filter_map(|part| {
            let (id, until) = part.split_once(':')?;
            Some((id.parse().ok()?, until.parse().ok()?))
        })
        .take(crate::MAX_QUORUM as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_survive_encoding() {
        let mut buckets = [(0, 0, 0); BUCKETS];
        buckets[3] = (13, 4, 2);
        buckets[7] = (7, 1, 0);
        assert_eq!(decode_buckets(&encode_buckets(&buckets)), buckets);
        assert_eq!(decode_buckets("garbage,1:x:2"), [(0, 0, 0); BUCKETS]);
    }

    #[test]
    fn table_names_are_checked() {
        assert!(check_table_name("circuitpy_breakers").is_ok());
        assert!(check_table_name("1abc").is_err());
        assert!(check_table_name("a;drop").is_err());
        assert!(check_table_name("").is_err());
    }
}
