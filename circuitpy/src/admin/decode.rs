//! The one decoder from what a shared storage holds to a [`BreakerInfo`], and what the
//! shared storages' admin operations share.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BreakerInfo, Forced, RateWindow};
use crate::handler::State;
use crate::policy::{Config, FailurePolicy, OnStorageFailure};
use crate::rules::BUCKETS;
use crate::rules::row::Row;

/// How long an admin operation on a shared storage may take (a listing: each of its round
/// trips).
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A prefix that lives as long as the process: [`Config`] holds `&'static str`. Each
/// distinct prefix is kept once, so an admin session leaks nothing per call.
pub(crate) fn intern(prefix: &str) -> &'static str {
    static PREFIXES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut prefixes = PREFIXES.lock().unwrap_or_else(PoisonError::into_inner);
    let prefixes = prefixes.get_or_insert_with(HashSet::new);
    if let Some(&kept) = prefixes.get(prefix) {
        return kept;
    }
    let kept: &'static str = Box::leak(prefix.to_owned().into_boxed_str());
    prefixes.insert(kept);
    kept
}

/// The configuration an admin operation carries: forcing and resetting read none of it but
/// the prefix and the timeout.
pub(crate) fn config(prefix: &str) -> Config {
    Config {
        failure_threshold: 1,
        recovery_timeout: Duration::from_secs(1),
        key: "admin",
        half_open_trials: 1,
        policy: FailurePolicy::Consecutive,
        slow_call_threshold: None,
        on_storage_failure: OnStorageFailure::Allow,
        storage_timeout: ADMIN_TIMEOUT,
        key_prefix: intern(prefix),
        sync_interval: None,
        backoff: crate::policy::Backoff::OFF,
        recovery_jitter: 0.0,
        quorum: 1,
    }
}

/// The breaker key in a storage key `{prefix}:{key}` followed by `suffix`, if it is one.
pub(crate) fn breaker_key<'a>(prefix: &str, stored: &'a str, suffix: &str) -> Option<&'a str> {
    stored
        .strip_prefix(prefix)?
        .strip_prefix(":{")?
        .strip_suffix(suffix)?
        .strip_suffix('}')
        .filter(|key| !key.is_empty())
}

pub(crate) fn time_of_micros(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64)
}

/// The one decoder: a breaker's row (SQL rows as stored; Redis hashes mapped to it) at
/// `now`, in microseconds on the storage's clock, to what an operator sees. `expires_at`
/// is when the storage forgets it.
pub(crate) fn describe(key: &str, row: &Row, now: i64, expires_at: Option<i64>) -> BreakerInfo {
    let state = row.state(now);
    let mut info = BreakerInfo {
        key: key.to_owned(),
        state,
        failures: 0,
        window: None,
        opened_at: None,
        next_trial_at: None,
        round: None,
        permits_out: 0,
        trials_passed: 0,
        failed_rounds: match state {
            State::Open | State::HalfOpen => row.reopens.max(0) as u64,
            _ => 0,
        },
        reporters: if state == State::Closed {
            row.reporters
                .iter()
                .filter(|&&(_, until)| until > now)
                .count() as u64
        } else {
            0
        },
        forced: None,
        overrides: row.overrides.live(now),
        expires_in: expires_at
            .filter(|&at| at > now)
            .map(|at| Duration::from_micros((at - now) as u64)),
        now: time_of_micros(now),
    };
    match state {
        State::Closed => {
            let newest = row
                .buckets
                .iter()
                .filter(|bucket| bucket.1 > 0)
                .map(|bucket| bucket.0)
                .max();
            if let Some(newest) = newest {
                let (calls, failures) = row
                    .buckets
                    .iter()
                    .filter(|bucket| bucket.1 > 0 && bucket.0 > newest - BUCKETS as i64)
                    .fold((0u64, 0u64), |(calls, failures), bucket| {
                        (calls + bucket.1 as u64, failures + bucket.2.max(0) as u64)
                    });
                info.window = Some(RateWindow { calls, failures });
                info.failures = failures;
            } else {
                info.failures = row.live_failures(now).max(0) as u64;
            }
        }
        State::Open => {
            info.opened_at = (row.opened_at > 0).then(|| time_of_micros(row.opened_at));
            info.next_trial_at = Some(time_of_micros(row.open_until));
        }
        State::HalfOpen => {
            info.opened_at = (row.opened_at > 0).then(|| time_of_micros(row.opened_at));
            if row.round_until > now && row.round > 0 {
                info.round = Some(row.round as u64);
                info.permits_out = row.trials.max(0) as u64;
                info.trials_passed = row.passed.max(0) as u64;
            }
        }
        State::ForcedOpen | State::ForcedClosed => {
            info.forced = Some(Forced {
                at: (row.forced_at > 0).then(|| time_of_micros(row.forced_at)),
                by: row.forced_by.clone(),
                reason: row.forced_reason.clone(),
            });
        }
    }
    info
}

/// A Redis breaker hash as the row: every field validated as the script validates it.
/// `now` and `ttl` are the server's, in milliseconds; a hash without an expiry was not
/// written by circuitpy.
#[cfg(any(feature = "redis", test))]
pub(crate) fn row_of_hash(
    key: &str,
    fields: &[(Vec<u8>, Vec<u8>)],
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Row, crate::error::StorageError> {
    let invalid = |detail: String| crate::error::StorageError::invalid_data(key, detail);
    let mut counts = std::collections::HashMap::new();
    let mut row = Row::default();
    for (field, value) in fields {
        let field = String::from_utf8_lossy(field);
        let shown = || {
            String::from_utf8_lossy(value)
                .chars()
                .take(40)
                .collect::<String>()
        };
        match &*field {
            // The backoff's factor is the one field that is not a count.
            "xb" => {
                let factor = std::str::from_utf8(value)
                    .ok()
                    .filter(|text| text.len() <= 32)
                    .and_then(|text| text.parse::<f64>().ok())
                    .filter(|factor| factor.is_finite() && *factor >= 0.0)
                    .ok_or_else(|| invalid(format!("field xb holds {:?}", shown())))?;
                row.overrides.backoff = factor;
            }
            "fb" | "fr" => {
                let text = std::str::from_utf8(value)
                    .ok()
                    .filter(|text| text.len() <= super::MAX_AUDIT_BYTES)
                    .ok_or_else(|| invalid(format!("field {field} holds {:?}", shown())))?;
                if field == "fb" {
                    row.forced_by = Some(text.to_owned());
                } else {
                    row.forced_reason = Some(text.to_owned());
                }
            }
            name => {
                let known = matches!(
                    name,
                    "s" | "f"
                        | "l"
                        | "o"
                        | "d"
                        | "a"
                        | "r"
                        | "p"
                        | "k"
                        | "t"
                        | "w"
                        | "fa"
                        | "n"
                        | "xt"
                        | "xr"
                        | "xh"
                        | "xu"
                        | "xm"
                ) || (name.len() == 2
                    && name.starts_with(['b', 'c', 'e'])
                    && name.as_bytes()[1].is_ascii_digit())
                    || reporter_field(name);
                if !known {
                    return Err(invalid(format!(
                        "unknown field {}",
                        name.chars().take(40).collect::<String>()
                    )));
                }
                let count = std::str::from_utf8(value)
                    .ok()
                    .filter(|text| text.len() <= 15 && text.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| {
                        invalid(format!("field {name} holds {}, expected a count", shown()))
                    })?;
                counts.insert(name.to_owned(), count);
            }
        }
    }
    if fields.is_empty() {
        return Ok(row);
    }
    if ttl_ms < 0 {
        return Err(invalid(
            "the hash has no expiry, so circuitpy did not write it".into(),
        ));
    }
    let us = |ms: i64| ms.saturating_mul(1000);
    let get = |name: &str| counts.get(name).copied();
    let expires = us(now_ms + ttl_ms);
    let state = get("s").unwrap_or(0);
    row.round = get("r").unwrap_or(0);
    row.reopens = get("n").unwrap_or(0);
    row.overrides = crate::rules::row::Stored {
        threshold: get("xt").unwrap_or(0),
        recovery: get("xr").map_or(0, us),
        trials: get("xh").unwrap_or(0),
        backoff: row.overrides.backoff,
        backoff_max: get("xm").map_or(0, us),
        until: get("xu").map_or(0, us),
    };
    match state {
        0 => {
            row.failures = get("f").unwrap_or(0);
            row.failures_until = if row.failures > 0 { expires } else { 0 };
            for slot in 0..BUCKETS {
                if let (Some(bucket), Some(calls)) =
                    (get(&format!("b{slot}")), get(&format!("c{slot}")))
                {
                    row.buckets[slot] = (bucket, calls, get(&format!("e{slot}")).unwrap_or(0));
                }
            }
            for n in 0..crate::MAX_QUORUM {
                if let (Some(id), Some(until)) = (get(&format!("q{n}")), get(&format!("u{n}"))) {
                    row.reporters.push((id, us(until)));
                }
            }
        }
        1 => {
            let (Some(opened), Some(deadline)) = (get("o"), get("d")) else {
                return Err(invalid("an open breaker without its deadline".into()));
            };
            row.opened_at = us(opened);
            row.open_until = us(deadline);
            row.tripped_until = expires;
        }
        2 => {
            let (Some(_), Some(permits), Some(passed), Some(_)) =
                (get("r"), get("p"), get("k"), get("t"))
            else {
                return Err(invalid("a half-open breaker without its round".into()));
            };
            row.opened_at = get("a").map_or(0, us);
            row.tripped_until = expires;
            row.trials = permits;
            row.passed = passed;
            // The round's lease is the script's business (it needs the recovery timeout);
            // a stored round is shown as under way.
            row.round_until = expires;
        }
        3 | 4 => {
            row.mode = if state == 3 {
                crate::rules::row::MODE_FORCED_OPEN
            } else {
                crate::rules::row::MODE_FORCED_CLOSED
            };
            row.mode_until = expires;
            row.forced_at = get("fa").map_or(0, us);
        }
        other => return Err(invalid(format!("unknown state {other}"))),
    }
    Ok(row)
}

/// A quorum's reporter fields, `q0` to `q15` and `u0` to `u15`, spelled as the script
/// writes them (no sign, no leading zero).
#[cfg(any(feature = "redis", test))]
fn reporter_field(name: &str) -> bool {
    name.strip_prefix(['q', 'u'])
        .and_then(|n| {
            n.parse::<u32>()
                .ok()
                .filter(|&n| n.to_string() == name[1..])
        })
        .is_some_and(|n| n < crate::MAX_QUORUM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StorageError;

    fn hash(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn reporter_fields_are_the_ones_the_script_writes() {
        for name in ["q0", "u9", "q10", "u15"] {
            assert!(reporter_field(name), "{name}");
        }
        for name in ["q16", "q01", "q+1", "u", "x3", "q1a"] {
            assert!(!reporter_field(name), "{name}");
        }
    }

    #[test]
    fn redis_hashes_decode_to_each_state() {
        let now = 10_000;
        let closed = row_of_hash("k", &hash(&[("s", "0"), ("f", "2")]), now, 5_000).unwrap();
        let info = describe("k", &closed, now * 1000, None);
        assert_eq!((info.state, info.failures), (State::Closed, 2));

        let open = row_of_hash(
            "k",
            &hash(&[("s", "1"), ("o", "9000"), ("d", "12000")]),
            now,
            5_000,
        )
        .unwrap();
        let info = describe("k", &open, now * 1000, Some((now + 5_000) * 1000));
        assert_eq!(info.state, State::Open);
        assert_eq!(info.next_trial_at, Some(time_of_micros(12_000_000)));
        assert_eq!(info.expires_in, Some(Duration::from_secs(5)));

        let half = [
            ("s", "2"),
            ("r", "9500"),
            ("p", "1"),
            ("k", "0"),
            ("t", "9500"),
        ];
        let info = describe(
            "k",
            &row_of_hash("k", &hash(&half), now, 5_000).unwrap(),
            now * 1000,
            None,
        );
        assert_eq!(
            (info.state, info.permits_out, info.round),
            (State::HalfOpen, 1, Some(9500))
        );

        let forced = [("s", "3"), ("fa", "9000"), ("fb", "alice"), ("fr", "drill")];
        let info = describe(
            "k",
            &row_of_hash("k", &hash(&forced), now, 5_000).unwrap(),
            now * 1000,
            None,
        );
        assert_eq!(info.state, State::ForcedOpen);
        let forced = info.forced.unwrap();
        assert_eq!(forced.by.as_deref(), Some("alice"));
        assert_eq!(forced.at, Some(time_of_micros(9_000_000)));
    }

    #[test]
    fn foreign_hashes_are_invalid_data_not_panics() {
        for bad in [
            hash(&[("name", "x")]),
            hash(&[("s", "abc")]),
            hash(&[("s", "9")]),
            hash(&[("s", "1")]),
            hash(&[("s", "-1")]),
        ] {
            let error = row_of_hash("p:{k}:state", &bad, 0, 1_000).unwrap_err();
            assert!(matches!(error, StorageError::InvalidData { .. }), "{error}");
        }
        assert!(row_of_hash("k", &hash(&[("s", "0"), ("f", "1")]), 0, -1).is_err());
    }

    #[test]
    fn breaker_keys_come_out_of_storage_keys() {
        assert_eq!(
            breaker_key("app", "app:{payments:eu}:state", ":state"),
            Some("payments:eu")
        );
        assert_eq!(breaker_key("app", "app:{payments}", ""), Some("payments"));
        assert_eq!(breaker_key("app", "apps:{payments}", ""), None);
        assert_eq!(breaker_key("app", "app:{}", ""), None);
    }

    #[test]
    fn audits_are_bounded() {
        let long = "é".repeat(129);
        let error = crate::Audit::NONE.because(&long).check().unwrap_err();
        assert!(error.to_string().contains("reason is 258 bytes"), "{error}");
    }
}
