use std::time::Duration;

use circuitpy::{CircuitBreaker, MemoryStorage, circuit_breaker};

include!("../handler.rs");

struct NeverCounts;

impl CircuitBreaker for NeverCounts {
    const FAILURE_THRESHOLD: u32 = 0;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "never";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

#[circuit_breaker(handler = NeverCounts)]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {
    let _ = guarded();
}
