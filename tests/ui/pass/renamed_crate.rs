extern crate circuitpy as cb;

use std::sync::LazyLock;
use std::time::Duration;

static STORAGE: LazyLock<cb::MemoryStorage> = LazyLock::new(cb::MemoryStorage::new);

struct Renamed;

impl cb::CircuitBreaker for Renamed {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "renamed";
    type Storage = cb::MemoryStorage;
    fn storage(&self) -> &cb::MemoryStorage {
        &STORAGE
    }
}

mod hidden {
    pub(crate) use ::circuitpy as breakers;
}

#[cb::circuit_breaker(handler = Renamed, crate = "cb")]
fn through_extern_crate() -> Result<u32, cb::CircuitBreakerOpen> {
    Ok(1)
}

#[cb::circuit_breaker(handler = Renamed, key = "k", crate = "crate::hidden::breakers")]
fn through_a_path() -> Result<u32, cb::CircuitBreakerOpen> {
    Ok(2)
}

fn main() {
    assert_eq!(through_extern_crate().unwrap(), 1);
    assert_eq!(through_a_path().unwrap(), 2);
}
