//! Many threads and tasks on one in-memory breaker: trial permits are exact, an abandoned
//! trial gives its permit back, a panicking trial counts as a failure, and a crowd of
//! failures opens the breaker once.

use std::future::pending;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use circuitpy::{Breaker, Rejection, State};
use circuitpy_tests::handler;
use circuitpy_tests::handlers::{Error, rejected};

const THREADS: usize = 16;
const TRIALS: usize = 3;
const RECOVERY: Duration = Duration::from_secs(10);
/// Deadlines are rounded up to about a millisecond; this is comfortably past that.
const PAST_RECOVERY: Duration = Duration::from_millis(10_005);

fn down() -> Result<(), Error> {
    Err(Error::Down)
}

handler!(ThreadTrials {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
    const HALF_OPEN_TRIALS: u32 = TRIALS as u32;
});

#[test]
fn threads_racing_a_half_open_breaker_get_exactly_the_trials() {
    let breaker = Breaker::new(ThreadTrials);
    for round in 0..40 {
        let trials_fail = round % 4 == 3;
        assert!(breaker.call(down).is_err());
        assert_eq!(breaker.state().unwrap(), State::Open);
        ThreadTrials::clock().advance(PAST_RECOVERY);
        ThreadTrials::log().take();

        let start = Barrier::new(THREADS);
        // Every thread reaches `decided` once its call was admitted or rejected, so the
        // trials are all still running while the others ask.
        let decided = Barrier::new(THREADS);
        let admitted = AtomicUsize::new(0);
        let refused = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    start.wait();
                    let result = breaker.call(|| {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        decided.wait();
                        if trials_fail {
                            Err(Error::Down)
                        } else {
                            Ok(())
                        }
                    });
                    match result {
                        Err(Error::Open(open)) => {
                            assert!(matches!(open.reason(), Rejection::TrialsInProgress));
                            refused.fetch_add(1, Ordering::SeqCst);
                            decided.wait();
                        }
                        Err(Error::Down) => assert!(trials_fail),
                        Ok(()) => assert!(!trials_fail),
                        Err(Error::NotFound) => unreachable!(),
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::SeqCst), TRIALS, "round {round}");
        assert_eq!(
            refused.load(Ordering::SeqCst),
            THREADS - TRIALS,
            "round {round}"
        );
        let last = if trials_fail {
            State::Open
        } else {
            State::Closed
        };
        assert_eq!(breaker.state().unwrap(), last);
        let changes: Vec<_> = ThreadTrials::log()
            .changes()
            .into_iter()
            .map(|(_, from, to)| (from, to))
            .collect();
        assert_eq!(
            changes,
            vec![(State::Open, State::HalfOpen), (State::HalfOpen, last)],
            "round {round}"
        );
        if trials_fail {
            breaker.reset().unwrap();
        }
    }
}

handler!(TaskTrials {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
    const HALF_OPEN_TRIALS: u32 = TRIALS as u32;
});

#[test]
fn tasks_racing_a_half_open_breaker_get_exactly_the_trials() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let breaker = Arc::new(Breaker::new(TaskTrials));
    runtime.block_on(async {
        for round in 0..40 {
            assert!(breaker.call_async(async { down() }).await.is_err());
            TaskTrials::clock().advance(PAST_RECOVERY);
            let start = Arc::new(tokio::sync::Barrier::new(THREADS));
            let decided = Arc::new(tokio::sync::Barrier::new(THREADS));
            let admitted = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (breaker, start, decided, admitted) = (
                        breaker.clone(),
                        start.clone(),
                        decided.clone(),
                        admitted.clone(),
                    );
                    tokio::spawn(async move {
                        start.wait().await;
                        let result = breaker
                            .call_async(async {
                                admitted.fetch_add(1, Ordering::SeqCst);
                                decided.wait().await;
                                Ok::<_, Error>(())
                            })
                            .await;
                        if result.is_err() {
                            decided.wait().await;
                        }
                        rejected(&result)
                    })
                })
                .collect();
            let mut refusals = Vec::new();
            for task in tasks {
                if let Some(reason) = task.await.unwrap() {
                    refusals.push(reason);
                }
            }
            assert_eq!(admitted.load(Ordering::SeqCst), TRIALS, "round {round}");
            assert_eq!(refusals, vec!["trials"; THREADS - TRIALS], "round {round}");
            assert_eq!(breaker.state().unwrap(), State::Closed);
        }
    });
}

handler!(DroppedBySelect {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
});

#[test]
fn a_trial_future_dropped_by_select_gives_its_permit_back() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let breaker = Breaker::new(DroppedBySelect);
    runtime.block_on(async {
        assert!(breaker.call_async(async { down() }).await.is_err());
        DroppedBySelect::clock().advance(PAST_RECOVERY);
        let (started, has_started) = tokio::sync::oneshot::channel();
        let stuck = breaker.call_async(async {
            started.send(()).unwrap();
            pending::<Result<(), Error>>().await
        });
        let meanwhile = async {
            has_started.await.unwrap();
            breaker.call_async(async { Ok::<_, Error>(()) }).await
        };
        tokio::select! {
            _ = stuck => unreachable!("the trial never finishes"),
            meanwhile = meanwhile => {
                // While the trial was pending it held the only permit.
                assert_eq!(rejected(&meanwhile), Some("trials"));
            }
        }
        // The trial future is gone: its permit is free again.
        assert_eq!(breaker.state().unwrap(), State::HalfOpen);
        let runs = AtomicUsize::new(0);
        let next = breaker
            .call_async(async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(())
            })
            .await;
        assert!(next.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(breaker.state().unwrap(), State::Closed);
    });
}

handler!(DroppedByTimeout {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
});

#[test]
fn a_trial_future_dropped_by_timeout_gives_its_permit_back() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let breaker = Breaker::new(DroppedByTimeout);
    runtime.block_on(async {
        assert!(breaker.call_async(async { down() }).await.is_err());
        for _ in 0..5 {
            DroppedByTimeout::clock().advance(PAST_RECOVERY);
            // A trial that never ends, abandoned by the timeout.
            let timed_out = tokio::time::timeout(
                Duration::from_millis(1),
                breaker.call_async(pending::<Result<(), Error>>()),
            )
            .await;
            assert!(timed_out.is_err());
            assert_eq!(breaker.state().unwrap(), State::HalfOpen);
            // The permit came back: the next call is a trial, and its failure reopens.
            assert!(matches!(
                breaker.call_async(async { down() }).await,
                Err(Error::Down)
            ));
            assert_eq!(breaker.state().unwrap(), State::Open);
        }
    });
}

handler!(PanickingTrial {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
});

#[test]
fn a_trial_on_a_thread_that_panics_counts_as_a_failure() {
    let breaker = Arc::new(Breaker::new(PanickingTrial));
    assert!(breaker.call(down).is_err());
    PanickingTrial::clock().advance(PAST_RECOVERY);
    let on_thread = breaker.clone();
    let joined = std::thread::spawn(move || {
        let _: Result<(), Error> = on_thread.call(|| panic!("trial thread died"));
    })
    .join();
    let panic = joined.unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"trial thread died"));
    // Open again for a whole recovery timeout, not half-open with a lost permit.
    assert_eq!(breaker.state().unwrap(), State::Open);
    assert_eq!(rejected(&breaker.call(|| Ok(()))), Some("open"));
    assert_eq!(
        PanickingTrial::log()
            .changes()
            .into_iter()
            .map(|(_, from, to)| (from, to))
            .collect::<Vec<_>>(),
        vec![
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Open)
        ]
    );
}

handler!(CrowdOfFailures {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
});

#[test]
fn concurrent_failures_open_the_breaker_exactly_once() {
    const CALLS: usize = 20;
    let breaker = Breaker::new(CrowdOfFailures);
    for round in 0..20 {
        let start = Barrier::new(THREADS);
        let runs = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    start.wait();
                    for _ in 0..CALLS {
                        let result = breaker.call(|| {
                            runs.fetch_add(1, Ordering::SeqCst);
                            down()
                        });
                        assert!(
                            matches!(result, Err(Error::Down)) || rejected(&result) == Some("open")
                        );
                    }
                });
            }
        });
        assert_eq!(breaker.state().unwrap(), State::Open);
        assert_eq!(
            CrowdOfFailures::log().changes(),
            vec![("CrowdOfFailures".to_owned(), State::Closed, State::Open)],
            "round {round}"
        );
        // Five failures recorded while closed, plus at most one call per other thread that
        // was already running when the breaker opened.
        let runs = runs.load(Ordering::SeqCst);
        assert!((5..=5 + THREADS - 1).contains(&runs), "{runs} bodies ran");
        breaker.reset().unwrap();
        CrowdOfFailures::log().take();
    }
}

const RATE_THREADS: usize = 8;
const RATE_SUCCESSES: usize = 2_000;

handler!(RateCrowd {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
    const FAILURE_POLICY: circuitpy::FailurePolicy = circuitpy::FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(10),
        minimum_calls: 1,
    };
});

#[test]
fn rate_successes_counted_on_many_threads_are_all_counted() {
    let breaker = Breaker::new(RateCrowd);
    for round in 0..3 {
        let start = Barrier::new(RATE_THREADS);
        std::thread::scope(|scope| {
            for _ in 0..RATE_THREADS {
                scope.spawn(|| {
                    start.wait();
                    for _ in 0..RATE_SUCCESSES {
                        assert!(breaker.call(|| Ok::<_, Error>(())).is_ok());
                    }
                });
            }
        });
        // With a rate of one half, the breaker trips on the failure that makes the failures
        // as many as the successes: not one earlier (a lost success), not one later.
        let successes = RATE_THREADS * RATE_SUCCESSES;
        for failure in 1..=successes {
            assert!(matches!(breaker.call(down), Err(Error::Down)));
            let expected = if failure == successes {
                State::Open
            } else {
                State::Closed
            };
            assert_eq!(
                breaker.state().unwrap(),
                expected,
                "round {round}, failure {failure}"
            );
        }
        breaker.reset().unwrap();
    }
}
