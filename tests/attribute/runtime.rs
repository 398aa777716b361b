//! What `#[circuit_breaker]` does at run time: sync and async functions, methods, per-call
//! keys, fallbacks, early returns and `?`, panics, and the method name in rejections.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use circuitpy::{Breaker, State, circuit_breaker};
use circuitpy_tests::handler;
use circuitpy_tests::handlers::{Error, rejected};

/// Deadlines are rounded up to about a millisecond; this is comfortably past that.
const SLACK: Duration = Duration::from_millis(5);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

handler!(SyncFn {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = SyncFn)]
fn flaky(runs: &Cell<u32>, ok: bool) -> Result<u32, Error> {
    runs.set(runs.get() + 1);
    if ok { Ok(1) } else { Err(Error::Down) }
}

#[test]
fn a_sync_fn_trips_rejects_and_recovers() {
    let runs = Cell::new(0);
    assert_eq!(flaky(&runs, true).unwrap(), 1);
    assert!(matches!(flaky(&runs, false), Err(Error::Down)));
    assert!(matches!(flaky(&runs, false), Err(Error::Down)));
    let open = flaky(&runs, true).unwrap_err().open();
    assert_eq!(open.method(), "flaky");
    assert_eq!(open.key(), "SyncFn");
    assert_eq!(runs.get(), 3);
    assert_eq!(Breaker::new(SyncFn).state().unwrap(), State::Open);
    SyncFn::clock().advance(Duration::from_secs(1) + SLACK);
    assert_eq!(flaky(&runs, true).unwrap(), 1);
    assert_eq!(Breaker::new(SyncFn).state().unwrap(), State::Closed);
    assert_eq!(runs.get(), 4);
}

handler!(AsyncFn {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = AsyncFn)]
async fn flaky_async(runs: &Cell<u32>, ok: bool) -> Result<u32, Error> {
    tokio::task::yield_now().await;
    runs.set(runs.get() + 1);
    if ok { Ok(1) } else { Err(Error::Down) }
}

#[test]
fn an_async_fn_trips_rejects_and_recovers() {
    let runs = Cell::new(0);
    current_thread().block_on(async {
        assert_eq!(flaky_async(&runs, true).await.unwrap(), 1);
        assert!(flaky_async(&runs, false).await.is_err());
        assert!(flaky_async(&runs, false).await.is_err());
        let open = flaky_async(&runs, true).await.unwrap_err().open();
        assert_eq!(open.method(), "flaky_async");
        assert_eq!(runs.get(), 3);
        AsyncFn::clock().advance(Duration::from_secs(1) + SLACK);
        assert_eq!(flaky_async(&runs, true).await.unwrap(), 1);
        assert_eq!(Breaker::new(AsyncFn).state().unwrap(), State::Closed);
    });
}

handler!(SameBreaker {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = SameBreaker)]
fn first_user() -> Result<(), Error> {
    Err(Error::Down)
}

#[circuit_breaker(handler = SameBreaker)]
async fn second_user() -> Result<(), Error> {
    Ok(())
}

#[test]
fn functions_with_one_handler_share_its_breaker() {
    assert!(first_user().is_err());
    assert!(first_user().is_err());
    let open = current_thread().block_on(second_user()).unwrap_err().open();
    assert_eq!(open.method(), "second_user");
    assert_eq!(Breaker::new(SameBreaker).state().unwrap(), State::Open);
}

handler!(Methods {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

struct Client {
    calls: u32,
}

impl Client {
    #[circuit_breaker(handler = Methods, key = "client", fallback = Self::cached)]
    fn get(&mut self, n: u32) -> Result<u32, Error> {
        self.calls += 1;
        if n == 0 { Err(Error::Down) } else { Ok(n) }
    }

    fn cached(&mut self, n: u32) -> Result<u32, Error> {
        Ok(1000 + n)
    }

    #[circuit_breaker(handler = Methods, key = "client")]
    fn peek(&self) -> Result<u32, Error> {
        Ok(self.calls)
    }

    #[circuit_breaker(handler = Methods, key = "client")]
    async fn peek_async(&self) -> Result<u32, Error> {
        Ok(self.calls)
    }

    #[circuit_breaker(handler = Methods, key = "other")]
    fn into_calls(self) -> Result<u32, Error> {
        Ok(self.calls)
    }
}

#[test]
fn methods_taking_self_in_each_way_are_guarded_and_fall_back() {
    let mut client = Client { calls: 0 };
    assert_eq!(client.peek().unwrap(), 0);
    assert!(client.get(0).is_err());
    assert!(client.get(0).is_err());
    // Open: the fallback answers with the same arguments, and the body does not run.
    assert_eq!(client.get(5).unwrap(), 1005);
    assert_eq!(client.calls, 2);
    assert_eq!(rejected(&client.peek()), Some("open"));
    let open = current_thread()
        .block_on(client.peek_async())
        .unwrap_err()
        .open();
    assert_eq!(
        (open.method(), open.key()),
        ("peek_async", "Methods:client")
    );
    // A different key is a different breaker.
    assert_eq!(client.into_calls().unwrap(), 2);
}

handler!(AsyncFallback {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = AsyncFallback, key = host, fallback = from_cache)]
async fn fetch(host: &str, path: &str, runs: &Cell<u32>) -> Result<String, Error> {
    runs.set(runs.get() + 1);
    if host == "down.example" {
        return Err(Error::Down);
    }
    Ok(format!("{host}{path}"))
}

async fn from_cache(host: &str, path: &str, runs: &Cell<u32>) -> Result<String, Error> {
    tokio::task::yield_now().await;
    let _ = runs;
    Ok(format!("cached {host}{path}"))
}

#[test]
fn an_async_fallback_is_awaited_with_the_same_arguments_only_when_rejected() {
    let runs = Cell::new(0);
    current_thread().block_on(async {
        assert_eq!(
            fetch("up.example", "/a", &runs).await.unwrap(),
            "up.example/a"
        );
        assert!(fetch("down.example", "/a", &runs).await.is_err());
        assert_eq!(
            fetch("down.example", "/b", &runs).await.unwrap(),
            "cached down.example/b"
        );
        assert_eq!(
            fetch("up.example", "/c", &runs).await.unwrap(),
            "up.example/c"
        );
    });
    assert_eq!(runs.get(), 3);
    assert_eq!(
        AsyncFallback::log().changes(),
        vec![(
            "AsyncFallback:down.example".to_owned(),
            State::Closed,
            State::Open
        )]
    );
}

handler!(OwnedKey {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = OwnedKey, key = tenant)]
fn per_tenant(tenant: String, fail: bool) -> Result<String, Error> {
    if fail {
        return Err(Error::Down);
    }
    let mut greeting = tenant;
    greeting.insert_str(0, "hello ");
    Ok(greeting)
}

#[circuit_breaker(handler = OwnedKey, key = format!("{region}/{zone}"))]
async fn per_zone(region: &str, zone: u8) -> Result<u8, Error> {
    if zone == 0 {
        Err(Error::Down)
    } else {
        Ok(zone)
    }
}

#[test]
fn keys_from_owned_arguments_and_expressions() {
    assert_eq!(per_tenant("acme".to_owned(), false).unwrap(), "hello acme");
    assert!(per_tenant("acme".to_owned(), true).is_err());
    assert_eq!(
        per_tenant("acme".to_owned(), false)
            .unwrap_err()
            .open()
            .key(),
        "OwnedKey:acme"
    );
    assert_eq!(
        per_tenant("initech".to_owned(), false).unwrap(),
        "hello initech"
    );
    current_thread().block_on(async {
        assert!(per_zone("eu", 0).await.is_err());
        assert_eq!(
            per_zone("eu", 0).await.unwrap_err().open().key(),
            "OwnedKey:eu/0"
        );
        assert_eq!(per_zone("eu", 1).await.unwrap(), 1);
    });
}

handler!(InvalidKey {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = InvalidKey, key = key)]
fn with_key(key: &str, runs: &Cell<u32>) -> Result<(), Error> {
    runs.set(runs.get() + 1);
    Err(Error::Down)
}

#[test]
fn an_unusable_key_lets_calls_through_unrecorded_by_default() {
    let runs = Cell::new(0);
    let long = "x".repeat(513);
    for _ in 0..3 {
        assert!(matches!(with_key("", &runs), Err(Error::Down)));
        assert!(matches!(with_key(&long, &runs), Err(Error::Down)));
    }
    assert_eq!(runs.get(), 6);
    assert!(InvalidKey::log().changes().is_empty());
}

handler!(EarlyReturn {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

fn parse(text: &str) -> Result<u32, Error> {
    text.parse().map_err(|_| Error::Down)
}

#[circuit_breaker(handler = EarlyReturn)]
fn parsed(text: &str) -> Result<u32, Error> {
    if text.is_empty() {
        return Ok(0);
    }
    let value = parse(text)?;
    Ok(value * 2)
}

#[test]
fn early_returns_and_question_marks_are_outcomes_of_the_guarded_call() {
    assert_eq!(parsed("").unwrap(), 0);
    assert_eq!(parsed("21").unwrap(), 42);
    assert!(matches!(parsed("x"), Err(Error::Down)));
    assert_eq!(parsed("").unwrap(), 0); // an early `return Ok` is a success: count reset
    assert!(matches!(parsed("x"), Err(Error::Down)));
    assert_eq!(Breaker::new(EarlyReturn).state().unwrap(), State::Closed);
    assert!(matches!(parsed("y"), Err(Error::Down))); // `?` failures count
    assert_eq!(rejected(&parsed("1")), Some("open"));
}

handler!(AsyncPanic {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = AsyncPanic)]
async fn panics_after_a_yield() -> Result<(), Error> {
    tokio::task::yield_now().await;
    panic!("async body gave up")
}

#[test]
fn a_panic_in_an_async_body_counts_and_keeps_unwinding() {
    let runtime = current_thread();
    let panic = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(panics_after_a_yield())
    }))
    .unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"async body gave up"));
    assert_eq!(Breaker::new(AsyncPanic).state().unwrap(), State::Open);
    assert_eq!(
        rejected(&runtime.block_on(panics_after_a_yield())),
        Some("open")
    );
}

handler!(AsyncPanicAtOnce {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = AsyncPanicAtOnce)]
async fn panics_at_once(panic: bool) -> Result<(), Error> {
    if panic {
        panic!("async body gave up at once");
    }
    Ok(())
}

/// The call's future admits the call and polls the body in one poll: a panic in that first
/// poll counts too.
#[test]
fn a_panic_in_the_first_poll_of_an_async_body_counts_and_keeps_unwinding() {
    let runtime = current_thread();
    runtime.block_on(panics_at_once(false)).unwrap();
    let panic =
        catch_unwind(AssertUnwindSafe(|| runtime.block_on(panics_at_once(true)))).unwrap_err();
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"async body gave up at once")
    );
    assert_eq!(Breaker::new(AsyncPanicAtOnce).state().unwrap(), State::Open);
    assert_eq!(
        rejected(&runtime.block_on(panics_at_once(false))),
        Some("open")
    );
}

handler!(AsyncCancelled {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const HALF_OPEN_TRIALS: u32 = 1;
});

#[circuit_breaker(handler = AsyncCancelled)]
async fn slow_trial(ok: bool, runs: &Cell<u32>) -> Result<(), Error> {
    runs.set(runs.get() + 1);
    tokio::task::yield_now().await;
    if ok { Ok(()) } else { Err(Error::Down) }
}

/// A trial whose future is dropped while it is pending (a cancelled call) gives its permit
/// back at once: the next call is the trial.
#[test]
fn a_cancelled_async_trial_gives_its_permit_back() {
    let runs = Cell::new(0);
    let runtime = current_thread();
    assert!(runtime.block_on(slow_trial(false, &runs)).is_err());
    assert_eq!(Breaker::new(AsyncCancelled).state().unwrap(), State::Open);
    AsyncCancelled::clock().advance(Duration::from_secs(1) + SLACK);
    runtime.block_on(async {
        let mut trial = std::pin::pin!(slow_trial(true, &runs));
        let polled = futures_poll_once(trial.as_mut()).await;
        assert!(polled.is_none(), "the trial is pending");
        // Meanwhile the one permit is out.
        assert_eq!(rejected(&slow_trial(true, &runs).await), Some("trials"));
    });
    assert_eq!(runs.get(), 2);
    // Dropped: the next call is the trial, and closes the breaker.
    runtime.block_on(slow_trial(true, &runs)).unwrap();
    assert_eq!(Breaker::new(AsyncCancelled).state().unwrap(), State::Closed);
}

/// Polls `future` once: its output, or `None` if it is pending.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|context| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(context) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

handler!(InvalidKeyAsync {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = InvalidKeyAsync, key = key)]
async fn with_key_async(key: &str, runs: &Cell<u32>) -> Result<(), Error> {
    runs.set(runs.get() + 1);
    Err(Error::Down)
}

#[test]
fn an_unusable_key_lets_async_calls_through_unrecorded_by_default() {
    let runs = Cell::new(0);
    let long = "x".repeat(513);
    current_thread().block_on(async {
        for _ in 0..3 {
            assert!(matches!(with_key_async("", &runs).await, Err(Error::Down)));
            assert!(matches!(
                with_key_async(&long, &runs).await,
                Err(Error::Down)
            ));
        }
    });
    assert_eq!(runs.get(), 6);
    assert!(InvalidKeyAsync::log().changes().is_empty());
}

handler!(Generic {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

#[circuit_breaker(handler = Generic)]
fn shown<T: std::fmt::Display>(value: T, fail: bool) -> Result<String, Error> {
    if fail {
        Err(Error::Down)
    } else {
        Ok(value.to_string())
    }
}

#[test]
fn every_instance_of_a_generic_fn_uses_the_handlers_breaker() {
    assert_eq!(shown(1, false).unwrap(), "1");
    assert!(shown(1u8, true).is_err());
    assert!(shown("a", true).is_err());
    assert_eq!(rejected(&shown(2.5, false)), Some("open"));
}

handler!(RejectionIsTheError {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

/// The error type may be the rejection itself (clippy, run on the tests with `-D warnings`,
/// must not see a useless conversion in the generated code).
#[circuit_breaker(handler = RejectionIsTheError)]
fn answers(value: u32) -> Result<u32, circuitpy::CircuitBreakerOpen> {
    Ok(value)
}

#[test]
fn a_function_may_return_the_rejection_as_its_error() {
    assert_eq!(answers(7).unwrap(), 7);
    Breaker::new(RejectionIsTheError).force_open().unwrap();
    let open = answers(7).unwrap_err();
    assert_eq!(open.method(), "answers");
}

static COUNTED_STORAGE: std::sync::LazyLock<circuitpy::MemoryStorage> =
    std::sync::LazyLock::new(circuitpy::MemoryStorage::new);
static STORAGE_ASKED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A handler that counts how often it is asked for its storage.
struct Counted;

impl circuitpy::CircuitBreaker for Counted {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
    const FAILURE_KEY: &'static str = "Counted";
    type Storage = circuitpy::MemoryStorage;
    fn storage(&self) -> &circuitpy::MemoryStorage {
        STORAGE_ASKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &COUNTED_STORAGE
    }
}

#[circuit_breaker(handler = Counted)]
fn counted(ok: bool) -> Result<(), Error> {
    if ok { Ok(()) } else { Err(Error::Down) }
}

#[circuit_breaker(handler = Counted)]
async fn counted_async(ok: bool) -> Result<(), Error> {
    if ok { Ok(()) } else { Err(Error::Down) }
}

#[test]
fn a_closed_in_memory_call_never_asks_the_handler_for_its_storage() {
    let asked = || STORAGE_ASKED.load(std::sync::atomic::Ordering::Relaxed);
    let runtime = current_thread();
    // The first call of each function finds its breaker, through the storage.
    counted(true).unwrap();
    runtime.block_on(counted_async(true)).unwrap();
    let before = asked();
    for _ in 0..10 {
        counted(true).unwrap();
        runtime.block_on(counted_async(true)).unwrap();
    }
    assert_eq!(asked(), before, "closed successes asked for the storage");
    // Failures are still recorded, and the breaker they open rejects both functions.
    assert!(matches!(counted(false), Err(Error::Down)));
    assert!(matches!(
        runtime.block_on(counted_async(false)),
        Err(Error::Down)
    ));
    assert_eq!(counted(true).unwrap_err().open().method(), "counted");
    let open = runtime.block_on(counted_async(true)).unwrap_err().open();
    assert_eq!(open.method(), "counted_async");
    assert_eq!(Breaker::new(Counted).state().unwrap(), State::Open);
}
