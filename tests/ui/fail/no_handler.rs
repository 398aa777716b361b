use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(key = "a")]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {}
