use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api, key = id)]
fn fetch(id: u64) -> Result<u64, Error> {
    Ok(id)
}

fn main() {}
