use circuitpy::circuit_breaker;
include!("../handler.rs");

#[derive(Debug)]
struct Unconvertible;

#[circuit_breaker(handler = Api)]
fn guarded() -> Result<(), Unconvertible> {
    Err(Unconvertible)
}

fn main() {}
