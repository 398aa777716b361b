//! The kit's machinery: the handlers it checks storages with, the two flavours (blocking
//! and async) it drives them through, and a run's bookkeeping. The rules themselves are in
//! `checks/`.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::{Failure, LATCH_TIMEOUT, LONG, Options, RECOVERY, Report};
use crate::breaker::Breaker;
use crate::clock::ManualClock;
use crate::error::{CircuitBreakerOpen, Rejection, StorageError};
use crate::handler::{CircuitBreaker, State};
use crate::policy::{Backoff, FailurePolicy};
use crate::storage::backend::{Backend, ready};
use crate::storage::{AsyncStorage, Op, Request, Snapshot, Storage};

// The kit's handlers.

pub(crate) trait Profile: 'static {
    const KEY: &'static str;
    const THRESHOLD: u32;
    const TRIALS: u32 = 1;
    const POLICY: FailurePolicy = FailurePolicy::Consecutive;
    const BACKOFF: Backoff = Backoff::OFF;
    const JITTER: f64 = 0.0;
    const QUORUM: u32 = 1;
    const RECOVERY: Duration = RECOVERY;
}

/// Consecutive failures, threshold 3, one trial.
pub(crate) struct Three;
impl Profile for Three {
    const KEY: &'static str = "three";
    const THRESHOLD: u32 = 3;
}

/// Threshold 5, two trials: the execute-level checks.
pub(crate) struct Burst;
impl Profile for Burst {
    const KEY: &'static str = "burst";
    const THRESHOLD: u32 = 5;
    const TRIALS: u32 = 2;
}

/// Trips on the first failure, three trials.
pub(crate) struct Trials;
impl Profile for Trials {
    const KEY: &'static str = "trials";
    const THRESHOLD: u32 = 1;
    const TRIALS: u32 = 3;
}

/// Trips on the first failure, one trial: the round checks.
pub(crate) struct Single;
impl Profile for Single {
    const KEY: &'static str = "single";
    const THRESHOLD: u32 = 1;
}

/// Trips on the first failure; each failed trial round doubles the open time, up to four
/// recovery timeouts.
pub(crate) struct Backing;
impl Profile for Backing {
    const KEY: &'static str = "backing";
    const THRESHOLD: u32 = 1;
    const BACKOFF: Backoff = Backoff::exponential(2.0, Duration::from_millis(1000));
}

/// Trips on the first failure; each opening shortened by up to half its length.
pub(crate) struct Spread;
impl Profile for Spread {
    const KEY: &'static str = "spread";
    const THRESHOLD: u32 = 1;
    const JITTER: f64 = 0.5;
}

/// Threshold 3, counted from at least two processes.
pub(crate) struct Quorate;
impl Profile for Quorate {
    const KEY: &'static str = "quorate";
    const THRESHOLD: u32 = 3;
    const QUORUM: u32 = 2;
}

pub(crate) const WINDOW: Duration = Duration::from_millis(400);

pub(crate) struct Windowed;
impl Profile for Windowed {
    const KEY: &'static str = "windowed";
    const THRESHOLD: u32 = 3;
    const POLICY: FailurePolicy = FailurePolicy::CountInWindow { window: WINDOW };
}

pub(crate) struct Rated;
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
pub(crate) struct Kit<S: 'static, P> {
    pub(crate) storage: &'static S,
    pub(crate) profile: PhantomData<fn() -> P>,
}

impl<S: Send + Sync + 'static, P: Profile> CircuitBreaker for Kit<S, P> {
    const FAILURE_THRESHOLD: u32 = P::THRESHOLD;
    const RECOVERY_TIMEOUT: Duration = P::RECOVERY;
    const FAILURE_KEY: &'static str = P::KEY;
    const HALF_OPEN_TRIALS: u32 = P::TRIALS;
    const FAILURE_POLICY: FailurePolicy = P::POLICY;
    const RECOVERY_BACKOFF: Backoff = P::BACKOFF;
    const RECOVERY_JITTER: f64 = P::JITTER;
    const QUORUM: u32 = P::QUORUM;
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
pub(crate) enum KitError {
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
pub(crate) enum Body<'a> {
    Succeed,
    Fail,
    Ignored,
    /// Waits until every concurrent caller has either started its body or been rejected,
    /// then succeeds.
    Hold(&'a Latch),
}

/// How a guarded call went.
#[derive(Clone, Debug)]
pub(crate) struct Called {
    pub(crate) ran: bool,
    pub(crate) rejected: Option<Rejection>,
}

impl Called {
    pub(crate) fn new(ran: bool, result: Result<(), KitError>) -> Self {
        Called {
            ran,
            rejected: match result {
                Err(KitError::Open(open)) => Some(open.reason().clone()),
                _ => None,
            },
        }
    }
}

pub(crate) fn body_result(body: Body<'_>) -> Result<(), KitError> {
    match body {
        Body::Succeed => Ok(()),
        Body::Fail => Err(KitError::Failed),
        Body::Ignored => Err(KitError::Ignored),
        Body::Hold(_) => Ok(()),
    }
}

/// Counts callers that have started their body or been rejected.
pub(crate) struct Latch {
    pub(crate) expected: usize,
    pub(crate) arrived: AtomicUsize,
    pub(crate) timed_out: AtomicBool,
}

impl Latch {
    pub(crate) fn new(expected: usize) -> Self {
        Latch {
            expected,
            arrived: AtomicUsize::new(0),
            timed_out: AtomicBool::new(false),
        }
    }

    pub(crate) fn arrive(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn full(&self) -> bool {
        self.arrived.load(Ordering::Acquire) >= self.expected
    }

    pub(crate) fn wait_blocking(&self) {
        let start = Instant::now();
        while !self.full() {
            if start.elapsed() > LATCH_TIMEOUT {
                self.timed_out.store(true, Ordering::Release);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub(crate) async fn wait_async(&self) {
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

// The two flavours the checks run on.

pub(crate) type BreakerOf<F, P> = Breaker<Kit<<F as Flavor>::S, P>>;

#[allow(async_fn_in_trait)]
pub(crate) trait Flavor: Sync {
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
    /// Runs each request on a caller of its own, all at once.
    async fn concurrently(&self, requests: &[Request<'_>]) -> Vec<Result<Snapshot, StorageError>>;
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

pub(crate) struct Blocking<S: 'static>(pub(crate) &'static S);
pub(crate) struct Async<S: 'static>(pub(crate) &'static S);

impl<S: Storage + 'static> Flavor for Blocking<S> {
    type S = S;
    fn storage(&self) -> &'static S {
        self.0
    }
    fn backend(&self) -> impl Backend {
        crate::storage::backend::Blocking(self.0)
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
    async fn concurrently(&self, requests: &[Request<'_>]) -> Vec<Result<Snapshot, StorageError>> {
        let barrier = std::sync::Barrier::new(requests.len());
        std::thread::scope(|scope| {
            let handles: Vec<_> = requests
                .iter()
                .map(|request| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        Storage::execute(self.0, request)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(StorageError::invalid_data("kit", "panicked")))
                })
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

impl<S: AsyncStorage + 'static> Flavor for Async<S> {
    type S = S;
    fn storage(&self) -> &'static S {
        self.0
    }
    fn backend(&self) -> impl Backend {
        crate::storage::backend::Async(self.0)
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
    async fn concurrently(&self, requests: &[Request<'_>]) -> Vec<Result<Snapshot, StorageError>> {
        let callers = requests
            .iter()
            .map(|request| AsyncStorage::execute(self.0, request));
        join_all(callers.collect()).await
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
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
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
pub(crate) async fn sleep_on_a_thread(duration: Duration) {
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

// A run.

pub(crate) struct Run<'f, F: Flavor> {
    pub(crate) flavor: &'f F,
    pub(crate) clock: Option<ManualClock>,
    pub(crate) threads: usize,
    pub(crate) prefix: String,
    pub(crate) rules: Vec<&'static str>,
}

pub(crate) fn random_prefix() -> String {
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

pub(crate) fn broke(rule: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        rule,
        detail: detail.into(),
    }
}

/// Turns a storage error into the failure of the rule being checked.
pub(crate) trait OrBroke<T> {
    fn or_broke(self, rule: &'static str) -> Result<T, Failure>;
}

impl<T> OrBroke<T> for Result<T, StorageError> {
    fn or_broke(self, rule: &'static str) -> Result<T, Failure> {
        self.map_err(|error| broke(rule, format!("the storage failed: {error}")))
    }
}

impl<F: Flavor> Run<'_, F> {
    pub(crate) fn pass(&mut self, rule: &'static str) {
        self.rules.push(rule);
    }

    pub(crate) fn check(
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
    pub(crate) async fn wait(&self, duration: Duration) {
        match &self.clock {
            Some(clock) => clock.advance(duration),
            None => self.flavor.sleep(duration).await,
        }
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub(crate) fn breaker<P: Profile>(&self, name: &str) -> BreakerOf<F, P> {
        Breaker::keyed(
            Kit {
                storage: self.flavor.storage(),
                profile: PhantomData,
            },
            &self.key(name),
        )
    }

    pub(crate) async fn expect_state<P: Profile>(
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

    /// A call with `body` that must run or be rejected (`call.1`; `ran_when` says when),
    /// then the state it must leave.
    pub(crate) async fn call_then_expect<P: Profile>(
        &mut self,
        call: (Body<'_>, bool),
        rule: &'static str,
        breaker: &BreakerOf<F, P>,
        ran_when: &str,
        expected: State,
        when: &str,
    ) -> Result<(), Failure> {
        let (body, expect_ran) = call;
        self.expect_call(rule, breaker, body, expect_ran, ran_when)
            .await?;
        self.expect_state(rule, breaker, expected, when).await
    }

    pub(crate) async fn expect_call<P: Profile>(
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
}

pub(crate) async fn run<F: Flavor>(flavor: &F, options: Options) -> Result<Report, Failure> {
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
    run.backoff().await?;
    run.jitter().await?;
    run.overrides().await?;
    run.quorum().await?;
    run.consecutive().await?;
    run.forced_and_reset().await?;
    run.trials().await?;
    run.windows().await?;
    run.counts_and_rounds().await?;
    run.expiries().await?;
    Ok(Report {
        rules: run.rules,
        prefix: run.prefix,
        elapsed: start.elapsed(),
    })
}
