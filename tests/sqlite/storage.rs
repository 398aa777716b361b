//! The SQLite storage: the conformance kit, and the deletion of expired rows.

use circuitpy::SqliteStorage;
use circuitpy::testing::{Options, check_async_storage, check_storage};
use circuitpy_tests::sqlite::fresh_database;

#[test]
fn sqlite_storage_passes_the_kit() {
    let storage: &'static SqliteStorage = Box::leak(Box::new(
        SqliteStorage::open(fresh_database("kit")).unwrap(),
    ));
    let report = check_storage(storage, Options::default()).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
    assert!(report.rules.contains(&"reporters-go-with-the-count"));
    println!(
        "sqlite kit: {} rules in {:?}",
        report.rules.len(),
        report.elapsed
    );
}

#[tokio::test]
async fn sqlite_storage_passes_the_kit_from_async_code() {
    let storage: &'static SqliteStorage = Box::leak(Box::new(
        SqliteStorage::open(fresh_database("kit-async")).unwrap(),
    ));
    let report = check_async_storage(storage, Options::default())
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
}

#[test]
fn writes_delete_rows_whose_deadlines_have_passed() {
    use circuitpy::{CircuitBreaker, Config, MemoryStorage, Op, Request, Storage};
    struct Handler;
    impl CircuitBreaker for Handler {
        const FAILURE_THRESHOLD: u32 = 3;
        const RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
        const FAILURE_KEY: &'static str = "cleanup";
        type Storage = MemoryStorage;
        fn storage(&self) -> &MemoryStorage {
            unimplemented!("driven through Storage::execute")
        }
    }
    let path = fresh_database("cleanup");
    let storage = SqliteStorage::open(&path).unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    // Rows a crashed process left behind: every deadline long past.
    for n in 1..=6 {
        raw.execute(
            "INSERT INTO circuitpy_breakers (key, failures, failures_until, expires_at)
             VALUES (?1, 2, 1, 1)",
            [format!("circuitpy:{{stale-{n}}}")],
        )
        .unwrap();
    }
    let stale = |raw: &rusqlite::Connection| -> i64 {
        raw.query_row(
            "SELECT count(*) FROM circuitpy_breakers WHERE key LIKE 'circuitpy:{stale-%'",
            [],
            |row| row.get(0),
        )
        .unwrap()
    };
    let config = Config::of::<Handler>();
    // A stale row reads as nothing counted; each write that creates a row deletes up to
    // four expired ones.
    let read = storage
        .execute(&Request::new("stale-1", Op::Read, &config))
        .unwrap();
    assert_eq!(read.failures, 0);
    storage
        .execute(&Request::new("fresh-1", Op::Failure, &config))
        .unwrap();
    assert_eq!(stale(&raw), 2);
    storage
        .execute(&Request::new("fresh-2", Op::Failure, &config))
        .unwrap();
    assert_eq!(stale(&raw), 0);
}

/// The common call changes nothing and so takes no write lock: while another connection
/// holds the file's write lock, a success on a breaker with nothing counted (and a read)
/// is answered, and a failure, which must write, waits for the lock and times out.
#[test]
fn a_success_that_changes_nothing_needs_no_write_lock() {
    use circuitpy::{Op, Request, State, Storage, StorageError};
    let path = fresh_database("unlocked");
    let storage = SqliteStorage::open(&path).unwrap();
    let mut config = circuitpy_tests::admin::config("circuitpy");
    config.storage_timeout = std::time::Duration::from_millis(100);
    // The table exists once the storage has opened the file; another process writes.
    let writer = rusqlite::Connection::open(&path).unwrap();
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    let success = storage
        .execute(&Request::new("clean", Op::Success, &config))
        .unwrap();
    assert_eq!(success.state, State::Closed);
    let read = storage
        .execute(&Request::new("clean", Op::Read, &config))
        .unwrap();
    assert_eq!(read.state, State::Closed);
    let failure = storage.execute(&Request::new("clean", Op::Failure, &config));
    assert!(
        matches!(failure, Err(StorageError::Timeout { .. })),
        "a failure must write, so it waits for the lock: {failure:?}"
    );
    writer.execute_batch("ROLLBACK").unwrap();
    let failure = storage
        .execute(&Request::new("clean", Op::Failure, &config))
        .unwrap();
    assert_eq!(failure.failures, 1);
}
