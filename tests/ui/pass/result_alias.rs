use std::io;

use circuitpy::{CircuitBreakerOpen, circuit_breaker};
include!("../handler.rs");

/// An `io::Error` that remembers a rejection.
#[derive(Debug)]
struct IoError(io::Error);

impl From<CircuitBreakerOpen> for IoError {
    fn from(open: CircuitBreakerOpen) -> Self {
        IoError(io::Error::other(open))
    }
}

type Result<T> = std::result::Result<T, IoError>;

#[circuit_breaker(handler = Api)]
fn read_config() -> Result<String> {
    Ok("config".to_owned())
}

mod plain {
    use circuitpy::circuit_breaker;
    use super::Api;

    // An alias spelled through a path, as `io::Result<T>` is.
    pub type Result<T> = std::result::Result<T, super::Error>;

    #[circuit_breaker(handler = Api)]
    pub fn read() -> self::Result<u8> {
        Ok(1)
    }
}

fn main() {
    assert_eq!(read_config().unwrap(), "config");
    assert_eq!(plain::read().unwrap(), 1);
}
