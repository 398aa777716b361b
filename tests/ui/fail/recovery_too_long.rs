use std::time::Duration;

use circuitpy::{CircuitBreaker, MemoryStorage, circuit_breaker};

include!("../handler.rs");

struct Forever;

impl CircuitBreaker for Forever {
    const FAILURE_THRESHOLD: u32 = 3;
    // Past the bound: deadlines would overflow the storages' clocks.
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(400 * 24 * 3600);
    const FAILURE_KEY: &'static str = "forever";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

#[circuit_breaker(handler = Forever)]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {
    let _ = guarded();
}
