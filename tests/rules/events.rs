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

/// A span's name and fields.
type Made = (String, Vec<String>);
/// An event's fields, and the span it happened in.
type InSpan = (String, Option<Made>);

/// Records the spans made, and for each event the name and fields of the span it was in.
#[derive(Clone, Default)]
struct Spans {
    made: Arc<Mutex<Vec<Made>>>,
    entered: Arc<Mutex<Vec<u64>>>,
    /// Per event: its fields, and the span it happened in.
    events: Arc<Mutex<Vec<InSpan>>>,
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields(Vec::new());
        span.record(&mut fields);
        let mut made = self.made.lock().unwrap();
        made.push((span.metadata().name().to_owned(), fields.0));
        Id::from_u64(made.len() as u64)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        let current = self.entered.lock().unwrap().last().copied();
        let span = current.map(|id| self.made.lock().unwrap()[id as usize - 1].clone());
        self.events.lock().unwrap().push((fields.0.join(" "), span));
    }
    fn enter(&self, span: &Id) {
        self.entered.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, _: &Id) {
        self.entered.lock().unwrap().pop();
    }
}

handler!(Spanned {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
});

/// In a process of its own, for the reason the events test is.
#[test]
fn a_guarded_call_runs_in_a_trace_span_with_the_breakers_fields() {
    if !circuitpy_tests::in_own_process(&circuitpy_tests::test_name!(
        a_guarded_call_runs_in_a_trace_span_with_the_breakers_fields
    )) {
        return;
    }
    let spans = Spans::default();
    let breaker = Breaker::new(Spanned);
    tracing::subscriber::with_default(spans.clone(), || {
        breaker
            .call(|| {
                tracing::info!("blocking body");
                Ok::<(), Down>(())
            })
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(breaker.call_async(async {
                tracing::info!("async body");
                Ok::<(), Down>(())
            }))
            .unwrap();
        // A trial runs in a span that says so.
        let _ = breaker.call(|| Err::<(), Down>(Down));
        Spanned::clock().advance(Spanned::RECOVERY_TIMEOUT);
        breaker
            .call(|| {
                tracing::info!("trial body");
                Ok::<(), Down>(())
            })
            .unwrap();
        tracing::info!("outside");
    });
    let span = |trial: bool| {
        Some((
            "circuit_breaker".to_owned(),
            vec![
                "circuitbreaker.name=Spanned".to_owned(),
                format!("circuitbreaker.trial={trial}"),
            ],
        ))
    };
    let events: Vec<_> = spans
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|(message, _)| {
            message.starts_with("message=") && !message.contains("circuit breaker")
        })
        .cloned()
        .collect();
    assert_eq!(
        events,
        vec![
            ("message=blocking body".to_owned(), span(false)),
            ("message=async body".to_owned(), span(false)),
            ("message=trial body".to_owned(), span(true)),
            ("message=outside".to_owned(), None),
        ]
    );
}
