//! What the integration tests of circuitpy share: the handler helpers of the in-memory tests
//! ([`handlers`], [`handler!`]), the external servers the storage tests run against
//! ([`redis`], [`postgres`], [`sqlite`]; with their features, a Redis Cluster in
//! `redis_cluster` and a Sentinel-watched primary in `redis_sentinel`) and a proxy that fails in front of them on demand
//! ([`proxy`]), and the one rule for a missing server
//! ([`services`]): a loud notice and a skip, or a failure under
//! `CIRCUITPY_REQUIRE_SERVICES=1`.
//!
//! The tests themselves are grouped by subject, one binary each, under `tests/<subject>/`.

pub mod admin;
pub mod handlers;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis-cluster")]
pub mod redis_cluster;
#[cfg(feature = "redis-sentinel")]
pub mod redis_sentinel;
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

/// A rate breaker (half of at least 10 calls in a minute) whose configuration the storage
/// tests send; its storage is never used.
pub struct Rated;

impl circuitpy::CircuitBreaker for Rated {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    const FAILURE_KEY: &'static str = "rated";
    const FAILURE_POLICY: circuitpy::FailurePolicy = circuitpy::FailurePolicy::Rate {
        rate: 0.5,
        window: std::time::Duration::from_secs(60),
        minimum_calls: 10,
    };
    type Storage = circuitpy::MemoryStorage;
    fn storage(&self) -> &circuitpy::MemoryStorage {
        unimplemented!("only the configuration is used")
    }
}

/// Local mode under the rate policy: one report standing for 50 held-back successes, then
/// 10 failures (17 % of 60 calls), must leave a 50 % breaker on `storage` closed.
pub fn assert_held_back_successes_count_in_full(storage: &impl circuitpy::Storage) {
    use circuitpy::{Config, Op, Request, State};
    let config = Config::of::<Rated>();
    storage
        .execute(&Request::new("held", Op::Success, &config).with_count(50))
        .unwrap();
    for _ in 0..10 {
        storage
            .execute(&Request::new("held", Op::Failure, &config))
            .unwrap();
    }
    let state = storage
        .execute(&Request::new("held", Op::Read, &config))
        .unwrap()
        .state;
    assert_eq!(
        state,
        State::Closed,
        "10 failures in 60 calls tripped a 50 % breaker"
    );
}

/// Runs `call` on `threads` threads released at once; the longest any of them took.
pub fn longest_of_concurrent(threads: usize, call: impl Fn() + Sync) -> std::time::Duration {
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let started = std::time::Instant::now();
                    call();
                    started.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .max()
            .unwrap()
    })
}

/// The environment variable that marks a test binary run by [`in_own_process`].
const OWN_PROCESS: &str = "CIRCUITPY_TEST_IN_OWN_PROCESS";

/// Runs the calling test in a process of its own: this test binary again, with only `test`
/// (from [`test_name!`]) selected. In the parent it returns `false` once the child passed
/// (and fails the test otherwise), passing on the child's standard error; in the child it
/// returns `true`, and the test goes on. For tests whose subject is process-wide: the
/// resident set, `tracing`'s per-site caches.
///
/// ```no_run
/// # fn measured() {
/// if !circuitpy_tests::in_own_process(&circuitpy_tests::test_name!(measured)) {
///     return;
/// }
/// // ... the test itself ...
/// # }
/// ```
pub fn in_own_process(test: &str) -> bool {
    if std::env::var_os(OWN_PROCESS).is_some() {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS, "1")
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test} failed in its own process: {}\n{stdout}",
        output.status
    );
    false
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

/// The README's Rust examples, compiled and run as doc tests (with the features they use).
#[cfg(all(
    doctest,
    feature = "tower",
    feature = "reqwest",
    feature = "redis",
    feature = "redis-cluster",
    feature = "redis-sentinel"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
