//! The three primitives: counts, expiries, atomicity.

use std::time::Duration;

use super::super::kit::*;
use super::super::{Failure, LONG, RECOVERY};

impl<F: Flavor> Run<'_, F> {
    pub(crate) async fn primitives(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let ttl = RECOVERY;

        let rule = "get-count-of-absent-key-is-zero";
        let count = flavor
            .get_count(&self.key("p:count"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 0, || format!("get_count returned {count}"))?;

        let rule = "increment-counts-from-one";
        for expected in 1..=3 {
            let got = flavor
                .increment(&self.key("p:count"), LONG)
                .await
                .or_broke(rule)?;
            self.check(rule, got == expected, || {
                format!("increment number {expected} of a new key returned {got}")
            })?;
        }
        let rule = "get-count-reads-the-count";
        let count = flavor
            .get_count(&self.key("p:count"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 3, || {
            format!("after three increments get_count returned {count}")
        })?;

        // Keys whose expiry is checked after one common wait.
        let rule = "increment-creates-with-expiry";
        flavor
            .increment(&self.key("p:expiry"), ttl)
            .await
            .or_broke(rule)?;
        let rule = "increment-keeps-existing-expiry";
        flavor
            .increment(&self.key("p:keep"), ttl)
            .await
            .or_broke(rule)?;
        flavor
            .increment(&self.key("p:keep"), LONG)
            .await
            .or_broke(rule)?;
        let rule = "expire-after-renews";
        flavor
            .increment(&self.key("p:renew"), ttl)
            .await
            .or_broke(rule)?;
        flavor
            .expire_after(&self.key("p:renew"), LONG)
            .await
            .or_broke(rule)?;
        let rule = "expire-after-shortens";
        flavor
            .increment(&self.key("p:shorten"), LONG)
            .await
            .or_broke(rule)?;
        flavor
            .expire_after(&self.key("p:shorten"), ttl)
            .await
            .or_broke(rule)?;
        let rule = "keys-live-until-their-expiry";
        for name in ["p:expiry", "p:keep", "p:shorten"] {
            let count = flavor.get_count(&self.key(name)).await.or_broke(rule)?;
            self.check(rule, count >= 1, || {
                format!("key {name} read {count} right after it was written with a {ttl:?} ttl")
            })?;
        }

        self.wait(ttl + ttl / 2).await;

        let rule = "increment-creates-with-expiry";
        let count = flavor
            .get_count(&self.key("p:expiry"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!(
                "a key created by increment with a {ttl:?} ttl still read {count} after {:?}",
                ttl + ttl / 2
            )
        })?;
        let rule = "expired-key-counts-from-one";
        let got = flavor
            .increment(&self.key("p:expiry"), LONG)
            .await
            .or_broke(rule)?;
        self.check(rule, got == 1, || {
            format!("increment of an expired key returned {got}")
        })?;
        let rule = "increment-keeps-existing-expiry";
        let count = flavor.get_count(&self.key("p:keep")).await.or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!(
                "a key created with a {ttl:?} ttl and incremented again with a longer one still read {count} after {:?}: the second increment moved its expiry",
                ttl + ttl / 2
            )
        })?;
        let rule = "expire-after-renews";
        let count = flavor
            .get_count(&self.key("p:renew"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 1, || {
            format!("a key renewed by expire_after read {count} after its first ttl had passed")
        })?;
        let rule = "expire-after-shortens";
        let count = flavor
            .get_count(&self.key("p:shorten"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!("a key given a {ttl:?} expiry by expire_after still read {count} after it")
        })?;

        let rule = "zero-ttl-deletes";
        let key = self.key("p:delete");
        flavor.increment(&key, LONG).await.or_broke(rule)?;
        flavor.increment(&key, LONG).await.or_broke(rule)?;
        flavor
            .expire_after(&key, Duration::ZERO)
            .await
            .or_broke(rule)?;
        let count = flavor.get_count(&key).await.or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!("after expire_after with a zero ttl get_count returned {count}")
        })?;
        let got = flavor.increment(&key, LONG).await.or_broke(rule)?;
        self.check(rule, got == 1, || {
            format!("increment after a delete returned {got}")
        })?;

        let rule = "expire-after-creates-nothing";
        let key = self.key("p:absent");
        flavor.expire_after(&key, LONG).await.or_broke(rule)?;
        let count = flavor.get_count(&key).await.or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!("expire_after on an absent key made get_count return {count}")
        })?;

        let rule = "increment-is-atomic";
        let key = self.key("p:atomic");
        let each = 25;
        let results = flavor.increments(&key, self.threads, each).await;
        let mut seen = Vec::with_capacity(results.len());
        for result in results {
            seen.push(result.or_broke(rule)?);
        }
        seen.sort_unstable();
        let total = (self.threads * each) as u64;
        let expected: Vec<u64> = (1..=total).collect();
        self.check(rule, seen == expected, || {
            let mut duplicates = seen.clone();
            duplicates.dedup();
            format!(
                "{} concurrent increments returned {} distinct values (largest {:?}); each must return a different count from 1 to {total}",
                total,
                duplicates.len(),
                seen.last()
            )
        })?;
        let count = flavor.get_count(&key).await.or_broke(rule)?;
        self.check(rule, count == total, || {
            format!("after {total} concurrent increments get_count returned {count}")
        })?;
        Ok(())
    }
}
