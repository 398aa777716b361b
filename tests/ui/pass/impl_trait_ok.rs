use std::fmt::Display;

use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
fn shown(value: u32) -> Result<impl Display, Error> {
    if value == 0 {
        return Err(Error::Down);
    }
    Ok(value * 2)
}

#[circuit_breaker(handler = Api)]
async fn shown_async(value: u32) -> Result<impl Display, Error> {
    Ok(value)
}

fn main() {
    assert_eq!(shown(21).unwrap().to_string(), "42");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(runtime.block_on(shown_async(7)).unwrap().to_string(), "7");
}
