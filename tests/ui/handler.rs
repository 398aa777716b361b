// Shared by the UI test files through `include!`: a handler on the in-memory storage and an
// error type a rejection converts into.

#[allow(dead_code)]
static STORAGE: ::std::sync::LazyLock<::circuitpy::MemoryStorage> =
    ::std::sync::LazyLock::new(::circuitpy::MemoryStorage::new);

/// The handler of the UI tests.
#[allow(dead_code)]
pub struct Api;

impl ::circuitpy::CircuitBreaker for Api {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: ::std::time::Duration = ::std::time::Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "api";
    type Storage = ::circuitpy::MemoryStorage;
    fn storage(&self) -> &::circuitpy::MemoryStorage {
        &STORAGE
    }
}

#[allow(dead_code)]
#[derive(Debug)]
/// The error of the UI tests' guarded functions.
pub enum Error {
    /// A failure.
    Down,
    /// A rejection.
    Open(::circuitpy::CircuitBreakerOpen),
}

impl ::std::convert::From<::circuitpy::CircuitBreakerOpen> for Error {
    fn from(open: ::circuitpy::CircuitBreakerOpen) -> Self {
        Error::Open(open)
    }
}
