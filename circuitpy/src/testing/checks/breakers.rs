//! Whole breakers on the storage: the policies, trials, forcing and resets.

use std::sync::atomic::Ordering;

use super::super::kit::*;
use super::super::{Failure, RECOVERY};
use crate::error::Rejection;
use crate::handler::State;
use crate::storage::Op;

impl<F: Flavor> Run<'_, F> {
    pub(crate) async fn consecutive(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let breaker = self.breaker::<Three>("consecutive");

        let rule = "a-success-resets-consecutive-failures";
        for body in [
            Body::Fail,
            Body::Fail,
            Body::Succeed,
            Body::Fail,
            Body::Fail,
        ] {
            self.expect_call(rule, &breaker, body, true, "while closed")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after F F S F F with threshold 3",
        )
        .await?;

        let rule = "consecutive-failures-trip-at-threshold";
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "while closed",
            State::Open,
            "after three failures in a row",
        )
        .await?;

        let rule = "open-rejects-without-running";
        let called = self
            .expect_call(rule, &breaker, Body::Succeed, false, "while open")
            .await?;
        self.check(
            rule,
            matches!(called.rejected, Some(Rejection::Open)),
            || format!("a call while open was rejected with {:?}", called.rejected),
        )?;

        let rule = "open-becomes-half-open-after-recovery";
        self.wait(RECOVERY + RECOVERY / 4).await;
        self.expect_state(
            rule,
            &breaker,
            State::HalfOpen,
            "one recovery timeout after the trip",
        )
        .await?;

        let rule = "a-failed-trial-reopens";
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "as the trial",
            State::Open,
            "after the trial failed",
        )
        .await?;
        self.expect_call(
            rule,
            &breaker,
            Body::Succeed,
            false,
            "right after the trial failed",
        )
        .await?;

        let rule = "a-successful-trial-closes";
        self.wait(RECOVERY + RECOVERY / 4).await;
        self.call_then_expect(
            (Body::Succeed, true),
            rule,
            &breaker,
            "as the trial after reopening",
            State::Closed,
            "after the trial succeeded",
        )
        .await?;

        let rule = "closing-clears-the-failure-count";
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "after closing")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after two failures following a close",
        )
        .await?;

        let rule = "errors-that-are-not-failures-are-not-recorded";
        let ignored = self.breaker::<Three>("ignored");
        for _ in 0..5 {
            self.expect_call(
                rule,
                &ignored,
                Body::Ignored,
                true,
                "with errors that do not count",
            )
            .await?;
        }
        self.expect_state(
            rule,
            &ignored,
            State::Closed,
            "after five errors that do not count",
        )
        .await?;

        let rule = "an-unreported-trial-gives-its-permit-back";
        let abandoned = self.breaker::<Three>("abandoned");
        for _ in 0..3 {
            self.expect_call(rule, &abandoned, Body::Fail, true, "while closed")
                .await?;
        }
        self.wait(RECOVERY + RECOVERY / 4).await;
        // An error that does not count ends a trial without reporting an outcome.
        self.expect_call(rule, &abandoned, Body::Ignored, true, "as the trial")
            .await?;
        let next = flavor.call(&abandoned, Body::Succeed).await;
        if !next.ran {
            self.check(
                rule,
                matches!(next.rejected, Some(Rejection::TrialsInProgress)),
                || {
                    format!(
                        "right after an unreported trial a call was rejected with {:?}; expected trials in progress (the lease is held) or a new trial",
                        next.rejected
                    )
                },
            )?;
            self.wait(RECOVERY + RECOVERY / 4).await;
            self.expect_call(
                rule,
                &abandoned,
                Body::Succeed,
                true,
                "one recovery timeout after an unreported trial",
            )
            .await?;
        }
        self.expect_state(
            rule,
            &abandoned,
            State::Closed,
            "after the next trial succeeded",
        )
        .await?;
        let _ = flavor;
        Ok(())
    }

    pub(crate) async fn forced_and_reset(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let breaker = self.breaker::<Three>("forced");

        let rule = "forced-open-rejects";
        flavor
            .control(&breaker, Op::ForceOpen)
            .await
            .or_broke(rule)?;
        self.expect_state(rule, &breaker, State::ForcedOpen, "after force_open")
            .await?;
        let called = self
            .expect_call(rule, &breaker, Body::Succeed, false, "while forced open")
            .await?;
        self.check(
            rule,
            matches!(called.rejected, Some(Rejection::ForcedOpen)),
            || {
                format!(
                    "a call while forced open was rejected with {:?}",
                    called.rejected
                )
            },
        )?;
        let rule = "forced-open-is-sticky";
        self.wait(RECOVERY + RECOVERY / 4).await;
        self.call_then_expect(
            (Body::Succeed, false),
            rule,
            &breaker,
            "a recovery timeout after force_open",
            State::ForcedOpen,
            "a recovery timeout after force_open",
        )
        .await?;
        let rule = "reset-ends-forced-open";
        flavor.control(&breaker, Op::Reset).await.or_broke(rule)?;
        self.expect_state(rule, &breaker, State::Closed, "after reset")
            .await?;
        self.expect_call(rule, &breaker, Body::Succeed, true, "after reset")
            .await?;

        let rule = "forced-closed-records-nothing";
        flavor
            .control(&breaker, Op::ForceClosed)
            .await
            .or_broke(rule)?;
        for _ in 0..5 {
            self.expect_call(rule, &breaker, Body::Fail, true, "while forced closed")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::ForcedClosed,
            "after five failures while forced closed",
        )
        .await?;
        let rule = "reset-ends-forced-closed";
        flavor.control(&breaker, Op::Reset).await.or_broke(rule)?;
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "after reset")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after reset and two failures",
        )
        .await?;
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "after reset",
            State::Open,
            "after reset and three failures",
        )
        .await?;

        let rule = "reset-closes-an-open-breaker";
        flavor.control(&breaker, Op::Reset).await.or_broke(rule)?;
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after reset of an open breaker",
        )
        .await?;
        self.expect_call(
            rule,
            &breaker,
            Body::Succeed,
            true,
            "after reset of an open breaker",
        )
        .await?;

        let rule = "reset-clears-counts";
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
                .await?;
        }
        flavor.control(&breaker, Op::Reset).await.or_broke(rule)?;
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "after reset")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after F F, reset, F F with threshold 3",
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn trials(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let breaker = self.breaker::<Trials>("trials");
        let trials = Trials::TRIALS as usize;

        let rule = "half-open-admits-exactly-k-trials";
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "while closed",
            State::Open,
            "after a failure with threshold 1",
        )
        .await?;
        self.wait(RECOVERY + RECOVERY / 4).await;
        let callers = self.threads.max(trials + 2);
        let latch = Latch::new(callers);
        let called = flavor.held_calls(&breaker, &latch).await;
        let ran = called.iter().filter(|c| c.ran).count();
        let in_progress = called
            .iter()
            .filter(|c| matches!(c.rejected, Some(Rejection::TrialsInProgress)))
            .count();
        self.check(rule, !latch.timed_out.load(Ordering::Acquire), || {
            "the concurrent callers never all arrived".to_owned()
        })?;
        self.check(
            rule,
            called.len() == callers && ran == trials && in_progress == callers - trials,
            || {
                format!(
                    "{callers} concurrent callers on a half-open breaker with {trials} trials: {ran} ran, {in_progress} were rejected as trials in progress; other rejections: {:?}",
                    called
                        .iter()
                        .filter(|c| !c.ran && !matches!(c.rejected, Some(Rejection::TrialsInProgress)))
                        .map(|c| &c.rejected)
                        .collect::<Vec<_>>()
                )
            },
        )?;
        let rule = "all-trials-succeeding-close";
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after every concurrent trial succeeded",
        )
        .await?;

        let rule = "closing-needs-every-trial";
        self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
            .await?;
        self.wait(RECOVERY + RECOVERY / 4).await;
        for done in 1..trials {
            self.expect_call(rule, &breaker, Body::Succeed, true, "as a trial")
                .await?;
            self.expect_state(
                rule,
                &breaker,
                State::HalfOpen,
                &format!("after {done} of {trials} trials succeeded"),
            )
            .await?;
        }
        let rule = "any-failed-trial-reopens";
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "as the last trial",
            State::Open,
            "after the last trial failed",
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn windows(&mut self) -> Result<(), Failure> {
        let breaker = self.breaker::<Windowed>("windowed");
        let rule = "count-in-window-forgets-after-a-quiet-window";
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
                .await?;
        }
        self.wait(WINDOW + WINDOW / 2).await;
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "after a quiet window",
            State::Closed,
            "F F, a quiet window, F with threshold 3",
        )
        .await?;
        let rule = "count-in-window-trips-at-threshold";
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "while closed",
            State::Closed,
            "after two failures in the window",
        )
        .await?;
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "while closed",
            State::Open,
            "after three failures in the window",
        )
        .await?;

        let breaker = self.breaker::<Rated>("rated");
        let rule = "rate-trips-at-the-failure-share";
        let steps = [
            (Body::Succeed, State::Closed),
            (Body::Succeed, State::Closed),
            (Body::Succeed, State::Closed),
            (Body::Fail, State::Closed),
            (Body::Fail, State::Closed),
            (Body::Fail, State::Open),
        ];
        for (done, (body, expected)) in steps.into_iter().enumerate() {
            self.expect_call(rule, &breaker, body, true, "while closed")
                .await?;
            self.expect_state(
                rule,
                &breaker,
                expected,
                &format!(
                    "after call {} of S S S F F F with rate 0.5, minimum 4 calls",
                    done + 1
                ),
            )
            .await?;
        }
        let breaker = self.breaker::<Rated>("rated-minimum");
        let rule = "rate-waits-for-minimum-calls";
        for done in 1..=3 {
            self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
                .await?;
            self.expect_state(
                rule,
                &breaker,
                State::Closed,
                &format!("after {done} failures, below the minimum of 4 calls"),
            )
            .await?;
        }
        self.call_then_expect(
            (Body::Fail, true),
            rule,
            &breaker,
            "while closed",
            State::Open,
            "after 4 failures in 4 calls",
        )
        .await?;
        Ok(())
    }
}
