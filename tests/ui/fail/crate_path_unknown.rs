use circuitpy::circuit_breaker;
include!("../handler.rs");

// The attribute reaches circuitpy only through `crate = ...`, so a wrong path is an error.
#[circuit_breaker(handler = Api, crate = "not_circuitpy")]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {}
