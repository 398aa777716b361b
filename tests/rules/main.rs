//! The breaker's rules, in process memory: one test per rule, a reference model driven by
//! random sequences, many threads and tasks on one breaker, and local mode.

mod concurrency;
#[cfg(feature = "tracing")]
mod events;
mod local_mode;
#[cfg(feature = "metrics")]
mod metrics;
mod model;
mod primitives;
mod quorum;
mod robustness;
mod state_machine;
