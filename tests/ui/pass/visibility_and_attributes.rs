#![deny(missing_docs)]
//! A crate whose guarded items keep their visibility, docs and other attributes.

use circuitpy::circuit_breaker;
include!("../handler.rs");

mod inner {
    use super::{Api, Error};
    use circuitpy::circuit_breaker;

    /// Documented, crate-visible, and marked `#[inline]` and `#[must_use]`.
    #[circuit_breaker(handler = Api)]
    #[inline]
    #[must_use = "the answer matters"]
    pub(crate) fn answer() -> Result<u32, Error> {
        Ok(42)
    }
}

/// A public guarded function with a doc comment.
#[circuit_breaker(handler = Api)]
#[allow(clippy::unnecessary_wraps)]
pub fn documented() -> Result<(), Error> {
    Ok(())
}

fn main() {
    assert_eq!(inner::answer().unwrap(), 42);
    documented().unwrap();
}
