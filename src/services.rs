//! The one rule for a test whose server or tool is missing: it skips with a loud notice,
//! or fails when `CIRCUITPY_REQUIRE_SERVICES=1` (as CI sets).

use std::fmt::Display;
use std::io::Write;

/// The variable that turns a skip into a failure.
pub const REQUIRE_VAR: &str = "CIRCUITPY_REQUIRE_SERVICES";

/// Whether a missing server or tool fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|value| value == "1")
}

/// Says that the calling test cannot run for want of `what` (e.g. "redis-server is not on
/// PATH"): panics when services are [`required`], otherwise prints a loud notice and
/// returns `None`, for `let Some(x) = ... else { return };`.
#[track_caller]
pub fn skip<T>(what: impl Display) -> Option<T> {
    if required() {
        panic!("{what}, and {REQUIRE_VAR}=1 requires it");
    }
    notice(&format!(
        "SKIPPED: {what}; set {REQUIRE_VAR}=1 to make this a failure"
    ));
    None
}

/// Prints `text` as a loud `*** ... ***` line on stderr, past the test harness's capture,
/// so it shows in a passing run.
pub fn notice(text: &str) {
    let notice = format!("\n*** {text} ***\n");
    let _ = std::io::stderr().write_all(notice.as_bytes());
}
