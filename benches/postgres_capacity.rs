//! How many breaker operations one PostgreSQL server sustains, against `SELECT 1` on the
//! same pool: many concurrent callers, on one hot breaker (one row, whose lock every
//! operation takes) and on many breakers (a row each), each case for a few seconds, with
//! the server's CPU read from `/proc` (its backends' user and system time) before and
//! after.
//!
//! `cargo bench -p circuitpy-benches --features postgres --bench postgres_capacity`, against
//! `CIRCUITPY_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`), in a table
//! of its own that is dropped at the end. Server CPU is read only when the server runs on
//! this machine and its processes' `/proc/<pid>/stat` are readable.
//!
//! Async: `CALLERS` tasks on a two-worker runtime over one `deadpool-postgres` pool of
//! `POOL` connections, shared by `AsyncPostgresStorage::from_pool` and the `SELECT 1`
//! case. Blocking: `THREADS` threads on one `PostgresStorage` with a pool of `POOL`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use circuitpy::{AsyncPostgresStorage, Breaker, CircuitBreaker, PostgresOptions, PostgresStorage};
use circuitpy_tests::handlers::Error as CallError;

static ASYNC: OnceLock<AsyncPostgresStorage> = OnceLock::new();
static BLOCKING: OnceLock<PostgresStorage> = OnceLock::new();

const CALLERS: usize = 64;
const THREADS: usize = 32;
const POOL: usize = 16;
const RUN: Duration = Duration::from_secs(3);

macro_rules! handler {
    ($name:ident, $storage:ty, $cell:ident, $key:literal, $threshold:expr, $interval:expr) => {
        struct $name;
        impl CircuitBreaker for $name {
            const FAILURE_THRESHOLD: u32 = $threshold;
            const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
            const FAILURE_KEY: &'static str = $key;
            const SYNC_INTERVAL: Option<Duration> = $interval;
            const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
            type Storage = $storage;
            fn storage(&self) -> &$storage {
                $cell.get().expect("connected")
            }
        }
    };
}

handler!(
    Strict,
    AsyncPostgresStorage,
    ASYNC,
    "pg_strict",
    1_000_000,
    None
);
handler!(
    Failing,
    AsyncPostgresStorage,
    ASYNC,
    "pg_failing",
    1_000_000,
    None
);
handler!(Open, AsyncPostgresStorage, ASYNC, "pg_open", 1, None);
handler!(
    Local,
    AsyncPostgresStorage,
    ASYNC,
    "pg_local",
    1_000_000,
    Some(Duration::from_millis(100))
);
handler!(
    BStrict,
    PostgresStorage,
    BLOCKING,
    "pgb_strict",
    1_000_000,
    None
);
handler!(
    BFailing,
    PostgresStorage,
    BLOCKING,
    "pgb_failing",
    1_000_000,
    None
);

/// The server's processes: the postmaster's children (backends and background workers).
struct Server {
    postmaster: Option<u32>,
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

impl Server {
    /// CPU seconds of every process whose parent is the postmaster, and of the postmaster.
    fn cpu(&self) -> Option<f64> {
        let postmaster = self.postmaster?;
        let mut ticks = 0u64;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(fields) = stat_fields(pid) else {
                continue;
            };
            // After the name: state(0) ppid(1) ... utime(11) stime(12).
            let ppid: u32 = fields[1].parse().unwrap_or(0);
            if pid == postmaster || ppid == postmaster {
                ticks +=
                    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
            }
        }
        Some(ticks as f64 / TICKS)
    }
}

struct Outcome {
    calls: f64,
    elapsed: f64,
    cpu: Option<f64>,
}

fn report(name: &str, outcome: Outcome) {
    let rate = outcome.calls / outcome.elapsed;
    let (cores, per_call, per_core) = match outcome.cpu {
        // Decided in the process (an open breaker's view, local mode): the server's CPU is
        // its background work, not the calls'.
        Some(cpu) if outcome.calls > 0.0 && cpu / outcome.calls < 1e-7 => (
            format!("{:.2}", cpu / outcome.elapsed),
            "–".into(),
            "(no statement per call)".into(),
        ),
        Some(cpu) if outcome.calls > 0.0 => {
            let per_call = cpu / outcome.calls * 1e6;
            let per_core = if per_call > 0.0 {
                format!("{:.0}", 1e6 / per_call)
            } else {
                "unbounded".to_owned()
            };
            (
                format!("{:.2}", cpu / outcome.elapsed),
                format!("{per_call:.1}"),
                per_core,
            )
        }
        _ => ("–".into(), "–".into(), "–".into()),
    };
    println!("| {name} | {rate:.0} | {cores} | {per_call} | {per_core} |");
}

/// Runs `call(i)` from `CALLERS` tasks (task `i`) for `RUN`.
async fn measure_async<F, Fut>(server: &Server, name: &str, call: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let call = Arc::new(call);
    let cpu_before = server.cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (stop, calls, call) = (stop.clone(), calls.clone(), call.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call(i).await;
                    calls.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(server.cpu())
        .map(|(before, after)| after - before);
    report(
        name,
        Outcome {
            calls: calls.load(Ordering::Relaxed) as f64,
            elapsed,
            cpu,
        },
    );
}

/// Runs `call(i)` from `THREADS` threads (thread `i`) for `RUN`.
fn measure_blocking(server: &Server, name: &str, call: impl Fn(usize) + Sync) {
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let cpu_before = server.cpu();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for i in 0..THREADS {
            let (stop, calls, call) = (&stop, &calls, &call);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    call(i);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(RUN);
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(server.cpu())
        .map(|(before, after)| after - before);
    report(
        name,
        Outcome {
            calls: calls.load(Ordering::Relaxed) as f64,
            elapsed,
            cpu,
        },
    );
}

fn main() {
    let url = std::env::var("CIRCUITPY_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let table = circuitpy_tests::postgres::fresh_table("capacity");
    let _cleanup = circuitpy_tests::postgres::cleanup(&url, &table);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let keys: Arc<Vec<String>> =
        Arc::new((0..CALLERS.max(THREADS)).map(|i| format!("k{i}")).collect());

    let mut config = deadpool_postgres::Config::new();
    config.url = Some(url.clone());
    config.pool = Some(deadpool_postgres::PoolConfig::new(POOL));
    let pool = match config.create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    ) {
        Ok(pool) => pool,
        Err(error) => {
            eprintln!("*** SKIPPED: no pool for {url}: {error} ***");
            return;
        }
    };
    let options = PostgresOptions::default().table(&table);
    let connected = runtime.block_on(AsyncPostgresStorage::from_pool(
        pool.clone(),
        options.clone(),
    ));
    let storage = match connected {
        Ok(storage) => storage,
        Err(error) => {
            eprintln!("*** SKIPPED: PostgreSQL at {url} is unreachable: {error} ***");
            return;
        }
    };
    ASYNC.set(storage).unwrap();
    let postmaster = runtime.block_on(async {
        let client = pool.get().await.unwrap();
        let backend: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        stat_fields(backend as u32).and_then(|fields| fields[1].parse::<u32>().ok())
    });
    let server = Server { postmaster };
    if postmaster.is_none() {
        eprintln!("*** the server's processes are not readable here: no server CPU ***");
    }

    println!(
        "{CALLERS} async tasks over a pool of {POOL} connections; {THREADS} threads on the blocking storage (pool of {POOL}); {} s per case",
        RUN.as_secs()
    );
    println!(
        "| case | calls/s | server CPU (cores) | server CPU µs per call | calls/s per server core |"
    );
    println!("|---|---:|---:|---:|---:|");
    runtime.block_on(async {
        let _ = Breaker::new(Open)
            .call_async(async { Err::<(), _>(CallError::Down) })
            .await;
        let select = pool.clone();
        measure_async(&server, "async `SELECT 1` (same pool)", move |_| {
            let pool = select.clone();
            async move {
                let client = pool.get().await.unwrap();
                let statement = client.prepare_cached("SELECT 1").await.unwrap();
                client.query_one(&statement, &[]).await.unwrap();
            }
        })
        .await;
        measure_async(&server, "async closed success, one hot key", |_| async {
            let _ = Breaker::new(Strict)
                .call_async(async { Ok::<(), CallError>(()) })
                .await;
        })
        .await;
        let spread = keys.clone();
        measure_async(&server, "async closed success, 64 keys", move |i| {
            let key = spread[i].clone();
            async move {
                let _ = Breaker::keyed(Strict, &key)
                    .call_async(async { Ok::<(), CallError>(()) })
                    .await;
            }
        })
        .await;
        measure_async(
            &server,
            "async failure (not tripping), one hot key",
            |_| async {
                let _ = Breaker::new(Failing)
                    .call_async(async { Err::<(), _>(CallError::Down) })
                    .await;
            },
        )
        .await;
        let spread = keys.clone();
        measure_async(&server, "async failure (not tripping), 64 keys", move |i| {
            let key = spread[i].clone();
            async move {
                let _ = Breaker::keyed(Failing, &key)
                    .call_async(async { Err::<(), _>(CallError::Down) })
                    .await;
            }
        })
        .await;
        measure_async(&server, "async rejection, open", |_| async {
            let _ = Breaker::new(Open)
                .call_async(async { Ok::<(), CallError>(()) })
                .await;
        })
        .await;
        measure_async(
            &server,
            "async closed success, local mode (100 ms), one hot key",
            |_| async {
                let _ = Breaker::new(Local)
                    .call_async(async { Ok::<(), CallError>(()) })
                    .await;
            },
        )
        .await;
    });

    let blocking = PostgresStorage::connect_with(&url, options.pool_size(POOL)).unwrap();
    BLOCKING.set(blocking).unwrap();
    measure_blocking(&server, "blocking closed success, one hot key", |_| {
        let _ = Breaker::new(BStrict).call(|| Ok::<(), CallError>(()));
    });
    measure_blocking(&server, "blocking closed success, 32 keys", |i| {
        let _ = Breaker::keyed(BStrict, &keys[i]).call(|| Ok::<(), CallError>(()));
    });
    measure_blocking(
        &server,
        "blocking failure (not tripping), one hot key",
        |_| {
            let _ = Breaker::new(BFailing).call(|| Err::<(), _>(CallError::Down));
        },
    );
    measure_blocking(&server, "blocking failure (not tripping), 32 keys", |i| {
        let _ = Breaker::keyed(BFailing, &keys[i]).call(|| Err::<(), _>(CallError::Down));
    });
}
