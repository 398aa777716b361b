//! With the `tracing` feature, every transition, rejection and storage error is also a
//! `tracing` event with the OpenTelemetry-style fields; checked with a subscriber that
//! collects what it is given, over a scripted closed → open → half-open → closed sequence.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use circuitpy::{Breaker, CircuitBreaker};
use circuitpy_tests::handler;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One event: its level and its fields, in order, as `name=value`.
type Seen = (Level, Vec<String>);

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Seen>>>);

struct Fields(Vec<String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push(format!("{}={value}", field.name()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push(format!("{}={value:?}", field.name()));
    }
}

impl Subscriber for Collector {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

handler!(Traced {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

#[derive(Debug)]
struct Down;

impl From<circuitpy::CircuitBreakerOpen> for Down {
    fn from(_: circuitpy::CircuitBreakerOpen) -> Self {
        Down
    }
}

/// Run in a process of its own (this test binary again, running only this test): `tracing`
/// caches whether an event site is wanted when the site is first reached, and another test
/// reaching a site first, on a thread with no subscriber, would hide it from this one's.
#[test]
fn transitions_and_rejections_are_tracing_events_with_the_breakers_fields() {
    if !circuitpy_tests::in_own_process(&circuitpy_tests::test_name!(
        transitions_and_rejections_are_tracing_events_with_the_breakers_fields
    )) {
        return;
    }
    let collector = Collector::default();
    let breaker = Breaker::new(Traced);
    tracing::subscriber::with_default(collector.clone(), || {
        for _ in 0..2 {
            let _ = breaker.call(|| Err::<(), Down>(Down));
        }
        let _ = breaker.call(|| Ok::<(), Down>(()));
        Traced::clock().advance(Traced::RECOVERY_TIMEOUT);
        breaker.call(|| Ok::<(), Down>(())).unwrap();
    });
    let seen = collector.0.lock().unwrap().clone();
    let message = |text: &str| format!("message={text}");
    assert_eq!(
        seen,
        vec![
            (
                Level::WARN,
                vec![
                    message("circuit breaker changed state"),
                    "circuitbreaker.name=Traced".to_owned(),
                    "circuitbreaker.state=open".to_owned(),
                    "circuitbreaker.previous_state=closed".to_owned(),
                ]
            ),
            (
                Level::DEBUG,
                vec![
                    message("call rejected by the circuit breaker"),
                    "circuitbreaker.name=Traced".to_owned(),
                    "circuitbreaker.method=call".to_owned(),
                    "circuitbreaker.rejection=open".to_owned(),
                ]
            ),
            (
                Level::WARN,
                vec![
                    message("circuit breaker changed state"),
                    "circuitbreaker.name=Traced".to_owned(),
                    "circuitbreaker.state=half_open".to_owned(),
                    "circuitbreaker.previous_state=open".to_owned(),
                ]
            ),
            (
                Level::WARN,
                vec![
                    message("circuit breaker changed state"),
                    "circuitbreaker.name=Traced".to_owned(),
                    "circuitbreaker.state=closed".to_owned(),
                    "circuitbreaker.previous_state=half_open".to_owned(),
                ]
            ),
        ]
    );
}
