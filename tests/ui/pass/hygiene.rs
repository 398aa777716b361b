// Local modules named like the standard crates must not capture the paths the attribute
// generates.
#![allow(dead_code)]

mod core {}
mod std {}

use circuitpy::circuit_breaker;
include!("../handler.rs");

struct Result;
struct Option;

#[circuit_breaker(handler = Api, key = host)]
fn guarded(host: &str) -> ::std::result::Result<u32, Error> {
    ::std::result::Result::Ok(host.len() as u32)
}

#[circuit_breaker(handler = Api, key = host)]
async fn guarded_async(host: &str) -> ::std::result::Result<u32, Error> {
    ::std::result::Result::Ok(host.len() as u32)
}

fn main() {
    let _ = guarded("a");
    let _ = guarded_async("a");
}
