//! Expiries measured in days: checked when the kit drives the storage's clock.

use std::time::Duration;

use super::super::Failure;
use super::super::kit::*;
use crate::handler::State;

const HOUR: Duration = Duration::from_secs(3600);

impl<F: Flavor> Run<'_, F> {
    /// A day passes in these checks: they run only when the kit moves the storage's clock.
    pub(crate) async fn expiries(&mut self) -> Result<(), Failure> {
        if self.clock.is_none() {
            return Ok(());
        }

        let rule = "a-dependency-down-for-days-keeps-the-breaker-open";
        let breaker = self.breaker::<Three>("long-outage");
        for _ in 0..Three::THRESHOLD {
            self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
                .await?;
        }
        // Thirty hours of failing trials, one an hour: more than the trip marker's day.
        for hour in 1..=30 {
            self.wait(HOUR).await;
            self.expect_call(
                rule,
                &breaker,
                Body::Fail,
                true,
                &format!("as the trial of hour {hour}"),
            )
            .await?;
            self.expect_call(
                rule,
                &breaker,
                Body::Succeed,
                false,
                &format!("right after the failed trial of hour {hour}"),
            )
            .await?;
        }

        let rule = "a-failure-count-lives-from-the-last-failure";
        let breaker = self.breaker::<Three>("slow-failures");
        self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
            .await?;
        self.wait(23 * HOUR).await;
        self.expect_call(rule, &breaker, Body::Fail, true, "23 hours later")
            .await?;
        self.wait(2 * HOUR).await;
        self.expect_call(rule, &breaker, Body::Fail, true, "2 hours later")
            .await?;
        self.expect_state(
            rule,
            &breaker,
            State::Open,
            "three failures, each within a day of the one before",
        )
        .await?;
        Ok(())
    }
}
