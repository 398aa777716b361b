use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
async fn guarded(value: &str) -> Result<usize, Error> {
    tokio::task::yield_now().await;
    Ok(value.len())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(runtime.block_on(guarded("four")).unwrap(), 4);
}
