use std::fmt::Display;

use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
fn describe<T, U: Clone>(first: T, second: &U) -> Result<String, Error>
where
    T: Display + Send,
    U: Display,
{
    Ok(format!("{first} {}", second.clone()))
}

#[circuit_breaker(handler = Api)]
async fn describe_async<'a, T>(value: &'a T) -> Result<&'a T, Error>
where
    T: Display + Sync,
{
    Ok(value)
}

fn main() {
    assert_eq!(describe(1, &"two").unwrap(), "1 two");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(*runtime.block_on(describe_async(&5)).unwrap(), 5);
}
