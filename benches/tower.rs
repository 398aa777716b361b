//! The tower layer against a bare tower service and against tower-resilience's circuit
//! breaker, closed, in memory, on one thread: `cargo bench --features tower --bench tower`.
//!
//! Each case calls `ready().await` then `call(x).await` on a `service_fn` that answers at
//! once; every future is ready on its first poll, so no runtime takes part.
//!
//! `CIRCUITPY_BENCH_CALLS=N CIRCUITPY_BENCH_CASE=name` makes N calls of one case and exits
//! (for callgrind, as in `breaker.rs`): `bare`, `consecutive`, `rate`, `resilience`. With
//! `--features tower,metrics` the breakers also emit their metrics to an installed
//! Prometheus recorder.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use circuitpy::tower::CircuitBreakerLayer;
use circuitpy::{CircuitBreaker, FailurePolicy, MemoryStorage};
use criterion::{Criterion, criterion_group};
use tower::{Layer, Service, ServiceExt, service_fn};

static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);

const LONG: Duration = Duration::from_secs(24 * 3600);

/// Consecutive policy; never trips here.
struct Consecutive;
impl CircuitBreaker for Consecutive {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = LONG;
    const FAILURE_KEY: &'static str = "tower_consecutive";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// Failure rate over a window, as tower-resilience's default; never trips here.
struct Rate;
impl CircuitBreaker for Rate {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = LONG;
    const FAILURE_KEY: &'static str = "tower_rate";
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(10),
        minimum_calls: 100,
    };
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// Polls a future that must be ready at once, with a no-op waker.
#[inline(always)]
fn poll_once<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a benchmarked future was not ready"),
    }
}

/// One request through `service`, as a caller makes it.
#[inline(always)]
fn request<S>(service: &mut S, x: u64) -> u64
where
    S: Service<u64, Response = u64>,
{
    poll_once(async {
        match service.ready().await {
            Ok(ready) => ready.call(x).await.unwrap_or(0),
            Err(_) => 0,
        }
    })
}

fn bare()
-> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + Sync + 'static
{
    service_fn(|x: u64| async move { Ok::<u64, Infallible>(black_box(x)) })
}

fn run(case: &str, calls: u64) {
    macro_rules! drive {
        ($service:expr) => {{
            let mut service = $service;
            let mut sum = 0u64;
            for x in 0..calls {
                sum = sum.wrapping_add(request(&mut service, black_box(x)));
            }
            black_box(sum);
        }};
    }
    match case {
        "bare" => drive!(bare()),
        "consecutive" => drive!(CircuitBreakerLayer::new(Consecutive).layer(bare())),
        "rate" => drive!(CircuitBreakerLayer::new(Rate).layer(bare())),
        "resilience" => drive!(resilience().layer(bare())),
        other => panic!("unknown CIRCUITPY_BENCH_CASE {other:?}"),
    }
}

fn resilience() -> tower_resilience_circuitbreaker::CircuitBreakerLayer {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
}

fn closed_success(c: &mut Criterion) {
    let mut group = c.benchmark_group("tower_closed_success");
    let mut service = bare();
    group.bench_function("bare", |b| b.iter(|| request(&mut service, black_box(7))));
    let mut service = CircuitBreakerLayer::new(Consecutive).layer(bare());
    group.bench_function("circuitpy_consecutive", |b| {
        b.iter(|| request(&mut service, black_box(7)))
    });
    let mut service = CircuitBreakerLayer::new(Rate).layer(bare());
    group.bench_function("circuitpy_rate", |b| {
        b.iter(|| request(&mut service, black_box(7)))
    });
    let mut service = resilience().layer(bare());
    group.bench_function("tower_resilience", |b| {
        b.iter(|| request(&mut service, black_box(7)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = closed_success
}

fn main() {
    // With the `metrics` feature the breakers emit to a real exporter's recorder, installed
    // before the first call as an application would.
    #[cfg(feature = "metrics")]
    let _prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder is installed");
    if let Ok(calls) = std::env::var("CIRCUITPY_BENCH_CALLS") {
        let case = std::env::var("CIRCUITPY_BENCH_CASE").unwrap_or_default();
        run(&case, calls.parse().expect("a number of calls"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
