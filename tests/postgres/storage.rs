//! The PostgreSQL storages against a real server: the conformance kit (blocking and async),
//! statement timeouts, reconnection and the deletion of expired rows.

use std::time::Duration;

use circuitpy::testing::{Options, check_async_storage, check_storage};
use circuitpy::{
    AsyncPostgresStorage, CircuitBreaker, Config, Op, PostgresStorage, Request, Storage,
    StorageError,
};
use circuitpy_tests::postgres::{cleanup, fresh_table, options, raw_client, server};

/// Times in the breaker table are microseconds since the Unix epoch.
const HOUR_AGO_US: &str = "(extract(epoch FROM now()) * 1000000)::bigint - 3600000000";
const SECOND_AGO_US: &str = "(extract(epoch FROM now()) * 1000000)::bigint - 1000000";

#[test]
fn blocking_storage_passes_the_kit() {
    let Some(url) = server() else { return };
    let table = fresh_table("kit");
    let _cleanup = cleanup(&url, &table);
    let storage: &'static PostgresStorage = Box::leak(Box::new(
        PostgresStorage::connect_with(&url, options(&table)).unwrap(),
    ));
    let report = check_storage(storage, Options::default()).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.rules.contains(&"concurrent-failures-trip-once"));
    assert!(report.rules.contains(&"reporters-go-with-the-count"));
}

#[test]
fn async_storage_passes_the_kit() {
    let Some(url) = server() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let table = fresh_table("akit");
    let _cleanup = cleanup(&url, &table);
    runtime.block_on(async {
        let storage: &'static AsyncPostgresStorage = Box::leak(Box::new(
            AsyncPostgresStorage::connect_with(&url, options(&table))
                .await
                .unwrap(),
        ));
        let report = check_async_storage(storage, Options::default())
            .await
            .unwrap_or_else(|f| panic!("{f}"));
        assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
    });
}

struct Impatient;
impl CircuitBreaker for Impatient {
    const FAILURE_THRESHOLD: u32 = 10;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "impatient";
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(100);
    type Storage = PostgresStorage;
    fn storage(&self) -> &PostgresStorage {
        unimplemented!("driven through Storage::execute")
    }
}

/// Another session's transaction holding the rows of some breakers (`FOR UPDATE`), as a
/// long operation on them would.
struct RowLocks {
    runtime: tokio::runtime::Runtime,
    holder: tokio_postgres::Client,
}

impl RowLocks {
    fn hold(url: &str, table: &str, requests: &[&Request<'_>]) -> RowLocks {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let holder = runtime.block_on(raw_client(url));
        runtime.block_on(holder.batch_execute("BEGIN")).unwrap();
        for request in requests {
            runtime
                .block_on(holder.execute(
                    &format!("SELECT 1 FROM {table} WHERE key = $1 FOR UPDATE"),
                    &[&request.namespaced_key()],
                ))
                .unwrap();
        }
        RowLocks { runtime, holder }
    }

    fn release(self) {
        self.runtime
            .block_on(self.holder.batch_execute("ROLLBACK"))
            .unwrap();
    }
}

#[test]
fn a_locked_row_times_out_and_the_storage_recovers() {
    let Some(url) = server() else { return };
    let table = fresh_table("timeout");
    let _cleanup = cleanup(&url, &table);
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let config = Config::of::<Impatient>();
    let request = Request::new("locked", Op::Failure, &config);
    assert_eq!(storage.execute(&request).unwrap().failures, 1);

    let locks = RowLocks::hold(&url, &table, &[&request]);
    let error = storage.execute(&request).unwrap_err();
    assert!(
        matches!(error, StorageError::Timeout { .. }),
        "expected a timeout, got {error}"
    );

    locks.release();
    // The failure that timed out was never recorded; the next one is the second.
    assert_eq!(storage.execute(&request).unwrap().failures, 2);
}

/// A success that changes nothing is settled by one read of the state and the count, with no
/// function call and so no row lock: it completes while another session holds the row
/// (the function would wait for the lock and time out). One that resets a consecutive count
/// still takes the lock.
#[test]
fn a_success_that_changes_nothing_takes_no_row_lock() {
    let Some(url) = server() else { return };
    let table = fresh_table("peek");
    let _cleanup = cleanup(&url, &table);
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let consecutive = Config::of::<Impatient>();
    let mut windowed = consecutive;
    windowed.policy = circuitpy::FailurePolicy::CountInWindow {
        window: Duration::from_secs(60),
    };
    let counted = Request::new("counted", Op::Failure, &windowed);
    assert_eq!(storage.execute(&counted).unwrap().failures, 1);
    let reset = Request::new("reset", Op::Failure, &consecutive);
    assert_eq!(storage.execute(&reset).unwrap().failures, 1);
    let forced = Request::new("forced", Op::ForceClosed, &consecutive);
    storage.execute(&forced).unwrap();

    let locks = RowLocks::hold(&url, &table, &[&counted, &reset, &forced]);

    let success = |key, config| storage.execute(&Request::new(key, Op::Success, config));
    let snapshot = success("counted", &windowed).expect("settled without the lock");
    assert_eq!(
        (snapshot.state, snapshot.failures),
        (circuitpy::State::Closed, 1),
        "a success keeps a window's count"
    );
    let snapshot = success("forced", &consecutive).expect("settled without the lock");
    assert_eq!(snapshot.state, circuitpy::State::ForcedClosed);
    let snapshot = success("healthy", &consecutive).expect("no row: nothing to lock");
    assert_eq!(
        (snapshot.state, snapshot.failures),
        (circuitpy::State::Closed, 0)
    );
    let error = success("reset", &consecutive).unwrap_err();
    assert!(
        matches!(error, StorageError::Timeout { .. }),
        "a count to reset waits for the row: {error}"
    );

    locks.release();
    assert_eq!(success("reset", &consecutive).unwrap().failures, 0);
    let again = Request::new("reset", Op::Failure, &consecutive);
    assert_eq!(
        storage.execute(&again).unwrap().failures,
        1,
        "the count was reset"
    );
}

#[test]
fn a_lost_connection_is_replaced_on_next_use() {
    let Some(url) = server() else { return };
    let table = fresh_table("reconnect");
    let _cleanup = cleanup(&url, &table);
    let app = format!("{table}_app");
    let separator = if url.contains('?') { '&' } else { '?' };
    let storage = PostgresStorage::connect_with(
        &format!("{url}{separator}application_name={app}"),
        options(&table),
    )
    .unwrap();
    let config = Config::of::<Impatient>();
    let request = Request::new("reconnect", Op::Failure, &config);
    assert_eq!(storage.execute(&request).unwrap().failures, 1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let killed: i64 = runtime.block_on(async {
        let admin = raw_client(&url).await;
        let row = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap();
        row.get(0)
    });
    assert_eq!(killed, 1);

    // The first use after the loss may fail (the connection is found dead then); the
    // storage reconnects by itself and the state survived on the server.
    let mut counts = Vec::new();
    for _ in 0..2 {
        match storage.execute(&request) {
            Ok(snapshot) => counts.push(snapshot.failures),
            Err(error) => eprintln!("after the loss: {error}"),
        }
    }
    assert!(
        counts == [2, 3] || counts == [2],
        "failures after reconnecting: {counts:?}"
    );
    assert!(storage.execute(&request).is_ok());
}

#[test]
fn writes_delete_rows_whose_deadlines_have_passed() {
    let Some(url) = server() else { return };
    let table = fresh_table("cleanup");
    let _cleanup = cleanup(&url, &table);
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = runtime.block_on(raw_client(&url));
    let count_rows = |filter: &str| -> i64 {
        runtime
            .block_on(admin.query_one(&format!("SELECT count(*) FROM {table} WHERE {filter}"), &[]))
            .unwrap()
            .get(0)
    };
    // Rows a crashed fleet left behind: every deadline long past.
    runtime
        .block_on(admin.batch_execute(&format!(
            "INSERT INTO {table} (key, failures, failures_until, expires_at)
             SELECT 'stale-' || n, 2, {HOUR_AGO_US}, {HOUR_AGO_US}
             FROM generate_series(1, 6) AS n"
        )))
        .unwrap();
    let config = Config::of::<Impatient>();
    // Each write that creates a row deletes up to four expired ones.
    storage
        .execute(&Request::new("fresh-1", Op::Failure, &config))
        .unwrap();
    assert_eq!(count_rows("key LIKE 'stale-%'"), 2);
    storage
        .execute(&Request::new("fresh-2", Op::Failure, &config))
        .unwrap();
    assert_eq!(count_rows("key LIKE 'stale-%'"), 0);
    assert_eq!(count_rows("key LIKE '%fresh-%'"), 2);
}

#[test]
fn an_expired_count_reads_as_zero() {
    let Some(url) = server() else { return };
    let table = fresh_table("expired");
    let _cleanup = cleanup(&url, &table);
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let config = Config::of::<Impatient>();
    let request = Request::new("expired", Op::Failure, &config);
    assert_eq!(storage.execute(&request).unwrap().failures, 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = runtime.block_on(raw_client(&url));
    // The count's deadline passes (as it would after a day without failures).
    runtime
        .block_on(admin.batch_execute(&format!(
            "UPDATE {table} SET failures_until = {SECOND_AGO_US}"
        )))
        .unwrap();
    let read = Request::new("expired", Op::Read, &config);
    assert_eq!(storage.execute(&read).unwrap().failures, 0);
    assert_eq!(storage.execute(&request).unwrap().failures, 1);
}

#[test]
fn the_async_storage_replaces_a_lost_connection() {
    let Some(url) = server() else { return };
    let table = fresh_table("areconnect");
    let _cleanup = cleanup(&url, &table);
    let app = format!("{table}_app");
    let separator = if url.contains('?') { '&' } else { '?' };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let storage = AsyncPostgresStorage::connect_with(
            &format!("{url}{separator}application_name={app}"),
            options(&table),
        )
        .await
        .unwrap();
        let config = Config::of::<Impatient>();
        let request = Request::new("reconnect", Op::Failure, &config);
        let execute = |request| circuitpy::AsyncStorage::execute(&storage, request);
        assert_eq!(execute(&request).await.unwrap().failures, 1);

        let admin = raw_client(&url).await;
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1);

        let mut counts = Vec::new();
        for _ in 0..2 {
            if let Ok(snapshot) = execute(&request).await {
                counts.push(snapshot.failures);
            }
        }
        assert!(
            counts == [2, 3] || counts == [2],
            "failures after reconnecting: {counts:?}"
        );
        assert!(execute(&request).await.is_ok());
    });
}

#[test]
fn connecting_to_a_current_table_does_not_wait_for_its_breakers() {
    // A process that starts while the fleet's breakers are busy must not take a lock that
    // stops them (or waits behind them): the table and function are current already.
    let Some(url) = server() else { return };
    let table = fresh_table("busy");
    let _cleanup = cleanup(&url, &table);
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let config = Config::of::<Impatient>();
    let request = Request::new("busy", Op::Failure, &config);
    assert_eq!(storage.execute(&request).unwrap().failures, 1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut holder = runtime.block_on(raw_client(&url));
    let transaction = runtime.block_on(holder.transaction()).unwrap();
    // What a breaker's operation holds on the table while it runs.
    runtime
        .block_on(transaction.batch_execute(&format!("LOCK TABLE {table} IN ROW EXCLUSIVE MODE")))
        .unwrap();

    let second =
        PostgresStorage::connect_with(&url, options(&table).timeout(Duration::from_millis(300)));
    runtime.block_on(transaction.rollback()).unwrap();
    let second = second.expect("a second process connects while the table is in use");
    assert_eq!(second.execute(&request).unwrap().failures, 2);
}
