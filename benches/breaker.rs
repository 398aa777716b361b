//! The cost of a breaker around a call, against the bare call and against failsafe and
//! recloser. `cargo bench --bench breaker`; see BENCHMARKS.md for the numbers. With
//! `--features metrics` the breakers also emit their metrics, to an installed Prometheus
//! recorder.
//!
//! Every guarded function is `#[inline(never)]`, like the bare floor, so each case measures
//! one real call plus whatever the breaker adds around it.
//!
//! Two extra modes, for use under valgrind (no benchmarking):
//! - `CIRCUITPY_BENCH_CALLS=N CIRCUITPY_BENCH_CASE=name` makes N calls of one case and exits;
//!   under `--tool=callgrind` the difference between two values of N gives instructions per
//!   call, under `--tool=dhat` it shows whether a call allocates;
//! - `CIRCUITPY_BENCH_KEYS=N` creates N keyed breakers and exits (with
//!   `CIRCUITPY_BENCH_KEYS_ONLY` set it only builds the N key strings), so under
//!   `--tool=dhat` the heap difference gives the bytes per keyed breaker.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, LazyLock, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, FailurePolicy, MemoryStorage, State,
    circuit_breaker,
};
use criterion::{Criterion, criterion_group};
use failsafe::CircuitBreaker as _;
use recloser::Recloser;

static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);

const LONG: Duration = Duration::from_secs(24 * 3600);

/// Consecutive policy; never trips in these benchmarks.
struct Consecutive;
impl CircuitBreaker for Consecutive {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = LONG;
    const FAILURE_KEY: &'static str = "bench_consecutive";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// Rate policy; never trips in these benchmarks.
struct Rate;
impl CircuitBreaker for Rate {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = LONG;
    const FAILURE_KEY: &'static str = "bench_rate";
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

/// Trips on the first failure and stays open for a day.
struct Tripped;
impl CircuitBreaker for Tripped {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = LONG;
    const FAILURE_KEY: &'static str = "bench_tripped";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// One breaker per key.
struct Keyed;
impl CircuitBreaker for Keyed {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = LONG;
    const FAILURE_KEY: &'static str = "bench_keyed";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// For async functions.
struct Asynchronous;
impl CircuitBreaker for Asynchronous {
    const FAILURE_THRESHOLD: u32 = 5;
    const RECOVERY_TIMEOUT: Duration = LONG;
    const FAILURE_KEY: &'static str = "bench_async";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// A small error type, so that `Result<u64, BenchError>` comes back in registers and the
/// floor is a bare call rather than a copy of a large error through memory.
#[derive(Debug)]
enum BenchError {
    Down,
    /// A rejection; `true` when the breaker itself was open.
    Open(bool),
}

impl From<CircuitBreakerOpen> for BenchError {
    fn from(open: CircuitBreakerOpen) -> Self {
        BenchError::Open(open.reason().is_open())
    }
}

#[inline(never)]
fn bare(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

/// What a real body calls: a client function, out of line, that can fail.
#[inline(never)]
fn client(x: u64) -> Result<u64, BenchError> {
    if black_box(x) == u64::MAX {
        Err(BenchError::Down)
    } else {
        Ok(x.wrapping_mul(3))
    }
}

/// The user-style floor: a function whose body calls the client, unguarded.
#[inline(never)]
fn bare_user_style(x: u64) -> Result<u64, BenchError> {
    let value = client(x)?;
    Ok(value + 1)
}

/// The same body guarded, as an application writes it: the result of an out-of-line call
/// has to survive around the breaker's work.
#[inline(never)]
#[circuit_breaker(handler = Consecutive)]
fn guarded_user_style(x: u64) -> Result<u64, BenchError> {
    let value = client(x)?;
    Ok(value + 1)
}

#[inline(never)]
#[circuit_breaker(handler = Consecutive)]
fn guarded_consecutive(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[inline(never)]
#[circuit_breaker(handler = Rate)]
fn guarded_rate(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[inline(never)]
#[circuit_breaker(handler = Tripped)]
fn guarded_tripped(fail: bool) -> Result<u64, BenchError> {
    if black_box(fail) {
        Err(BenchError::Down)
    } else {
        Ok(1)
    }
}

#[inline(never)]
#[circuit_breaker(handler = Keyed, key = key)]
fn guarded_keyed(key: &str, x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[inline(never)]
#[circuit_breaker(handler = Keyed)]
fn guarded_keyed_handler_static(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[inline(never)]
async fn bare_async(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[inline(never)]
#[circuit_breaker(handler = Asynchronous)]
async fn guarded_async(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

/// The value of an `Ok`, 0 for an error. The benchmarks hand criterion this rather than
/// the `Result` itself: copying a just-returned `Result` out whole reads the tag and the value
/// written separately as one wide load, which stalls on store forwarding and would add
/// several nanoseconds to every case, the floor included. Real callers match on the result.
#[inline(always)]
fn value<E>(result: Result<u64, E>) -> u64 {
    result.unwrap_or(0)
}

/// Polls a future once with a no-op waker; every future here is ready at once, so no
/// runtime takes part in the measurement.
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

fn trip_circuitpy() {
    let _ = guarded_tripped(true);
    assert!(matches!(
        guarded_tripped(false),
        Err(BenchError::Open(true))
    ));
    assert_eq!(Breaker::new(Tripped).state().unwrap(), State::Open);
}

type Failsafe = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    (),
>;

fn failsafe_breaker(failures: u32) -> Failsafe {
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            failures,
            failsafe::backoff::constant(LONG),
        ))
        .build()
}

fn failsafe_tripped() -> Failsafe {
    let breaker = failsafe_breaker(1);
    let _ = breaker.call(|| Err::<u64, _>(BenchError::Down));
    assert!(matches!(
        breaker.call(|| bare(1)),
        Err(failsafe::Error::Rejected)
    ));
    breaker
}

fn recloser_tripped() -> Recloser {
    let breaker = Recloser::custom().closed_len(1).open_wait(LONG).build();
    for _ in 0..2 {
        let _ = breaker.call(|| Err::<u64, _>(BenchError::Down));
    }
    assert!(matches!(
        breaker.call(|| bare(1)),
        Err(recloser::Error::Rejected)
    ));
    breaker
}

/// Two threads spawned once, each making the same number of calls at the same time.
struct Pair {
    start: Arc<Barrier>,
    done: Arc<Barrier>,
    iters: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    elapsed: Arc<Mutex<Duration>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pair {
    fn new(call: impl Fn() + Send + Sync + 'static) -> Pair {
        let call = Arc::new(call);
        let start = Arc::new(Barrier::new(3));
        let done = Arc::new(Barrier::new(3));
        let iters = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let elapsed = Arc::new(Mutex::new(Duration::ZERO));
        let threads = (0..2)
            .map(|_| {
                let (call, start, done) = (call.clone(), start.clone(), done.clone());
                let (iters, stop, elapsed) = (iters.clone(), stop.clone(), elapsed.clone());
                std::thread::spawn(move || {
                    loop {
                        start.wait();
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let n = iters.load(Ordering::Acquire);
                        let began = Instant::now();
                        for _ in 0..n {
                            call();
                        }
                        let took = began.elapsed();
                        {
                            let mut slowest = elapsed.lock().unwrap();
                            *slowest = (*slowest).max(took);
                        }
                        done.wait();
                    }
                })
            })
            .collect();
        Pair {
            start,
            done,
            iters,
            stop,
            elapsed,
            threads,
        }
    }

    /// Both threads make `n` calls; returns the slower thread's time, so that criterion's
    /// division by `n` gives the cost of one call on each thread while both run.
    fn run(&self, n: u64) -> Duration {
        *self.elapsed.lock().unwrap() = Duration::ZERO;
        self.iters.store(n, Ordering::Release);
        self.start.wait();
        self.done.wait();
        *self.elapsed.lock().unwrap()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.start.wait();
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed_success");
    group.bench_function("bare", |b| b.iter(|| value(bare(black_box(7)))));
    group.bench_function("circuitpy_consecutive", |b| {
        b.iter(|| value(guarded_consecutive(black_box(7))))
    });
    group.bench_function("circuitpy_rate", |b| {
        b.iter(|| value(guarded_rate(black_box(7))))
    });
    group.bench_function("bare_user_style", |b| {
        b.iter(|| value(bare_user_style(black_box(7))))
    });
    group.bench_function("circuitpy_user_style", |b| {
        b.iter(|| value(guarded_user_style(black_box(7))))
    });
    let failsafe = failsafe_breaker(5);
    group.bench_function("failsafe", |b| {
        b.iter(|| value(failsafe.call(|| bare(black_box(7)))))
    });
    let recloser = Recloser::default();
    group.bench_function("recloser", |b| {
        b.iter(|| value(recloser.call(|| bare(black_box(7)))))
    });
    group.finish();

    let mut group = c.benchmark_group("open_rejection");
    trip_circuitpy();
    group.bench_function("circuitpy", |b| {
        b.iter(|| value(guarded_tripped(black_box(false))))
    });
    let failsafe = failsafe_tripped();
    group.bench_function("failsafe", |b| {
        b.iter(|| value(failsafe.call(|| bare(black_box(7)))))
    });
    let recloser = recloser_tripped();
    group.bench_function("recloser", |b| {
        b.iter(|| value(recloser.call(|| bare(black_box(7)))))
    });
    group.finish();
}

/// One call of a two-thread case.
type Call = Box<dyn Fn() + Send + Sync>;

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("two_threads");
    let cases: Vec<(&str, Call)> = vec![
        (
            "closed_circuitpy",
            Box::new(|| {
                black_box(value(guarded_consecutive(black_box(7))));
            }),
        ),
        (
            "closed_circuitpy_rate",
            Box::new(|| {
                black_box(value(guarded_rate(black_box(7))));
            }),
        ),
        ("closed_failsafe", {
            let breaker = failsafe_breaker(5);
            Box::new(move || {
                black_box(value(breaker.call(|| bare(black_box(7)))));
            })
        }),
        ("closed_recloser", {
            let breaker = Recloser::default();
            Box::new(move || {
                black_box(value(breaker.call(|| bare(black_box(7)))));
            })
        }),
        (
            "open_circuitpy",
            Box::new(|| {
                black_box(value(guarded_tripped(black_box(false))));
            }),
        ),
        ("open_failsafe", {
            let breaker = failsafe_tripped();
            Box::new(move || {
                black_box(value(breaker.call(|| bare(black_box(7)))));
            })
        }),
        ("open_recloser", {
            let breaker = recloser_tripped();
            Box::new(move || {
                black_box(value(breaker.call(|| bare(black_box(7)))));
            })
        }),
    ];
    trip_circuitpy();
    for (name, call) in cases {
        let pair = Pair::new(call);
        group.bench_function(name, |b| b.iter_custom(|n| pair.run(n)));
    }
    group.finish();
}

fn asynchronous(c: &mut Criterion) {
    let mut group = c.benchmark_group("async_closed_success");
    group.bench_function("bare", |b| {
        b.iter(|| value(poll_once(bare_async(black_box(7)))))
    });
    group.bench_function("circuitpy", |b| {
        b.iter(|| value(poll_once(guarded_async(black_box(7)))))
    });
    group.finish();
}

const KEYS: usize = 10_000;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("host-{i}.example.com")).collect()
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed");
    group.bench_function("static_key_alone", |b| {
        b.iter(|| value(guarded_keyed_handler_static(black_box(7))))
    });
    let keys = keys(KEYS);
    for key in &keys {
        guarded_keyed(key, 1).unwrap();
    }
    assert_eq!(
        Breaker::keyed(Keyed, &keys[KEYS - 1]).state().unwrap(),
        State::Closed
    );
    group.bench_function("static_key_with_10000_keyed", |b| {
        b.iter(|| value(guarded_keyed_handler_static(black_box(7))))
    });
    let mut next = 0;
    group.bench_function("keyed_call_among_10000", |b| {
        b.iter(|| {
            next = (next + 7919) % KEYS;
            value(guarded_keyed(black_box(&keys[next]), black_box(7)))
        })
    });
    group.finish();
}

/// The `CIRCUITPY_BENCH_*` modes described at the top; true when one ran.
fn counting_modes() -> bool {
    let count = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().unwrap());
    if let Some(n) = count("CIRCUITPY_BENCH_CALLS") {
        let case = std::env::var("CIRCUITPY_BENCH_CASE").unwrap_or_default();
        let failsafe = failsafe_breaker(5);
        let failsafe_open = failsafe_tripped();
        let recloser = Recloser::default();
        let recloser_open = recloser_tripped();
        trip_circuitpy();
        let call: Box<dyn Fn(u64) -> u64> = match case.as_str() {
            "bare" => Box::new(|i| bare(i).unwrap()),
            "consecutive" => Box::new(|i| guarded_consecutive(i).unwrap()),
            "rate" => Box::new(|i| guarded_rate(i).unwrap()),
            "open" => Box::new(|_| u64::from(guarded_tripped(black_box(false)).is_err())),
            "failsafe" => Box::new(|i| failsafe.call(|| bare(i)).unwrap()),
            "failsafe_open" => Box::new(|i| u64::from(failsafe_open.call(|| bare(i)).is_err())),
            "recloser" => Box::new(|i| recloser.call(|| bare(i)).unwrap()),
            "recloser_open" => Box::new(|i| u64::from(recloser_open.call(|| bare(i)).is_err())),
            "bare_async" => Box::new(|i| poll_once(bare_async(i)).unwrap()),
            "async" => Box::new(|i| poll_once(guarded_async(i)).unwrap()),
            "static_key" => Box::new(|i| guarded_keyed_handler_static(i).unwrap()),
            "bare_user_style" => Box::new(|i| bare_user_style(i).unwrap()),
            "user_style" => Box::new(|i| guarded_user_style(i).unwrap()),
            other => panic!("unknown CIRCUITPY_BENCH_CASE {other:?}"),
        };
        let mut sum = 0u64;
        for i in 0..n {
            sum = sum.wrapping_add(call(black_box(i)));
        }
        println!("{case}: {n} calls, sum {sum}");
        return true;
    }
    if let Some(n) = count("CIRCUITPY_BENCH_KEYS") {
        let keys = keys(n as usize);
        // The baseline: the same keys held without breakers.
        if std::env::var_os("CIRCUITPY_BENCH_KEYS_ONLY").is_none() {
            for key in &keys {
                guarded_keyed(key, 1).unwrap();
            }
        }
        println!("{} keys", black_box(keys).len());
        return true;
    }
    false
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = single_thread, two_threads, asynchronous, keyed
}

fn main() {
    // With the `metrics` feature the breakers emit to a real exporter's recorder, installed
    // before the first guarded call as an application would.
    #[cfg(feature = "metrics")]
    let _prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder is installed");
    if counting_modes() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
