//! Breakers shared by the processes of one host through a SQLite file.
//!
//! Each breaker is one row; every operation is one `BEGIN IMMEDIATE` transaction that reads
//! the row, applies the rules below and writes it back, so concurrent writers from any
//! number of processes are serialised by SQLite's write lock (WAL mode, so readers never
//! wait for writers). Times are the host's wall clock in microseconds; every deadline is a
//! column and is honoured on read, so a row left behind by a dead process expires by itself.
//! Rows whose every deadline has passed are deleted a few at a time by later writes.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::primitive::{FORCED_TTL, retention};
use super::{Op, Request, Snapshot, Storage};
use crate::error::StorageError;
use crate::handler::State;
use crate::machine::{BUCKETS, trips_on_rate};
use crate::policy::FailurePolicy;

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
/// Concurrent writers wait for SQLite's lock up to the handler's
/// [`STORAGE_TIMEOUT`](crate::CircuitBreaker::STORAGE_TIMEOUT), then the call counts as a
/// storage failure. Within one process the connection is shared behind a mutex.
#[derive(Debug)]
pub struct SqliteStorage {
    connection: Mutex<Connected>,
    table: String,
}

#[derive(Debug)]
struct Connected {
    connection: Connection,
    busy_timeout: Duration,
}

const DEFAULT_TABLE: &str = "circuitpy_breakers";
/// Expired rows a write deletes on its way.
const CLEANUP_BATCH: u32 = 4;

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
        let busy_timeout = Duration::from_secs(5);
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
                    trials INTEGER NOT NULL DEFAULT 0,
                    passed INTEGER NOT NULL DEFAULT 0,
                    round_until INTEGER NOT NULL DEFAULT 0,
                    buckets TEXT NOT NULL DEFAULT '',
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
        Ok(SqliteStorage {
            connection: Mutex::new(Connected {
                connection,
                busy_timeout,
            }),
            table: table.to_owned(),
        })
    }

    fn with<T>(
        &self,
        key: &str,
        timeout: Option<Duration>,
        run: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StorageError> {
        let mut connected = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(timeout) = timeout
            && timeout != connected.busy_timeout
        {
            connected
                .connection
                .busy_timeout(timeout)
                .map_err(|error| StorageError::backend(key, error))?;
            connected.busy_timeout = timeout;
        }
        let timeout = connected.busy_timeout;
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

fn micros(duration: Duration) -> i64 {
    duration.as_micros().min(i64::MAX as u128) as i64
}

fn wall_now() -> i64 {
    micros(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

impl Storage for SqliteStorage {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        let table = &self.table;
        self.with(key, None, |connection| {
            let now = wall_now();
            let count: i64 = connection
                .prepare_cached(&format!(
                    "INSERT INTO {table}_counts (key, count, expires_at) VALUES (?1, 1, ?2 + ?3)
                     ON CONFLICT (key) DO UPDATE SET
                        count = CASE WHEN expires_at <= ?2 THEN 1 ELSE count + 1 END,
                        expires_at = CASE WHEN expires_at <= ?2 THEN excluded.expires_at ELSE expires_at END
                     RETURNING count"
                ))?
                .query_row(params![key, now, micros(ttl)], |row| row.get(0))?;
            if count == 1 {
                connection
                    .prepare_cached(&format!(
                        "DELETE FROM {table}_counts WHERE key IN
                         (SELECT key FROM {table}_counts WHERE expires_at <= ?1 LIMIT {CLEANUP_BATCH})"
                    ))?
                    .execute(params![now])?;
            }
            Ok(count.max(0) as u64)
        })
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let table = &self.table;
        self.with(key, None, |connection| {
            let count: Option<i64> = connection
                .prepare_cached(&format!(
                    "SELECT count FROM {table}_counts WHERE key = ?1 AND expires_at > ?2"
                ))?
                .query_row(params![key, wall_now()], |row| row.get(0))
                .optional()?;
            Ok(count.unwrap_or(0).max(0) as u64)
        })
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let table = &self.table;
        self.with(key, None, |connection| {
            if ttl.is_zero() {
                connection
                    .prepare_cached(&format!("DELETE FROM {table}_counts WHERE key = ?1"))?
                    .execute(params![key])?;
            } else {
                let now = wall_now();
                connection
                    .prepare_cached(&format!(
                        "UPDATE {table}_counts SET expires_at = ?2 + ?3 WHERE key = ?1 AND expires_at > ?2"
                    ))?
                    .execute(params![key, now, micros(ttl)])?;
            }
            Ok(())
        })
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let key = request.namespaced_key();
        let table = &self.table;
        self.with(&key, Some(request.config.storage_timeout), |connection| {
            let select = format!(
                "SELECT mode, mode_until, open_until, opened_at, tripped_until, failures,
                        failures_until, trials, passed, round_until, buckets
                 FROM {table} WHERE key = ?1"
            );
            if request.op == Op::Read {
                let row = read_row(connection, &select, &key)?;
                let now = wall_now();
                return Ok(apply(row.unwrap_or_default(), now, request).1);
            }
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = wall_now();
            let row = read_row(&transaction, &select, &key)?;
            let existed = row.is_some();
            let (change, snapshot) = apply(row.unwrap_or_default(), now, request);
            match change {
                Change::Keep => {}
                Change::Write(row) => {
                    let expires_at = row.expires_at(request, now);
                    if expires_at <= now {
                        if existed {
                            delete_row(&transaction, table, &key)?;
                        }
                    } else {
                        transaction
                            .prepare_cached(&format!(
                                "INSERT OR REPLACE INTO {table} (key, mode, mode_until, open_until,
                                    opened_at, tripped_until, failures, failures_until, trials,
                                    passed, round_until, buckets, expires_at)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                            ))?
                            .execute(params![
                                key,
                                row.mode,
                                row.mode_until,
                                row.open_until,
                                row.opened_at,
                                row.tripped_until,
                                row.failures,
                                row.failures_until,
                                row.trials,
                                row.passed,
                                row.round_until,
                                row.encode_buckets(),
                                expires_at
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

fn read_row(connection: &Connection, select: &str, key: &str) -> rusqlite::Result<Option<Row>> {
    connection
        .prepare_cached(select)?
        .query_row(params![key], |r| {
            let buckets: String = r.get(10)?;
            Ok(Row {
                mode: r.get(0)?,
                mode_until: r.get(1)?,
                open_until: r.get(2)?,
                opened_at: r.get(3)?,
                tripped_until: r.get(4)?,
                failures: r.get(5)?,
                failures_until: r.get(6)?,
                trials: r.get(7)?,
                passed: r.get(8)?,
                round_until: r.get(9)?,
                buckets: Row::decode_buckets(&buckets),
            })
        })
        .optional()
}

fn delete_row(connection: &Connection, table: &str, key: &str) -> rusqlite::Result<()> {
    connection
        .prepare_cached(&format!("DELETE FROM {table} WHERE key = ?1"))?
        .execute(params![key])?;
    Ok(())
}

/// One breaker's row. Times are microseconds since the Unix epoch; a time at or before
/// "now" means the thing it bounds is over.
#[derive(Clone, Debug, Default, PartialEq)]
struct Row {
    /// 1 forced open, 2 forced closed, until `mode_until`.
    mode: i64,
    mode_until: i64,
    /// Open until then.
    open_until: i64,
    opened_at: i64,
    /// Tripped (open, then half-open) until then.
    tripped_until: i64,
    /// Failures counted while closed, forgotten after `failures_until`.
    failures: i64,
    failures_until: i64,
    /// The half-open round: permits handed out and trials passed; the round's leases lapse
    /// at `round_until`.
    trials: i64,
    passed: i64,
    round_until: i64,
    /// Rate buckets: (bucket number, calls, failures), slot = number % 10.
    buckets: [(i64, i64, i64); BUCKETS],
}

// Built once per operation and consumed at once: the size does not matter.
#[allow(clippy::large_enum_variant)]
enum Change {
    Keep,
    Write(Row),
    Delete,
}

const MODE_FORCED_OPEN: i64 = 1;
const MODE_FORCED_CLOSED: i64 = 2;

impl Row {
    fn state(&self, now: i64) -> State {
        if self.mode_until > now {
            match self.mode {
                MODE_FORCED_OPEN => return State::ForcedOpen,
                MODE_FORCED_CLOSED => return State::ForcedClosed,
                _ => {}
            }
        }
        if self.open_until > now {
            State::Open
        } else if self.tripped_until > now {
            State::HalfOpen
        } else {
            State::Closed
        }
    }

    fn live_failures(&self, now: i64) -> i64 {
        if self.failures_until > now {
            self.failures
        } else {
            0
        }
    }

    fn snapshot(&self, state: State, now: i64) -> Snapshot {
        match state {
            State::Open => Snapshot::open(
                Duration::from_micros((self.open_until - now).max(0) as u64),
                Some(Duration::from_micros((now - self.opened_at).max(0) as u64)),
            ),
            State::HalfOpen => Snapshot::half_open(false),
            State::Closed => Snapshot::closed(self.live_failures(now).max(0) as u64),
            forced => Snapshot::forced(forced),
        }
    }

    /// When the row can go: the last of its deadlines.
    fn expires_at(&self, request: &Request<'_>, now: i64) -> i64 {
        let mut last = [
            if self.mode != 0 { self.mode_until } else { 0 },
            self.open_until,
            self.tripped_until,
            self.failures_until,
            self.round_until,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if let FailurePolicy::Rate { window, .. } = request.config.policy {
            let width = bucket_width(window);
            for &(bucket, calls, _) in &self.buckets {
                if calls > 0 {
                    last = last.max((bucket + 1).saturating_mul(width) + micros(window));
                }
            }
        }
        if last <= now { now } else { last }
    }

    fn encode_buckets(&self) -> String {
        let mut text = String::new();
        for &(bucket, calls, errors) in &self.buckets {
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

    fn trip(&mut self, now: i64, recovery: i64, retention: i64) {
        *self = Row {
            mode: self.mode,
            mode_until: self.mode_until,
            open_until: now + recovery,
            opened_at: now,
            tripped_until: now + recovery.max(retention),
            ..Row::default()
        };
    }
}

fn bucket_width(window: Duration) -> i64 {
    (micros(window) / BUCKETS as i64).max(1)
}

/// The rules: the breaker's row and one operation give the new row and the reply. The same
/// rules as the primitive-based storages, with every step in one transaction.
fn apply(mut row: Row, now: i64, request: &Request<'_>) -> (Change, Snapshot) {
    let config = request.config;
    let recovery = micros(config.recovery_timeout);
    let retention = micros(retention(config));
    let trials = i64::from(config.half_open_trials);
    let state = row.state(now);
    match (request.op, state) {
        (Op::ForceOpen | Op::ForceClosed, _) => {
            let forced = if request.op == Op::ForceOpen {
                (MODE_FORCED_OPEN, State::ForcedOpen)
            } else {
                (MODE_FORCED_CLOSED, State::ForcedClosed)
            };
            row.mode = forced.0;
            row.mode_until = now + micros(FORCED_TTL);
            (Change::Write(row), Snapshot::forced(forced.1))
        }
        (Op::Reset, _) => (Change::Delete, Snapshot::closed(0)),
        (Op::Success, State::Closed) => match config.policy {
            FailurePolicy::Consecutive if row.live_failures(now) != 0 => {
                row.failures = 0;
                row.failures_until = 0;
                (Change::Write(row), Snapshot::closed(0))
            }
            FailurePolicy::Rate { window, .. } => {
                let failures = record_rate(&mut row, now, window, false).1;
                (Change::Write(row), Snapshot::closed(failures))
            }
            _ => (Change::Keep, row.snapshot(State::Closed, now)),
        },
        (Op::Failure, State::Closed) => {
            let (trips, failures) = match config.policy {
                FailurePolicy::Consecutive => {
                    let failures = row.live_failures(now) + 1;
                    row.failures = failures;
                    row.failures_until = now + retention;
                    (failures >= i64::from(config.failure_threshold), failures)
                }
                FailurePolicy::CountInWindow { window } => {
                    let failures = row.live_failures(now) + 1;
                    row.failures = failures;
                    row.failures_until = now + micros(window);
                    (failures >= i64::from(config.failure_threshold), failures)
                }
                FailurePolicy::Rate {
                    rate,
                    window,
                    minimum_calls,
                } => {
                    let (calls, failures) = record_rate(&mut row, now, window, true);
                    (
                        trips_on_rate(calls, failures, rate, minimum_calls),
                        failures as i64,
                    )
                }
            };
            if trips {
                row.trip(now, recovery, retention);
                (
                    Change::Write(row),
                    Snapshot::open(config.recovery_timeout, Some(Duration::ZERO)),
                )
            } else {
                (Change::Write(row), Snapshot::closed(failures.max(0) as u64))
            }
        }
        (Op::AcquireTrial, State::HalfOpen) => {
            let new_round = row.round_until <= now;
            if new_round {
                row.trials = 0;
                row.passed = 0;
                row.round_until = now + recovery;
            }
            let permit = row.trials < trials;
            if permit {
                row.trials += 1;
            }
            let change = if permit || new_round {
                Change::Write(row)
            } else {
                Change::Keep
            };
            (change, Snapshot::half_open(permit))
        }
        (Op::TrialSuccess, State::HalfOpen) => {
            row.passed += 1;
            if row.passed >= trials {
                let closed = Row {
                    mode: row.mode,
                    mode_until: row.mode_until,
                    ..Row::default()
                };
                (Change::Write(closed), Snapshot::closed(0))
            } else {
                (Change::Write(row), Snapshot::half_open(false))
            }
        }
        (Op::TrialFailure, State::HalfOpen) => {
            row.trip(now, recovery, retention);
            (
                Change::Write(row),
                Snapshot::open(config.recovery_timeout, Some(Duration::ZERO)),
            )
        }
        // Reads, and outcomes that arrive after the state moved on, change nothing.
        (_, state) => (Change::Keep, row.snapshot(state, now)),
    }
}

/// Records a call in the current rate bucket; returns the calls and failures in the window.
fn record_rate(row: &mut Row, now: i64, window: Duration, failed: bool) -> (u64, u64) {
    let width = bucket_width(window);
    let current = now / width;
    let slot = &mut row.buckets[(current % BUCKETS as i64) as usize];
    if slot.0 != current {
        *slot = (current, 0, 0);
    }
    slot.1 += 1;
    slot.2 += i64::from(failed);
    let oldest = current - (BUCKETS as i64 - 1);
    row.buckets
        .iter()
        .filter(|bucket| bucket.0 >= oldest && bucket.0 <= current)
        .fold((0, 0), |(calls, failures), bucket| {
            (
                calls + bucket.1.max(0) as u64,
                failures + bucket.2.max(0) as u64,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_survive_encoding() {
        let mut row = Row::default();
        row.buckets[3] = (13, 4, 2);
        row.buckets[7] = (7, 1, 0);
        assert_eq!(Row::decode_buckets(&row.encode_buckets()), row.buckets);
        assert_eq!(Row::decode_buckets("garbage,1:x:2"), [(0, 0, 0); BUCKETS]);
    }

    #[test]
    fn table_names_are_checked() {
        assert!(check_table_name("circuitpy_breakers").is_ok());
        assert!(check_table_name("1abc").is_err());
        assert!(check_table_name("a;drop").is_err());
        assert!(check_table_name("").is_err());
    }
}
