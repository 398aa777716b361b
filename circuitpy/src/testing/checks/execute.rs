//! `execute` directly: concurrent failures, the open period, trial permits.

use super::super::kit::*;
use super::super::{Failure, RECOVERY};
use crate::handler::State;
use crate::policy::Config;
use crate::storage::{Op, Request};

impl<F: Flavor> Run<'_, F> {
    pub(crate) async fn execute_level(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let config = Config::of::<Kit<F::S, Burst>>();
        let key = self.key("burst");
        let request = |op| Request::new(&key, op, &config);

        let rule = "concurrent-failures-trip-once";
        let each = 2;
        let callers = self.threads.max(4);
        let results = flavor.executes(&request(Op::Failure), callers, each).await;
        let mut closed_counts = Vec::new();
        for result in results {
            let snapshot = result.or_broke(rule)?;
            match snapshot.state {
                State::Closed => closed_counts.push(snapshot.failures),
                State::Open => {}
                other => {
                    return Err(broke(
                        rule,
                        format!("a failure while closed or open answered {other}"),
                    ));
                }
            }
        }
        closed_counts.sort_unstable();
        let expected: Vec<u64> = (1..u64::from(Burst::THRESHOLD)).collect();
        self.check(rule, closed_counts == expected, || {
            format!(
                "{} concurrent failures with a threshold of {}: the answers that stayed closed counted {closed_counts:?}, expected {expected:?} (each failure counted once, the {}th tripping)",
                callers * each,
                Burst::THRESHOLD,
                Burst::THRESHOLD
            )
        })?;
        let state = flavor
            .execute(&request(Op::Read))
            .await
            .or_broke(rule)?
            .state;
        self.check(rule, state == State::Open, || {
            format!("after the concurrent failures the breaker read {state}")
        })?;

        let rule = "late-failures-do-not-extend-open";
        self.wait(RECOVERY / 2).await;
        for _ in 0..3 {
            let snapshot = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
            self.check(rule, snapshot.state == State::Open, || {
                format!("a failure while open answered {}", snapshot.state)
            })?;
        }
        self.wait(RECOVERY * 3 / 4).await;
        let state = flavor
            .execute(&request(Op::Read))
            .await
            .or_broke(rule)?
            .state;
        self.check(rule, state == State::HalfOpen, || {
            format!(
                "one recovery timeout after the trip the breaker read {state}, not half-open: failures reported while open pushed the open period forward"
            )
        })?;
        self.pass("open-becomes-half-open-after-recovery");

        let rule = "acquire-trial-grants-exactly-k-permits";
        let results = flavor
            .executes(&request(Op::AcquireTrial), callers, 1)
            .await;
        let mut permits = 0;
        for result in results {
            let snapshot = result.or_broke(rule)?;
            self.check(rule, snapshot.state == State::HalfOpen, || {
                format!(
                    "asking for a trial while half-open answered {}",
                    snapshot.state
                )
            })?;
            permits += usize::from(snapshot.permit);
        }
        self.check(rule, permits == Burst::TRIALS as usize, || {
            format!(
                "{callers} concurrent trial requests got {permits} permits, expected {}",
                Burst::TRIALS
            )
        })?;

        let rule = "closing-needs-every-trial";
        let snapshot = flavor
            .execute(&request(Op::TrialSuccess))
            .await
            .or_broke(rule)?;
        self.check(rule, snapshot.state == State::HalfOpen, || {
            format!(
                "after 1 of {} trials succeeded the breaker answered {}",
                Burst::TRIALS,
                snapshot.state
            )
        })?;
        let rule = "all-trials-succeeding-close";
        let snapshot = flavor
            .execute(&request(Op::TrialSuccess))
            .await
            .or_broke(rule)?;
        self.check(
            rule,
            snapshot.state == State::Closed && snapshot.failures == 0,
            || {
                format!(
                    "after every trial succeeded the breaker answered {} with {} failures",
                    snapshot.state, snapshot.failures
                )
            },
        )?;
        let rule = "closing-clears-the-failure-count";
        let snapshot = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        self.check(
            rule,
            snapshot.state == State::Closed && snapshot.failures == 1,
            || {
                format!(
                    "the first failure after closing answered {} with {} failures, expected closed with 1",
                    snapshot.state, snapshot.failures
                )
            },
        )?;
        Ok(())
    }

    /// A failed trial round reopens for the backoff's next step; closing starts again from
    /// the recovery timeout.
    pub(crate) async fn backoff(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let config = Config::of::<Kit<F::S, Backing>>();
        let key = self.key("backing");
        let request = |op| Request::new(&key, op, &config);
        let rule = "failed-trials-back-off";
        let trip = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        self.check(rule, trip.state == State::Open, || {
            format!("a failure with threshold 1 answered {}", trip.state)
        })?;
        // Two failed rounds: open for two, then four recovery timeouts.
        let mut waited = RECOVERY;
        for factor in [2, 4] {
            self.wait(waited + RECOVERY / 4).await;
            let trial = flavor
                .execute(&request(Op::AcquireTrial))
                .await
                .or_broke(rule)?;
            self.check(rule, trial.state == State::HalfOpen && trial.permit, || {
                format!(
                    "asking for a trial after the open period answered {} (permit: {})",
                    trial.state, trial.permit
                )
            })?;
            let reopened = flavor
                .execute(&request(Op::TrialFailure).in_round(trial.round))
                .await
                .or_broke(rule)?;
            let open = reopened.retry_in.unwrap_or_default();
            let expected = RECOVERY * factor;
            self.check(
                rule,
                reopened.state == State::Open
                    && open > expected - RECOVERY / 2
                    && open <= expected,
                || {
                    format!(
                        "a failed trial round with a backoff of 2 should reopen for {expected:?}; it answered {} for {open:?}",
                        reopened.state
                    )
                },
            )?;
            waited = expected;
        }
        let rule = "closing-resets-the-backoff";
        self.wait(waited + RECOVERY / 4).await;
        let trial = flavor
            .execute(&request(Op::AcquireTrial))
            .await
            .or_broke(rule)?;
        let closed = flavor
            .execute(&request(Op::TrialSuccess).in_round(trial.round))
            .await
            .or_broke(rule)?;
        self.check(rule, closed.state == State::Closed, || {
            format!("a successful trial answered {}", closed.state)
        })?;
        let tripped = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        let open = tripped.retry_in.unwrap_or_default();
        self.check(
            rule,
            tripped.state == State::Open && open <= RECOVERY,
            || {
                format!(
                    "a trip after the breaker closed should open for the recovery timeout, {RECOVERY:?}; it answered {} for {open:?}",
                    tripped.state
                )
            },
        )?;
        Ok(())
    }

    /// Runtime overrides decide, survive a reset, and clearing them restores the consts. A
    /// storage that cannot keep them must say so ([`StorageError::Unsupported`]).
    pub(crate) async fn overrides(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let config = Config::of::<Kit<F::S, Three>>();
        let key = self.key("overridden");
        let request = |op| Request::new(&key, op, &config);
        let set = |overrides| request(Op::Override).with_overrides(overrides);
        let rule = "overrides-decide-the-threshold";
        match flavor
            .execute(&set(crate::Overrides::NONE.failure_threshold(1)))
            .await
        {
            Err(crate::StorageError::Unsupported { .. }) => {
                self.pass("overrides-unsupported-said-so");
                return Ok(());
            }
            other => {
                other.or_broke(rule)?;
            }
        }
        let tripped = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        self.check(rule, tripped.state == State::Open, || {
            format!(
                "with the threshold of 3 overridden to 1, one failure answered {}",
                tripped.state
            )
        })?;
        let rule = "a-reset-keeps-the-overrides";
        flavor.execute(&request(Op::Reset)).await.or_broke(rule)?;
        let tripped = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        self.check(rule, tripped.state == State::Open, || {
            format!(
                "after a reset, with the threshold still overridden to 1, one failure answered {}",
                tripped.state
            )
        })?;
        let rule = "clearing-the-overrides-restores-the-consts";
        flavor
            .execute(&set(crate::Overrides::NONE))
            .await
            .or_broke(rule)?;
        flavor.execute(&request(Op::Reset)).await.or_broke(rule)?;
        let counted = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        self.check(rule, counted.state == State::Closed, || {
            format!(
                "with the overrides cleared (threshold 3 again), one failure answered {}",
                counted.state
            )
        })?;
        Ok(())
    }

    /// Under a quorum of two, failures from one reporter never trip the breaker however many
    /// there are, and the first failure from a second reporter does; a success (which
    /// clears a consecutive count) forgets the reporters with the count. A storage that
    /// cannot keep reporters must say so ([`StorageError::Unsupported`]).
    pub(crate) async fn quorum(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let config = Config::of::<Kit<F::S, Quorate>>();
        let key = self.key("quorate");
        let failure = |reporter| Request::new(&key, Op::Failure, &config).reported_by(reporter);
        let rule = "one-reporter-never-trips-a-quorum";
        for n in 1..=6u64 {
            match flavor.execute(&failure(1)).await {
                Err(crate::StorageError::Unsupported { .. }) => {
                    self.pass("quorum-unsupported-said-so");
                    return Ok(());
                }
                other => {
                    let snapshot = other.or_broke(rule)?;
                    self.check(
                        rule,
                        snapshot.state == State::Closed && snapshot.failures == n,
                        || {
                            format!(
                                "failure {n} of one reporter (threshold 3, quorum 2) answered {} with {} counted",
                                snapshot.state, snapshot.failures
                            )
                        },
                    )?;
                }
            }
        }
        let rule = "a-second-reporter-completes-the-quorum";
        let tripped = flavor.execute(&failure(2)).await.or_broke(rule)?;
        self.check(rule, tripped.state == State::Open, || {
            format!(
                "6 failures from one reporter, then one from another, answered {}",
                tripped.state
            )
        })?;
        let rule = "reporters-go-with-the-count";
        flavor
            .execute(&Request::new(&key, Op::Reset, &config))
            .await
            .or_broke(rule)?;
        for reporter in [1, 1, 1] {
            flavor.execute(&failure(reporter)).await.or_broke(rule)?;
        }
        flavor
            .execute(&Request::new(&key, Op::Success, &config))
            .await
            .or_broke(rule)?;
        for (n, reporter) in [(1, 2), (2, 2)] {
            let snapshot = flavor.execute(&failure(reporter)).await.or_broke(rule)?;
            self.check(rule, snapshot.state == State::Closed, || {
                format!(
                    "after a success cleared the count of reporter 1, failure {n} of reporter 2 answered {}",
                    snapshot.state
                )
            })?;
        }
        let tripped = flavor.execute(&failure(1)).await.or_broke(rule)?;
        self.check(rule, tripped.state == State::Open, || {
            format!(
                "two failures of reporter 2, then one of reporter 1 (3 failures, 2 reporters), answered {}",
                tripped.state
            )
        })
    }

    /// With a jitter, breakers tripped together reopen over a span, none later than the
    /// recovery timeout.
    pub(crate) async fn jitter(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let config = Config::of::<Kit<F::S, Spread>>();
        let rule = "jitter-spreads-openings";
        let mut open_for = Vec::new();
        for n in 0..12 {
            let key = self.key(&format!("spread-{n}"));
            let tripped = flavor
                .execute(&Request::new(&key, Op::Failure, &config))
                .await
                .or_broke(rule)?;
            self.check(rule, tripped.state == State::Open, || {
                format!("a failure with threshold 1 answered {}", tripped.state)
            })?;
            open_for.push(tripped.retry_in.unwrap_or_default());
        }
        let (shortest, longest) = (
            open_for.iter().min().copied().unwrap_or_default(),
            open_for.iter().max().copied().unwrap_or_default(),
        );
        self.check(
            rule,
            longest <= RECOVERY && longest - shortest >= RECOVERY / 10,
            || {
                format!(
                    "12 breakers tripped one after another with a jitter of 0.5 of {RECOVERY:?} opened for {open_for:?}: expected a spread of at least {:?}, none longer than the recovery timeout",
                    RECOVERY / 10
                )
            },
        )
    }
}
