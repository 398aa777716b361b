//! Operating breakers on SQLite: the shared admin scenario, with a second connection to the
//! file as the other process.

use circuitpy::SqliteStorage;
use circuitpy_tests::admin::{check_admin, fresh_prefix};
use circuitpy_tests::sqlite::fresh_database;

#[test]
fn admin_shows_lists_and_forces_breakers() {
    let path = fresh_database("admin");
    let storage = SqliteStorage::open(&path).unwrap();
    let other = SqliteStorage::open(&path).unwrap();
    let prefix = fresh_prefix("sqlite");
    check_admin(&storage, &other, &prefix, || {
        // A row under the prefix whose columns hold text where circuitpy keeps numbers.
        let junk = format!("{prefix}:{{junk}}");
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute(
            "INSERT INTO circuitpy_breakers (key, mode, expires_at) VALUES (?1, 'abc', 9e15)",
            [&junk],
        )
        .unwrap();
        junk
    });
}

#[test]
fn a_table_from_before_the_audit_trail_gains_its_columns() {
    let path = fresh_database("old-table");
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "CREATE TABLE circuitpy_breakers (
            key TEXT PRIMARY KEY, mode INTEGER NOT NULL DEFAULT 0,
            mode_until INTEGER NOT NULL DEFAULT 0, open_until INTEGER NOT NULL DEFAULT 0,
            opened_at INTEGER NOT NULL DEFAULT 0, tripped_until INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0, failures_until INTEGER NOT NULL DEFAULT 0,
            round INTEGER NOT NULL DEFAULT 0, trials INTEGER NOT NULL DEFAULT 0,
            passed INTEGER NOT NULL DEFAULT 0, round_until INTEGER NOT NULL DEFAULT 0,
            buckets TEXT NOT NULL DEFAULT '', expires_at INTEGER NOT NULL) WITHOUT ROWID;",
    )
    .unwrap();
    let storage = SqliteStorage::open(&path).unwrap();
    use circuitpy::admin::{Action, Admin};
    let info = storage
        .act(
            "circuitpy",
            "old",
            Action::ForceOpen,
            circuitpy::Audit::by("carol"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(info.forced.unwrap().by.as_deref(), Some("carol"));
}
