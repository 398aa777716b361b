use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
struct Guarded {
    value: u32,
}

fn main() {}
