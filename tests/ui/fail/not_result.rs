use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
fn guarded() -> Option<u32> {
    Some(1)
}

fn main() {}
