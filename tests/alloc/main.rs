//! Allocation guard: once warm, a closed breaker's successful call and an open breaker's
//! rejection allocate nothing, sync or async.
//!
//! A counting global allocator wraps the system one and counts, per thread, every
//! allocation the measured code makes, so the test harness's own threads do not disturb the
//! count.

// Measuring allocations needs a `#[global_allocator]`, and implementing `GlobalAlloc` needs
// an `unsafe impl`; that one impl is the only unsafe code in the tests.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, ManualClock, MemoryStorage, State, circuit_breaker,
};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the allocator may be called while the thread's locals are torn down.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; counting touches only a const-initialised thread-local `Cell`,
// which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's guarantees for `alloc` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: as above; `ptr` came from this allocator, hence from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations this thread made while running `body`.
fn allocations_in<R>(body: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = body();
    (ALLOCATIONS.with(Cell::get) - before, result)
}

/// Polls a future to completion on this thread, with no runtime and no allocation.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

static CLOCK: LazyLock<ManualClock> = LazyLock::new(ManualClock::new);
static STORAGE: LazyLock<MemoryStorage> =
    LazyLock::new(|| MemoryStorage::with_clock(CLOCK.clock()));

/// Stays closed: every call succeeds.
struct Closed;

impl CircuitBreaker for Closed {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
    const FAILURE_KEY: &'static str = "closed";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// Opened by the tests and left open.
struct Opened;

impl CircuitBreaker for Opened {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
    const FAILURE_KEY: &'static str = "opened";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

/// An error type that allocates nothing itself.
#[derive(Debug)]
enum Error {
    Down,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for Error {
    fn from(open: CircuitBreakerOpen) -> Self {
        Error::Open(open)
    }
}

#[circuit_breaker(handler = Closed)]
fn closed_sync(value: u32) -> Result<u32, Error> {
    Ok(value + 1)
}

#[circuit_breaker(handler = Closed)]
async fn closed_async(value: u32) -> Result<u32, Error> {
    Ok(value + 1)
}

/// Pending at its first poll, ready at its second.
struct PendingOnce(bool);

impl Future for PendingOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A body that waits once: the call's future keeps its permit across the `Pending`.
#[circuit_breaker(handler = Closed)]
async fn closed_after_a_wait(value: u32) -> Result<u32, Error> {
    PendingOnce(false).await;
    Ok(value + 1)
}

#[circuit_breaker(handler = Closed, key = host)]
fn closed_keyed(host: &str) -> Result<usize, Error> {
    Ok(host.len())
}

#[circuit_breaker(handler = Opened)]
fn opened_sync(fail: bool) -> Result<u32, Error> {
    if fail { Err(Error::Down) } else { Ok(1) }
}

#[circuit_breaker(handler = Opened)]
async fn opened_async(fail: bool) -> Result<u32, Error> {
    if fail { Err(Error::Down) } else { Ok(1) }
}

const CALLS: u32 = 1000;

#[test]
fn the_allocator_counts_this_threads_allocations() {
    // The measurement itself must be able to fail.
    let (allocations, boxed) = allocations_in(|| Box::new(7u64));
    assert_eq!(allocations, 1);
    assert_eq!(*boxed, 7);
}

#[test]
fn a_closed_successful_sync_call_allocates_nothing() {
    assert_eq!(closed_sync(0).unwrap(), 1); // warm-up: the call site finds its breaker
    let (allocations, sum) =
        allocations_in(|| (0..CALLS).map(|i| closed_sync(i).unwrap()).sum::<u32>());
    assert_eq!(sum, (1..=CALLS).sum::<u32>());
    assert_eq!(allocations, 0);
}

#[test]
fn a_closed_successful_async_call_allocates_nothing() {
    assert_eq!(block_on(closed_async(0)).unwrap(), 1);
    let (allocations, sum) = allocations_in(|| {
        (0..CALLS)
            .map(|i| block_on(closed_async(i)).unwrap())
            .sum::<u32>()
    });
    assert_eq!(sum, (1..=CALLS).sum::<u32>());
    assert_eq!(allocations, 0);
}

#[test]
fn a_closed_successful_async_call_that_waits_allocates_nothing() {
    assert_eq!(block_on(closed_after_a_wait(0)).unwrap(), 1);
    let (allocations, sum) = allocations_in(|| {
        (0..CALLS)
            .map(|i| block_on(closed_after_a_wait(i)).unwrap())
            .sum::<u32>()
    });
    assert_eq!(sum, (1..=CALLS).sum::<u32>());
    assert_eq!(allocations, 0);
}

#[test]
fn a_closed_successful_async_call_on_a_current_thread_runtime_allocates_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(closed_async(0).await.unwrap(), 1);
        let before = ALLOCATIONS.with(Cell::get);
        for i in 0..CALLS {
            assert_eq!(closed_async(i).await.unwrap(), i + 1);
        }
        assert_eq!(ALLOCATIONS.with(Cell::get) - before, 0);
    });
}

#[test]
fn a_closed_call_under_a_known_per_call_key_allocates_nothing() {
    assert_eq!(closed_keyed("example.com").unwrap(), 11); // warm-up: the key's breaker is made
    let (allocations, ()) = allocations_in(|| {
        for _ in 0..CALLS {
            assert_eq!(closed_keyed("example.com").unwrap(), 11);
        }
    });
    assert_eq!(allocations, 0);
}

#[test]
fn an_open_rejection_allocates_nothing() {
    assert!(matches!(opened_sync(true), Err(Error::Down)));
    match opened_sync(false) {
        Err(Error::Open(open)) => assert_eq!(open.key(), "opened"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(matches!(block_on(opened_async(false)), Err(Error::Open(_))));
    assert_eq!(Breaker::new(Opened).state().unwrap(), State::Open);
    let (allocations, ()) = allocations_in(|| {
        for _ in 0..CALLS {
            assert!(
                matches!(opened_sync(false), Err(Error::Open(open)) if open.method() == "opened_sync")
            );
            assert!(
                matches!(block_on(opened_async(false)), Err(Error::Open(open)) if open.method() == "opened_async")
            );
        }
    });
    assert_eq!(allocations, 0);
}
