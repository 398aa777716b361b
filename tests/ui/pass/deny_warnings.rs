#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
fn early_return(value: u32) -> Result<u32, Error> {
    if value > 10 {
        return Ok(10);
    }
    Ok(value)
}

#[circuit_breaker(handler = Api, key = name, fallback = fallback)]
async fn keyed(name: &str, value: u32) -> Result<u32, Error> {
    Ok(value + name.len() as u32)
}

async fn fallback(_name: &str, _value: u32) -> Result<u32, Error> {
    Ok(0)
}

#[circuit_breaker(handler = Api)]
fn always_fails() -> Result<u32, Error> {
    Err(Error::Down)
}

fn main() {
    assert_eq!(early_return(50).unwrap(), 10);
    assert!(always_fails().is_err());
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(runtime.block_on(keyed("ab", 1)).unwrap(), 3);
}
