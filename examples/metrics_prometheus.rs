//! A breaker's metrics in Prometheus's text format: installs the Prometheus exporter's
//! recorder, trips a breaker, lets it recover, and prints what a scrape of `/metrics`
//! would return.
//!
//! Run it with `cargo run --example metrics_prometheus --features metrics`.
//!
//! A service would serve `handle.render()` from its own HTTP endpoint, or enable the
//! exporter's `http-listener` feature and call `PrometheusBuilder::install()` instead.

use std::sync::LazyLock;
use std::time::Duration;

use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, ManualClock, MemoryStorage};
use metrics_exporter_prometheus::PrometheusBuilder;

/// The example's clock, advanced by hand so that the recovery takes no time.
static CLOCK: LazyLock<ManualClock> = LazyLock::new(ManualClock::new);
static STORAGE: LazyLock<MemoryStorage> =
    LazyLock::new(|| MemoryStorage::with_clock(CLOCK.clock()));

/// Two failures in a row open the breaker for 30 s.
struct Payments;

impl CircuitBreaker for Payments {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    const FAILURE_KEY: &'static str = "payments";
    type Storage = MemoryStorage;

    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

#[derive(Debug)]
enum PayError {
    Declined,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for PayError {
    fn from(open: CircuitBreakerOpen) -> Self {
        PayError::Open(open)
    }
}

fn main() {
    // Before the first guarded call: a breaker registers its metrics on first use.
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder is installed");
    circuitpy::metrics::describe();

    let breaker = Breaker::new(Payments);
    let pay = |ok: bool| breaker.call(|| if ok { Ok(()) } else { Err(PayError::Declined) });
    let outcomes = [
        pay(true),
        pay(true),
        pay(false),
        pay(false), // the second failure in a row: open
        pay(true),  // rejected
    ];
    CLOCK.advance(Payments::RECOVERY_TIMEOUT);
    let after = [pay(true), pay(true)]; // the trial closes it, then a call as usual
    for (n, outcome) in outcomes.iter().chain(&after).enumerate() {
        let shown = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(PayError::Declined) => "declined".to_owned(),
            Err(PayError::Open(open)) => format!("rejected: {open}"),
        };
        println!("# call {}: {shown}", n + 1);
    }
    // One breaker per card network, counted under the handler's name.
    let visa = Breaker::keyed(Payments, "visa");
    visa.call(|| Ok::<(), PayError>(())).unwrap();

    println!();
    print!("{}", prometheus.render());
}
