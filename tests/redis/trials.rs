//! Trial rounds on Redis: an outcome of a round whose leases lapsed changes nothing, and a
//! trial that ends with an error that does not count gives its permit back at once.

use std::time::Duration;

use circuitpy::{Breaker, State};
use circuitpy_tests::handlers::{Failed as E, held_call, leak};
use circuitpy_tests::redis::RedisServer;
use circuitpy_tests::shared_handler;

shared_handler!(FastPair {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_millis(250);
    const HALF_OPEN_TRIALS: u32 = 2;
    fn is_failure(&self, error: &dyn std::any::Any) -> bool {
        !matches!(error.downcast_ref::<E>(), Some(E::Ignored))
    }
});

#[test]
fn stale_trials_do_not_count_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let breaker = Breaker::keyed(FastPair(client), "stale");
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    std::thread::sleep(Duration::from_millis(300));
    std::thread::scope(|scope| {
        let (first_started, first_release, first) = held_call(scope, &breaker, Ok(()));
        let (second_started, second_release, second) = held_call(scope, &breaker, Ok(()));
        assert!(first_started.recv().unwrap());
        assert!(second_started.recv().unwrap());
        std::thread::sleep(Duration::from_millis(300));
        let (new_started, new_release, new_round) = held_call(scope, &breaker, Ok(()));
        assert!(new_started.recv().unwrap(), "a new round admits a trial");
        first_release.send(()).unwrap();
        second_release.send(()).unwrap();
        first.join().unwrap();
        second.join().unwrap();
        assert_eq!(
            breaker.state().unwrap(),
            State::HalfOpen,
            "successes of a lapsed round closed the breaker"
        );
        new_release.send(()).unwrap();
        new_round.join().unwrap();
    });
}

#[test]
fn an_uncounted_trial_releases_its_permit_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let breaker = Breaker::keyed(FastPair(client), "uncounted");
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(
        breaker.call(|| Err::<(), E>(E::Ignored)),
        Err(E::Ignored)
    ));
    assert!(matches!(
        breaker.call(|| Err::<(), E>(E::Ignored)),
        Err(E::Ignored)
    ));
    let mut ran = false;
    let result = breaker.call(|| {
        ran = true;
        Ok::<(), E>(())
    });
    assert!(
        ran,
        "the permits of trials that ended uncounted were kept: {result:?}"
    );
}
