//! `#[circuit_breaker]`: what it does at run time, and what it accepts and refuses at
//! compile time.

mod runtime;
mod ui;
