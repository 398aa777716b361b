//! The rules (see `rules/mod.rs`) as a pure function of one breaker's row: the row, the time
//! and one operation go in; the new row and the reply come out. SQLite runs it inside the
//! transaction of each operation; the Lua script and the PL/pgSQL function are written to
//! do exactly what it does, field for field, and the differential test holds them to it.
//!
//! Times are microseconds on the storage's clock. A deadline at or before "now" means what
//! it bounds is over, so a row left behind by a dead process expires by itself.

use std::time::Duration;

use crate::handler::State;
use crate::policy::{Backoff, FailurePolicy, Overrides};
use crate::rules::{
    BUCKETS, FORCED_TTL, MAX_REOPENS, jitter_seed, micros, open_for, retention, trips_on_rate,
};
use crate::storage::{Op, Request, Snapshot};

/// Forced open, in [`Row::mode`].
pub(crate) const MODE_FORCED_OPEN: i64 = 1;
/// Forced closed, in [`Row::mode`].
pub(crate) const MODE_FORCED_CLOSED: i64 = 2;

/// One breaker.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Row {
    /// [`MODE_FORCED_OPEN`] or [`MODE_FORCED_CLOSED`] until `mode_until`; 0 otherwise.
    pub(crate) mode: i64,
    pub(crate) mode_until: i64,
    /// Open until then; opened then.
    pub(crate) open_until: i64,
    pub(crate) opened_at: i64,
    /// Tripped (open, then half-open) until then: renewed by every trip.
    pub(crate) tripped_until: i64,
    /// Failures counted while closed, forgotten at `failures_until`.
    pub(crate) failures: i64,
    pub(crate) failures_until: i64,
    /// The half-open round: its id (0 before the first), permits handed out, trials that
    /// succeeded, and when its leases lapse if nothing happens.
    pub(crate) round: i64,
    pub(crate) trials: i64,
    pub(crate) passed: i64,
    pub(crate) round_until: i64,
    /// Failed trial rounds in a row since the breaker last closed (up to
    /// [`MAX_REOPENS`]): the backoff's step.
    pub(crate) reopens: i64,
    /// Rate buckets: (bucket number, calls, failures), slot = number % 10.
    pub(crate) buckets: [(i64, i64, i64); BUCKETS],
    /// The last forcing's audit trail: when (0 if never), by whom and why, as the request
    /// said. Written by `ForceOpen` and `ForceClosed`, cleared with the rest of the row by a
    /// reset, a trip or a close; it means something only while the row is forced.
    pub(crate) forced_at: i64,
    pub(crate) forced_by: Option<String>,
    pub(crate) forced_reason: Option<String>,
    /// An operator's runtime overrides, kept through every transition and a reset.
    pub(crate) overrides: Stored,
    /// Under a quorum: the distinct reporters of the failures counted, (id, until when its
    /// failures count), at most `QUORUM` of them, cleared with the count.
    pub(crate) reporters: Vec<(i64, i64)>,
}

/// Runtime overrides as a row keeps them: 0 for a setting not overridden; recovery in
/// microseconds (whole milliseconds); in force until `until`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Stored {
    pub(crate) threshold: i64,
    pub(crate) recovery: i64,
    pub(crate) trials: i64,
    /// The backoff's factor (0: not overridden; 1: overridden off) and max (µs).
    pub(crate) backoff: f64,
    pub(crate) backoff_max: i64,
    pub(crate) until: i64,
}

impl Stored {
    /// What `request` sets at `now`: nothing at all for [`Overrides::NONE`].
    pub(crate) fn set(overrides: &Overrides, now: i64) -> Stored {
        if overrides.is_none() {
            return Stored::default();
        }
        Stored {
            threshold: overrides.failure_threshold.map_or(0, i64::from),
            recovery: overrides.recovery_timeout.map_or(0, |timeout| {
                timeout.as_millis().min(i64::MAX as u128 / 1000) as i64 * 1000
            }),
            trials: overrides.half_open_trials.map_or(0, i64::from),
            backoff: overrides.backoff.map_or(0.0, |backoff| backoff.factor),
            backoff_max: overrides.backoff.map_or(0, |backoff| {
                backoff.max.as_millis().min(i64::MAX as u128 / 1000) as i64 * 1000
            }),
            until: now + micros(FORCED_TTL),
        }
    }

    /// The overrides in force at `now`, if any.
    pub(crate) fn live(&self, now: i64) -> Option<Overrides> {
        if self.until <= now {
            return None;
        }
        let mut overrides = Overrides::NONE;
        if self.threshold > 0 {
            overrides = overrides.failure_threshold(self.threshold.min(i64::from(u32::MAX)) as u32);
        }
        if self.recovery > 0 {
            overrides = overrides.recovery_timeout(Duration::from_micros(self.recovery as u64));
        }
        if self.trials > 0 {
            overrides = overrides.half_open_trials(self.trials.min(i64::from(u32::MAX)) as u32);
        }
        if self.backoff > 0.0 {
            overrides = overrides.backoff(Backoff::exponential(
                self.backoff,
                Duration::from_micros(self.backoff_max.max(0) as u64),
            ));
        }
        Some(overrides)
    }
}

/// What an operation does to the stored row.
#[derive(Debug, PartialEq)]
pub(crate) enum Change {
    /// Nothing to write.
    Keep,
    /// Write the row back, to expire at the given time.
    Write { expires_at: i64 },
    /// Delete the row (a closed breaker with nothing counted).
    Delete,
}

fn bucket_width(window: Duration) -> i64 {
    (micros(window) / BUCKETS as i64).max(1)
}

impl Row {
    /// The state at `now`.
    pub(crate) fn state(&self, now: i64) -> State {
        if self.mode_until > now {
            match self.mode {
                MODE_FORCED_OPEN => return State::ForcedOpen,
                MODE_FORCED_CLOSED => return State::ForcedClosed,
                _ => {}
            }
        }
        if self.open_until > now {
            State::Open
        } else if self.tripped_until > now {
            State::HalfOpen
        } else {
            State::Closed
        }
    }

    pub(crate) fn live_failures(&self, now: i64) -> i64 {
        if self.failures_until > now {
            self.failures
        } else {
            0
        }
    }

    fn snapshot(&self, state: State, now: i64) -> Snapshot {
        match state {
            State::Open => Snapshot::open(
                Duration::from_micros((self.open_until - now).max(0) as u64),
                Some(Duration::from_micros((now - self.opened_at).max(0) as u64)),
            ),
            State::HalfOpen => Snapshot::half_open(false),
            State::Closed => Snapshot::closed(self.live_failures(now).max(0) as u64),
            forced => Snapshot::forced(forced),
        }
    }

    /// When the row can go: the last of its deadlines, and of its rate buckets.
    fn expires_at(&self, policy: FailurePolicy) -> i64 {
        let mut last = [
            if self.mode != 0 { self.mode_until } else { 0 },
            self.open_until,
            self.tripped_until,
            self.failures_until,
            self.round_until,
            self.overrides.until,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if let FailurePolicy::Rate { window, .. } = policy {
            let width = bucket_width(window);
            for &(bucket, calls, _) in &self.buckets {
                if calls > 0 {
                    last = last.max((bucket + 1).saturating_mul(width) + micros(window));
                }
            }
        }
        last
    }

    /// Opens for `open` after `reopens` failed trial rounds in a row.
    fn trip(&mut self, now: i64, open: i64, retention: i64, reopens: i64) {
        *self = Row {
            open_until: now + open,
            opened_at: now,
            tripped_until: now + open.max(retention),
            reopens,
            // Kept, so that a later round never reuses an id.
            round: self.round,
            ..Row::default()
        };
    }

    /// Starts a new half-open round with its first permit handed out.
    fn new_round(&mut self, now: i64, recovery: i64) {
        self.round = now.max(self.round + 1);
        self.trials = 1;
        self.passed = 0;
        self.round_until = now + recovery;
    }

    /// Under a quorum: `reporter` reported a failure that counts until `until`. Reporters
    /// whose failures no longer count are forgotten first; a new one is remembered while
    /// fewer than `QUORUM` are (past that the quorum is met, whoever else reports). The
    /// counting policies' failures count as long as the count does, so every reporter
    /// takes the count's expiry; the rate policy's as long as their bucket is in the window.
    fn report(&mut self, reporter: i64, now: i64, until: i64, config: &crate::policy::Config) {
        self.reporters.retain(|&(_, lapses)| lapses > now);
        let shared = !matches!(config.policy, FailurePolicy::Rate { .. });
        if shared {
            for entry in &mut self.reporters {
                entry.1 = until;
            }
        }
        let room = self.reporters.len() < config.quorum as usize;
        match self.reporters.iter_mut().find(|(id, _)| *id == reporter) {
            Some(entry) => entry.1 = until,
            None if room => self.reporters.push((reporter, until)),
            None => {}
        }
    }

    /// Records a call in the current rate bucket; the calls and failures in the window.
    fn record_rate(&mut self, now: i64, window: Duration, calls: i64, failed: bool) -> (u64, u64) {
        let width = bucket_width(window);
        let current = now / width;
        let slot = &mut self.buckets[(current % BUCKETS as i64) as usize];
        if slot.0 != current {
            *slot = (current, 0, 0);
        }
        slot.1 += calls;
        slot.2 += i64::from(failed);
        let oldest = current - (BUCKETS as i64 - 1);
        self.buckets
            .iter()
            .filter(|bucket| bucket.0 >= oldest && bucket.0 <= current)
            .fold((0, 0), |(calls, failures), bucket| {
                (
                    calls + bucket.1.max(0) as u64,
                    failures + bucket.2.max(0) as u64,
                )
            })
    }
}

/// One operation on one breaker's row: the new row (as a change to store) and the reply.
pub(crate) fn apply(row: &mut Row, now: i64, request: &Request<'_>) -> (Change, Snapshot) {
    // Runtime overrides in force: kept through whatever this operation does (an override
    // replaces them), and decided by from here on.
    let kept = match row.overrides.live(now) {
        Some(_) => row.overrides,
        None => Stored::default(),
    };
    let overridden = kept
        .live(now)
        .map(|overrides| overrides.applied_to(request.config));
    let config = overridden.as_ref().unwrap_or(request.config);
    let recovery = micros(config.recovery_timeout);
    let retention = micros(retention(config));
    let trials = i64::from(config.half_open_trials);
    let state = row.state(now);
    // Whether the outcome belongs to the current round (an outcome without a round does),
    // and the round is not over.
    let this_round =
        request.round.is_none_or(|round| round as i64 == row.round) && row.round_until > now;
    let (changed, snapshot) = match (request.op, state) {
        (Op::ForceOpen | Op::ForceClosed, _) => {
            let (mode, forced) = if request.op == Op::ForceOpen {
                (MODE_FORCED_OPEN, State::ForcedOpen)
            } else {
                (MODE_FORCED_CLOSED, State::ForcedClosed)
            };
            *row = Row {
                mode,
                mode_until: now + micros(FORCED_TTL),
                round: row.round,
                forced_at: now,
                forced_by: request.audit.actor.map(str::to_owned),
                forced_reason: request.audit.reason.map(str::to_owned),
                ..Row::default()
            };
            (true, Snapshot::forced(forced))
        }
        (Op::Reset, _) => {
            *row = Row {
                overrides: kept,
                ..Row::default()
            };
            return if kept.until > now {
                (
                    Change::Write {
                        expires_at: row.expires_at(config.policy),
                    },
                    Snapshot::closed(0),
                )
            } else {
                (Change::Delete, Snapshot::closed(0))
            };
        }
        (Op::Override, state) => {
            row.overrides = Stored::set(&request.overrides, now);
            // Whatever the row held, it is written back with the new overrides (or without).
            let snapshot = row.snapshot(state, now);
            let expires_at = row.expires_at(config.policy);
            return if expires_at <= now {
                (Change::Delete, snapshot)
            } else {
                (Change::Write { expires_at }, snapshot)
            };
        }
        (Op::Success, State::Closed) => match config.policy {
            FailurePolicy::Consecutive if row.live_failures(now) != 0 => {
                row.failures = 0;
                row.failures_until = 0;
                row.reporters.clear();
                (true, Snapshot::closed(0))
            }
            FailurePolicy::Rate { window, .. } => {
                let count = request.count.min(i64::MAX as u64) as i64;
                let failures = row.record_rate(now, window, count, false).1;
                (true, Snapshot::closed(failures))
            }
            _ => (false, row.snapshot(State::Closed, now)),
        },
        (Op::Failure, State::Closed) => {
            let (trips, failures) = match config.policy {
                FailurePolicy::Consecutive => {
                    row.failures = row.live_failures(now) + 1;
                    row.failures_until = now + retention;
                    (
                        row.failures >= i64::from(config.failure_threshold),
                        row.failures,
                    )
                }
                FailurePolicy::CountInWindow { window } => {
                    row.failures = row.live_failures(now) + 1;
                    row.failures_until = now + micros(window);
                    (
                        row.failures >= i64::from(config.failure_threshold),
                        row.failures,
                    )
                }
                FailurePolicy::Rate {
                    rate,
                    window,
                    minimum_calls,
                } => {
                    let (calls, failures) = row.record_rate(now, window, 1, true);
                    (
                        trips_on_rate(calls, failures, rate, minimum_calls),
                        failures as i64,
                    )
                }
            };
            let trips = if config.quorum > 1 {
                let until = match config.policy {
                    FailurePolicy::Rate { window, .. } => {
                        let width = bucket_width(window);
                        (now / width + BUCKETS as i64).saturating_mul(width)
                    }
                    _ => row.failures_until,
                };
                row.report(request.reporter_id() as i64, now, until, config);
                trips && row.reporters.len() >= config.quorum as usize
            } else {
                trips
            };
            if trips {
                let open = micros(open_for(
                    config,
                    0,
                    jitter_seed(request.key),
                    now.max(0) as u64 / 1000,
                ));
                row.trip(now, open, retention, 0);
                (true, row.snapshot(State::Open, now))
            } else {
                (true, Snapshot::closed(failures.max(0) as u64))
            }
        }
        (Op::AcquireTrial, State::HalfOpen) => {
            // The first caller after the open period, or a round in which nothing happened
            // for a recovery timeout: a new round begins.
            if row.round_until <= now {
                row.new_round(now, recovery);
                (true, Snapshot::trial(row.round as u64))
            } else if row.trials < trials {
                row.trials += 1;
                row.round_until = now + recovery;
                (true, Snapshot::trial(row.round as u64))
            } else {
                (false, Snapshot::half_open(false))
            }
        }
        (Op::TrialSuccess, State::HalfOpen) if this_round => {
            row.passed += 1;
            if row.passed >= trials {
                *row = Row {
                    round: row.round,
                    ..Row::default()
                };
                (true, Snapshot::closed(0))
            } else {
                row.round_until = now + recovery;
                (true, Snapshot::half_open(false))
            }
        }
        (Op::TrialFailure, State::HalfOpen) if this_round => {
            let reopens = (row.reopens.max(0) as u64 + 1).min(MAX_REOPENS);
            let open = micros(open_for(
                config,
                reopens,
                jitter_seed(request.key),
                now.max(0) as u64 / 1000,
            ));
            row.trip(now, open, retention, reopens as i64);
            (true, row.snapshot(State::Open, now))
        }
        (Op::ReleaseTrial, State::HalfOpen) if this_round && row.trials > 0 => {
            row.trials -= 1;
            row.round_until = now + recovery;
            (true, Snapshot::half_open(false))
        }
        // Reads, and outcomes that arrive after the state moved on, change nothing.
        (_, state) => (false, row.snapshot(state, now)),
    };
    row.overrides = kept;
    let change = if !changed {
        Change::Keep
    } else {
        let expires_at = row.expires_at(config.policy);
        if expires_at <= now {
            Change::Delete
        } else {
            Change::Write { expires_at }
        }
    };
    (change, snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Config, OnStorageFailure};

    const SECOND: i64 = 1_000_000;

    fn config(trials: u32) -> Config {
        Config {
            failure_threshold: 2,
            recovery_timeout: Duration::from_secs(10),
            key: "k",
            half_open_trials: trials,
            policy: FailurePolicy::Consecutive,
            slow_call_threshold: None,
            on_storage_failure: OnStorageFailure::Allow,
            storage_timeout: Duration::from_millis(50),
            key_prefix: "p",
            sync_interval: None,
            backoff: crate::policy::Backoff::OFF,
            recovery_jitter: 0.0,
            quorum: 1,
        }
    }

    fn run(row: &mut Row, now: i64, op: Op, round: Option<u64>, config: &Config) -> Snapshot {
        let mut request = Request::new("k", op, config);
        request.round = round;
        apply(row, now, &request).1
    }

    #[test]
    fn a_round_lapses_when_nothing_happened_in_it_for_a_recovery_timeout() {
        let config = config(2);
        let mut row = Row::default();
        run(&mut row, 0, Op::Failure, None, &config);
        run(&mut row, 0, Op::Failure, None, &config);
        assert_eq!(row.state(SECOND), State::Open);
        let first = run(&mut row, 11 * SECOND, Op::AcquireTrial, None, &config);
        assert!(first.permit);
        // Within a recovery timeout of the last event: the same round.
        let second = run(&mut row, 20 * SECOND, Op::AcquireTrial, None, &config);
        assert_eq!(second.round, first.round);
        // Idle for a recovery timeout: the next caller starts a new round.
        let third = run(&mut row, 31 * SECOND, Op::AcquireTrial, None, &config);
        assert!(third.permit && third.round != first.round);
        // The old round's successes change nothing.
        run(
            &mut row,
            38 * SECOND,
            Op::TrialSuccess,
            Some(first.round),
            &config,
        );
        run(
            &mut row,
            38 * SECOND,
            Op::TrialSuccess,
            Some(first.round),
            &config,
        );
        assert_eq!(row.state(38 * SECOND), State::HalfOpen);
        assert_eq!(row.passed, 0);
    }

    #[test]
    fn forcing_records_who_why_and_when_and_a_reset_forgets_it() {
        let config = config(1);
        let mut row = Row::default();
        let audit = crate::Audit::by("alice").because("failover drill");
        let request = Request::new("k", Op::ForceOpen, &config).with_audit(audit);
        apply(&mut row, 5 * SECOND, &request);
        assert_eq!(row.state(6 * SECOND), State::ForcedOpen);
        assert_eq!(row.forced_at, 5 * SECOND);
        assert_eq!(row.forced_by.as_deref(), Some("alice"));
        assert_eq!(row.forced_reason.as_deref(), Some("failover drill"));
        // Forcing again without an actor replaces the trail.
        run(&mut row, 7 * SECOND, Op::ForceClosed, None, &config);
        assert_eq!(
            (row.forced_at, row.forced_by.as_deref()),
            (7 * SECOND, None)
        );
        run(&mut row, 8 * SECOND, Op::Reset, None, &config);
        assert_eq!(row, Row::default());
    }

    #[test]
    fn a_released_permit_is_handed_out_again() {
        let config = config(1);
        let mut row = Row::default();
        run(&mut row, 0, Op::Failure, None, &config);
        run(&mut row, 0, Op::Failure, None, &config);
        let trial = run(&mut row, 11 * SECOND, Op::AcquireTrial, None, &config);
        assert!(!run(&mut row, 11 * SECOND, Op::AcquireTrial, None, &config).permit);
        run(
            &mut row,
            11 * SECOND,
            Op::ReleaseTrial,
            Some(trial.round),
            &config,
        );
        let again = run(&mut row, 11 * SECOND, Op::AcquireTrial, None, &config);
        assert!(again.permit);
        assert_eq!(again.round, trial.round);
    }
}
