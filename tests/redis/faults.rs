//! Redis killed, paused and restarted under load: no call hangs past the storage timeout,
//! each storage-failure policy does what it says, and sharing resumes after a restart.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, OnStorageFailure, Rejection, State, StorageError,
};
use circuitpy_tests::redis::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(100);
const RECOVERY: Duration = Duration::from_millis(200);
/// How far past the storage timeout a call may run. A bound on a hang, not a measure of
/// speed: a busy two-core machine must not make it fail.
const SLACK: Duration = Duration::from_millis(400);

macro_rules! handler {
    ($name:ident, $errors:ident, $policy:expr) => {
        static $errors: AtomicU32 = AtomicU32::new(0);

        struct $name<S: 'static>(&'static S);

        impl<S: Send + Sync + 'static> CircuitBreaker for $name<S> {
            const FAILURE_THRESHOLD: u32 = 2;
            const RECOVERY_TIMEOUT: Duration = RECOVERY;
            const FAILURE_KEY: &'static str = stringify!($name);
            const STORAGE_TIMEOUT: Duration = TIMEOUT;
            const ON_STORAGE_FAILURE: OnStorageFailure = $policy;
            type Storage = S;
            fn storage(&self) -> &S {
                self.0
            }
            fn on_storage_error(&self, _key: &str, _error: &StorageError) {
                $errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
}

handler!(AllowKill, ALLOW_KILL_ERRORS, OnStorageFailure::Allow);
handler!(RejectKill, REJECT_KILL_ERRORS, OnStorageFailure::Reject);
handler!(AllowPause, ALLOW_PAUSE_ERRORS, OnStorageFailure::Allow);
handler!(RejectPause, REJECT_PAUSE_ERRORS, OnStorageFailure::Reject);
handler!(AsyncPause, ASYNC_PAUSE_ERRORS, OnStorageFailure::Allow);

#[derive(Debug)]
enum E {
    Down,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for E {
    fn from(open: CircuitBreakerOpen) -> Self {
        E::Open(open)
    }
}

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// Threads calling through `breaker` until `stop`; the longest call and the bodies run.
fn load<H: CircuitBreaker>(breaker: &Breaker<H>, stop: &AtomicBool) -> (Duration, u32)
where
    H::Storage: circuitpy::Storage,
{
    let bodies = AtomicU32::new(0);
    let longest = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut longest = Duration::ZERO;
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let _ = breaker.call(|| {
                            bodies.fetch_add(1, Ordering::SeqCst);
                            Ok::<(), E>(())
                        });
                        longest = longest.max(started.elapsed());
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    longest
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .max()
            .unwrap()
    });
    (longest, bodies.into_inner())
}

/// Trips `breaker` and waits out its recovery, so its next call must ask the storage.
fn trip_and_wait<H: CircuitBreaker>(breaker: &Breaker<H>)
where
    H::Storage: circuitpy::Storage,
{
    for _ in 0..2 {
        let _ = breaker.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(breaker.state().unwrap(), State::Open);
    std::thread::sleep(RECOVERY + Duration::from_millis(50));
}

/// How long until the breaker's state can be read again.
fn time_to_recover<H: CircuitBreaker>(breaker: &Breaker<H>) -> Duration
where
    H::Storage: circuitpy::Storage,
{
    let started = Instant::now();
    while breaker.state().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never recovered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

fn storage_failed(result: Result<(), E>) -> Option<StorageError> {
    match result {
        Err(E::Open(open)) => match open.reason() {
            Rejection::StorageFailed(cause) => Some((**cause).clone()),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn redis_killed_mid_load_and_restarted() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let allow = Breaker::new(AllowKill(client));
    let reject = Breaker::new(RejectKill(client));
    trip_and_wait(&reject);
    let tripped_allow = Breaker::keyed(AllowKill(client), "tripped");
    trip_and_wait(&tripped_allow);

    let stop = AtomicBool::new(false);
    let (longest, bodies, recovered) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(&allow, &stop));
        std::thread::sleep(Duration::from_millis(200));
        server.kill();
        let errors_before = ALLOW_KILL_ERRORS.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            ALLOW_KILL_ERRORS.load(Ordering::SeqCst) > errors_before,
            "calls kept running and the hook heard of the failures"
        );

        // Reject: a call that must ask the storage is rejected with the cause.
        let ran = AtomicBool::new(false);
        let started = Instant::now();
        let cause = storage_failed(reject.call(|| {
            ran.store(true, Ordering::SeqCst);
            Ok(())
        }));
        assert!(started.elapsed() < TIMEOUT + SLACK);
        assert!(!ran.load(Ordering::SeqCst));
        assert!(
            matches!(cause, Some(StorageError::Backend { .. })),
            "{cause:?}"
        );
        // Allow: the same call runs, unrecorded.
        let ran_allowed = tripped_allow.call(|| Ok::<_, E>(true)).unwrap();
        assert!(ran_allowed);

        server.restart();
        let recovered = time_to_recover(&allow);
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::SeqCst);
        let (longest, bodies) = loader.join().unwrap();
        (longest, bodies, recovered)
    });
    eprintln!("kill: longest call {longest:?}, {bodies} bodies, recovered in {recovered:?}");
    assert!(longest < TIMEOUT + SLACK, "a call took {longest:?}");
    assert!(recovered < Duration::from_secs(1), "{recovered:?}");
    // Sharing resumed: failures are counted on the new server again.
    for _ in 0..2 {
        let _ = allow.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(allow.state().unwrap(), State::Open);
}

#[test]
fn redis_paused_mid_load_then_resumed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let allow = Breaker::new(AllowPause(client));
    let reject = Breaker::new(RejectPause(client));
    trip_and_wait(&reject);

    let stop = AtomicBool::new(false);
    let (longest, recovered) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(&allow, &stop));
        std::thread::sleep(Duration::from_millis(200));
        server.pause();
        let errors_before = ALLOW_PAUSE_ERRORS.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(500));
        assert!(ALLOW_PAUSE_ERRORS.load(Ordering::SeqCst) > errors_before);

        let started = Instant::now();
        let cause = storage_failed(reject.call(|| Ok(())));
        assert!(started.elapsed() < TIMEOUT + SLACK);
        assert!(
            matches!(cause, Some(StorageError::Timeout { .. })),
            "{cause:?}"
        );

        server.resume();
        let recovered = time_to_recover(&allow);
        stop.store(true, Ordering::SeqCst);
        let (longest, _) = loader.join().unwrap();
        (longest, recovered)
    });
    eprintln!("pause: longest call {longest:?}, recovered in {recovered:?}");
    assert!(longest < TIMEOUT + SLACK, "a call took {longest:?}");
    assert!(recovered < Duration::from_secs(1));
    // The state written before the pause is still there.
    assert_eq!(reject.state().unwrap(), State::HalfOpen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_are_bounded_while_redis_is_paused() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let multiplexed = leak(client.get_multiplexed_async_connection().await.unwrap());
    let manager = leak(
        redis::aio::ConnectionManager::new(client.clone())
            .await
            .unwrap(),
    );
    let through_client = Breaker::new(AsyncPause(client));
    let through_multiplexed = Breaker::new(AsyncPause(multiplexed));
    let through_manager = Breaker::new(AsyncPause(manager));
    through_client.state_async().await.unwrap();
    server.pause();
    let before = ASYNC_PAUSE_ERRORS.load(Ordering::SeqCst);
    let mut longest = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let _ = through_client
            .call_async(async { Err::<(), E>(E::Down) })
            .await;
        longest = longest.max(started.elapsed());
        let started = Instant::now();
        let _ = through_multiplexed
            .call_async(async { Err::<(), E>(E::Down) })
            .await;
        longest = longest.max(started.elapsed());
        let started = Instant::now();
        let _ = through_manager
            .call_async(async { Err::<(), E>(E::Down) })
            .await;
        longest = longest.max(started.elapsed());
    }
    server.resume();
    eprintln!("async pause: longest call {longest:?}");
    assert!(longest < TIMEOUT + SLACK, "a call took {longest:?}");
    assert_eq!(ASYNC_PAUSE_ERRORS.load(Ordering::SeqCst), before + 9);
}
