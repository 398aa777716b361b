//! What happens around a guarded call: admission before the body runs, recording after it.
//! `#[circuit_breaker]` and [`Breaker::call`](crate::Breaker::call) both come here.
//!
//! The in-memory storage decides in this process with the rules of `machine.rs`. A shared
//! storage decides on its server: the local cell only lets a closed breaker pass and an open
//! one reject without a round trip, and adopts whatever the storage replies.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::Ordering;
use std::task::Poll;

use crate::cell::{CellRef, nanos};
use crate::clock::{Clock, Nanos};
use crate::error::{CircuitBreakerOpen, Rejection, StorageError};
use crate::handler::{CircuitBreaker, State};
use crate::machine::{
    Admit, BUCKETS, Outcome, Refusal, Word, admit, closed_success_changes_nothing, settle,
};
use crate::policy::{Config, FailurePolicy, OnStorageFailure};
use crate::storage::{
    AsyncStorage, Backend, Blocking, NonBlocking, Op, Request, Snapshot, Storage, ready,
};

/// A panic caught in a guarded body, to be resumed once it has been recorded.
pub type Panic = Box<dyn Any + Send + 'static>;

/// Handler `H`'s configuration, checked at compile time wherever `H` guards a call.
pub(crate) struct Cfg<H>(PhantomData<H>);

impl<H: CircuitBreaker> Cfg<H> {
    pub(crate) const CONFIG: Config = Config::of::<H>();

    /// Whether the rate policy's buckets are wide enough (100 ms or more) for a success to
    /// be placed in its bucket by the coarse clock, a few milliseconds behind at most,
    /// instead of a system-clock read on every call.
    const COARSE_SUCCESSES: bool = match Self::CONFIG.policy {
        FailurePolicy::Rate { window, .. } => window.as_nanos() / BUCKETS as u128 >= 100_000_000,
        _ => false,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Admitted while closed; the outcome is counted.
    Closed,
    /// Admitted as a half-open trial.
    Trial,
    /// Admitted without the breaker (forced closed, or the storage failed and the policy
    /// let the call through); nothing is recorded.
    Unrecorded,
}

/// A call the breaker admitted. Recording its outcome consumes it; dropping it unrecorded
/// (a cancelled future, a thread that died) gives a trial permit back.
#[must_use = "a guard records the call's outcome when completed"]
pub struct Guard<'a, H: CircuitBreaker> {
    handler: &'a H,
    cell: CellRef<'a>,
    clock: &'a Clock,
    admitted: Word,
    role: Role,
    in_process: bool,
    started: Nanos,
}

impl<H: CircuitBreaker> Drop for Guard<'_, H> {
    fn drop(&mut self) {
        // Shared storages lease permits, and the lease lapses by itself.
        if self.role == Role::Trial && self.in_process {
            settle_in_process(self, Outcome::Abandoned);
        }
    }
}

impl<'a, H: CircuitBreaker> Guard<'a, H> {
    fn new(
        handler: &'a H,
        cell: CellRef<'a>,
        clock: &'a Clock,
        admitted: Word,
        role: Role,
        in_process: bool,
    ) -> Self {
        let started = if Cfg::<H>::CONFIG.slow_call_threshold.is_some() {
            clock.now()
        } else {
            0
        };
        Guard {
            handler,
            cell,
            clock,
            admitted,
            role,
            in_process,
            started,
        }
    }

    fn outcome<T, E: 'static>(&self, result: &Result<Result<T, E>, Panic>) -> Option<Outcome> {
        match result {
            Ok(returned) => self.returned(returned),
            Err(_) => Some(Outcome::Failure { trips: false }),
        }
    }

    #[inline]
    fn returned<T, E: 'static>(&self, result: &Result<T, E>) -> Option<Outcome> {
        let failure = Outcome::Failure { trips: false };
        match result {
            Ok(_) => match Cfg::<H>::CONFIG.slow_call_threshold {
                Some(slow) if self.clock.now().saturating_sub(self.started) > nanos(slow) => {
                    Some(failure)
                }
                _ => Some(Outcome::Success),
            },
            Err(error) if self.handler.is_failure(error) => Some(failure),
            Err(_) => None,
        }
    }

    /// Runs a blocking body on an in-process storage (see [`in_process_blocking`]) and
    /// records its outcome. A panic is not caught: it is recorded as a failure while it
    /// unwinds through here. Catching it would pass the body's result through the memory of
    /// `catch_unwind`, whose read-back stalls on store forwarding on every call.
    #[inline]
    pub fn run_in_process<T, E: 'static>(
        mut self,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E>
    where
        H::Storage: Storage,
    {
        if !self.in_process {
            // An in-process storage hands out a guard that is not in process only for a call
            // it let through unrecorded (an unusable per-call key).
            debug_assert_eq!(self.role, Role::Unrecorded);
            return body();
        }
        /// Records a failure if dropped, that is, if the body unwinds.
        struct Unwinding<'g, 'a, H: CircuitBreaker>(&'g mut Guard<'a, H>);
        impl<H: CircuitBreaker> Drop for Unwinding<'_, '_, H> {
            fn drop(&mut self) {
                record_in_process(self.0, Some(Outcome::Failure { trips: false }));
            }
        }
        let unwinding = Unwinding(&mut self);
        let result = body();
        std::mem::forget(unwinding);
        let outcome = self.returned(&result);
        record_in_process(&mut self, outcome);
        result
    }

    /// Records a blocking call's outcome and returns its result, or resumes its panic.
    pub fn complete<T, E: 'static>(mut self, result: Result<Result<T, E>, Panic>) -> Result<T, E>
    where
        H::Storage: Storage,
    {
        let outcome = self.outcome(&result);
        if self.in_process {
            record_in_process(&mut self, outcome);
        } else {
            let storage = self.handler.storage();
            ready(record_shared(&mut self, &Blocking(storage), outcome));
        }
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Records the outcome of an async call on an in-process storage (see [`in_process`])
    /// without a future, and returns its result, or resumes its panic. Takes the guard by
    /// reference so it is not copied out of the caller's future (dropping it afterwards does
    /// nothing more).
    #[inline]
    pub fn complete_now<T, E: 'static>(
        &mut self,
        result: Result<Result<T, E>, Panic>,
    ) -> Result<T, E>
    where
        H::Storage: AsyncStorage,
    {
        let outcome = self.outcome(&result);
        if self.in_process {
            record_in_process(self, outcome);
        } else {
            // An in-process storage hands out a guard that is not in process only for a call
            // it let through unrecorded (an unusable per-call key).
            debug_assert_eq!(self.role, Role::Unrecorded);
        }
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Records an async call's outcome and returns its result, or resumes its panic.
    pub async fn complete_async<T, E: 'static>(
        mut self,
        result: Result<Result<T, E>, Panic>,
    ) -> Result<T, E>
    where
        H::Storage: AsyncStorage,
    {
        let outcome = self.outcome(&result);
        if self.in_process {
            record_in_process(&mut self, outcome);
        } else {
            let storage = self.handler.storage();
            record_shared(&mut self, &NonBlocking(storage), outcome).await;
        }
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }
}

/// Runs a blocking body, catching a panic so it can be recorded before it resumes.
#[inline]
pub fn catch<R>(body: impl FnOnce() -> R) -> Result<R, Panic> {
    catch_unwind(AssertUnwindSafe(body))
}

/// Runs an async body, catching a panic from any of its polls.
pub async fn catch_async<F: Future>(body: F) -> Result<F::Output, Panic> {
    let mut body = std::pin::pin!(body);
    std::future::poll_fn(move |context| {
        match catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(context))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
    .await
}

/// Admission for a blocking call. Always inlined: where one handler guards several
/// functions the compiler would otherwise share one out-of-line copy among them.
#[inline(always)]
pub fn enter<'a, H>(
    handler: &'a H,
    site: &'a crate::cell::Site,
    key: Option<&str>,
    method: &'static str,
) -> Result<Guard<'a, H>, CircuitBreakerOpen>
where
    H: CircuitBreaker,
    H::Storage: Storage,
{
    let storage = handler.storage();
    let clock = Storage::clock(storage);
    let cell = match site
        .family::<H>(storage, Storage::__registry(storage))
        .cell(key)
    {
        Ok(cell) => cell,
        Err(error) => return storage_failed_before_call(handler, None, clock, method, error),
    };
    if <H::Storage as Storage>::__IN_PROCESS {
        enter_in_process(handler, cell, clock, method)
    } else {
        ready(enter_shared(
            handler,
            &Blocking(storage),
            clock,
            cell,
            method,
        ))
    }
}

/// Whether handler `H`'s blocking storage decides in this process, so that a blocking call
/// can run through [`Guard::run_in_process`]; a constant.
#[inline(always)]
pub const fn in_process_blocking<H>() -> bool
where
    H: CircuitBreaker,
    H::Storage: Storage,
{
    <H::Storage as Storage>::__IN_PROCESS
}

/// Whether handler `H`'s async storage decides in this process, so that an async call can
/// be admitted with [`enter_now`] and recorded with [`Guard::complete_now`], awaiting
/// nothing; a constant.
#[inline(always)]
pub const fn in_process<H>() -> bool
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
{
    <H::Storage as AsyncStorage>::__IN_PROCESS
}

/// Admission for an async call on an in-process storage (see [`in_process`]), without a
/// future to poll.
#[inline]
pub fn enter_now<'a, H>(
    handler: &'a H,
    site: &'a crate::cell::Site,
    key: Option<&str>,
    method: &'static str,
) -> Result<Guard<'a, H>, CircuitBreakerOpen>
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
{
    debug_assert!(in_process::<H>(), "enter_now needs an in-process storage");
    let storage = handler.storage();
    let clock = AsyncStorage::clock(storage);
    match site
        .family::<H>(storage, AsyncStorage::__registry(storage))
        .cell(key)
    {
        Ok(cell) => enter_in_process(handler, cell, clock, method),
        Err(error) => storage_failed_before_call(handler, None, clock, method, error),
    }
}

/// Admission for an async call.
#[inline]
pub async fn enter_async<'a, H>(
    handler: &'a H,
    site: &'a crate::cell::Site,
    key: Option<&str>,
    method: &'static str,
) -> Result<Guard<'a, H>, CircuitBreakerOpen>
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
{
    let storage = handler.storage();
    let clock = AsyncStorage::clock(storage);
    let cell = match site
        .family::<H>(storage, AsyncStorage::__registry(storage))
        .cell(key)
    {
        Ok(cell) => cell,
        Err(error) => return storage_failed_before_call(handler, None, clock, method, error),
    };
    if <H::Storage as AsyncStorage>::__IN_PROCESS {
        enter_in_process(handler, cell, clock, method)
    } else {
        enter_shared(handler, &NonBlocking(storage), clock, cell, method).await
    }
}

// Always inlined: a guard returned through memory and read back at once stalls on store
// forwarding, which cost more than the rest of an async call's admission.
#[inline(always)]
pub(crate) fn enter_in_process<'a, H: CircuitBreaker>(
    handler: &'a H,
    cell: CellRef<'a>,
    clock: &'a Clock,
    method: &'static str,
) -> Result<Guard<'a, H>, CircuitBreakerOpen> {
    let mut word = cell.load();
    loop {
        let decision = match word.phase() {
            // The closed path reads no clock.
            State::Closed => Admit::Pass,
            _ => admit(word, clock.coarse_now(), Cfg::<H>::CONFIG.half_open_trials),
        };
        match decision {
            Admit::Pass => {
                let role = if word.phase() == State::Closed {
                    Role::Closed
                } else {
                    Role::Unrecorded
                };
                return Ok(Guard::new(handler, cell, clock, word, role, true));
            }
            Admit::Reject(refusal) => {
                return Err(reject(handler, &cell, method, word, refusal));
            }
            Admit::Trial(next) => match cell.compare_exchange(word, next) {
                Ok(_) => {
                    notify(handler, &cell, word, next);
                    return Ok(Guard::new(handler, cell, clock, next, Role::Trial, true));
                }
                Err(actual) => word = actual,
            },
        }
    }
}

pub(crate) async fn enter_shared<'a, H: CircuitBreaker, B: Backend>(
    handler: &'a H,
    backend: &B,
    clock: &'a Clock,
    cell: CellRef<'a>,
    method: &'static str,
) -> Result<Guard<'a, H>, CircuitBreakerOpen> {
    let word = cell.load();
    match word.phase() {
        // A view this process has never refreshed is asked for once: a new process must not
        // run calls against a breaker the rest of the fleet opened. After that, every reply
        // refreshes the view.
        State::Closed | State::ForcedClosed if cell.synced_at.load(Ordering::Relaxed) != 0 => {
            return Ok(Guard::new(handler, cell, clock, word, Role::Closed, false));
        }
        State::Closed | State::ForcedClosed => {}
        State::Open | State::ForcedOpen => {
            let refusal = if word.phase() == State::Open {
                Refusal::Open
            } else {
                Refusal::ForcedOpen
            };
            if word
                .deadline()
                .is_some_and(|deadline| clock.coarse_now() < deadline)
            {
                return Err(reject(handler, &cell, method, word, refusal));
            }
        }
        State::HalfOpen => {}
    }
    let config = &Cfg::<H>::CONFIG;
    match backend
        .execute(&Request::new(cell.key.as_str(), Op::AcquireTrial, config))
        .await
    {
        Ok(snapshot) => {
            let word = adopt(handler, &cell, clock, &snapshot);
            let refusal = match snapshot.state {
                State::Closed | State::ForcedClosed => {
                    return Ok(Guard::new(handler, cell, clock, word, Role::Closed, false));
                }
                State::HalfOpen if snapshot.permit => {
                    return Ok(Guard::new(handler, cell, clock, word, Role::Trial, false));
                }
                State::HalfOpen => Refusal::TrialsInProgress,
                State::Open => Refusal::Open,
                State::ForcedOpen => Refusal::ForcedOpen,
            };
            Err(reject(handler, &cell, method, word, refusal))
        }
        Err(error) => storage_failed_before_call(handler, Some(cell), clock, method, error),
    }
}

/// The storage failed before the call: the handler's policy lets the call through
/// unrecorded or rejects it.
pub(crate) fn storage_failed_before_call<'a, H: CircuitBreaker>(
    handler: &'a H,
    cell: Option<CellRef<'a>>,
    clock: &'a Clock,
    method: &'static str,
    error: StorageError,
) -> Result<Guard<'a, H>, CircuitBreakerOpen> {
    handler.on_storage_error(
        cell.as_ref()
            .map_or(H::FAILURE_KEY, |cell| cell.key.as_str()),
        &error,
    );
    match (Cfg::<H>::CONFIG.on_storage_failure, cell) {
        (OnStorageFailure::Allow, Some(cell)) => {
            let word = cell.load();
            Ok(Guard::new(
                handler,
                cell,
                clock,
                word,
                Role::Unrecorded,
                false,
            ))
        }
        (OnStorageFailure::Allow, None) => {
            // No cell for an unusable key: the call runs against a throwaway one.
            let cell = CellRef::Shared(std::sync::Arc::new(crate::cell::Cell::detached(
                H::FAILURE_KEY,
            )));
            Ok(Guard::new(
                handler,
                cell,
                clock,
                Word::CLOSED,
                Role::Unrecorded,
                false,
            ))
        }
        (OnStorageFailure::Reject, cell) => {
            let rejection = CircuitBreakerOpen {
                key: cell.map_or(crate::key::Key::Static(H::FAILURE_KEY), |cell| {
                    cell.key.clone()
                }),
                method,
                opened_at: None,
                retry_at: None,
                reason: Rejection::StorageFailed(Box::new(error)),
            };
            handler.on_rejected(&rejection);
            Err(rejection)
        }
    }
}

fn reject<H: CircuitBreaker>(
    handler: &H,
    cell: &CellRef<'_>,
    method: &'static str,
    word: Word,
    refusal: Refusal,
) -> CircuitBreakerOpen {
    let recovery = nanos(Cfg::<H>::CONFIG.recovery_timeout);
    let deadline = word.deadline();
    let rejection = CircuitBreakerOpen {
        key: cell.key.clone(),
        method,
        opened_at: match refusal {
            Refusal::Open => deadline.map(|deadline| deadline.saturating_sub(recovery)),
            _ => None,
        },
        retry_at: match refusal {
            Refusal::Open => deadline,
            _ => None,
        },
        reason: match refusal {
            Refusal::Open => Rejection::Open,
            Refusal::TrialsInProgress => Rejection::TrialsInProgress,
            Refusal::ForcedOpen => Rejection::ForcedOpen,
        },
    };
    handler.on_rejected(&rejection);
    rejection
}

fn notify<H: CircuitBreaker>(handler: &H, cell: &CellRef<'_>, from: Word, to: Word) {
    if from.phase() != to.phase() {
        handler.on_state_change(cell.key.as_str(), from.phase(), to.phase());
    }
}

/// Adopts a shared storage's reply in the local cell.
pub(crate) fn adopt<H: CircuitBreaker>(
    handler: &H,
    cell: &CellRef<'_>,
    clock: &Clock,
    snapshot: &Snapshot,
) -> Word {
    let (from, to) = cell.mirror(snapshot, clock.now(), &Cfg::<H>::CONFIG);
    notify(handler, cell, from, to);
    to
}

#[inline]
fn record_in_process<H: CircuitBreaker>(guard: &mut Guard<'_, H>, outcome: Option<Outcome>) {
    let role = std::mem::replace(&mut guard.role, Role::Unrecorded);
    match (role, outcome) {
        (Role::Unrecorded, _) => {}
        // The common case: one load, no store, no clock.
        (Role::Closed, Some(Outcome::Success))
            if matches!(Cfg::<H>::CONFIG.policy, FailurePolicy::Consecutive)
                && closed_success_changes_nothing(guard.cell.load(), guard.admitted) => {}
        (Role::Trial, None) => settle_in_process(guard, Outcome::Abandoned),
        (Role::Closed, None) => {}
        (_, Some(outcome)) => settle_in_process(guard, outcome),
    }
}

fn settle_in_process<H: CircuitBreaker>(guard: &Guard<'_, H>, outcome: Outcome) {
    let config = &Cfg::<H>::CONFIG;
    let cell = &guard.cell;
    let failed = matches!(outcome, Outcome::Failure { .. });
    let in_window = guard.admitted.phase() == State::Closed
        && match config.policy {
            FailurePolicy::Consecutive => false,
            FailurePolicy::CountInWindow { .. } => failed,
            FailurePolicy::Rate { .. } => outcome != Outcome::Abandoned,
        };
    // Consecutive-policy successes read no clock; rate-policy successes the coarse one when
    // its buckets are wide. A failure may open the breaker, so it reads the precise clock.
    let now = if failed {
        guard.clock.now()
    } else if in_window && Cfg::<H>::COARSE_SUCCESSES {
        guard.clock.coarse_now()
    } else if in_window {
        guard.clock.now()
    } else {
        0
    };
    let outcome = if in_window {
        // Only while the breaker is still in the closed period the call was admitted in: an
        // outcome from before it last opened must not count towards the next trip. Checked
        // under the window's lock, which a phase change takes to clear the window.
        let trips = {
            let mut window = cell.window();
            let current = cell.load();
            if current.phase() == State::Closed
                && current.generation() == guard.admitted.generation()
            {
                window.record(config, now, failed)
            } else {
                false
            }
        };
        if failed {
            Outcome::Failure { trips }
        } else {
            // A success counted in a window changes nothing else.
            return;
        }
    } else {
        outcome
    };
    let mut word = cell.load();
    while let Some(next) = settle(word, guard.admitted, outcome, config, now) {
        match cell.compare_exchange(word, next) {
            Ok(_) => {
                if next.phase() != word.phase() {
                    cell.clear_window();
                }
                notify(guard.handler, cell, word, next);
                return;
            }
            Err(actual) => word = actual,
        }
    }
}

async fn record_shared<H: CircuitBreaker, B: Backend>(
    guard: &mut Guard<'_, H>,
    backend: &B,
    outcome: Option<Outcome>,
) {
    let config = &Cfg::<H>::CONFIG;
    let role = std::mem::replace(&mut guard.role, Role::Unrecorded);
    let op = match (role, outcome) {
        (Role::Closed, Some(Outcome::Success)) => {
            if let Some(interval) = config.sync_interval
                && hold_back_success(guard, interval)
            {
                return;
            }
            Op::Success
        }
        (Role::Closed, Some(Outcome::Failure { .. })) => Op::Failure,
        (Role::Trial, Some(Outcome::Success)) => Op::TrialSuccess,
        (Role::Trial, Some(Outcome::Failure { .. })) => Op::TrialFailure,
        _ => return,
    };
    let cell = &guard.cell;
    let mut request = Request::new(cell.key.as_str(), op, config);
    if op == Op::Success && config.sync_interval.is_some() {
        request = request.with_count(1 + cell.unreported_successes.swap(0, Ordering::Relaxed));
    }
    match backend.execute(&request).await {
        Ok(snapshot) => {
            adopt(guard.handler, cell, guard.clock, &snapshot);
        }
        Err(error) => guard.handler.on_storage_error(cell.key.as_str(), &error),
    }
}

/// Local mode: whether a closed success may go unreported for now. It may while the last
/// reply is younger than the interval and left no failure count that this success must
/// reset; the rate policy still needs it counted, so it is held back for the next report.
fn hold_back_success<H: CircuitBreaker>(
    guard: &Guard<'_, H>,
    interval: std::time::Duration,
) -> bool {
    let cell = &guard.cell;
    let word = cell.load();
    let policy = Cfg::<H>::CONFIG.policy;
    if word.phase() != State::Closed
        || (policy == FailurePolicy::Consecutive && word.failures() != 0)
    {
        return false;
    }
    let fresh = guard.clock.coarse_now()
        < cell
            .synced_at
            .load(Ordering::Relaxed)
            .saturating_add(nanos(interval));
    if fresh && matches!(policy, FailurePolicy::Rate { .. }) {
        cell.unreported_successes.fetch_add(1, Ordering::Relaxed);
    }
    fresh
}

#[cfg(test)]
mod tests {
    use std::panic::catch_unwind;
    use std::sync::LazyLock;
    use std::time::Duration;

    use crate::{
        Breaker, CircuitBreaker, CircuitBreakerOpen, ManualClock, MemoryStorage, State,
        circuit_breaker,
    };

    static CLOCK: LazyLock<ManualClock> = LazyLock::new(ManualClock::new);
    static STORAGE: LazyLock<MemoryStorage> =
        LazyLock::new(|| MemoryStorage::with_clock(CLOCK.clock()));

    struct Panicky;
    impl CircuitBreaker for Panicky {
        const FAILURE_THRESHOLD: u32 = 2;
        const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
        const FAILURE_KEY: &'static str = "engine_panicky";
        type Storage = MemoryStorage;
        fn storage(&self) -> &MemoryStorage {
            &STORAGE
        }
    }

    #[derive(Debug)]
    struct Rejected;
    impl From<CircuitBreakerOpen> for Rejected {
        fn from(_: CircuitBreakerOpen) -> Self {
            Rejected
        }
    }

    #[circuit_breaker(handler = Panicky, crate = "crate")]
    fn guarded(panic: bool) -> Result<u32, Rejected> {
        if panic {
            panic!("the body panicked");
        }
        Ok(1)
    }

    struct Timed;
    impl CircuitBreaker for Timed {
        const FAILURE_THRESHOLD: u32 = 1;
        const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
        const FAILURE_KEY: &'static str = "engine_timed";
        type Storage = MemoryStorage;
        fn storage(&self) -> &MemoryStorage {
            &STORAGE
        }
    }

    #[derive(Debug)]
    enum Failed {
        Down,
        Open(CircuitBreakerOpen),
    }
    impl From<CircuitBreakerOpen> for Failed {
        fn from(open: CircuitBreakerOpen) -> Self {
            Failed::Open(open)
        }
    }

    #[test]
    fn a_rejection_says_when_the_breaker_opened_and_when_to_retry() {
        let breaker = Breaker::new(Timed);
        let failed: Result<(), Failed> = breaker.call(|| Err(Failed::Down));
        assert!(matches!(failed, Err(Failed::Down)));
        let Err(Failed::Open(open)) = breaker.call(|| Ok::<(), Failed>(())) else {
            panic!("the open breaker ran the call");
        };
        assert!(open.reason().is_open());
        let (opened_at, retry_at) = (open.opened_at().unwrap(), open.retry_at().unwrap());
        assert_eq!(
            retry_at.duration_since(opened_at).unwrap(),
            Timed::RECOVERY_TIMEOUT
        );
    }

    #[test]
    fn an_uncaught_panic_on_the_in_process_path_is_a_failure_and_keeps_unwinding() {
        let breaker = Breaker::new(Panicky);
        assert!(catch_unwind(|| guarded(true)).is_err());
        assert_eq!(breaker.state().unwrap(), State::Closed);
        // A success resets the count, so only consecutive panics trip.
        assert_eq!(guarded(false).unwrap(), 1);
        assert!(catch_unwind(|| guarded(true)).is_err());
        assert!(catch_unwind(|| guarded(true)).is_err());
        assert_eq!(breaker.state().unwrap(), State::Open);
        assert!(guarded(false).is_err(), "open rejects");

        // A trial that panics opens the breaker again.
        CLOCK.advance(Duration::from_secs(2));
        assert!(catch_unwind(|| guarded(true)).is_err());
        assert_eq!(breaker.state().unwrap(), State::Open);
        CLOCK.advance(Duration::from_secs(2));
        assert_eq!(guarded(false).unwrap(), 1);
        assert_eq!(breaker.state().unwrap(), State::Closed);
    }
}
