//! What the integration tests of circuitpy share: the handler helpers of the in-memory tests
//! ([`handlers`], [`handler!`]), the external servers the storage tests run against
//! ([`redis`], [`postgres`], [`sqlite`]) and a proxy that fails in front of them on demand
//! ([`proxy`]), and the one rule for a missing server
//! ([`services`]): a loud notice and a skip, or a failure under
//! `CIRCUITPY_REQUIRE_SERVICES=1`.
//!
//! The tests themselves are grouped by subject, one binary each, under `tests/<subject>/`.

pub mod handlers;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
pub mod services;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// The name of a test function of the calling test binary, as `--exact` matches it
/// (`module::test`), for re-running that test in a child process. Naming a function that
/// is not in scope, or is not a `fn()`, is a compile error.
///
/// ```no_run
/// // In module `fleet` of the test binary `redis`:
/// # fn fleet_child() {}
/// let child_test = circuitpy_tests::test_name!(fleet_child); // "fleet::fleet_child"
/// ```
#[macro_export]
macro_rules! test_name {
    ($test:ident) => {{
        let _: fn() = $test;
        $crate::test_name_in(::core::module_path!(), ::core::stringify!($test))
    }};
}

/// `test`'s name in the module `module_path` of a test binary: the path without the
/// binary's own crate name.
#[doc(hidden)]
pub fn test_name_in(module_path: &str, test: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, module)) => format!("{module}::{test}"),
        None => test.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_names_drop_the_binary_and_keep_the_modules() {
        assert_eq!(super::test_name_in("fleet", "child"), "child");
        assert_eq!(super::test_name_in("fleet::redis", "child"), "redis::child");
        assert_eq!(super::test_name_in("a::b::c", "child"), "b::c::child");
    }
}
