use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api, fallback = cached)]
fn sum((a, b): (u32, u32)) -> Result<u32, Error> {
    Ok(a + b)
}

fn cached(pair: (u32, u32)) -> Result<u32, Error> {
    Ok(pair.0)
}

fn main() {}
