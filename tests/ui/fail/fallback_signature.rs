use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api, fallback = cached)]
fn fetch(id: u64) -> Result<String, Error> {
    Ok(id.to_string())
}

fn cached(id: &str) -> Result<String, Error> {
    Ok(id.to_owned())
}

fn main() {}
