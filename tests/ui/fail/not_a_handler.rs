use circuitpy::circuit_breaker;
include!("../handler.rs");

struct Plain;

#[circuit_breaker(handler = Plain)]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {}
