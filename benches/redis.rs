//! Redis cost per guarded call, against the floor of one raw `GET` round trip on the same
//! kind of connection, measured in the same run. Starts its own `redis-server` (skips with a
//! notice without one).
//!
//! `cargo bench --features redis --bench redis`

use std::hint::black_box;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, circuit_breaker};
use criterion::Criterion;

static URL: OnceLock<String> = OnceLock::new();
static CLIENT: LazyLock<redis::Client> = LazyLock::new(|| {
    redis::Client::open(URL.get().expect("server started").as_str()).expect("a valid URL")
});

#[derive(Debug)]
enum CallError {
    Down,
    Open,
}

impl From<CircuitBreakerOpen> for CallError {
    fn from(_: CircuitBreakerOpen) -> Self {
        CallError::Open
    }
}

macro_rules! handler {
    ($name:ident, $key:literal, $threshold:expr, $interval:expr) => {
        struct $name;
        impl CircuitBreaker for $name {
            const FAILURE_THRESHOLD: u32 = $threshold;
            const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
            const FAILURE_KEY: &'static str = $key;
            const SYNC_INTERVAL: Option<Duration> = $interval;
            type Storage = redis::Client;
            fn storage(&self) -> &redis::Client {
                &CLIENT
            }
        }
    };
}

handler!(Strict, "bench-strict", u32::MAX, None);
handler!(
    Local,
    "bench-local",
    u32::MAX,
    Some(Duration::from_millis(100))
);
handler!(Opened, "bench-open", 1, None);

#[circuit_breaker(handler = Strict)]
fn strict_ok() -> Result<u32, CallError> {
    Ok(black_box(1))
}

#[circuit_breaker(handler = Strict)]
fn strict_fail() -> Result<u32, CallError> {
    Err(black_box(CallError::Down))
}

#[circuit_breaker(handler = Local)]
fn local_ok() -> Result<u32, CallError> {
    Ok(black_box(1))
}

#[circuit_breaker(handler = Opened)]
fn opened() -> Result<u32, CallError> {
    Ok(black_box(1))
}

#[circuit_breaker(handler = Strict)]
async fn strict_ok_async() -> Result<u32, CallError> {
    Ok(black_box(1))
}

#[circuit_breaker(handler = Strict)]
async fn strict_fail_async() -> Result<u32, CallError> {
    Err(black_box(CallError::Down))
}

#[circuit_breaker(handler = Local)]
async fn local_ok_async() -> Result<u32, CallError> {
    Ok(black_box(1))
}

fn blocking(c: &mut Criterion) {
    let mut group = c.benchmark_group("redis blocking");
    let mut raw = CLIENT.get_connection().expect("a connection");
    group.bench_function("raw GET (floor)", |b| {
        b.iter(|| {
            redis::cmd("GET")
                .arg("bench-floor")
                .query::<Option<String>>(&mut raw)
                .unwrap()
        })
    });
    group.bench_function("closed success", |b| b.iter(|| strict_ok().unwrap()));
    group.bench_function("failure", |b| b.iter(|| strict_fail().unwrap_err()));
    group.bench_function("closed success, local mode", |b| {
        b.iter(|| local_ok().unwrap())
    });
    let _ = opened_failure();
    group.bench_function("open rejection", |b| b.iter(|| opened().unwrap_err()));
    group.finish();
}

#[circuit_breaker(handler = Opened)]
fn opened_failure() -> Result<u32, CallError> {
    Err(CallError::Down)
}

fn nonblocking(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("redis async");
    let mut raw = runtime
        .block_on(CLIENT.get_multiplexed_async_connection())
        .expect("a connection");
    group.bench_function("raw GET (floor)", |b| {
        b.iter(|| {
            runtime.block_on(async {
                redis::cmd("GET")
                    .arg("bench-floor")
                    .query_async::<Option<String>>(&mut raw)
                    .await
                    .unwrap()
            })
        })
    });
    group.bench_function("closed success", |b| {
        b.iter(|| runtime.block_on(strict_ok_async()).unwrap())
    });
    group.bench_function("failure", |b| {
        b.iter(|| runtime.block_on(strict_fail_async()).unwrap_err())
    });
    group.bench_function("closed success, local mode", |b| {
        b.iter(|| runtime.block_on(local_ok_async()).unwrap())
    });
    group.finish();
}

fn main() {
    let Some(server) = circuitpy_tests::redis::RedisServer::start() else {
        eprintln!("redis benchmarks skipped: no redis-server on PATH");
        return;
    };
    URL.set(server.url()).expect("set once");
    // Loads the script and warms the connection pool.
    Breaker::new(Strict).reset().expect("redis answers");
    Breaker::new(Local).reset().expect("redis answers");
    Breaker::new(Opened).reset().expect("redis answers");
    let mut criterion = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    blocking(&mut criterion);
    nonblocking(&mut criterion);
    criterion.final_summary();
    drop(server);
}
