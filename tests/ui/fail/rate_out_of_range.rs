use std::time::Duration;

use circuitpy::{CircuitBreaker, FailurePolicy, MemoryStorage, circuit_breaker};

include!("../handler.rs");

struct TooHigh;

impl CircuitBreaker for TooHigh {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "too_high";
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::Rate {
        rate: 1.5,
        window: Duration::from_secs(10),
        minimum_calls: 10,
    };
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

#[circuit_breaker(handler = TooHigh)]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {
    let _ = guarded();
}
