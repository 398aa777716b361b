use std::time::Duration;

use circuitpy::{CircuitBreaker, MemoryStorage, circuit_breaker};

include!("../handler.rs");

struct Europe;

impl CircuitBreaker for Europe {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    // Would share its breaker with handler `api`'s per-call key `eu`.
    const FAILURE_KEY: &'static str = "api:eu";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

#[circuit_breaker(handler = Europe)]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {
    let _ = guarded();
}
