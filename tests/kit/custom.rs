//! The conformance kit against the example's storage, which implements only the three
//! primitives over a simulated remote service.

#[allow(dead_code)]
#[path = "../../examples/custom_storage.rs"]
mod example;

use std::time::Duration;

use circuitpy::testing::{Options, check_storage};
use example::{KvService, KvStorage};

#[test]
fn the_example_storage_passes_the_kit() {
    let storage: &'static KvStorage = Box::leak(Box::new(KvStorage::new(KvService::start(
        Duration::from_micros(50),
    ))));
    let report = check_storage(storage, Options::default()).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.rules.contains(&"increment-is-atomic"));
    assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
}
