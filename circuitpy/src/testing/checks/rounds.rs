//! Reports that hold more than one call, forcing from several callers at once, and the
//! half-open round a trial's outcome belongs to.

use super::super::kit::*;
use super::super::{Failure, RECOVERY};
use crate::handler::State;
use crate::policy::Config;
use crate::storage::{Op, Request};

impl<F: Flavor> Run<'_, F> {
    pub(crate) async fn counts_and_rounds(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;

        let rule = "a-success-reports-every-held-back-call";
        let config = Config::of::<Kit<F::S, Rated>>();
        let key = self.key("held-back");
        flavor
            .execute(&Request::new(&key, Op::Success, &config).with_count(50))
            .await
            .or_broke(rule)?;
        for _ in 0..10 {
            flavor
                .execute(&Request::new(&key, Op::Failure, &config))
                .await
                .or_broke(rule)?;
        }
        let state = flavor
            .execute(&Request::new(&key, Op::Read, &config))
            .await
            .or_broke(rule)?
            .state;
        self.check(rule, state == State::Closed, || {
            format!(
                "50 successes reported at once, then 10 failures (17 %), left a breaker of rate 0.5 {state}: the success counted as fewer calls"
            )
        })?;

        let rule = "concurrent-forcing-decides-one-mode";
        let config = Config::of::<Kit<F::S, Three>>();
        let key = self.key("forcing");
        let both_open = [
            Request::new(&key, Op::ForceOpen, &config),
            Request::new(&key, Op::ForceOpen, &config),
        ];
        for result in flavor.concurrently(&both_open).await {
            result.or_broke(rule)?;
        }
        let state = flavor
            .execute(&Request::new(&key, Op::Read, &config))
            .await
            .or_broke(rule)?
            .state;
        self.check(rule, state == State::ForcedOpen, || {
            format!("two concurrent force_open left the breaker {state}")
        })?;
        for _ in 0..4 {
            let racing = [
                Request::new(&key, Op::ForceOpen, &config),
                Request::new(&key, Op::ForceClosed, &config),
            ];
            for result in flavor.concurrently(&racing).await {
                result.or_broke(rule)?;
            }
            let state = flavor
                .execute(&Request::new(&key, Op::Read, &config))
                .await
                .or_broke(rule)?
                .state;
            self.check(
                rule,
                matches!(state, State::ForcedOpen | State::ForcedClosed),
                || format!("force_open racing force_closed left the breaker {state}"),
            )?;
        }

        let rule = "an-uncounted-trial-gives-its-permit-back";
        let config = Config::of::<Kit<F::S, Single>>();
        let key = self.key("released");
        let request = |op| Request::new(&key, op, &config);
        flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        self.wait(RECOVERY + RECOVERY / 4).await;
        let trial = flavor
            .execute(&request(Op::AcquireTrial))
            .await
            .or_broke(rule)?;
        self.check(rule, trial.permit, || {
            "no trial permit once the recovery timeout had passed".to_owned()
        })?;
        flavor
            .execute(&request(Op::ReleaseTrial).in_round(trial.round))
            .await
            .or_broke(rule)?;
        let again = flavor
            .execute(&request(Op::AcquireTrial))
            .await
            .or_broke(rule)?;
        self.check(rule, again.permit, || {
            "the only permit, given back by a trial whose error does not count, was not handed out again".to_owned()
        })?;

        let rule = "outcomes-of-a-lapsed-round-change-nothing";
        let config = Config::of::<Kit<F::S, Burst>>();
        let key = self.key("lapsed");
        let request = |op| Request::new(&key, op, &config);
        for _ in 0..Burst::THRESHOLD {
            flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        }
        self.wait(RECOVERY + RECOVERY / 4).await;
        let mut old = Vec::new();
        for _ in 0..Burst::TRIALS {
            let trial = flavor
                .execute(&request(Op::AcquireTrial))
                .await
                .or_broke(rule)?;
            self.check(rule, trial.permit, || {
                format!("no permit for one of {} trials", Burst::TRIALS)
            })?;
            old.push(trial.round);
        }
        // Nobody reports for a whole recovery timeout: the round lapses.
        self.wait(RECOVERY + RECOVERY / 4).await;
        let new = flavor
            .execute(&request(Op::AcquireTrial))
            .await
            .or_broke(rule)?;
        self.check(rule, new.permit, || {
            "no permit once the round had been idle for a recovery timeout: its leases never lapse"
                .to_owned()
        })?;
        self.check(rule, !old.contains(&new.round), || {
            format!("the new round has the lapsed round's number {}", new.round)
        })?;
        for round in old {
            flavor
                .execute(&request(Op::TrialSuccess).in_round(round))
                .await
                .or_broke(rule)?;
        }
        let state = flavor
            .execute(&request(Op::Read))
            .await
            .or_broke(rule)?
            .state;
        self.check(rule, state == State::HalfOpen, || {
            format!(
                "the lapsed round's {} trials reported success late, and the breaker read {state}: they counted toward the new round",
                Burst::TRIALS
            )
        })?;
        Ok(())
    }
}
