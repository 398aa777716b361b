//! The conformance kit: one call from a storage author's own test checks a storage against
//! the rules every circuitpy storage keeps.
//!
//! ```
//! use circuitpy::testing::{Options, check_storage};
//! use circuitpy::{ManualClock, MemoryStorage};
//!
//! let manual = ManualClock::new();
//! let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::with_clock(manual.clock())));
//! let report = check_storage(storage, Options::with_clock(manual)).expect("conforms");
//! assert!(report.rules.contains(&"half-open-admits-exactly-k-trials"));
//! ```
//!
//! The kit checks, in order:
//! - the three primitives: `increment` counts from 1, creates a key with its expiry in the
//!   same step and keeps the expiry of an existing key; `get_count` of an absent key is 0;
//!   `expire_after` renews or shortens an expiry, deletes with a zero ttl and creates
//!   nothing; increments from many threads lose nothing;
//! - [`Storage::execute`] directly: concurrent failures trip the breaker exactly once and
//!   late failures do not push the open period forward; the open period ends after one
//!   recovery timeout; concurrent trial requests get exactly `HALF_OPEN_TRIALS` permits;
//! - whole breakers ([`Breaker`]) on the storage: thresholds of the three
//!   [`FailurePolicy`]s, rejection while open, half-open trials (exactly K under
//!   concurrency, all must succeed, any failure reopens), unreported trials giving their
//!   permit back or letting their lease lapse, forced states, reset.
//!
//! Time: with [`Options::with_clock`] (a [`MemoryStorage`](crate::MemoryStorage) built on the
//! same [`ManualClock`]) the kit moves the clock and never sleeps. A storage on a real clock
//! (a database's) is checked with short real timeouts: the recovery timeout of the kit's
//! breakers is [`RECOVERY`] and a whole run sleeps about four seconds.
//!
//! Every key the kit writes starts with a random prefix, so runs never see each other's
//! state, even on a shared server; keys are left to expire.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::breaker::Breaker;
use crate::clock::ManualClock;
use crate::error::{CircuitBreakerOpen, Rejection, StorageError};
use crate::handler::{CircuitBreaker, State};
use crate::policy::{Config, FailurePolicy};
use crate::storage::{AsyncStorage, Backend, Op, Request, Snapshot, Storage, ready};

/// The recovery timeout of the kit's breakers, and the ttl of its short-lived keys.
pub const RECOVERY: Duration = Duration::from_millis(250);

/// A ttl long enough never to run out during a run.
const LONG: Duration = Duration::from_secs(600);

/// How long a body waiting for its concurrent peers waits before giving up.
const LATCH_TIMEOUT: Duration = Duration::from_secs(20);

/// How a run is set up.
///
/// ```
/// let options = circuitpy::testing::Options { threads: 4, ..Default::default() };
/// assert!(options.clock.is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// The manual clock the storage reads, if it reads one: the kit advances it instead of
    /// sleeping.
    pub clock: Option<ManualClock>,
    /// How many threads (or concurrent futures) the concurrency checks use; at least 4.
    pub threads: usize,
    /// The prefix of every key the run writes; random when `None`.
    pub prefix: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: None,
            threads: 8,
            prefix: None,
        }
    }
}

impl Options {
    /// Options for a storage that reads `clock`.
    ///
    /// ```
    /// let manual = circuitpy::ManualClock::new();
    /// let options = circuitpy::testing::Options::with_clock(manual);
    /// assert!(options.clock.is_some());
    /// ```
    pub fn with_clock(clock: ManualClock) -> Self {
        Options {
            clock: Some(clock),
            ..Options::default()
        }
    }
}

/// What a passing run checked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// The rules that held, in the order they were checked.
    pub rules: Vec<&'static str>,
    /// The prefix of every key the run wrote.
    pub prefix: String,
    /// How long the run took.
    pub elapsed: Duration,
}

/// The first rule a storage broke, and what the kit saw.
///
/// ```
/// let failure = circuitpy::testing::Failure { rule: "increment-counts-from-one", detail: "got 2".into() };
/// assert_eq!(failure.to_string(), "storage broke rule increment-counts-from-one: got 2");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The rule's name, as listed in [`Report::rules`] of a passing run.
    pub rule: &'static str,
    /// What was expected and what was seen.
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage broke rule {}: {}", self.rule, self.detail)
    }
}

impl std::error::Error for Failure {}

/// Checks a blocking storage. Runs on the calling thread and on threads it spawns; needs no
/// async runtime.
///
/// ```
/// # let manual = circuitpy::ManualClock::new();
/// # let storage: &'static circuitpy::MemoryStorage = Box::leak(Box::new(circuitpy::MemoryStorage::with_clock(manual.clock())));
/// circuitpy::testing::check_storage(storage, circuitpy::testing::Options::with_clock(manual)).unwrap();
/// ```
pub fn check_storage<S: Storage + 'static>(
    storage: &'static S,
    options: Options,
) -> Result<Report, Failure> {
    ready(run(&Blocking(storage), options))
}

/// Checks an async storage. Concurrency comes from futures polled together in the calling
/// task; waits use a helper thread, so any executor (and the runtime the storage's client
/// needs) will do.
///
/// ```
/// # async fn run() {
/// # let manual = circuitpy::ManualClock::new();
/// # let storage: &'static circuitpy::MemoryStorage = Box::leak(Box::new(circuitpy::MemoryStorage::with_clock(manual.clock())));
/// circuitpy::testing::check_async_storage(storage, circuitpy::testing::Options::with_clock(manual))
///     .await
///     .unwrap();
/// # }
/// ```
pub async fn check_async_storage<S: AsyncStorage + 'static>(
    storage: &'static S,
    options: Options,
) -> Result<Report, Failure> {
    run(&NonBlocking(storage), options).await
}

// ---------------------------------------------------------------------------------------
// The kit's handlers.

trait Profile: 'static {
    const KEY: &'static str;
    const THRESHOLD: u32;
    const TRIALS: u32 = 1;
    const POLICY: FailurePolicy = FailurePolicy::Consecutive;
}

/// Consecutive failures, threshold 3, one trial.
struct Three;
impl Profile for Three {
    const KEY: &'static str = "three";
    const THRESHOLD: u32 = 3;
}

/// Threshold 5, two trials: the execute-level checks.
struct Burst;
impl Profile for Burst {
    const KEY: &'static str = "burst";
    const THRESHOLD: u32 = 5;
    const TRIALS: u32 = 2;
}

/// Trips on the first failure, three trials.
struct Trials;
impl Profile for Trials {
    const KEY: &'static str = "trials";
    const THRESHOLD: u32 = 1;
    const TRIALS: u32 = 3;
}

const WINDOW: Duration = Duration::from_millis(400);

struct Windowed;
impl Profile for Windowed {
    const KEY: &'static str = "windowed";
    const THRESHOLD: u32 = 3;
    const POLICY: FailurePolicy = FailurePolicy::CountInWindow { window: WINDOW };
}

struct Rated;
impl Profile for Rated {
    const KEY: &'static str = "rated";
    const THRESHOLD: u32 = 1;
    const POLICY: FailurePolicy = FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(60),
        minimum_calls: 4,
    };
}

/// A handler of the kit: its storage is the storage under test.
struct Kit<S: 'static, P> {
    storage: &'static S,
    profile: PhantomData<fn() -> P>,
}

impl<S: Send + Sync + 'static, P: Profile> CircuitBreaker for Kit<S, P> {
    const FAILURE_THRESHOLD: u32 = P::THRESHOLD;
    const RECOVERY_TIMEOUT: Duration = RECOVERY;
    const FAILURE_KEY: &'static str = P::KEY;
    const HALF_OPEN_TRIALS: u32 = P::TRIALS;
    const FAILURE_POLICY: FailurePolicy = P::POLICY;
    // Generous: a slow shared server under a loaded test machine must not make the kit
    // see storage failures where there are none.
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(5);
    const KEY_PREFIX: &'static str = "circuitpy-kit";
    type Storage = S;

    fn storage(&self) -> &S {
        self.storage
    }

    fn is_failure(&self, error: &dyn std::any::Any) -> bool {
        !matches!(error.downcast_ref::<KitError>(), Some(KitError::Ignored))
    }
}

#[derive(Debug)]
enum KitError {
    Failed,
    /// An error `is_failure` says does not count.
    Ignored,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for KitError {
    fn from(open: CircuitBreakerOpen) -> Self {
        KitError::Open(open)
    }
}

/// What a guarded body does.
#[derive(Clone, Copy)]
enum Body<'a> {
    Succeed,
    Fail,
    Ignored,
    /// Waits until every concurrent caller has either started its body or been rejected,
    /// then succeeds.
    Hold(&'a Latch),
}

/// How a guarded call went.
#[derive(Clone, Debug)]
struct Called {
    ran: bool,
    rejected: Option<Rejection>,
}

impl Called {
    fn new(ran: bool, result: Result<(), KitError>) -> Self {
        Called {
            ran,
            rejected: match result {
                Err(KitError::Open(open)) => Some(open.reason().clone()),
                _ => None,
            },
        }
    }
}

fn body_result(body: Body<'_>) -> Result<(), KitError> {
    match body {
        Body::Succeed => Ok(()),
        Body::Fail => Err(KitError::Failed),
        Body::Ignored => Err(KitError::Ignored),
        Body::Hold(_) => Ok(()),
    }
}

/// Counts callers that have started their body or been rejected.
struct Latch {
    expected: usize,
    arrived: AtomicUsize,
    timed_out: AtomicBool,
}

impl Latch {
    fn new(expected: usize) -> Self {
        Latch {
            expected,
            arrived: AtomicUsize::new(0),
            timed_out: AtomicBool::new(false),
        }
    }

    fn arrive(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
    }

    fn full(&self) -> bool {
        self.arrived.load(Ordering::Acquire) >= self.expected
    }

    fn wait_blocking(&self) {
        let start = Instant::now();
        while !self.full() {
            if start.elapsed() > LATCH_TIMEOUT {
                self.timed_out.store(true, Ordering::Release);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    async fn wait_async(&self) {
        let start = Instant::now();
        std::future::poll_fn(|context| {
            if self.full() {
                return Poll::Ready(());
            }
            if start.elapsed() > LATCH_TIMEOUT {
                self.timed_out.store(true, Ordering::Release);
                return Poll::Ready(());
            }
            context.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// The two flavours the checks run on.

type BreakerOf<F, P> = Breaker<Kit<<F as Flavor>::S, P>>;

#[allow(async_fn_in_trait)]
trait Flavor: Sync {
    type S: Send + Sync + 'static;
    fn storage(&self) -> &'static Self::S;
    /// The storage as the engine sees it, for the primitives and `execute`.
    fn backend(&self) -> impl Backend;
    async fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        self.backend().increment(key, ttl).await
    }
    async fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        self.backend().get_count(key).await
    }
    async fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        self.backend().expire_after(key, ttl).await
    }
    async fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        self.backend().execute(request).await
    }
    async fn call<P: Profile>(&self, breaker: &BreakerOf<Self, P>, body: Body<'_>) -> Called;
    async fn state<P: Profile>(&self, breaker: &BreakerOf<Self, P>) -> Result<State, StorageError>;
    async fn control<P: Profile>(
        &self,
        breaker: &BreakerOf<Self, P>,
        op: Op,
    ) -> Result<(), StorageError>;
    /// `callers` callers each increment `key` `each` times, all at once.
    async fn increments(
        &self,
        key: &str,
        callers: usize,
        each: usize,
    ) -> Vec<Result<u64, StorageError>>;
    /// `callers` callers each run `request` `each` times, all at once.
    async fn executes(
        &self,
        request: &Request<'_>,
        callers: usize,
        each: usize,
    ) -> Vec<Result<Snapshot, StorageError>>;
    /// `callers` calls with bodies that hold until every caller has been admitted or
    /// rejected.
    async fn held_calls<P: Profile>(
        &self,
        breaker: &BreakerOf<Self, P>,
        latch: &Latch,
    ) -> Vec<Called>;
    async fn sleep(&self, duration: Duration);
}

struct Blocking<S: 'static>(&'static S);
struct NonBlocking<S: 'static>(&'static S);

impl<S: Storage + 'static> Flavor for Blocking<S> {
    type S = S;
    fn storage(&self) -> &'static S {
        self.0
    }
    fn backend(&self) -> impl Backend {
        crate::storage::Blocking(self.0)
    }
    async fn call<P: Profile>(&self, breaker: &BreakerOf<Self, P>, body: Body<'_>) -> Called {
        let mut ran = false;
        let result = breaker.call(|| {
            ran = true;
            if let Body::Hold(latch) = body {
                latch.arrive();
                latch.wait_blocking();
            }
            body_result(body)
        });
        Called::new(ran, result)
    }
    async fn state<P: Profile>(&self, breaker: &BreakerOf<Self, P>) -> Result<State, StorageError> {
        breaker.state()
    }
    async fn control<P: Profile>(
        &self,
        breaker: &BreakerOf<Self, P>,
        op: Op,
    ) -> Result<(), StorageError> {
        match op {
            Op::ForceOpen => breaker.force_open(),
            Op::ForceClosed => breaker.force_closed(),
            _ => breaker.reset(),
        }
    }
    async fn increments(
        &self,
        key: &str,
        callers: usize,
        each: usize,
    ) -> Vec<Result<u64, StorageError>> {
        let barrier = std::sync::Barrier::new(callers);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..callers)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        (0..each)
                            .map(|_| Storage::increment(self.0, key, LONG))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().unwrap_or_default())
                .collect()
        })
    }
    async fn executes(
        &self,
        request: &Request<'_>,
        callers: usize,
        each: usize,
    ) -> Vec<Result<Snapshot, StorageError>> {
        let barrier = std::sync::Barrier::new(callers);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..callers)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        (0..each)
                            .map(|_| Storage::execute(self.0, request))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().unwrap_or_default())
                .collect()
        })
    }
    async fn held_calls<P: Profile>(
        &self,
        breaker: &BreakerOf<Self, P>,
        latch: &Latch,
    ) -> Vec<Called> {
        let barrier = std::sync::Barrier::new(latch.expected);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..latch.expected)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let called = ready(self.call(breaker, Body::Hold(latch)));
                        if !called.ran {
                            latch.arrive();
                        }
                        called
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|handle| handle.join().ok())
                .collect()
        })
    }
    async fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

impl<S: AsyncStorage + 'static> Flavor for NonBlocking<S> {
    type S = S;
    fn storage(&self) -> &'static S {
        self.0
    }
    fn backend(&self) -> impl Backend {
        crate::storage::NonBlocking(self.0)
    }
    async fn call<P: Profile>(&self, breaker: &BreakerOf<Self, P>, body: Body<'_>) -> Called {
        let ran = AtomicBool::new(false);
        let result = breaker
            .call_async(async {
                ran.store(true, Ordering::Release);
                if let Body::Hold(latch) = body {
                    latch.arrive();
                    latch.wait_async().await;
                }
                body_result(body)
            })
            .await;
        Called::new(ran.load(Ordering::Acquire), result)
    }
    async fn state<P: Profile>(&self, breaker: &BreakerOf<Self, P>) -> Result<State, StorageError> {
        breaker.state_async().await
    }
    async fn control<P: Profile>(
        &self,
        breaker: &BreakerOf<Self, P>,
        op: Op,
    ) -> Result<(), StorageError> {
        match op {
            Op::ForceOpen => breaker.force_open_async().await,
            Op::ForceClosed => breaker.force_closed_async().await,
            _ => breaker.reset_async().await,
        }
    }
    async fn increments(
        &self,
        key: &str,
        callers: usize,
        each: usize,
    ) -> Vec<Result<u64, StorageError>> {
        let callers = (0..callers).map(|_| async move {
            let mut seen = Vec::with_capacity(each);
            for _ in 0..each {
                seen.push(AsyncStorage::increment(self.0, key, LONG).await);
            }
            seen
        });
        join_all(callers.collect()).await.concat()
    }
    async fn executes(
        &self,
        request: &Request<'_>,
        callers: usize,
        each: usize,
    ) -> Vec<Result<Snapshot, StorageError>> {
        let callers = (0..callers).map(|_| async move {
            let mut seen = Vec::with_capacity(each);
            for _ in 0..each {
                seen.push(AsyncStorage::execute(self.0, request).await);
            }
            seen
        });
        join_all(callers.collect()).await.concat()
    }
    async fn held_calls<P: Profile>(
        &self,
        breaker: &BreakerOf<Self, P>,
        latch: &Latch,
    ) -> Vec<Called> {
        let callers = (0..latch.expected).map(|_| async move {
            let called = self.call(breaker, Body::Hold(latch)).await;
            if !called.ran {
                latch.arrive();
            }
            called
        });
        join_all(callers.collect()).await
    }
    async fn sleep(&self, duration: Duration) {
        sleep_on_a_thread(duration).await
    }
}

/// Polls every future until all are done; outputs in the futures' order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(context) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// A sleep for any executor: a helper thread wakes the task.
async fn sleep_on_a_thread(duration: Duration) {
    let shared: Arc<Mutex<(bool, Option<Waker>)>> = Arc::default();
    let waker_side = shared.clone();
    std::thread::spawn(move || {
        std::thread::sleep(duration);
        let mut state = waker_side.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = true;
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    });
    std::future::poll_fn(|context| {
        let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 {
            Poll::Ready(())
        } else {
            state.1 = Some(context.waker().clone());
            Poll::Pending
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The checks.

struct Run<'f, F: Flavor> {
    flavor: &'f F,
    clock: Option<ManualClock>,
    threads: usize,
    prefix: String,
    rules: Vec<&'static str>,
}

fn random_prefix() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("kit-{:016x}", hasher.finish())
}

fn broke(rule: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        rule,
        detail: detail.into(),
    }
}

/// Turns a storage error into the failure of the rule being checked.
trait OrBroke<T> {
    fn or_broke(self, rule: &'static str) -> Result<T, Failure>;
}

impl<T> OrBroke<T> for Result<T, StorageError> {
    fn or_broke(self, rule: &'static str) -> Result<T, Failure> {
        self.map_err(|error| broke(rule, format!("the storage failed: {error}")))
    }
}

impl<F: Flavor> Run<'_, F> {
    fn pass(&mut self, rule: &'static str) {
        self.rules.push(rule);
    }

    fn check(
        &mut self,
        rule: &'static str,
        holds: bool,
        detail: impl FnOnce() -> String,
    ) -> Result<(), Failure> {
        if holds {
            if !self.rules.contains(&rule) {
                self.pass(rule);
            }
            Ok(())
        } else {
            Err(broke(rule, detail()))
        }
    }

    /// Lets `duration` pass: the manual clock moves, or the run sleeps.
    async fn wait(&self, duration: Duration) {
        match &self.clock {
            Some(clock) => clock.advance(duration),
            None => self.flavor.sleep(duration).await,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn breaker<P: Profile>(&self, name: &str) -> BreakerOf<F, P> {
        Breaker::keyed(
            Kit {
                storage: self.flavor.storage(),
                profile: PhantomData,
            },
            &self.key(name),
        )
    }

    async fn expect_state<P: Profile>(
        &mut self,
        rule: &'static str,
        breaker: &BreakerOf<F, P>,
        expected: State,
        when: &str,
    ) -> Result<(), Failure> {
        let state = self.flavor.state(breaker).await.or_broke(rule)?;
        self.check(rule, state == expected, || {
            format!("{when}: expected the breaker {expected}, found it {state}")
        })
    }

    async fn expect_call<P: Profile>(
        &mut self,
        rule: &'static str,
        breaker: &BreakerOf<F, P>,
        body: Body<'_>,
        expect_ran: bool,
        when: &str,
    ) -> Result<Called, Failure> {
        let called = self.flavor.call(breaker, body).await;
        self.check(rule, called.ran == expect_ran, || {
            format!(
                "{when}: expected the body {}, but it {} (rejection: {:?})",
                if expect_ran { "to run" } else { "not to run" },
                if called.ran { "ran" } else { "did not" },
                called.rejected
            )
        })?;
        Ok(called)
    }

    async fn primitives(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let ttl = RECOVERY;

        let rule = "get-count-of-absent-key-is-zero";
        let count = flavor
            .get_count(&self.key("p:count"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 0, || format!("get_count returned {count}"))?;

        let rule = "increment-counts-from-one";
        for expected in 1..=3 {
            let got = flavor
                .increment(&self.key("p:count"), LONG)
                .await
                .or_broke(rule)?;
            self.check(rule, got == expected, || {
                format!("increment number {expected} of a new key returned {got}")
            })?;
        }
        let rule = "get-count-reads-the-count";
        let count = flavor
            .get_count(&self.key("p:count"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 3, || {
            format!("after three increments get_count returned {count}")
        })?;

        // Keys whose expiry is checked after one common wait.
        let rule = "increment-creates-with-expiry";
        flavor
            .increment(&self.key("p:expiry"), ttl)
            .await
            .or_broke(rule)?;
        let rule = "increment-keeps-existing-expiry";
        flavor
            .increment(&self.key("p:keep"), ttl)
            .await
            .or_broke(rule)?;
        flavor
            .increment(&self.key("p:keep"), LONG)
            .await
            .or_broke(rule)?;
        let rule = "expire-after-renews";
        flavor
            .increment(&self.key("p:renew"), ttl)
            .await
            .or_broke(rule)?;
        flavor
            .expire_after(&self.key("p:renew"), LONG)
            .await
            .or_broke(rule)?;
        let rule = "expire-after-shortens";
        flavor
            .increment(&self.key("p:shorten"), LONG)
            .await
            .or_broke(rule)?;
        flavor
            .expire_after(&self.key("p:shorten"), ttl)
            .await
            .or_broke(rule)?;
        let rule = "keys-live-until-their-expiry";
        for name in ["p:expiry", "p:keep", "p:shorten"] {
            let count = flavor.get_count(&self.key(name)).await.or_broke(rule)?;
            self.check(rule, count >= 1, || {
                format!("key {name} read {count} right after it was written with a {ttl:?} ttl")
            })?;
        }

        self.wait(ttl + ttl / 2).await;

        let rule = "increment-creates-with-expiry";
        let count = flavor
            .get_count(&self.key("p:expiry"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!(
                "a key created by increment with a {ttl:?} ttl still read {count} after {:?}",
                ttl + ttl / 2
            )
        })?;
        let rule = "expired-key-counts-from-one";
        let got = flavor
            .increment(&self.key("p:expiry"), LONG)
            .await
            .or_broke(rule)?;
        self.check(rule, got == 1, || {
            format!("increment of an expired key returned {got}")
        })?;
        let rule = "increment-keeps-existing-expiry";
        let count = flavor.get_count(&self.key("p:keep")).await.or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!(
                "a key created with a {ttl:?} ttl and incremented again with a longer one still read {count} after {:?}: the second increment moved its expiry",
                ttl + ttl / 2
            )
        })?;
        let rule = "expire-after-renews";
        let count = flavor
            .get_count(&self.key("p:renew"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 1, || {
            format!("a key renewed by expire_after read {count} after its first ttl had passed")
        })?;
        let rule = "expire-after-shortens";
        let count = flavor
            .get_count(&self.key("p:shorten"))
            .await
            .or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!("a key given a {ttl:?} expiry by expire_after still read {count} after it")
        })?;

        let rule = "zero-ttl-deletes";
        let key = self.key("p:delete");
        flavor.increment(&key, LONG).await.or_broke(rule)?;
        flavor.increment(&key, LONG).await.or_broke(rule)?;
        flavor
            .expire_after(&key, Duration::ZERO)
            .await
            .or_broke(rule)?;
        let count = flavor.get_count(&key).await.or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!("after expire_after with a zero ttl get_count returned {count}")
        })?;
        let got = flavor.increment(&key, LONG).await.or_broke(rule)?;
        self.check(rule, got == 1, || {
            format!("increment after a delete returned {got}")
        })?;

        let rule = "expire-after-creates-nothing";
        let key = self.key("p:absent");
        flavor.expire_after(&key, LONG).await.or_broke(rule)?;
        let count = flavor.get_count(&key).await.or_broke(rule)?;
        self.check(rule, count == 0, || {
            format!("expire_after on an absent key made get_count return {count}")
        })?;

        let rule = "increment-is-atomic";
        let key = self.key("p:atomic");
        let each = 25;
        let results = flavor.increments(&key, self.threads, each).await;
        let mut seen = Vec::with_capacity(results.len());
        for result in results {
            seen.push(result.or_broke(rule)?);
        }
        seen.sort_unstable();
        let total = (self.threads * each) as u64;
        let expected: Vec<u64> = (1..=total).collect();
        self.check(rule, seen == expected, || {
            let mut duplicates = seen.clone();
            duplicates.dedup();
            format!(
                "{} concurrent increments returned {} distinct values (largest {:?}); each must return a different count from 1 to {total}",
                total,
                duplicates.len(),
                seen.last()
            )
        })?;
        let count = flavor.get_count(&key).await.or_broke(rule)?;
        self.check(rule, count == total, || {
            format!("after {total} concurrent increments get_count returned {count}")
        })?;
        Ok(())
    }

    async fn execute_level(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let config = Config::of::<Kit<F::S, Burst>>();
        let key = self.key("burst");
        let request = |op| Request::new(&key, op, &config);

        let rule = "concurrent-failures-trip-once";
        let each = 2;
        let callers = self.threads.max(4);
        let results = flavor.executes(&request(Op::Failure), callers, each).await;
        let mut closed_counts = Vec::new();
        for result in results {
            let snapshot = result.or_broke(rule)?;
            match snapshot.state {
                State::Closed => closed_counts.push(snapshot.failures),
                State::Open => {}
                other => {
                    return Err(broke(
                        rule,
                        format!("a failure while closed or open answered {other}"),
                    ));
                }
            }
        }
        closed_counts.sort_unstable();
        let expected: Vec<u64> = (1..u64::from(Burst::THRESHOLD)).collect();
        self.check(rule, closed_counts == expected, || {
            format!(
                "{} concurrent failures with a threshold of {}: the answers that stayed closed counted {closed_counts:?}, expected {expected:?} (each failure counted once, the {}th tripping)",
                callers * each,
                Burst::THRESHOLD,
                Burst::THRESHOLD
            )
        })?;
        let state = flavor
            .execute(&request(Op::Read))
            .await
            .or_broke(rule)?
            .state;
        self.check(rule, state == State::Open, || {
            format!("after the concurrent failures the breaker read {state}")
        })?;

        let rule = "late-failures-do-not-extend-open";
        self.wait(RECOVERY / 2).await;
        for _ in 0..3 {
            let snapshot = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
            self.check(rule, snapshot.state == State::Open, || {
                format!("a failure while open answered {}", snapshot.state)
            })?;
        }
        self.wait(RECOVERY * 3 / 4).await;
        let state = flavor
            .execute(&request(Op::Read))
            .await
            .or_broke(rule)?
            .state;
        self.check(rule, state == State::HalfOpen, || {
            format!(
                "one recovery timeout after the trip the breaker read {state}, not half-open: failures reported while open pushed the open period forward"
            )
        })?;
        self.pass("open-becomes-half-open-after-recovery");

        let rule = "acquire-trial-grants-exactly-k-permits";
        let results = flavor
            .executes(&request(Op::AcquireTrial), callers, 1)
            .await;
        let mut permits = 0;
        for result in results {
            let snapshot = result.or_broke(rule)?;
            self.check(rule, snapshot.state == State::HalfOpen, || {
                format!(
                    "asking for a trial while half-open answered {}",
                    snapshot.state
                )
            })?;
            permits += usize::from(snapshot.permit);
        }
        self.check(rule, permits == Burst::TRIALS as usize, || {
            format!(
                "{callers} concurrent trial requests got {permits} permits, expected {}",
                Burst::TRIALS
            )
        })?;

        let rule = "closing-needs-every-trial";
        let snapshot = flavor
            .execute(&request(Op::TrialSuccess))
            .await
            .or_broke(rule)?;
        self.check(rule, snapshot.state == State::HalfOpen, || {
            format!(
                "after 1 of {} trials succeeded the breaker answered {}",
                Burst::TRIALS,
                snapshot.state
            )
        })?;
        let rule = "all-trials-succeeding-close";
        let snapshot = flavor
            .execute(&request(Op::TrialSuccess))
            .await
            .or_broke(rule)?;
        self.check(
            rule,
            snapshot.state == State::Closed && snapshot.failures == 0,
            || {
                format!(
                    "after every trial succeeded the breaker answered {} with {} failures",
                    snapshot.state, snapshot.failures
                )
            },
        )?;
        let rule = "closing-clears-the-failure-count";
        let snapshot = flavor.execute(&request(Op::Failure)).await.or_broke(rule)?;
        self.check(
            rule,
            snapshot.state == State::Closed && snapshot.failures == 1,
            || {
                format!(
                    "the first failure after closing answered {} with {} failures, expected closed with 1",
                    snapshot.state, snapshot.failures
                )
            },
        )?;
        Ok(())
    }

    async fn consecutive(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let breaker = self.breaker::<Three>("consecutive");

        let rule = "a-success-resets-consecutive-failures";
        for body in [
            Body::Fail,
            Body::Fail,
            Body::Succeed,
            Body::Fail,
            Body::Fail,
        ] {
            self.expect_call(rule, &breaker, body, true, "while closed")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after F F S F F with threshold 3",
        )
        .await?;

        let rule = "consecutive-failures-trip-at-threshold";
        self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
            .await?;
        self.expect_state(rule, &breaker, State::Open, "after three failures in a row")
            .await?;

        let rule = "open-rejects-without-running";
        let called = self
            .expect_call(rule, &breaker, Body::Succeed, false, "while open")
            .await?;
        self.check(
            rule,
            matches!(called.rejected, Some(Rejection::Open)),
            || format!("a call while open was rejected with {:?}", called.rejected),
        )?;

        let rule = "open-becomes-half-open-after-recovery";
        self.wait(RECOVERY + RECOVERY / 4).await;
        self.expect_state(
            rule,
            &breaker,
            State::HalfOpen,
            "one recovery timeout after the trip",
        )
        .await?;

        let rule = "a-failed-trial-reopens";
        self.expect_call(rule, &breaker, Body::Fail, true, "as the trial")
            .await?;
        self.expect_state(rule, &breaker, State::Open, "after the trial failed")
            .await?;
        self.expect_call(
            rule,
            &breaker,
            Body::Succeed,
            false,
            "right after the trial failed",
        )
        .await?;

        let rule = "a-successful-trial-closes";
        self.wait(RECOVERY + RECOVERY / 4).await;
        self.expect_call(
            rule,
            &breaker,
            Body::Succeed,
            true,
            "as the trial after reopening",
        )
        .await?;
        self.expect_state(rule, &breaker, State::Closed, "after the trial succeeded")
            .await?;

        let rule = "closing-clears-the-failure-count";
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "after closing")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after two failures following a close",
        )
        .await?;

        let rule = "errors-that-are-not-failures-are-not-recorded";
        let ignored = self.breaker::<Three>("ignored");
        for _ in 0..5 {
            self.expect_call(
                rule,
                &ignored,
                Body::Ignored,
                true,
                "with errors that do not count",
            )
            .await?;
        }
        self.expect_state(
            rule,
            &ignored,
            State::Closed,
            "after five errors that do not count",
        )
        .await?;

        let rule = "an-unreported-trial-gives-its-permit-back";
        let abandoned = self.breaker::<Three>("abandoned");
        for _ in 0..3 {
            self.expect_call(rule, &abandoned, Body::Fail, true, "while closed")
                .await?;
        }
        self.wait(RECOVERY + RECOVERY / 4).await;
        // An error that does not count ends a trial without reporting an outcome.
        self.expect_call(rule, &abandoned, Body::Ignored, true, "as the trial")
            .await?;
        let next = flavor.call(&abandoned, Body::Succeed).await;
        if !next.ran {
            self.check(
                rule,
                matches!(next.rejected, Some(Rejection::TrialsInProgress)),
                || {
                    format!(
                        "right after an unreported trial a call was rejected with {:?}; expected trials in progress (the lease is held) or a new trial",
                        next.rejected
                    )
                },
            )?;
            self.wait(RECOVERY + RECOVERY / 4).await;
            self.expect_call(
                rule,
                &abandoned,
                Body::Succeed,
                true,
                "one recovery timeout after an unreported trial",
            )
            .await?;
        }
        self.expect_state(
            rule,
            &abandoned,
            State::Closed,
            "after the next trial succeeded",
        )
        .await?;
        let _ = flavor;
        Ok(())
    }

    async fn forced_and_reset(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let breaker = self.breaker::<Three>("forced");

        let rule = "forced-open-rejects";
        flavor
            .control(&breaker, Op::ForceOpen)
            .await
            .or_broke(rule)?;
        self.expect_state(rule, &breaker, State::ForcedOpen, "after force_open")
            .await?;
        let called = self
            .expect_call(rule, &breaker, Body::Succeed, false, "while forced open")
            .await?;
        self.check(
            rule,
            matches!(called.rejected, Some(Rejection::ForcedOpen)),
            || {
                format!(
                    "a call while forced open was rejected with {:?}",
                    called.rejected
                )
            },
        )?;
        let rule = "forced-open-is-sticky";
        self.wait(RECOVERY + RECOVERY / 4).await;
        self.expect_call(
            rule,
            &breaker,
            Body::Succeed,
            false,
            "a recovery timeout after force_open",
        )
        .await?;
        self.expect_state(
            rule,
            &breaker,
            State::ForcedOpen,
            "a recovery timeout after force_open",
        )
        .await?;
        let rule = "reset-ends-forced-open";
        flavor.control(&breaker, Op::Reset).await.or_broke(rule)?;
        self.expect_state(rule, &breaker, State::Closed, "after reset")
            .await?;
        self.expect_call(rule, &breaker, Body::Succeed, true, "after reset")
            .await?;

        let rule = "forced-closed-records-nothing";
        flavor
            .control(&breaker, Op::ForceClosed)
            .await
            .or_broke(rule)?;
        for _ in 0..5 {
            self.expect_call(rule, &breaker, Body::Fail, true, "while forced closed")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::ForcedClosed,
            "after five failures while forced closed",
        )
        .await?;
        let rule = "reset-ends-forced-closed";
        flavor.control(&breaker, Op::Reset).await.or_broke(rule)?;
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "after reset")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after reset and two failures",
        )
        .await?;
        self.expect_call(rule, &breaker, Body::Fail, true, "after reset")
            .await?;
        self.expect_state(
            rule,
            &breaker,
            State::Open,
            "after reset and three failures",
        )
        .await?;

        let rule = "reset-closes-an-open-breaker";
        flavor.control(&breaker, Op::Reset).await.or_broke(rule)?;
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after reset of an open breaker",
        )
        .await?;
        self.expect_call(
            rule,
            &breaker,
            Body::Succeed,
            true,
            "after reset of an open breaker",
        )
        .await?;

        let rule = "reset-clears-counts";
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
                .await?;
        }
        flavor.control(&breaker, Op::Reset).await.or_broke(rule)?;
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "after reset")
                .await?;
        }
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after F F, reset, F F with threshold 3",
        )
        .await?;
        Ok(())
    }

    async fn trials(&mut self) -> Result<(), Failure> {
        let flavor = self.flavor;
        let breaker = self.breaker::<Trials>("trials");
        let trials = Trials::TRIALS as usize;

        let rule = "half-open-admits-exactly-k-trials";
        self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
            .await?;
        self.expect_state(
            rule,
            &breaker,
            State::Open,
            "after a failure with threshold 1",
        )
        .await?;
        self.wait(RECOVERY + RECOVERY / 4).await;
        let callers = self.threads.max(trials + 2);
        let latch = Latch::new(callers);
        let called = flavor.held_calls(&breaker, &latch).await;
        let ran = called.iter().filter(|c| c.ran).count();
        let in_progress = called
            .iter()
            .filter(|c| matches!(c.rejected, Some(Rejection::TrialsInProgress)))
            .count();
        self.check(rule, !latch.timed_out.load(Ordering::Acquire), || {
            "the concurrent callers never all arrived".to_owned()
        })?;
        self.check(
            rule,
            called.len() == callers && ran == trials && in_progress == callers - trials,
            || {
                format!(
                    "{callers} concurrent callers on a half-open breaker with {trials} trials: {ran} ran, {in_progress} were rejected as trials in progress; other rejections: {:?}",
                    called
                        .iter()
                        .filter(|c| !c.ran && !matches!(c.rejected, Some(Rejection::TrialsInProgress)))
                        .map(|c| &c.rejected)
                        .collect::<Vec<_>>()
                )
            },
        )?;
        let rule = "all-trials-succeeding-close";
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after every concurrent trial succeeded",
        )
        .await?;

        let rule = "closing-needs-every-trial";
        self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
            .await?;
        self.wait(RECOVERY + RECOVERY / 4).await;
        for done in 1..trials {
            self.expect_call(rule, &breaker, Body::Succeed, true, "as a trial")
                .await?;
            self.expect_state(
                rule,
                &breaker,
                State::HalfOpen,
                &format!("after {done} of {trials} trials succeeded"),
            )
            .await?;
        }
        let rule = "any-failed-trial-reopens";
        self.expect_call(rule, &breaker, Body::Fail, true, "as the last trial")
            .await?;
        self.expect_state(rule, &breaker, State::Open, "after the last trial failed")
            .await?;
        Ok(())
    }

    async fn windows(&mut self) -> Result<(), Failure> {
        let breaker = self.breaker::<Windowed>("windowed");
        let rule = "count-in-window-forgets-after-a-quiet-window";
        for _ in 0..2 {
            self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
                .await?;
        }
        self.wait(WINDOW + WINDOW / 2).await;
        self.expect_call(rule, &breaker, Body::Fail, true, "after a quiet window")
            .await?;
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "F F, a quiet window, F with threshold 3",
        )
        .await?;
        let rule = "count-in-window-trips-at-threshold";
        self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
            .await?;
        self.expect_state(
            rule,
            &breaker,
            State::Closed,
            "after two failures in the window",
        )
        .await?;
        self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
            .await?;
        self.expect_state(
            rule,
            &breaker,
            State::Open,
            "after three failures in the window",
        )
        .await?;

        let breaker = self.breaker::<Rated>("rated");
        let rule = "rate-trips-at-the-failure-share";
        let steps = [
            (Body::Succeed, State::Closed),
            (Body::Succeed, State::Closed),
            (Body::Succeed, State::Closed),
            (Body::Fail, State::Closed),
            (Body::Fail, State::Closed),
            (Body::Fail, State::Open),
        ];
        for (done, (body, expected)) in steps.into_iter().enumerate() {
            self.expect_call(rule, &breaker, body, true, "while closed")
                .await?;
            self.expect_state(
                rule,
                &breaker,
                expected,
                &format!(
                    "after call {} of S S S F F F with rate 0.5, minimum 4 calls",
                    done + 1
                ),
            )
            .await?;
        }
        let breaker = self.breaker::<Rated>("rated-minimum");
        let rule = "rate-waits-for-minimum-calls";
        for done in 1..=3 {
            self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
                .await?;
            self.expect_state(
                rule,
                &breaker,
                State::Closed,
                &format!("after {done} failures, below the minimum of 4 calls"),
            )
            .await?;
        }
        self.expect_call(rule, &breaker, Body::Fail, true, "while closed")
            .await?;
        self.expect_state(rule, &breaker, State::Open, "after 4 failures in 4 calls")
            .await?;
        Ok(())
    }
}

async fn run<F: Flavor>(flavor: &F, options: Options) -> Result<Report, Failure> {
    let start = Instant::now();
    let mut run = Run {
        flavor,
        clock: options.clock,
        threads: options.threads.max(4),
        prefix: options.prefix.unwrap_or_else(random_prefix),
        rules: Vec::new(),
    };
    run.primitives().await?;
    run.execute_level().await?;
    run.consecutive().await?;
    run.forced_and_reset().await?;
    run.trials().await?;
    run.windows().await?;
    Ok(Report {
        rules: run.rules,
        prefix: run.prefix,
        elapsed: start.elapsed(),
    })
}

/// The same breaker from several processes: a test binary re-runs one of its own tests as
/// child processes, which all talk to the storage the parent checks.
///
/// ```no_run
/// use circuitpy::testing::processes;
/// # fn open_storage() -> &'static circuitpy::MemoryStorage { unimplemented!() }
///
/// #[test]
/// fn fleet() {
///     // The children find the storage the same way the parent does (a path, a URL).
///     processes::check_across_processes(open_storage(), "fleet_child", 4, &[]).unwrap();
/// }
///
/// #[test]
/// #[ignore = "run by fleet() as a child process"]
/// fn fleet_child() {
///     processes::run_child(open_storage());
/// }
/// ```
pub mod processes {
    use std::io::Write;
    use std::process::Command;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::{Failure, Kit, Profile, Report, broke, random_prefix};
    use crate::handler::State;
    use crate::policy::Config;
    use crate::storage::{Op, Request, Storage};

    /// The recovery timeout of the breaker the processes share.
    pub const FLEET_RECOVERY: Duration = Duration::from_secs(2);

    struct Fleet;
    impl Profile for Fleet {
        const KEY: &'static str = "fleet";
        const THRESHOLD: u32 = 20;
        const TRIALS: u32 = 3;
    }

    /// Callers per child process.
    const THREADS: usize = 3;

    fn config<S: Storage + 'static>() -> Config {
        let mut config = Config::of::<Kit<S, Fleet>>();
        config.recovery_timeout = FLEET_RECOVERY;
        config
    }

    fn unix_millis() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    }

    /// Runs one phase in a child process, when this process is one (the parent sets the
    /// environment); does nothing otherwise.
    pub fn run_child<S: Storage + 'static>(storage: &S) {
        let (Ok(phase), Ok(key), Ok(start), Ok(out)) = (
            std::env::var("CIRCUITPY_KIT_PHASE"),
            std::env::var("CIRCUITPY_KIT_KEY"),
            std::env::var("CIRCUITPY_KIT_START"),
            std::env::var("CIRCUITPY_KIT_OUT"),
        ) else {
            return;
        };
        let config = config::<S>();
        let op = if phase == "fail" {
            Op::Failure
        } else {
            Op::AcquireTrial
        };
        let start: u128 = start.parse().unwrap_or(0);
        while unix_millis() < start {
            std::thread::sleep(Duration::from_millis(1));
        }
        let lines: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        let request = Request::new(&key, op, &config);
                        let mut lines = Vec::new();
                        for _ in 0..1000 {
                            let line = match storage.execute(&request) {
                                Ok(snapshot) => match (op, snapshot.state) {
                                    (Op::Failure, State::Closed) => {
                                        format!("closed {}", snapshot.failures)
                                    }
                                    (Op::Failure, State::Open) => "open".to_owned(),
                                    (_, State::HalfOpen) => format!("permit {}", snapshot.permit),
                                    (_, state) => format!("unexpected {state}"),
                                },
                                Err(error) => format!("error {error}"),
                            };
                            let last = op == Op::AcquireTrial || line == "open";
                            lines.push(line);
                            if last {
                                break;
                            }
                        }
                        lines
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().unwrap_or_default())
                .collect()
        });
        let mut file = std::fs::File::create(out).expect("the parent's output file");
        for line in lines {
            writeln!(file, "{line}").expect("the parent's output file");
        }
    }

    fn spawn_phase(
        test: &str,
        processes: usize,
        phase: &str,
        key: &str,
        env: &[(&str, &str)],
    ) -> Result<Vec<String>, Failure> {
        let rule = "processes-ran";
        let exe = std::env::current_exe().map_err(|e| broke(rule, e.to_string()))?;
        let start = unix_millis() + 400;
        let dir = std::env::temp_dir();
        let children: Vec<_> = (0..processes)
            .map(|n| {
                let out = dir.join(format!("{key}-{phase}-{n}.out"));
                let child = Command::new(&exe)
                    .args([
                        test,
                        "--exact",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env("CIRCUITPY_KIT_PHASE", phase)
                    .env("CIRCUITPY_KIT_KEY", key)
                    .env("CIRCUITPY_KIT_START", start.to_string())
                    .env("CIRCUITPY_KIT_OUT", &out)
                    .envs(env.iter().copied())
                    .stdout(std::process::Stdio::null())
                    .spawn();
                (out, child)
            })
            .collect();
        let mut lines = Vec::new();
        for (out, child) in children {
            let status = child
                .and_then(|mut child| child.wait())
                .map_err(|e| broke(rule, format!("could not run a child process: {e}")))?;
            if !status.success() {
                return Err(broke(rule, format!("a child process exited with {status}")));
            }
            let text = std::fs::read_to_string(&out).map_err(|e| {
                broke(
                    rule,
                    format!("the child wrote no result ({e}): is `{test}` an #[ignore]d test calling run_child?"),
                )
            })?;
            let _ = std::fs::remove_file(&out);
            lines.extend(text.lines().map(str::to_owned));
        }
        if let Some(error) = lines.iter().find(|line| {
            !line.starts_with("closed") && !line.starts_with("open") && !line.starts_with("permit")
        }) {
            return Err(broke(rule, format!("a child saw: {error}")));
        }
        Ok(lines)
    }

    /// Runs `processes` copies of the test named `child_test` (which calls [`run_child`]
    /// with the same storage) against one breaker: concurrent failures from every process
    /// trip it at exactly the threshold, and each half-open round admits exactly
    /// `HALF_OPEN_TRIALS` trials across all of them. `env` is added to the children's
    /// environment, to tell them where the storage is.
    pub fn check_across_processes<S: Storage + 'static>(
        storage: &S,
        child_test: &str,
        processes: usize,
        env: &[(&str, &str)],
    ) -> Result<Report, Failure> {
        let started = std::time::Instant::now();
        let prefix = random_prefix();
        let key = format!("{prefix}-fleet");
        let config = config::<S>();
        let request = |op| Request::new(&key, op, &config);
        let mut rules = Vec::new();

        let rule = "processes-trip-at-exactly-the-threshold";
        let lines = spawn_phase(child_test, processes, "fail", &key, env)?;
        let mut closed: Vec<u64> = lines
            .iter()
            .filter_map(|line| line.strip_prefix("closed ")?.parse().ok())
            .collect();
        closed.sort_unstable();
        let expected: Vec<u64> = (1..u64::from(Fleet::THRESHOLD)).collect();
        if closed != expected {
            return Err(broke(
                rule,
                format!(
                    "{processes} processes failing at once: the failures answered closed counted {closed:?}, expected {expected:?}"
                ),
            ));
        }
        let state = storage
            .execute(&request(Op::Read))
            .map_err(|e| broke(rule, e.to_string()))?
            .state;
        if state != State::Open {
            return Err(broke(
                rule,
                format!("after the failures the breaker read {state}"),
            ));
        }
        rules.push(rule);

        let rule = "processes-share-exactly-k-trials-per-round";
        for round in 1..=2 {
            std::thread::sleep(FLEET_RECOVERY + Duration::from_millis(300));
            let lines = spawn_phase(child_test, processes, "acquire", &key, env)?;
            let permits = lines.iter().filter(|line| *line == "permit true").count();
            if permits != Fleet::TRIALS as usize || lines.len() != processes * THREADS {
                return Err(broke(
                    rule,
                    format!(
                        "round {round}: {} trial requests from {processes} processes got {permits} permits, expected {}",
                        lines.len(),
                        Fleet::TRIALS
                    ),
                ));
            }
            if round == 1 {
                let state = storage
                    .execute(&request(Op::TrialFailure))
                    .map_err(|e| broke(rule, e.to_string()))?
                    .state;
                if state != State::Open {
                    return Err(broke(
                        rule,
                        format!("a failed trial left the breaker {state}"),
                    ));
                }
            }
        }
        for _ in 0..Fleet::TRIALS {
            storage
                .execute(&request(Op::TrialSuccess))
                .map_err(|e| broke(rule, e.to_string()))?;
        }
        let state = storage
            .execute(&request(Op::Read))
            .map_err(|e| broke(rule, e.to_string()))?
            .state;
        if state != State::Closed {
            return Err(broke(
                rule,
                format!("after every trial succeeded the breaker read {state}"),
            ));
        }
        rules.push(rule);
        Ok(Report {
            rules,
            prefix,
            elapsed: started.elapsed(),
        })
    }
}
