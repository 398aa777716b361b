// A typed failure predicate: only server errors count, and the error type borrows from
// the arguments (it need not be `'static`, as the handler's `is_failure` requires).
use circuitpy::{Breaker, CircuitBreakerOpen, State, circuit_breaker};

include!("../handler.rs");

#[derive(Debug)]
enum FetchError<'a> {
    Status(&'a str, u16),
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for FetchError<'_> {
    fn from(open: CircuitBreakerOpen) -> Self {
        FetchError::Open(open)
    }
}

fn server_error(error: &FetchError<'_>) -> bool {
    matches!(error, FetchError::Status(_, status) if *status >= 500)
}

#[circuit_breaker(handler = Api, key = host, is_failure = server_error)]
fn fetch<'a>(host: &'a str, status: u16) -> Result<(), FetchError<'a>> {
    Err(FetchError::Status(host, status))
}

#[circuit_breaker(handler = Api, key = host, is_failure = server_error)]
async fn fetch_async<'a>(host: &'a str, status: u16) -> Result<(), FetchError<'a>> {
    Err(FetchError::Status(host, status))
}

fn main() {
    for _ in 0..5 {
        assert!(matches!(fetch("a.example", 404), Err(FetchError::Status(_, 404))));
    }
    assert_eq!(Breaker::keyed(Api, "a.example").state().unwrap(), State::Closed);
    for _ in 0..3 {
        let _ = fetch("b.example", 503);
    }
    assert!(matches!(fetch("b.example", 503), Err(FetchError::Open(_))));
    let _ = fetch_async("c.example", 503);
}
