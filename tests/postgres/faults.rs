//! PostgreSQL: a failed migration, a server that stops answering, a blocking storage inside
//! an async runtime, and local-mode counts.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use circuitpy::{Breaker, CircuitBreaker, PostgresOptions, PostgresStorage, State};

use circuitpy_tests::handlers::{Failed as E, leak};
use circuitpy_tests::proxy::Proxy;
use circuitpy_tests::shared_handler;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn url() -> Option<String> {
    let url = std::env::var("CIRCUITPY_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let reachable = std::net::TcpStream::connect("127.0.0.1:5432").is_ok();
    if !reachable {
        if std::env::var("CIRCUITPY_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("PostgreSQL is required");
        }
        eprintln!("\n*** SKIPPED: PostgreSQL unreachable ***\n");
        return None;
    }
    Some(url)
}

fn fresh_table(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cb_{name}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

fn admin(url: &str) -> (tokio::runtime::Runtime, tokio_postgres::Client) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    });
    (runtime, client)
}

shared_handler!(Quick {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(50);
});

/// Holds the migration's advisory lock from another session for `hold`.
fn hold_migration_lock(url: &str, table: &str, hold: Duration) -> std::thread::JoinHandle<()> {
    let (url, table) = (url.to_owned(), table.to_owned());
    let (locked, is_locked) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let (runtime, client) = admin(&url);
        runtime.block_on(async {
            client.batch_execute("BEGIN").await.unwrap();
            client
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    &[&format!("circuitpy:{table}")],
                )
                .await
                .unwrap();
            locked.send(()).unwrap();
            tokio::time::sleep(hold).await;
            client.batch_execute("COMMIT").await.unwrap();
        });
    });
    is_locked.recv().unwrap();
    holder
}

/// a migration that cannot get its lock in time fails with its real cause and
/// leaves the storage working; one that waits less than the options' timeout succeeds.
#[test]
fn a_failed_migration_leaves_the_storage_working() {
    let Some(url) = url() else { return };
    let table = fresh_table("migrate");
    let storage = leak(
        PostgresStorage::connect_with(
            &url,
            PostgresOptions::default()
                .table(&table)
                .timeout(Duration::from_millis(1500)),
        )
        .unwrap(),
    );
    let breaker = Breaker::new(Quick(storage));
    // A breaker operation sets the session's statement timeout to 50 ms.
    assert_eq!(breaker.state().unwrap(), State::Closed);

    // As after an upgrade of the library: the table no longer says it is current.
    let (runtime, client) = admin(&url);
    let outdate = || {
        runtime
            .block_on(client.batch_execute(&format!("COMMENT ON TABLE {table} IS NULL")))
            .unwrap()
    };
    outdate();
    // The lock is held for less than the options' timeout: the migration waits for it.
    let holder = hold_migration_lock(&url, &table, Duration::from_millis(700));
    storage
        .migrate()
        .expect("a migration waits for the lock within the options' timeout");
    holder.join().unwrap();

    // The lock is held for longer: the migration fails, and says why.
    outdate();
    let holder = hold_migration_lock(&url, &table, Duration::from_secs(4));
    let error = storage.migrate().expect_err("the lock is held for 4 s");
    let text = error.to_string();
    assert!(
        text.contains("1.5s") || text.contains("lock") || text.contains("timeout"),
        "the error does not name its cause: {text}"
    );
    assert!(!text.contains("after: 2s"), "{text}");
    // Every later operation works.
    for _ in 0..3 {
        assert_eq!(breaker.state().unwrap(), State::Closed);
    }
    holder.join().unwrap();
}

/// 16 threads against a server that accepts connections and never answers each
/// return within the storage timeout.
#[test]
fn a_silent_server_costs_each_thread_one_storage_timeout() {
    let Some(url) = url() else { return };
    let table = fresh_table("silent");
    let proxy = Proxy::start(5432);
    let through_proxy = url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()));
    let storage = leak(
        PostgresStorage::connect_with(&through_proxy, PostgresOptions::default().table(&table))
            .unwrap(),
    );
    let breaker = Breaker::new(Quick(storage));
    assert_eq!(breaker.state().unwrap(), State::Closed);
    proxy.go_silent();
    let timeout = Quick::<PostgresStorage>::STORAGE_TIMEOUT;
    for round in 0..3 {
        let longest = circuitpy_tests::longest_of_concurrent(16, || {
            let _ = breaker.call(|| Err::<(), E>(E::Down));
        });
        assert!(
            longest <= timeout + Duration::from_millis(20),
            "round {round}: a call took {longest:?} against a silent server"
        );
    }
}

/// a blocking storage used from inside a tokio runtime works or fails cleanly.
#[test]
fn a_blocking_storage_inside_a_runtime_does_not_panic() {
    let Some(url) = url() else { return };
    let table = fresh_table("inruntime");
    let storage = leak(
        PostgresStorage::connect_with(&url, PostgresOptions::default().table(&table)).unwrap(),
    );
    let breaker = Breaker::new(Quick(storage));
    for flavor in ["current_thread", "multi_thread"] {
        let runtime = if flavor == "current_thread" {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(async { breaker.state() })
        }));
        match outcome {
            Ok(Ok(state)) => assert_eq!(state, State::Closed),
            Ok(Err(error)) => eprintln!("{flavor}: a clear error: {error}"),
            Err(_) => panic!("{flavor}: a blocking PostgresStorage panicked inside a runtime"),
        }
    }
}

/// 50 successes reported at once, then 10 failures (17 %), do not trip a 50 %
/// breaker.
#[test]
fn held_back_successes_count_in_full() {
    let Some(url) = url() else { return };
    let table = fresh_table("rate");
    let storage =
        PostgresStorage::connect_with(&url, PostgresOptions::default().table(&table)).unwrap();
    circuitpy_tests::assert_held_back_successes_count_in_full(&storage);
}
