//! A flaky service behind an in-memory circuit breaker, printing a timeline as the breaker
//! opens, half-opens and closes.
//!
//! Run it with `cargo run --example quickstart`.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use circuitpy::{CircuitBreaker, CircuitBreakerOpen, MemoryStorage, State, circuit_breaker};

static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The handler: three failures in a row open the breaker for 300 ms.
struct RequestCircuitBreaker;

impl CircuitBreaker for RequestCircuitBreaker {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_millis(300);
    const FAILURE_KEY: &'static str = "request_cb";
    type Storage = MemoryStorage;

    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }

    fn on_state_change(&self, key: &str, from: State, to: State) {
        log(&format!("breaker \"{key}\": {from} -> {to}"));
    }
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("service answered 503")]
    Unavailable,
    #[error(transparent)]
    Open(#[from] CircuitBreakerOpen),
}

/// A service that is down for the first 450 ms of calls to it, then healthy.
static SERVICE_CALLS: AtomicU32 = AtomicU32::new(0);

#[circuit_breaker(handler = RequestCircuitBreaker)]
fn fetch_user(id: u64) -> Result<String, FetchError> {
    SERVICE_CALLS.fetch_add(1, Ordering::Relaxed);
    if START.elapsed() < Duration::from_millis(450) {
        return Err(FetchError::Unavailable);
    }
    Ok(format!("user {id}"))
}

fn log(line: &str) {
    println!("{:>6} ms  {line}", START.elapsed().as_millis());
}

fn main() {
    LazyLock::force(&START);
    for id in 1..=18 {
        match fetch_user(id) {
            Ok(user) => log(&format!("call {id:>2}: ok, {user}")),
            Err(FetchError::Open(open)) => log(&format!("call {id:>2}: rejected: {open}")),
            Err(error) => log(&format!("call {id:>2}: failed: {error}")),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log(&format!(
        "18 calls, {} reached the service",
        SERVICE_CALLS.load(Ordering::Relaxed)
    ));
}
