//! The `#[circuit_breaker]` attribute of [circuitpy](https://docs.rs/circuitpy). Use it
//! through `circuitpy::circuit_breaker`; this crate is an implementation detail.

use proc_macro::TokenStream;

mod args;
mod expand;

/// Guards a function returning `Result<T, E>` with a circuit breaker. See
/// `circuitpy::circuit_breaker` for the options.
#[proc_macro_attribute]
pub fn circuit_breaker(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::circuit_breaker(args.into(), item.into()).into()
}
