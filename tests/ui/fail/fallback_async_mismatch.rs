use circuitpy::circuit_breaker;
include!("../handler.rs");

// An async function's fallback is awaited, so it must be async too.
#[circuit_breaker(handler = Api, fallback = cached)]
async fn fetch(id: u64) -> Result<u64, Error> {
    Ok(id)
}

fn cached(id: u64) -> Result<u64, Error> {
    Ok(id)
}

fn main() {}
