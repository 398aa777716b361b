use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api, key = "a", key = "b")]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {}
