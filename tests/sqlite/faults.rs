//! SQLite: every call bounded by the storage timeout, local-mode counts honoured.

use std::time::Duration;

use circuitpy::{Breaker, CircuitBreaker, SqliteStorage, State};

use circuitpy_tests::handlers::{Failed as E, leak};
use circuitpy_tests::shared_handler;

fn database(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("circuitpy-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.db"))
}

shared_handler!(Patient {
    const FAILURE_THRESHOLD: u32 = 1_000;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(100);
});

/// while another process holds the database's write lock, 16 threads of this one
/// each wait at most the storage timeout, not for each other.
#[test]
fn waiting_for_the_lock_is_bounded_per_call() {
    let path = database("locked");
    let storage = leak(SqliteStorage::open(&path).unwrap());
    let breaker = Breaker::new(Patient(storage));
    assert_eq!(breaker.state().unwrap(), State::Closed);
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let timeout = Patient::<SqliteStorage>::STORAGE_TIMEOUT;
    let longest = circuitpy_tests::longest_of_concurrent(16, || {
        let _ = breaker.call(|| Err::<(), E>(E::Down));
    });
    other.execute_batch("ROLLBACK").unwrap();
    assert!(
        longest <= timeout + Duration::from_millis(20),
        "a call took {longest:?} while the database was locked"
    );
}

/// 50 successes reported at once, then 10 failures (17 %), do not trip a 50 %
/// breaker.
#[test]
fn held_back_successes_count_in_full() {
    let storage = SqliteStorage::open(database("rate")).unwrap();
    circuitpy_tests::assert_held_back_successes_count_in_full(&storage);
}
