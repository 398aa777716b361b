//! A fleet of processes sharing one breaker through Redis.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example redis_fleet --features redis
//! ```
//!
//! The example starts four copies of itself. Each calls a simulated service every 100 ms;
//! the service is down from 1.0 s to 2.5 s. The first failures, from all processes together,
//! trip the shared breaker, and every process stops calling the service at once. After the
//! recovery timeout one trial call, from whichever process asks first, finds the service
//! back and closes the breaker for everyone.

use std::process::Command;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, State, StorageError, circuit_breaker,
};

const PROCESSES: usize = 4;
const RUN_FOR: Duration = Duration::from_millis(4000);
const DOWN_FROM: Duration = Duration::from_millis(1000);
const DOWN_UNTIL: Duration = Duration::from_millis(2500);

static CLIENT: LazyLock<redis::Client> = LazyLock::new(|| {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url).expect("REDIS_URL is a valid Redis URL")
});

/// Which process this is, for the printout.
static NAME: LazyLock<String> =
    LazyLock::new(|| std::env::var("FLEET_NAME").unwrap_or_else(|_| "parent".into()));

struct Inventory;

impl CircuitBreaker for Inventory {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = Duration::from_millis(800);
    const FAILURE_KEY: &'static str = "inventory";
    const KEY_PREFIX: &'static str = "circuitpy-example";
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(200);
    type Storage = redis::Client;

    fn storage(&self) -> &redis::Client {
        &CLIENT
    }

    fn on_state_change(&self, key: &str, from: State, to: State) {
        println!("[{}] breaker {key}: {from} -> {to}", *NAME);
    }

    fn on_storage_error(&self, key: &str, error: &StorageError) {
        println!("[{}] breaker {key}: storage failed: {error}", *NAME);
    }
}

#[derive(Debug)]
enum InventoryError {
    Down,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for InventoryError {
    fn from(open: CircuitBreakerOpen) -> Self {
        InventoryError::Open(open)
    }
}

/// The simulated service: down for a while, at the same wall-clock time for every process.
#[circuit_breaker(handler = Inventory)]
fn check_stock(since_start: Duration) -> Result<u32, InventoryError> {
    if since_start >= DOWN_FROM && since_start < DOWN_UNTIL {
        Err(InventoryError::Down)
    } else {
        Ok(42)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
}

fn child(start_ms: u64) {
    let (mut served, mut failed, mut rejected) = (0, 0, 0);
    loop {
        let now = unix_ms();
        if now < start_ms {
            std::thread::sleep(Duration::from_millis(start_ms - now));
            continue;
        }
        let since_start = Duration::from_millis(now - start_ms);
        if since_start >= RUN_FOR {
            break;
        }
        let at = since_start.as_secs_f64();
        match check_stock(since_start) {
            Ok(_) => served += 1,
            Err(InventoryError::Down) => {
                failed += 1;
                println!("[{}] t={at:.1}s service failed", *NAME);
            }
            Err(InventoryError::Open(open)) => {
                rejected += 1;
                println!("[{}] t={at:.1}s rejected: {}", *NAME, open.reason_text());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "[{}] done: {served} served, {failed} failed, {rejected} rejected without calling",
        *NAME
    );
}

/// A short reason for the printout.
trait ReasonText {
    fn reason_text(&self) -> &'static str;
}

impl ReasonText for CircuitBreakerOpen {
    fn reason_text(&self) -> &'static str {
        match self.reason() {
            circuitpy::Rejection::Open => "breaker open",
            circuitpy::Rejection::TrialsInProgress => "trial in progress elsewhere",
            circuitpy::Rejection::ForcedOpen => "forced open",
            _ => "storage failed",
        }
    }
}

fn main() {
    if let Ok(start) = std::env::var("FLEET_START") {
        child(start.parse().expect("a start time"));
        return;
    }
    // Start from a closed breaker.
    if let Err(error) = Breaker::new(Inventory).reset() {
        eprintln!("cannot reach Redis: {error}");
        std::process::exit(1);
    }
    let start = unix_ms() + 500;
    let children: Vec<_> = (1..=PROCESSES)
        .map(|n| {
            Command::new(std::env::current_exe().expect("the example's path"))
                .env("FLEET_START", start.to_string())
                .env("FLEET_NAME", format!("process {n}"))
                .spawn()
                .expect("the example starts itself")
        })
        .collect();
    for mut child in children {
        child.wait().expect("a child ran");
    }
    println!(
        "[parent] the shared breaker is now {}",
        Breaker::new(Inventory).state().expect("Redis answers")
    );
}
