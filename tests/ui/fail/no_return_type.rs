use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
fn guarded(value: u32) {
    let _ = value;
}

fn main() {}
