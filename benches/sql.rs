//! What one breaker operation costs on the SQL storages, against the cheapest statement on
//! the same connection: a closed success (the common call) and a failure that does not
//! trip, on SQLite (a file in a temporary directory) and PostgreSQL (the machine's server,
//! `CIRCUITPY_POSTGRES_URL`, in a table of its own dropped at the end, as the tests do).
//!
//! `cargo bench -p circuitpy-benches --features postgres,sqlite --bench sql`
//!
//! PostgreSQL: a `deadpool-postgres` pool of one connection, shared by
//! `AsyncPostgresStorage::from_pool` and the `SELECT 1` floor (a prepared statement), on a
//! current-thread runtime: both go over the same connection, one round trip each.
//! SQLite: `SqliteStorage` on a file, against `SELECT 1` (a cached prepared statement) on a
//! connection of its own to the same file.

use std::sync::OnceLock;
use std::time::Duration;

use circuitpy::{AsyncPostgresStorage, Breaker, CircuitBreaker, PostgresOptions, SqliteStorage};
use circuitpy_tests::handlers::Error as CallError;
use criterion::Criterion;

static POSTGRES: OnceLock<AsyncPostgresStorage> = OnceLock::new();
static SQLITE: OnceLock<SqliteStorage> = OnceLock::new();

macro_rules! handler {
    ($name:ident, $storage:ty, $cell:ident, $key:literal) => {
        struct $name;
        impl CircuitBreaker for $name {
            // Failures never trip it: each one writes its count.
            const FAILURE_THRESHOLD: u32 = 1_000_000_000;
            const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
            const FAILURE_KEY: &'static str = $key;
            const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
            type Storage = $storage;
            fn storage(&self) -> &$storage {
                $cell.get().expect("connected")
            }
        }
    };
}

handler!(PgSuccess, AsyncPostgresStorage, POSTGRES, "pg_success");
handler!(PgFailure, AsyncPostgresStorage, POSTGRES, "pg_failure");
handler!(LiteSuccess, SqliteStorage, SQLITE, "lite_success");
handler!(LiteFailure, SqliteStorage, SQLITE, "lite_failure");

fn sqlite(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("circuitpy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("breakers.db");
    SQLITE.set(SqliteStorage::open(&path).unwrap()).ok();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mut group = c.benchmark_group("sqlite");
    group.bench_function("SELECT 1 (floor)", |b| {
        b.iter(|| {
            raw.prepare_cached("SELECT 1")
                .unwrap()
                .query_row([], |row| row.get::<_, i64>(0))
                .unwrap()
        })
    });
    group.bench_function("closed success", |b| {
        b.iter(|| Breaker::new(LiteSuccess).call(|| Ok::<u32, CallError>(1)))
    });
    group.bench_function("failure", |b| {
        b.iter(|| Breaker::new(LiteFailure).call(|| Err::<u32, _>(CallError::Down)))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn postgres(c: &mut Criterion) {
    let url = std::env::var("CIRCUITPY_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let table = circuitpy_tests::postgres::fresh_table("bench");
    let _cleanup = circuitpy_tests::postgres::cleanup(&url, &table);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(url.clone());
    config.pool = Some(deadpool_postgres::PoolConfig::new(1));
    let pool = config
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap();
    let connected = runtime.block_on(AsyncPostgresStorage::from_pool(
        pool.clone(),
        PostgresOptions::default().table(&table),
    ));
    match connected {
        Ok(storage) => {
            POSTGRES.set(storage).ok();
        }
        Err(error) => {
            eprintln!("*** SKIPPED: PostgreSQL at {url} is unreachable: {error} ***");
            return;
        }
    }
    let mut group = c.benchmark_group("postgres");
    group.bench_function("SELECT 1 (floor, same connection)", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let client = pool.get().await.unwrap();
                let statement = client.prepare_cached("SELECT 1").await.unwrap();
                client.query_one(&statement, &[]).await.unwrap();
            })
        })
    });
    group.bench_function("closed success", |b| {
        b.iter(|| {
            runtime.block_on(Breaker::new(PgSuccess).call_async(async { Ok::<u32, CallError>(1) }))
        })
    });
    group.bench_function("failure", |b| {
        b.iter(|| {
            runtime.block_on(
                Breaker::new(PgFailure).call_async(async { Err::<u32, _>(CallError::Down) }),
            )
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    sqlite(&mut criterion);
    postgres(&mut criterion);
    criterion.final_summary();
}
