//! What the commands print: a table for people (coloured on a terminal), JSON for scripts.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use circuitpy::admin::{BreakerInfo, Forced, Listing, rfc3339};
use circuitpy::{Overrides, State};
use serde::Serialize;

/// A breaker as `--json` prints it: times in RFC 3339 (UTC), durations in milliseconds.
#[derive(Serialize)]
pub(crate) struct BreakerJson<'a> {
    key: &'a str,
    state: &'static str,
    failures: u64,
    window: Option<WindowJson>,
    opened_at: Option<String>,
    next_trial_at: Option<String>,
    round: Option<u64>,
    permits_out: u64,
    trials_passed: u64,
    failed_rounds: u64,
    reporters: u64,
    forced: Option<ForcedJson<'a>>,
    overrides: Option<OverridesJson>,
    expires_in_ms: Option<u128>,
    now: String,
}

#[derive(Serialize)]
struct OverridesJson {
    failure_threshold: Option<u32>,
    recovery_timeout_ms: Option<u128>,
    half_open_trials: Option<u32>,
    backoff_factor: Option<f64>,
    backoff_max_ms: Option<u128>,
}

#[derive(Serialize)]
struct WindowJson {
    calls: u64,
    failures: u64,
}

#[derive(Serialize)]
struct ForcedJson<'a> {
    at: Option<String>,
    by: Option<&'a str>,
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ListingJson<'a> {
    prefix: &'a str,
    breakers: Vec<BreakerJson<'a>>,
    invalid: Vec<String>,
}

fn time(time: Option<SystemTime>) -> Option<String> {
    time.map(|time| rfc3339(time).to_string())
}

pub(crate) fn breaker(info: &BreakerInfo) -> BreakerJson<'_> {
    BreakerJson {
        key: &info.key,
        state: info.state.name(),
        failures: info.failures,
        window: info.window.map(|window| WindowJson {
            calls: window.calls,
            failures: window.failures,
        }),
        opened_at: time(info.opened_at),
        next_trial_at: time(info.next_trial_at),
        round: info.round,
        permits_out: info.permits_out,
        trials_passed: info.trials_passed,
        failed_rounds: info.failed_rounds,
        reporters: info.reporters,
        overrides: info.overrides.map(|overrides| OverridesJson {
            failure_threshold: overrides.failure_threshold,
            recovery_timeout_ms: overrides
                .recovery_timeout
                .map(|timeout| timeout.as_millis()),
            half_open_trials: overrides.half_open_trials,
            backoff_factor: overrides.backoff.map(|backoff| backoff.factor),
            backoff_max_ms: overrides.backoff.map(|backoff| backoff.max.as_millis()),
        }),
        forced: info.forced.as_ref().map(|forced| ForcedJson {
            at: time(forced.at),
            by: forced.by.as_deref(),
            reason: forced.reason.as_deref(),
        }),
        expires_in_ms: info.expires_in.map(|left| left.as_millis()),
        now: rfc3339(info.now).to_string(),
    }
}

pub(crate) fn breaker_json(info: &BreakerInfo) -> String {
    serde_json::to_string_pretty(&breaker(info)).unwrap_or_default()
}

pub(crate) fn listing_json(prefix: &str, listing: &Listing) -> String {
    let json = ListingJson {
        prefix,
        breakers: listing.breakers.iter().map(breaker).collect(),
        invalid: listing.invalid.iter().map(ToString::to_string).collect(),
    };
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

/// `1.5s`, `12m 3s`, `2d 4h`: the two largest units.
pub(crate) fn span(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d {}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// How long from `now` until `then` (or since, for a time past).
pub(crate) fn relative(then: SystemTime, now: SystemTime) -> String {
    match then.duration_since(now) {
        Ok(ahead) => format!("in {}", span(ahead)),
        Err(past) => format!("{} ago", span(past.duration())),
    }
}

/// `30s` or `1500ms`: as `set` takes durations.
fn seconds_or_ms(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `threshold=10 recovery=30s`: as `set` takes them.
pub(crate) fn overrides(overrides: &Overrides) -> String {
    let mut parts = Vec::new();
    if let Some(threshold) = overrides.failure_threshold {
        parts.push(format!("threshold={threshold}"));
    }
    if let Some(timeout) = overrides.recovery_timeout {
        parts.push(format!("recovery={}", seconds_or_ms(timeout)));
    }
    if let Some(trials) = overrides.half_open_trials {
        parts.push(format!("trials={trials}"));
    }
    if let Some(backoff) = overrides.backoff {
        parts.push(if backoff.is_off() {
            "backoff=off".to_owned()
        } else {
            format!("backoff={}:{}", backoff.factor, seconds_or_ms(backoff.max))
        });
    }
    parts.join(" ")
}

/// ` by alice (failover drill)`, as far as the trail says.
pub(crate) fn trail(forced: &Forced) -> String {
    let mut text = String::new();
    if let Some(by) = &forced.by {
        let _ = write!(text, " by {by}");
    }
    if let Some(reason) = &forced.reason {
        let _ = write!(text, " ({reason})");
    }
    text
}

/// `1 failure`, `2 failures`.
fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

pub(crate) fn summary(info: &BreakerInfo) -> String {
    match info.state {
        State::Closed => match info.window {
            Some(window) => format!("{} of {} calls failed", window.failures, window.calls),
            None => plural(info.failures, "failure"),
        },
        State::Open => match info.next_trial_at {
            Some(at) => format!("next trial {}", relative(at, info.now)),
            None => String::new(),
        },
        State::HalfOpen => match info.round {
            Some(_) => format!(
                "{} out, {} passed",
                plural(info.permits_out, "trial"),
                info.trials_passed
            ),
            None => "waiting for a trial".into(),
        },
        _ => match &info.forced {
            Some(forced) => {
                let at = forced
                    .at
                    .map(|at| format!(" {}", relative(at, info.now)))
                    .unwrap_or_default();
                format!("forced{at}{}", trail(forced))
            }
            None => "forced".into(),
        },
    }
}

fn paint(state: State, text: &str, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match state {
        State::Closed => "32",
        State::Open | State::ForcedOpen => "31",
        State::HalfOpen => "33",
        _ => "36",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The list: one breaker a line, aligned.
pub(crate) fn table(breakers: &[BreakerInfo], colour: bool) -> String {
    let width = breakers
        .iter()
        .map(|breaker| breaker.key.chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    let mut out = format!("{:<width$}  {:<13}  DETAIL\n", "KEY", "STATE");
    for breaker in breakers {
        let state = format!("{:<13}", breaker.state.name());
        let _ = writeln!(
            out,
            "{:<width$}  {}  {}",
            breaker.key,
            paint(breaker.state, &state, colour),
            summary(breaker)
        );
    }
    out
}

/// `show`: every field, one a line.
pub(crate) fn details(info: &BreakerInfo, colour: bool) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<15}{value}");
    };
    line("key", info.key.clone());
    line("state", paint(info.state, info.state.name(), colour));
    match info.state {
        State::Closed => {
            line("failures", info.failures.to_string());
            if let Some(window) = info.window {
                line(
                    "window",
                    format!("{} calls, {} failed", window.calls, window.failures),
                );
            }
            if info.reporters > 0 {
                line("reported by", format!("{} processes", info.reporters));
            }
        }
        State::Open | State::HalfOpen => {
            if let Some(at) = info.opened_at {
                line(
                    "opened at",
                    format!("{} ({})", rfc3339(at), relative(at, info.now)),
                );
            }
            if let Some(at) = info.next_trial_at {
                line(
                    "next trial at",
                    format!("{} ({})", rfc3339(at), relative(at, info.now)),
                );
            }
            if info.failed_rounds > 0 {
                line("failed rounds", info.failed_rounds.to_string());
            }
            if let Some(round) = info.round {
                line("round", round.to_string());
                line("trials out", info.permits_out.to_string());
                line("trials passed", info.trials_passed.to_string());
            }
        }
        _ => {
            if let Some(forced) = &info.forced {
                if let Some(at) = forced.at {
                    line(
                        "forced at",
                        format!("{} ({})", rfc3339(at), relative(at, info.now)),
                    );
                }
                line("forced by", forced.by.clone().unwrap_or_else(|| "-".into()));
                line(
                    "reason",
                    forced.reason.clone().unwrap_or_else(|| "-".into()),
                );
            }
        }
    }
    if let Some(overridden) = &info.overrides {
        line("overrides", overrides(overridden));
    }
    if let Some(left) = info.expires_in {
        line("expires in", span(left));
    }
    line("storage clock", rfc3339(info.now).to_string());
    out
}

/// A label value in the Prometheus text format.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text format of a listing: per breaker, `circuitbreaker_state` (one series
/// per state, 1 for the current one, with the library's own metric's name and labels, so
/// one alert rule serves both) and `circuitbreaker_failures`.
pub(crate) fn prometheus(listing: &Listing) -> String {
    const STATES: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::ForcedClosed,
    ];
    let mut out = String::from(
        "# HELP circuitbreaker_state The breaker's state, as the storage holds it: 1 for the current one.\n\
         # TYPE circuitbreaker_state gauge\n",
    );
    for info in &listing.breakers {
        let name = label(&info.key);
        for state in STATES {
            let _ = writeln!(
                out,
                "circuitbreaker_state{{name=\"{name}\",state=\"{}\"}} {}",
                state.name(),
                u8::from(state == info.state)
            );
        }
    }
    out.push_str(
        "# HELP circuitbreaker_failures Failures counted while closed (the window's, for a rate policy).\n\
         # TYPE circuitbreaker_failures gauge\n",
    );
    for info in &listing.breakers {
        let failures = info.window.map_or(info.failures, |window| window.failures);
        let _ = writeln!(
            out,
            "circuitbreaker_failures{{name=\"{}\"}} {failures}",
            label(&info.key)
        );
    }
    let _ = writeln!(
        out,
        "# HELP circuitpy_invalid_keys Keys under the prefix that hold no breaker.\n\
         # TYPE circuitpy_invalid_keys gauge\n\
         circuitpy_invalid_keys {}",
        listing.invalid.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_keep_two_units() {
        assert_eq!(span(Duration::from_millis(250)), "250ms");
        assert_eq!(span(Duration::from_secs(90)), "1m 30s");
        assert_eq!(span(Duration::from_secs(7 * 86_400)), "7d 0h");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
