use std::time::Duration;

use circuitpy::{CircuitBreaker, MemoryStorage, circuit_breaker};

include!("../handler.rs");

struct TooManyReporters;

impl CircuitBreaker for TooManyReporters {
    const FAILURE_THRESHOLD: u32 = 5;
    const QUORUM: u32 = 17;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "reporters";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

#[circuit_breaker(handler = TooManyReporters)]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {
    let _ = guarded();
}
