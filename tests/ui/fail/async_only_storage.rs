use std::time::Duration;

use circuitpy::{AsyncStorage, CircuitBreaker, StorageError, circuit_breaker};

include!("../handler.rs");

/// A storage with only an async interface.
struct Remote;

impl AsyncStorage for Remote {
    async fn increment(&self, _key: &str, _ttl: Duration) -> Result<u64, StorageError> {
        Ok(1)
    }
    async fn get_count(&self, _key: &str) -> Result<u64, StorageError> {
        Ok(0)
    }
    async fn expire_after(&self, _key: &str, _ttl: Duration) -> Result<(), StorageError> {
        Ok(())
    }
}

static REMOTE: Remote = Remote;

struct RemoteHandler;

impl CircuitBreaker for RemoteHandler {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "remote";
    type Storage = Remote;
    fn storage(&self) -> &Remote {
        &REMOTE
    }
}

#[circuit_breaker(handler = RemoteHandler)]
fn blocking_call() -> Result<(), Error> {
    Ok(())
}

fn main() {}
