//! SQLite: every call bounded by the storage timeout, local-mode counts honoured.

use std::time::{Duration, Instant};

use circuitpy::{Breaker, CircuitBreaker, Config, Op, Request, SqliteStorage, State, Storage};

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
    let barrier = std::sync::Barrier::new(16);
    let longest = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let started = Instant::now();
                    let _ = breaker.call(|| Err::<(), E>(E::Down));
                    started.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .max()
            .unwrap()
    });
    other.execute_batch("ROLLBACK").unwrap();
    assert!(
        longest <= timeout + Duration::from_millis(20),
        "a call took {longest:?} while the database was locked"
    );
}

struct Rated;
impl CircuitBreaker for Rated {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    const FAILURE_KEY: &'static str = "rated";
    const FAILURE_POLICY: circuitpy::FailurePolicy = circuitpy::FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(60),
        minimum_calls: 10,
    };
    type Storage = circuitpy::MemoryStorage;
    fn storage(&self) -> &circuitpy::MemoryStorage {
        unimplemented!()
    }
}

/// 50 successes reported at once, then 10 failures (17 %), do not trip a 50 %
/// breaker.
#[test]
fn held_back_successes_count_in_full() {
    let storage = SqliteStorage::open(database("rate")).unwrap();
    let config = Config::of::<Rated>();
    storage
        .execute(&Request::new("held", Op::Success, &config).with_count(50))
        .unwrap();
    for _ in 0..10 {
        storage
            .execute(&Request::new("held", Op::Failure, &config))
            .unwrap();
    }
    let state = storage
        .execute(&Request::new("held", Op::Read, &config))
        .unwrap()
        .state;
    assert_eq!(
        state,
        State::Closed,
        "10 failures in 60 calls tripped a 50 % breaker"
    );
}
