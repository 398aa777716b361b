use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
const fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {}
