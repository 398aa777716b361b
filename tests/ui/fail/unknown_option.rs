use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api, retries = 3)]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {}
