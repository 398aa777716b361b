use circuitpy::circuit_breaker;

include!("../handler.rs");

fn counts(status: &u16) -> bool {
    *status >= 500
}

// The predicate takes the function's error type by reference.
#[circuit_breaker(handler = Api, is_failure = counts)]
fn guarded() -> Result<(), Error> {
    Ok(())
}

fn main() {
    let _ = guarded();
}
