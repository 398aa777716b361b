//! Compile-time behaviour of `#[circuit_breaker]`: what it accepts (`tests/ui/pass`) and the
//! diagnostics it gives for what it refuses (`tests/ui/fail`, each with its `.stderr`).
//!
//! The compiler's messages change between releases, so the expected output is kept for one
//! toolchain only; on any other the test says so and does nothing. Regenerate with
//! `TRYBUILD=overwrite cargo test --all-features --test attribute ui::` and read every
//! changed `.stderr`.

use std::process::Command;

use circuitpy_tests::services::notice;

/// The toolchain the `.stderr` files were written with.
const TOOLCHAIN: &str = "rustc 1.95.";

/// The `.stderr` files were written with every feature on, as the README's test command
/// builds: some diagnostics list the storages that do implement a trait, and the features
/// decide which exist.
const ALL_FEATURES: bool = cfg!(all(
    feature = "redis",
    feature = "postgres",
    feature = "sqlite"
));

fn rustc_version() -> Option<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether this toolchain and build are the ones the expected output was written for; a
/// notice when not.
fn expected_compiler() -> bool {
    match rustc_version() {
        Some(version) if version.starts_with(TOOLCHAIN) => {}
        other => {
            // A toolchain, not a service: this skips even under CIRCUITPY_REQUIRE_SERVICES=1.
            notice(&format!(
                "SKIPPED: the UI tests expect {TOOLCHAIN}x, found {:?}; their expected \
                 compiler output is only valid on that toolchain",
                other.as_deref().map(str::trim)
            ));
            return false;
        }
    }
    if !ALL_FEATURES {
        notice("SKIPPED: the UI tests' expected output is for `--all-features`");
        return false;
    }
    true
}

#[test]
fn pass() {
    if expected_compiler() {
        trybuild::TestCases::new().pass("tests/ui/pass/*.rs");
    }
}

/// Every misuse is reported by `cargo check`, what an IDE runs: trybuild checks (rather
/// than builds) a set of cases with none that must pass.
#[test]
fn fail_under_cargo_check() {
    if expected_compiler() {
        trybuild::TestCases::new().compile_fail("tests/ui/fail/*.rs");
    }
}
