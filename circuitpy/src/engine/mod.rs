//! What happens around a guarded call: admission before the body runs, recording after it.
//! `#[circuit_breaker]`, [`Breaker`](crate::Breaker) and the integrations all come through
//! here, by one path for both flavours and every storage.
//!
//! The in-memory storage decides in this process with the rules of `rules/word.rs`. A shared
//! storage decides on its server: the local view only lets a closed breaker pass and an open
//! one reject without a round trip, and adopts whatever the storage replies.
//!
//! Hooks run after the breaker's state is settled and cannot break it: a hook that panics
//! is caught (the process's panic hook still reports it) and the call goes on.

use std::any::Any;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use crate::admin::Audit;
use crate::clock::{Clock, Nanos};
use crate::error::{CircuitBreakerOpen, Rejection, StorageError};
use crate::handler::{CircuitBreaker, State};
use crate::key::Key;
use crate::policy::{Config, FailurePolicy, OnStorageFailure};
use crate::rules::word::{Admit, Report, Word, admit, closed_success_changes_nothing, settle};
use crate::rules::{bucket_width, nanos};
use crate::storage::backend::{Async, Backend, Blocking, ready};
use crate::storage::{AsyncStorage, Op, Request, Snapshot, Storage};

pub(crate) mod view;

use view::{Cell, CellRef, Family, decided_here};

/// A panic caught in a guarded body, to be resumed once it has been recorded.
pub type Panic = Box<dyn Any + Send + 'static>;

/// A handler's consts, validated at compile time wherever the handler is used.
pub(crate) trait Configured: CircuitBreaker {
    const CONFIG: Config;
}

impl<H: CircuitBreaker> Configured for H {
    const CONFIG: Config = Config::of::<H>();
}

/// How often a view whose storage is failing asks it again: at most once per storage
/// timeout, and no more than ten times a second.
fn probe_interval(config: &Config) -> Duration {
    config.storage_timeout.max(Duration::from_millis(100))
}

/// How a call's outcome counts.
///
/// ```
/// assert_ne!(circuitpy::Outcome::Success, circuitpy::Outcome::Ignored);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed in a way that counts against the dependency.
    Failure,
    /// The call ended in a way that says nothing about the dependency (an error the handler
    /// does not count, a request cancelled by its caller): nothing is recorded, and a trial
    /// gives its permit back.
    Ignored,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Admitted while closed; the outcome is counted.
    Closed,
    /// Admitted as a half-open trial.
    Trial,
    /// Admitted without the breaker (the storage failed and the policy let the call
    /// through, or the key was unusable); nothing is recorded.
    Unrecorded,
}

/// A call the breaker let through, whose outcome it waits for.
///
/// `#[circuit_breaker]` and [`Breaker::call`](crate::Breaker::call) handle permits for
/// you; [`Breaker::acquire`](crate::Breaker::acquire) hands one out for code that runs
/// the call itself (a middleware, a connection pool). Record its outcome with
/// [`record`](Permit::record) (or [`record_async`](Permit::record_async)). A permit
/// dropped unrecorded records nothing; a trial permit then goes back to the breaker at
/// once in memory, and lapses after one recovery timeout on a shared storage.
///
/// ```
/// # use std::sync::LazyLock;
/// # use std::time::Duration;
/// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage, Outcome, State};
/// # static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
/// # struct Api;
/// # impl CircuitBreaker for Api {
/// #   const FAILURE_THRESHOLD: u32 = 1;
/// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// #   const FAILURE_KEY: &'static str = "api";
/// #   type Storage = MemoryStorage;
/// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
/// # }
/// let breaker = Breaker::new(Api);
/// let permit = breaker.acquire().expect("closed");
/// // ... make the call ...
/// permit.record(Outcome::Failure);
/// assert_eq!(breaker.state().unwrap(), State::Open);
/// assert!(breaker.acquire().is_err());
/// ```
#[must_use = "a permit records the call's outcome when given one"]
pub struct Permit<'a, H: CircuitBreaker> {
    handler: &'a H,
    /// The breaker; taken only when the permit is consumed.
    cell: Option<CellRef<'a>>,
    clock: &'a Clock,
    /// The word the call was admitted under (the trial word for in-process trials).
    admitted: Word,
    role: Role,
    /// A shared trial's round.
    round: u64,
    /// When the call started, if the handler times calls.
    started: Nanos,
}

/// A [`Permit`] without its references: the cell of a per-call key (none for the breaker's
/// own), and how the call was admitted. Nothing happens when it is dropped; whoever holds
/// one gives it back to [`Permit::from_ticket`] to record the outcome, or to drop it (a
/// trial then gives its permit back).
#[cfg(feature = "tower")]
pub(crate) struct Ticket {
    cell: Option<Arc<Cell>>,
    admitted: Word,
    role: Role,
    round: u64,
    started: Nanos,
}

impl<H: CircuitBreaker> std::fmt::Debug for Permit<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.key())
            .field("role", &self.role)
            .finish()
    }
}

impl<H: CircuitBreaker> Drop for Permit<'_, H> {
    #[cfg(not(feature = "metrics"))]
    #[inline]
    fn drop(&mut self) {
        // Shared storages lease permits, and the lease lapses by itself.
        if self.role == Role::Trial
            && decided_here::<H::Storage>()
            && let Some(cell) = &self.cell
        {
            abandon(self.handler, cell, self.clock, self.admitted);
        }
    }

    /// As without the feature, and a permit dropped without an outcome is counted; one
    /// test and one cold call, so that a recorded permit's drop still folds away.
    #[cfg(feature = "metrics")]
    #[inline]
    fn drop(&mut self) {
        if self.role != Role::Unrecorded
            && let Some(cell) = &self.cell
        {
            dropped(self.handler, cell, self.clock, self.admitted, self.role);
        }
    }
}

impl<'a, H: CircuitBreaker> Permit<'a, H> {
    fn new(
        handler: &'a H,
        cell: CellRef<'a>,
        clock: &'a Clock,
        admitted: Word,
        role: Role,
    ) -> Self {
        let started = if H::CONFIG.slow_call_threshold.is_some() {
            clock.now()
        } else {
            0
        };
        Permit {
            handler,
            cell: Some(cell),
            clock,
            admitted,
            role,
            round: 0,
            started,
        }
    }

    /// The key of the breaker that let the call through.
    ///
    /// ```
    /// # use std::sync::LazyLock;
    /// # use std::time::Duration;
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage};
    /// # static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 1;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// let breaker = Breaker::keyed(Api, "eu");
    /// assert_eq!(breaker.acquire().unwrap().key(), "api:eu");
    /// ```
    pub fn key(&self) -> &str {
        self.cell.as_deref().map_or("", |cell| cell.key.as_str())
    }

    /// Whether the call runs as a half-open trial.
    ///
    /// ```
    /// # use std::sync::LazyLock;
    /// # use std::time::Duration;
    /// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage};
    /// # static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
    /// # struct Api;
    /// # impl CircuitBreaker for Api {
    /// #   const FAILURE_THRESHOLD: u32 = 1;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    /// #   const FAILURE_KEY: &'static str = "api";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// assert!(!Breaker::new(Api).acquire().unwrap().is_trial());
    /// ```
    pub fn is_trial(&self) -> bool {
        self.role == Role::Trial
    }

    /// Takes the permit apart, for a future that cannot borrow its breaker (see [`Ticket`]).
    #[cfg(feature = "tower")]
    pub(crate) fn into_ticket(mut self) -> Ticket {
        let cell = match self.cell.take() {
            Some(CellRef::Shared(cell)) => Some(cell),
            _ => None,
        };
        Ticket {
            cell,
            admitted: self.admitted,
            role: std::mem::replace(&mut self.role, Role::Unrecorded),
            round: self.round,
            started: self.started,
        }
    }

    /// The permit `ticket` was taken from, given back its breaker's parts.
    #[cfg(feature = "tower")]
    pub(crate) fn from_ticket(
        handler: &'a H,
        family: &'a Family,
        clock: &'a Clock,
        ticket: Ticket,
    ) -> Self {
        Permit {
            handler,
            cell: Some(ticket.cell.map_or_else(|| family.own(), CellRef::Shared)),
            clock,
            admitted: ticket.admitted,
            role: ticket.role,
            round: ticket.round,
            started: ticket.started,
        }
    }

    /// Records the outcome in this process, now: for a storage [`decided_here`].
    #[cfg(feature = "tower")]
    #[inline(always)]
    pub(crate) fn record_here(self, outcome: Outcome) {
        let report = self.report_of(outcome);
        record_here(self, report);
    }

    /// Records the call's outcome (blocking, on a blocking storage).
    pub fn record(self, outcome: Outcome)
    where
        H::Storage: Storage,
    {
        let report = self.report_of(outcome);
        let storage = self.handler.storage();
        ready(self.finish(&Blocking(storage), report));
    }

    /// Records the call's outcome on an async storage.
    pub async fn record_async(self, outcome: Outcome)
    where
        H::Storage: AsyncStorage,
    {
        let report = self.report_of(outcome);
        let storage = self.handler.storage();
        self.finish(&Async(storage), report).await;
    }

    fn report_of(&self, outcome: Outcome) -> Option<Report> {
        match outcome {
            Outcome::Success => Some(self.success()),
            Outcome::Failure => Some(Report::Failure { trips: false }),
            Outcome::Ignored => None,
        }
    }

    /// A success, or a failure when the handler times calls and this one was too slow.
    #[inline]
    fn success(&self) -> Report {
        match H::CONFIG.slow_call_threshold {
            Some(slow) if self.clock.now().saturating_sub(self.started) > nanos(slow) => {
                Report::Failure { trips: false }
            }
            _ => Report::Success,
        }
    }

    #[inline]
    fn report_of_result<T, E>(
        &self,
        result: &Result<T, E>,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Option<Report> {
        match result {
            Ok(_) => Some(self.success()),
            Err(error) if is_failure(error) => Some(Report::Failure { trips: false }),
            Err(_) => None,
        }
    }

    fn report_of_caught<T, E>(
        &self,
        result: &Result<Result<T, E>, Panic>,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Option<Report> {
        match result {
            Ok(returned) => self.report_of_result(returned, is_failure),
            Err(_) => Some(Report::Failure { trips: false }),
        }
    }

    /// Records `report` (`None`: not counted): in this process for the in-memory storage,
    /// on the storage otherwise.
    async fn finish<B: Backend>(mut self, backend: &B, report: Option<Report>) {
        if decided_here::<H::Storage>() {
            record_here(self, report);
        } else {
            record_shared(&mut self, backend, report).await;
        }
    }

    /// Runs a blocking body under this permit and records how it ended; a panic counts as a
    /// failure and keeps unwinding. `is_failure` says which errors count.
    #[inline]
    pub fn run<T, E>(
        self,
        body: impl FnOnce() -> Result<T, E>,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, E>
    where
        H::Storage: Storage,
    {
        if !decided_here::<H::Storage>() {
            let span = call_span(self.key(), self.is_trial());
            let result = catch(|| in_span(&span, body));
            let report = self.report_of_caught(&result, is_failure);
            let storage = self.handler.storage();
            ready(self.finish(&Blocking(storage), report));
            return result.unwrap_or_else(|panic| resume_unwind(panic));
        }
        self.run_here(body, is_failure)
    }

    /// [`Permit::run`] on a storage [`decided_here`]. The body runs uncaught: a panic is
    /// recorded as a failure while it unwinds through here. Catching it would pass the
    /// body's result through the memory of `catch_unwind`, whose read-back stalls on store
    /// forwarding.
    #[inline(always)]
    fn run_here<T, E>(
        self,
        body: impl FnOnce() -> Result<T, E>,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, E> {
        let span = call_span(self.key(), self.is_trial());
        let mut unwinding = Unwinding(Some(self));
        let result = in_span(&span, body);
        let permit = unwinding.0.take();
        std::mem::forget(unwinding);
        match permit {
            Some(mut permit) => {
                let report = permit.report_of_result(&result, is_failure);
                // With metrics every outcome is first counted in the breaker's meters (a
                // virtual call the result survives anyway), and `record_here` then settles
                // the common closed success inline: handing it to `finish_here` would add
                // a call and the permit's trip through memory to every call.
                if cfg!(feature = "metrics") {
                    record_here(permit, report);
                    return result;
                }
                if settles_at_once(&permit, report) {
                    permit.role = Role::Unrecorded;
                    return result;
                }
                finish_here(permit, report, result)
            }
            None => result,
        }
    }

    /// Runs an async body under this permit and records how it ended; a panic in any of
    /// its polls counts as a failure and keeps unwinding. Dropped before it ends (a
    /// cancelled call), it records nothing, and a trial gives its permit back.
    #[inline]
    pub fn run_async<T, E, F, C>(self, body: F, is_failure: C) -> RunAsync<'a, H, F, C>
    where
        H::Storage: AsyncStorage,
        F: Future<Output = Result<T, E>>,
        C: FnOnce(&E) -> bool,
    {
        let span = call_span(self.key(), self.is_trial());
        RunAsync {
            call: Guarded {
                body,
                rejected: |_| unreachable!("a call run under a permit is admitted"),
                phase: ManuallyDrop::new(Phase::Running {
                    permit: self,
                    is_failure,
                    span,
                }),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Permit::run_async`]: a guarded call's future ([`Guarded`]) that
    /// starts admitted.
    #[must_use = "futures do nothing unless polled"]
    pub struct RunAsync<'a, H: CircuitBreaker, F: Future, C> {
        #[pin]
        call: Guarded<'a, H, F, C, fn(CircuitBreakerOpen) -> F::Output>,
    }
}

impl<'a, H, T, E, F, C> Future for RunAsync<'a, H, F, C>
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
    F: Future<Output = Result<T, E>>,
    C: FnOnce(&E) -> bool,
{
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, context: &mut std::task::Context<'_>) -> Poll<Result<T, E>> {
        self.project().call.poll(context)
    }
}

/// Records a failure if dropped holding the permit, that is, if the body it guards unwinds.
struct Unwinding<'a, H: CircuitBreaker>(Option<Permit<'a, H>>);

impl<H: CircuitBreaker> Drop for Unwinding<'_, H> {
    fn drop(&mut self) {
        if let Some(permit) = self.0.take() {
            record_here(permit, Some(Report::Failure { trips: false }));
        }
    }
}

pin_project_lite::pin_project! {
    /// A guarded async function's call (without a fallback), as one future: admitted in its
    /// first poll, which polls the body at once, so that a body ready at once records its
    /// outcome with the permit never leaving the poll; the permit is kept in the future only
    /// across a `Pending`. Its output is the body's, or the rejection.
    ///
    /// In memory, as [`Permit::run`]: the body runs uncaught and a panic in one of its polls is
    /// recorded as a failure while it unwinds. On a shared storage the admission may await the
    /// storage, a panic is caught, recorded and resumed, and the outcome is recorded by a
    /// future of its own. Dropped before it ends (a cancelled call), it records nothing, and a
    /// trial gives its permit back.
    #[must_use = "futures do nothing unless polled"]
    pub struct Guarded<'a, H: CircuitBreaker, F: Future, C, R> {
        #[pin]
        body: F,
        // What a rejected call returns, made from the rejection.
        rejected: R,
        // Dropped by hand, and only when not done: the common drop of a finished call is
        // then one inline test instead of a call to the phases' drop glue.
        phase: ManuallyDrop<Phase<'a, H, C, F::Output>>,
    }

    impl<'a, H: CircuitBreaker, F: Future, C, R> PinnedDrop for Guarded<'a, H, F, C, R> {
        fn drop(this: Pin<&mut Self>) {
            let phase = this.project().phase;
            if !matches!(**phase, Phase::Done) {
                // What is left in its place, `Done`, holds nothing to drop.
                drop(std::mem::replace(&mut **phase, Phase::Done));
            }
        }
    }
}

enum Phase<'a, H: CircuitBreaker, C, O> {
    Start {
        located: Located<'a, H>,
        is_failure: C,
    },
    /// A shared storage is asked for the permit.
    Asking {
        asking: Pin<Box<dyn Future<Output = Admission<'a, H>> + Send + 'a>>,
        is_failure: C,
    },
    Running {
        permit: Permit<'a, H>,
        is_failure: C,
        span: CallSpan,
    },
    /// A shared storage records the outcome; then the result is returned, or the panic
    /// resumed.
    Recording {
        recording: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
        result: Option<Result<O, Panic>>,
    },
    Done,
}

/// The future of a guarded async function without a fallback (see [`Guarded`]).
#[inline(always)]
pub fn guarded<'a, H, T, E, F, C, R>(
    located: Located<'a, H>,
    body: F,
    is_failure: C,
    rejected: R,
) -> Guarded<'a, H, F, C, R>
where
    H: CircuitBreaker,
    F: Future<Output = Result<T, E>>,
    // Here too, so that a closure passed for it is typed for every borrow of the error.
    C: FnOnce(&E) -> bool,
    R: FnOnce(CircuitBreakerOpen) -> Result<T, E> + Copy,
{
    Guarded {
        body,
        rejected,
        phase: ManuallyDrop::new(Phase::Start {
            located,
            is_failure,
        }),
    }
}

impl<'a, H, T, E, F, C, R> Future for Guarded<'a, H, F, C, R>
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
    F: Future<Output = Result<T, E>>,
    C: FnOnce(&E) -> bool,
    R: FnOnce(CircuitBreakerOpen) -> Result<T, E> + Copy,
{
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, context: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        poll_phases(this.body, &mut **this.phase, *this.rejected, context)
    }
}

/// A guarded call's poll with its permit, on a storage [`decided_here`]: as
/// [`Permit::run_here`], the body is polled uncaught (a panic is recorded as a failure while
/// it unwinds) and a ready outcome recorded on the spot; a pending body leaves the permit in
/// the future.
#[inline(always)]
fn poll_here<'a, H, T, E, F, C>(
    body: Pin<&mut F>,
    phase: &mut Phase<'a, H, C, F::Output>,
    permit: Permit<'a, H>,
    is_failure: C,
    span: CallSpan,
    context: &mut std::task::Context<'_>,
) -> Poll<Result<T, E>>
where
    H: CircuitBreaker,
    F: Future<Output = Result<T, E>>,
    C: FnOnce(&E) -> bool,
{
    let poll = match catch(|| in_span(&span, || body.poll(context))) {
        Ok(poll) => poll,
        Err(panic) => {
            record_here(permit, Some(Report::Failure { trips: false }));
            resume_unwind(panic)
        }
    };
    match poll {
        Poll::Pending => {
            *phase = Phase::Running {
                permit,
                is_failure,
                span,
            };
            Poll::Pending
        }
        Poll::Ready(result) => {
            let report = permit.report_of_result(&result, is_failure);
            record_here(permit, report);
            Poll::Ready(result)
        }
    }
}

/// [`Guarded`]'s poll.
#[inline(always)]
fn poll_phases<'a, H, T, E, F, C>(
    mut body: Pin<&mut F>,
    phase: &mut Phase<'a, H, C, F::Output>,
    rejected: impl FnOnce(CircuitBreakerOpen) -> Result<T, E> + Copy,
    context: &mut std::task::Context<'_>,
) -> Poll<Result<T, E>>
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
    F: Future<Output = Result<T, E>>,
    C: FnOnce(&E) -> bool,
{
    loop {
        let (permit, is_failure, span) = match std::mem::replace(phase, Phase::Done) {
            Phase::Start {
                located,
                is_failure,
            } => match located.admit_closed_here() {
                // The common call: admitted and polled here, inline.
                Ok(permit) => {
                    let span = call_span(permit.key(), permit.is_trial());
                    return poll_here(body.as_mut(), phase, permit, is_failure, span, context);
                }
                Err(located) => match located.enter() {
                    Entering::Decided(Ok(permit)) => {
                        let span = call_span(permit.key(), permit.is_trial());
                        (permit, is_failure, span)
                    }
                    Entering::Decided(Err(rejection)) => return Poll::Ready(rejected(rejection)),
                    Entering::Asking(asking) => {
                        *phase = Phase::Asking { asking, is_failure };
                        continue;
                    }
                },
            },
            Phase::Asking {
                mut asking,
                is_failure,
            } => match asking.as_mut().poll(context) {
                Poll::Pending => {
                    *phase = Phase::Asking { asking, is_failure };
                    return Poll::Pending;
                }
                Poll::Ready(Err(rejection)) => return Poll::Ready(rejected(rejection)),
                Poll::Ready(Ok(permit)) => {
                    let span = call_span(permit.key(), permit.is_trial());
                    (permit, is_failure, span)
                }
            },
            Phase::Running {
                permit,
                is_failure,
                span,
            } => (permit, is_failure, span),
            Phase::Recording {
                mut recording,
                mut result,
            } => {
                if recording.as_mut().poll(context).is_pending() {
                    *phase = Phase::Recording { recording, result };
                    return Poll::Pending;
                }
                return match result.take() {
                    Some(Ok(result)) => Poll::Ready(result),
                    Some(Err(panic)) => resume_unwind(panic),
                    None => unreachable!("a recording holds the call's result"),
                };
            }
            Phase::Done => panic!("a guarded call polled after it completed"),
        };
        // In memory the outcome is recorded on the spot, without passing the result
        // through the caught form the shared path needs (one path for both costs about
        // 20 instructions per call).
        if decided_here::<H::Storage>() {
            return poll_here(body.as_mut(), phase, permit, is_failure, span, context);
        }
        let caught = catch(|| in_span(&span, || body.as_mut().poll(context)));
        let result = match caught {
            Ok(Poll::Pending) => {
                *phase = Phase::Running {
                    permit,
                    is_failure,
                    span,
                };
                return Poll::Pending;
            }
            Ok(Poll::Ready(result)) => Ok(result),
            Err(panic) => Err(panic),
        };
        let mut permit = permit;
        let report = permit.report_of_caught(&result, is_failure);
        // What this process settles itself (a success local mode holds back, a call
        // recorded nowhere) needs no future of its own.
        let Some(sending) = to_send(&mut permit, report) else {
            return match result {
                Ok(result) => Poll::Ready(result),
                Err(panic) => resume_unwind(panic),
            };
        };
        let storage = permit.handler.storage();
        *phase = Phase::Recording {
            recording: Box::pin(async move { send(&permit, &Async(storage), sending).await }),
            result: Some(result),
        };
    }
}

/// Runs a blocking body, catching a panic so it can be recorded before it resumes.
#[inline]
pub(crate) fn catch<R>(body: impl FnOnce() -> R) -> Result<R, Panic> {
    catch_unwind(AssertUnwindSafe(body))
}

/// Runs an async body, catching a panic from any of its polls.
#[cfg(feature = "tower")]
pub(crate) async fn catch_async<F: Future>(body: F) -> Result<F::Output, Panic> {
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

/// A shared storage's operation, timed for the round-trip histogram with the `metrics`
/// feature; as it is without it.
#[cfg(not(feature = "metrics"))]
#[inline(always)]
fn round_trip<F: Future>(_cell: &Cell, operation: F) -> F {
    operation
}

/// A shared storage's operation, timed for the round-trip histogram with the `metrics`
/// feature; as it is without it.
#[cfg(feature = "metrics")]
async fn round_trip<F: Future>(cell: &Cell, operation: F) -> F::Output {
    let started = std::time::Instant::now();
    let output = operation.await;
    cell.meters().storage_round_trip(started.elapsed());
    output
}

/// Runs a hook; a hook that panics is caught here, so that it cannot break the breaker.
#[inline]
fn hook(call: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(call));
}

// Admission.

/// What a shared storage's local view decides about a call: let it through or reject it
/// here, or ask the storage.
pub(crate) enum Local<'a, H: CircuitBreaker> {
    Decided(Result<Permit<'a, H>, CircuitBreakerOpen>),
    Ask { cell: CellRef<'a>, sent: Word },
}

/// Admission for a blocking call. Always inlined: where one handler guards several
/// functions the compiler would otherwise share one out-of-line copy among them.
#[inline(always)]
pub(crate) fn enter<'a, H>(
    handler: &'a H,
    storage: &'a H::Storage,
    family: &'a Family,
    key: Option<&str>,
    method: &'static str,
) -> Result<Permit<'a, H>, CircuitBreakerOpen>
where
    H: CircuitBreaker,
    H::Storage: Storage,
{
    match family.cell(key) {
        Ok(cell) => enter_at(handler, storage, cell, method),
        Err(error) => storage_failed(handler, None, Storage::clock(storage), method, error),
    }
}

/// [`enter`] once the breaker's cell is found.
#[inline(always)]
fn enter_at<'a, H>(
    handler: &'a H,
    storage: &'a H::Storage,
    cell: CellRef<'a>,
    method: &'static str,
) -> Result<Permit<'a, H>, CircuitBreakerOpen>
where
    H: CircuitBreaker,
    H::Storage: Storage,
{
    let clock = Storage::clock(storage);
    // Decided here: no view, no storage, and no enum for the compiler to see through.
    if decided_here::<H::Storage>() {
        return admit_here(handler, cell, clock, method);
    }
    let local = if H::CONFIG.quorum > 1 {
        match admit_local(handler, &cell, clock, method) {
            LocalAdmission::Admitted(word) => Some((word, cell.clone())),
            LocalAdmission::Rejected(rejected) => return Err(rejected),
            LocalAdmission::Recheck { word, reason } => {
                let backend = Blocking(storage);
                return ready(recheck_local(
                    handler, &backend, clock, cell, method, word, reason,
                ));
            }
        }
    } else {
        None
    };
    let admission = match admit_on_view(handler, cell, clock, method) {
        Local::Decided(decided) => decided,
        Local::Ask { cell, sent } => ready(ask_storage(
            handler,
            &Blocking(storage),
            clock,
            cell,
            sent,
            method,
        )),
    };
    match local {
        None => admission,
        Some((word, cell)) => with_local(handler, clock, &cell, word, admission),
    }
}

/// A guarded blocking call without a fallback, its breaker located: admission, the body
/// and its outcome, and `rejected` making the function's result of a rejection. On the
/// in-memory storage a closed breaker's call is run here, inline, and everything else (a
/// breaker that is not closed, a shared storage, a refused key) out of line: the closed
/// path then shares no code with the rest and keeps in registers only what must survive
/// the body. The body is compiled into both paths.
#[inline(always)]
pub fn call<'a, H, T, E>(
    located: Located<'a, H>,
    body: impl FnOnce() -> Result<T, E>,
    is_failure: impl FnOnce(&E) -> bool,
    rejected: impl FnOnce(CircuitBreakerOpen) -> Result<T, E>,
) -> Result<T, E>
where
    H: CircuitBreaker,
    H::Storage: Storage,
{
    let Located {
        handler,
        clock,
        method,
        at,
    } = located;
    if decided_here::<H::Storage>()
        && let Ok(cell) = &at
    {
        let word = cell.load();
        if word.is_closed() {
            let Ok(cell) = at else {
                unreachable!("matched above")
            };
            let permit = Permit::new(handler, cell, clock, word, Role::Closed);
            return permit.run_here(body, is_failure);
        }
    }
    match at {
        Ok(cell) => call_slowly(handler, cell, method, body, is_failure, rejected),
        Err(error) => call_refused(handler, *error, method, body, is_failure, rejected),
    }
}

/// [`call`] of a call that is not the in-memory storage's closed one.
#[inline(never)]
fn call_slowly<'a, H, T, E>(
    handler: &'a H,
    cell: CellRef<'a>,
    method: &'static str,
    body: impl FnOnce() -> Result<T, E>,
    is_failure: impl FnOnce(&E) -> bool,
    rejected: impl FnOnce(CircuitBreakerOpen) -> Result<T, E>,
) -> Result<T, E>
where
    H: CircuitBreaker,
    H::Storage: Storage,
{
    let admission = enter_at(handler, handler.storage(), cell, method);
    run_admitted(admission, body, is_failure, rejected)
}

/// [`call`] of a call whose key was refused: the handler's storage-failure policy decides.
#[cold]
#[inline(never)]
fn call_refused<H, T, E>(
    handler: &H,
    error: StorageError,
    method: &'static str,
    body: impl FnOnce() -> Result<T, E>,
    is_failure: impl FnOnce(&E) -> bool,
    rejected: impl FnOnce(CircuitBreakerOpen) -> Result<T, E>,
) -> Result<T, E>
where
    H: CircuitBreaker,
    H::Storage: Storage,
{
    let clock = Storage::clock(handler.storage());
    let admission = storage_failed(handler, None, clock, method, error);
    run_admitted(admission, body, is_failure, rejected)
}

/// Runs the body under an admitted call's permit, or makes the function's result of the
/// rejection.
#[inline(always)]
fn run_admitted<H, T, E>(
    admission: Admission<'_, H>,
    body: impl FnOnce() -> Result<T, E>,
    is_failure: impl FnOnce(&E) -> bool,
    rejected: impl FnOnce(CircuitBreakerOpen) -> Result<T, E>,
) -> Result<T, E>
where
    H: CircuitBreaker,
    H::Storage: Storage,
{
    match admission {
        Ok(permit) => permit.run(body, is_failure),
        Err(rejection) => rejected(rejection),
    }
}

/// Admission for an async call. On a storage decided in this process ([`decided_here`])
/// the call is admitted or rejected here and now, with nothing to await; otherwise the
/// storage is asked when the returned future is polled.
#[inline(always)]
pub(crate) fn enter_async<'a, H>(
    handler: &'a H,
    family: &'a Family,
    key: Option<&str>,
    method: &'static str,
) -> Entering<'a, H>
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
{
    locate(handler, family, key, method).enter()
}

/// Where an async call's breaker is: its cell, or why its key was refused (the admission
/// then follows the handler's storage-failure policy). Found before the body's future takes
/// the function's arguments, which a per-call key borrows.
pub(crate) fn locate<'a, H: CircuitBreaker>(
    handler: &'a H,
    family: &'a Family,
    key: Option<&str>,
    method: &'static str,
) -> Located<'a, H> {
    Located {
        handler,
        clock: &family.clock,
        method,
        at: family.cell(key).map_err(Box::new),
    }
}

/// An async call's breaker, located before the call's body takes the function's arguments
/// (which a per-call key borrows): kept small, since a guarded call's future holds it until
/// its first poll.
pub struct Located<'a, H: CircuitBreaker> {
    handler: &'a H,
    /// The in-memory storage's clock (see [`Family::clock`]).
    clock: &'a Clock,
    method: &'static str,
    /// The breaker's cell, or why its key was refused (boxed: rare).
    at: Result<CellRef<'a>, Box<StorageError>>,
}

impl<'a, H: CircuitBreaker> Located<'a, H>
where
    H::Storage: AsyncStorage,
{
    /// The in-memory storage's closed breaker's permit, or the breaker back when the call
    /// is not that one.
    #[inline(always)]
    fn admit_closed_here(self) -> Result<Permit<'a, H>, Self> {
        if decided_here::<H::Storage>()
            && let Ok(cell) = &self.at
        {
            let word = cell.load();
            if word.is_closed() {
                let Ok(cell) = self.at else {
                    unreachable!("matched above")
                };
                return Ok(Permit::new(
                    self.handler,
                    cell,
                    self.clock,
                    word,
                    Role::Closed,
                ));
            }
        }
        Err(self)
    }

    /// The call's admission.
    #[inline(always)]
    fn enter(self) -> Entering<'a, H> {
        match self.at {
            Ok(cell) => enter_async_at(self.handler, cell, self.method),
            Err(error) => {
                let clock = AsyncStorage::clock(self.handler.storage());
                let admission = storage_failed(self.handler, None, clock, self.method, *error);
                Entering::Decided(admission)
            }
        }
    }
}

/// [`enter_async`] once the breaker's cell is found.
#[inline(always)]
fn enter_async_at<'a, H>(handler: &'a H, cell: CellRef<'a>, method: &'static str) -> Entering<'a, H>
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
{
    let storage = handler.storage();
    let clock = AsyncStorage::clock(storage);
    if decided_here::<H::Storage>() {
        return Entering::Decided(admit_here(handler, cell, clock, method));
    }
    let local = if H::CONFIG.quorum > 1 {
        match admit_local(handler, &cell, clock, method) {
            LocalAdmission::Admitted(word) => Some((word, cell.clone())),
            LocalAdmission::Rejected(rejected) => return Entering::Decided(Err(rejected)),
            LocalAdmission::Recheck { word, reason } => {
                return Entering::Asking(Box::pin(async move {
                    recheck_local(handler, &Async(storage), clock, cell, method, word, reason).await
                }));
            }
        }
    } else {
        None
    };
    match (admit_on_view(handler, cell, clock, method), local) {
        (Local::Decided(decided), None) => Entering::Decided(decided),
        (Local::Decided(decided), Some((word, cell))) => {
            Entering::Decided(with_local(handler, clock, &cell, word, decided))
        }
        (Local::Ask { cell, sent }, local) => Entering::Asking(Box::pin(async move {
            let admission = ask_storage(handler, &Async(storage), clock, cell, sent, method).await;
            match local {
                None => admission,
                Some((word, cell)) => with_local(handler, clock, &cell, word, admission),
            }
        })),
    }
}

/// Under a quorum, on a shared storage: this process's own breaker ([`Cell::local`]) admits
/// the call before the fleet's view is asked. The word it admitted the call under, for the
/// permit to record against; when an operator forced the fleet's breaker closed, which runs
/// every call and records nothing, a forced-closed word that the local breaker (never
/// forced) records nothing against.
///
/// While it rejects, this process sends nothing; so that an operator who forces the
/// breaker closed elsewhere is heard within a re-check interval, one rejected call per
/// interval asks the storage instead ([`LocalAdmission::Recheck`]).
#[inline(never)]
fn admit_local<H: CircuitBreaker>(
    handler: &H,
    cell: &Cell,
    clock: &Clock,
    method: &'static str,
) -> LocalAdmission {
    if cell.load().phase() == State::ForcedClosed {
        return LocalAdmission::Admitted(forced_closed());
    }
    let config = &H::CONFIG;
    let local = cell.local();
    let word = local.load();
    if word.phase() == State::Closed {
        return LocalAdmission::Admitted(word);
    }
    match admit_in_process(handler, local, clock, config, word) {
        Ok(admitted) => LocalAdmission::Admitted(admitted),
        Err((word, rejection)) => {
            let reason = Rejection::OpenHere {
                trials_in_progress: matches!(rejection, Rejection::TrialsInProgress),
            };
            if cell.claim_recheck(clock.coarse_now(), recheck_interval(config)) {
                LocalAdmission::Recheck { word, reason }
            } else {
                LocalAdmission::Rejected(reject_here(handler, cell, method, word, reason))
            }
        }
    }
}

/// What this process's own breaker says about a call under a quorum.
enum LocalAdmission {
    /// Admitted under this word (the one to record against).
    Admitted(Word),
    /// Rejected here.
    Rejected(CircuitBreakerOpen),
    /// Rejected here, unless the storage says the breaker is forced closed: this call is the
    /// interval's re-check.
    Recheck { word: Word, reason: Rejection },
}

/// The admission word of a call a fleet forced closed runs: the local breaker, never forced,
/// records nothing against it.
fn forced_closed() -> Word {
    Word::CLOSED.next(State::ForcedClosed, 0)
}

/// A call this process's own breaker, open under `word`, rejects.
fn reject_here<H: CircuitBreaker>(
    handler: &H,
    cell: &Cell,
    method: &'static str,
    word: Word,
    reason: Rejection,
) -> CircuitBreakerOpen {
    let (opened_at, retry_at) = open_times(word, &H::CONFIG);
    reject_at(handler, cell, method, reason, opened_at, retry_at)
}

/// The interval's re-check of a call this process's own breaker rejects: one read of the
/// storage. Forced closed, the call runs (and records nothing); otherwise it is rejected.
async fn recheck_local<'a, H: CircuitBreaker, B: Backend>(
    handler: &'a H,
    backend: &B,
    clock: &'a Clock,
    cell: CellRef<'a>,
    method: &'static str,
    word: Word,
    reason: Rejection,
) -> Admission<'a, H> {
    let sent = cell.load();
    let request = Request::new(cell.key.as_str(), Op::Read, &H::CONFIG);
    match round_trip(&cell, backend.execute(&request)).await {
        Ok(snapshot) => {
            adopt(handler, &cell, clock.now(), sent, &snapshot);
            if snapshot.state == State::ForcedClosed {
                let admitted = cell.load();
                let mut permit = Permit::new(handler, cell, clock, admitted, Role::Closed);
                permit.admitted = forced_closed();
                return Ok(permit);
            }
        }
        Err(error) => {
            cell.mark_failed(clock.now(), &error);
            storage_error(handler, cell.key.as_str(), &error);
        }
    }
    Err(reject_here(handler, &cell, method, word, reason))
}

/// Under a quorum: the fleet's admission of a call this process's own breaker admitted
/// under `local`. The permit records against both; a call the fleet's breaker rejects gives
/// back the local trial permit it held.
fn with_local<'a, H: CircuitBreaker>(
    handler: &'a H,
    clock: &Clock,
    cell: &Cell,
    local: Word,
    admission: Admission<'a, H>,
) -> Admission<'a, H> {
    match admission {
        Ok(mut permit) => {
            permit.admitted = local;
            Ok(permit)
        }
        Err(rejected) => {
            if local.phase() == State::HalfOpen {
                settle_here(handler, cell.local(), clock, local, Report::Abandoned);
            }
            Err(rejected)
        }
    }
}

/// An async call's admission (see `enter_async`): decided already, or to be awaited.
/// A decision needs no future: awaiting one, even a ready one, moves the permit through
/// the caller's future and back.
pub enum Entering<'a, H: CircuitBreaker> {
    /// Admitted or rejected.
    Decided(Admission<'a, H>),
    /// The storage is asked when this is polled.
    Asking(Pin<Box<dyn Future<Output = Admission<'a, H>> + Send + 'a>>),
}

/// A permit for the call, or why it was rejected.
pub type Admission<'a, H> = Result<Permit<'a, H>, CircuitBreakerOpen>;

impl<'a, H: CircuitBreaker> Entering<'a, H> {
    /// The admission, awaited if it must be.
    #[inline(always)]
    pub async fn admission(self) -> Admission<'a, H> {
        match self {
            Entering::Decided(admission) => admission,
            Entering::Asking(asking) => asking.await,
        }
    }
}

// Always inlined: a permit returned through memory and read back at once stalls on store
// forwarding, which cost more than the rest of an async call's admission.
#[inline(always)]
fn admit_here<'a, H: CircuitBreaker>(
    handler: &'a H,
    cell: CellRef<'a>,
    clock: &'a Clock,
    method: &'static str,
) -> Result<Permit<'a, H>, CircuitBreakerOpen> {
    let word = cell.load();
    // The closed path reads no clock.
    if word.is_closed() {
        return Ok(Permit::new(handler, cell, clock, word, Role::Closed));
    }
    admit_here_slowly(handler, cell, clock, word, method)
}

#[inline(always)]
fn admit_here_slowly<'a, H: CircuitBreaker>(
    handler: &'a H,
    cell: CellRef<'a>,
    clock: &'a Clock,
    word: Word,
    method: &'static str,
) -> Result<Permit<'a, H>, CircuitBreakerOpen> {
    let overridden = cell.overridden(&H::CONFIG);
    let config = overridden.as_ref().unwrap_or(&H::CONFIG);
    match admit_in_process(handler, &cell, clock, config, word) {
        Ok(admitted) => {
            let role = match admitted.phase() {
                State::Closed => Role::Closed,
                State::HalfOpen => Role::Trial,
                _ => {
                    // Forced closed: nothing is recorded.
                    #[cfg(feature = "metrics")]
                    cell.meters().unrecorded();
                    Role::Unrecorded
                }
            };
            Ok(Permit::new(handler, cell, clock, admitted, role))
        }
        Err((word, rejection)) => {
            let (opened_at, retry_at) = open_times(word, config);
            Err(reject_at(
                handler, &cell, method, rejection, opened_at, retry_at,
            ))
        }
    }
}

/// Admission by an in-process breaker's word: the word the call is admitted under (a half-open
/// one when it took a trial permit, whose lease then starts), or the word and the reason it
/// is rejected for. Shared by the in-memory storage's breakers and, under a quorum, by each
/// process's own breaker on a shared storage.
#[inline(always)]
fn admit_in_process<H: CircuitBreaker>(
    handler: &H,
    cell: &Cell,
    clock: &Clock,
    config: &Config,
    mut word: Word,
) -> Result<Word, (Word, Rejection)> {
    loop {
        let now = clock.coarse_now();
        match admit(word, now, config.half_open_trials, || cell.lease(word)) {
            Admit::Pass => return Ok(word),
            Admit::Reject(rejection) => return Err((word, rejection)),
            Admit::Trial(next) => match cell.compare_exchange(word, next) {
                Ok(_) => {
                    cell.set_lease(next, now.saturating_add(nanos(config.recovery_timeout)));
                    notify(handler, cell, word, next);
                    return Ok(next);
                }
                Err(actual) => word = actual,
            },
        }
    }
}

/// When an open word opened and when it next admits a trial.
fn open_times(word: Word, config: &Config) -> (Option<Nanos>, Option<Nanos>) {
    match (word.phase(), word.deadline()) {
        (State::Open, Some(deadline)) => (
            Some(deadline.saturating_sub(nanos(crate::rules::open_time(config, word.reopens())))),
            Some(deadline),
        ),
        _ => (None, None),
    }
}

/// Admission on a shared storage's view: let a closed breaker pass and an open one reject
/// without a round trip; ask the storage otherwise.
#[inline(always)]
fn admit_on_view<'a, H: CircuitBreaker>(
    handler: &'a H,
    cell: CellRef<'a>,
    clock: &'a Clock,
    method: &'static str,
) -> Local<'a, H> {
    let word = cell.load();
    match word.phase() {
        // A view this process has never refreshed is asked for once: a new process must
        // not run calls against a breaker the rest of the fleet opened. After that, every
        // reply refreshes the view.
        State::Closed | State::ForcedClosed if cell.synced() => {
            Local::Decided(Ok(Permit::new(handler, cell, clock, word, Role::Closed)))
        }
        _ => admit_on_view_slowly(handler, cell, clock, word, method),
    }
}

#[cold]
#[inline(never)]
fn admit_on_view_slowly<'a, H: CircuitBreaker>(
    handler: &'a H,
    cell: CellRef<'a>,
    clock: &'a Clock,
    word: Word,
    method: &'static str,
) -> Local<'a, H> {
    let now = clock.coarse_now();
    if let (State::Open | State::ForcedOpen, Some(deadline)) = (word.phase(), word.deadline())
        && now < deadline
        // Once a re-check interval, one call asks the storage instead: an operator's close
        // or reset elsewhere reaches this view within the interval, not the deadline.
        && !cell.claim_recheck(now, recheck_interval(&H::CONFIG))
    {
        let rejection = if word.phase() == State::Open {
            Rejection::Open
        } else {
            Rejection::ForcedOpen
        };
        let (opened_at, retry_at) = open_times(word, &H::CONFIG);
        return Local::Decided(Err(reject_at(
            handler, &cell, method, rejection, opened_at, retry_at,
        )));
    }
    if cell.failing() && !cell.claim_probe(clock.now(), probe_interval(&H::CONFIG)) {
        // The storage failed and the next probe is not due: decide by the policy without
        // waiting on it.
        let error = cell.last_failure();
        return Local::Decided(storage_failed(handler, Some(cell), clock, method, error));
    }
    Local::Ask { cell, sent: word }
}

/// How often an open or forced-open view on a shared storage asks the storage whether it
/// still is: every `SYNC_INTERVAL` in local mode, every second otherwise (at most one call
/// a second per process and open breaker pays a round trip; the others reject for free).
pub(crate) fn recheck_interval(config: &Config) -> Duration {
    config.sync_interval.unwrap_or(RECHECK_INTERVAL)
}

/// The re-check interval of strict mode.
pub(crate) const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Asks the storage for a permit: one round trip.
pub(crate) async fn ask_storage<'a, H: CircuitBreaker, B: Backend>(
    handler: &'a H,
    backend: &B,
    clock: &'a Clock,
    cell: CellRef<'a>,
    sent: Word,
    method: &'static str,
) -> Result<Permit<'a, H>, CircuitBreakerOpen> {
    let config = &H::CONFIG;
    match round_trip(
        &cell,
        backend.execute(&Request::new(cell.key.as_str(), Op::AcquireTrial, config)),
    )
    .await
    {
        Ok(snapshot) => {
            let now = clock.now();
            adopt(handler, &cell, now, sent, &snapshot);
            let word = cell.load();
            let rejection = match snapshot.state {
                State::Closed | State::ForcedClosed => {
                    return Ok(Permit::new(handler, cell, clock, word, Role::Closed));
                }
                State::HalfOpen if snapshot.permit => {
                    let mut permit = Permit::new(handler, cell, clock, word, Role::Trial);
                    permit.round = snapshot.round;
                    return Ok(permit);
                }
                State::HalfOpen => Rejection::TrialsInProgress,
                State::Open => Rejection::Open,
                State::ForcedOpen => Rejection::ForcedOpen,
            };
            let (opened_at, retry_at) = match snapshot.state {
                State::Open => (
                    snapshot
                        .open_since
                        .map(|since| now.saturating_sub(nanos(since))),
                    Some(now.saturating_add(nanos(snapshot.retry_in.unwrap_or_default()))),
                ),
                _ => (None, None),
            };
            Err(reject_at(
                handler, &cell, method, rejection, opened_at, retry_at,
            ))
        }
        Err(error) => {
            cell.mark_failed(clock.now(), &error);
            storage_failed(handler, Some(cell), clock, method, error)
        }
    }
}

/// The storage failed (or the key was unusable) before the call: the handler's policy lets
/// the call through unrecorded or rejects it.
fn storage_failed<'a, H: CircuitBreaker>(
    handler: &'a H,
    cell: Option<CellRef<'a>>,
    clock: &'a Clock,
    method: &'static str,
    error: StorageError,
) -> Result<Permit<'a, H>, CircuitBreakerOpen> {
    let key = cell
        .as_ref()
        .map_or(H::FAILURE_KEY, |cell| cell.key.as_str());
    storage_error(handler, key, &error);
    match H::CONFIG.on_storage_failure {
        OnStorageFailure::Allow => {
            #[cfg(feature = "metrics")]
            match &cell {
                Some(cell) => cell.meters().unrecorded(),
                None => crate::metrics::call_without_breaker(H::FAILURE_KEY, "unrecorded"),
            }
            // No cell for an unusable key: the call runs against a throwaway one.
            let cell =
                cell.unwrap_or_else(|| CellRef::Shared(Arc::new(Cell::detached(H::FAILURE_KEY))));
            let word = cell.load();
            Ok(Permit::new(handler, cell, clock, word, Role::Unrecorded))
        }
        OnStorageFailure::Reject => {
            #[cfg(feature = "metrics")]
            match &cell {
                Some(cell) => cell.meters().rejected(),
                None => crate::metrics::call_without_breaker(H::FAILURE_KEY, "rejected"),
            }
            let key = cell.map_or(Key::Static(H::FAILURE_KEY), |cell| cell.key.clone());
            Err(reject(
                handler,
                key,
                method,
                Rejection::StorageFailed(Box::new(error)),
                None,
                None,
            ))
        }
    }
}

/// A call rejected by `cell`'s breaker: counted (with the `metrics` feature), then
/// [`reject`]ed.
#[inline(always)]
fn reject_at<H: CircuitBreaker>(
    handler: &H,
    cell: &Cell,
    method: &'static str,
    reason: Rejection,
    opened_at: Option<Nanos>,
    retry_at: Option<Nanos>,
) -> CircuitBreakerOpen {
    #[cfg(feature = "metrics")]
    cell.meters().rejected();
    reject(
        handler,
        cell.key.clone(),
        method,
        reason,
        opened_at,
        retry_at,
    )
}

fn reject<H: CircuitBreaker>(
    handler: &H,
    key: Key,
    method: &'static str,
    reason: Rejection,
    opened_at: Option<Nanos>,
    retry_at: Option<Nanos>,
) -> CircuitBreakerOpen {
    let rejection = CircuitBreakerOpen {
        key,
        method,
        opened_at,
        retry_at,
        reason,
    };
    #[cfg(feature = "tracing")]
    tracing::debug!(
        circuitbreaker.name = rejection.key.as_str(),
        circuitbreaker.method = rejection.method,
        circuitbreaker.rejection = rejection.reason.name(),
        "call rejected by the circuit breaker"
    );
    hook(|| handler.on_rejected(&rejection));
    rejection
}

fn notify<H: CircuitBreaker>(handler: &H, cell: &Cell, from: Word, to: Word) {
    if from.phase() != to.phase() {
        changed(handler, cell, from.phase(), to.phase());
    }
}

/// `cell`'s breaker changed state: its state gauge and transitions (with the `metrics`
/// feature), then [`state_changed`].
#[inline(always)]
fn changed<H: CircuitBreaker>(handler: &H, cell: &Cell, from: State, to: State) {
    #[cfg(feature = "metrics")]
    {
        cell.meters().show(to);
        crate::metrics::transition(&cell.key, from, to);
    }
    state_changed(handler, cell.key.as_str(), from, to);
}

// The events: each goes to the handler's hook and, with the `tracing` feature, to a
// `tracing` event named after the OpenTelemetry proposal for circuit breakers
// (`circuitbreaker.name`, `circuitbreaker.state`), with the `metrics` feature to the
// metrics of `crate::metrics` (through `changed` and `reject_at`, which have the breaker's
// cached handles). One path for all three; the calls are counted where they are recorded
// (`record_here`, `record_shared`), rejected (`reject_at`, `storage_failed`) or let
// through unrecorded (`storage_failed`).

/// The span a guarded call runs in, with the `tracing` feature: `circuit_breaker`, at the
/// `trace` level (so it costs a level check unless a subscriber asks for it), with
/// `circuitbreaker.name` and `circuitbreaker.trial`. Without the feature, nothing.
#[cfg(feature = "tracing")]
pub(crate) type CallSpan = tracing::Span;
/// See the `tracing` flavour.
#[cfg(not(feature = "tracing"))]
#[derive(Debug)]
pub(crate) struct CallSpan;

#[inline(always)]
pub(crate) fn call_span(key: &str, trial: bool) -> CallSpan {
    #[cfg(feature = "tracing")]
    {
        tracing::trace_span!(
            "circuit_breaker",
            circuitbreaker.name = key,
            circuitbreaker.trial = trial
        )
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = (key, trial);
        CallSpan
    }
}

/// Runs `body` inside `span`.
#[inline(always)]
pub(crate) fn in_span<R>(span: &CallSpan, body: impl FnOnce() -> R) -> R {
    #[cfg(feature = "tracing")]
    {
        span.in_scope(body)
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = span;
        body()
    }
}

/// `body`, entering `span` at each poll.
#[cfg(any(feature = "tower", feature = "reqwest"))]
pub(crate) async fn instrument<F: Future>(body: F, span: CallSpan) -> F::Output {
    let mut body = std::pin::pin!(body);
    std::future::poll_fn(move |context| in_span(&span, || body.as_mut().poll(context))).await
}

/// A breaker changed state, as this process saw it.
fn state_changed<H: CircuitBreaker>(handler: &H, key: &str, from: State, to: State) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        circuitbreaker.name = key,
        circuitbreaker.state = to.name(),
        circuitbreaker.previous_state = from.name(),
        "circuit breaker changed state"
    );
    hook(|| handler.on_state_change(key, from, to));
}

/// A storage operation failed.
fn storage_error<H: CircuitBreaker>(handler: &H, key: &str, error: &StorageError) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        circuitbreaker.name = key,
        error = %error,
        "circuit breaker storage failed"
    );
    #[cfg(feature = "metrics")]
    crate::metrics::storage_error(H::FAILURE_KEY, error.kind());
    hook(|| handler.on_storage_error(key, error));
}

/// Adopts a shared storage's reply to a request sent when the view was `sent`.
pub(crate) fn adopt<H: CircuitBreaker>(
    handler: &H,
    cell: &Cell,
    now: Nanos,
    sent: Word,
    snapshot: &Snapshot,
) {
    if let Some((from, to)) = cell.adopt(sent, snapshot, now, &H::CONFIG) {
        notify(handler, cell, from, to);
    }
}

// Recording.

/// Whether recording `report` in this process changes nothing but what is done here: the
/// consecutive policy's closed success on a breaker that counts nothing (one load), or the
/// rate policy's closed success counted in its bucket without a lock. The permit is then
/// done. Inline, so that the common call keeps the permit in registers and calls nothing
/// after its body. (With metrics every outcome is counted, by [`record_here`].)
#[inline(always)]
fn settles_at_once<H: CircuitBreaker>(permit: &Permit<'_, H>, report: Option<Report>) -> bool {
    if cfg!(feature = "metrics") || permit.role != Role::Closed || report != Some(Report::Success) {
        return false;
    }
    let Some(cell) = permit.cell.as_deref() else {
        return false;
    };
    closed_success_settled::<H>(cell, permit.clock, permit.admitted)
}

/// Whether a closed success is settled by what this does: under the consecutive policy,
/// one load finding nothing to reset; under the rate policy, the success counted in its
/// bucket without a lock (`rate_success_counted`). Otherwise the cold path records it.
#[inline(always)]
fn closed_success_settled<H: CircuitBreaker>(cell: &Cell, clock: &Clock, admitted: Word) -> bool {
    match H::CONFIG.policy {
        FailurePolicy::Consecutive => closed_success_changes_nothing(cell.load(), admitted),
        _ => rate_success_counted::<H>(cell, clock, admitted),
    }
}

/// [`record_here`] out of line, handing `result` back: the body's result then need not
/// survive a call in the function that ran it.
#[inline(never)]
fn finish_here<H: CircuitBreaker, R>(
    permit: Permit<'_, H>,
    report: Option<Report>,
    result: R,
) -> R {
    record_here(permit, report);
    result
}

/// Records an outcome in this process. Takes the permit apart and hands its parts on to
/// the cold path by value, in registers, so that nothing of it outlives a call that might
/// unwind: the common closed success then keeps the permit in registers, with no landing
/// pad to spill it for. Always inlined, for the reason [`enter`] is.
#[inline(always)]
fn record_here<H: CircuitBreaker>(mut permit: Permit<'_, H>, report: Option<Report>) {
    // The common closed success, checked on the whole permit, which then stays in
    // registers.
    if settles_at_once(&permit, report) {
        permit.role = Role::Unrecorded;
        return;
    }
    let role = std::mem::replace(&mut permit.role, Role::Unrecorded);
    let Some(cell) = permit.cell.take() else {
        return;
    };
    #[cfg(feature = "metrics")]
    let permit = counted(permit, &cell, role, report);
    let report = match (role, report) {
        (Role::Unrecorded, _) | (Role::Closed, None) => return,
        // With metrics, the same closed success once it is counted in the breaker's meters.
        #[cfg(feature = "metrics")]
        (Role::Closed, Some(Report::Success))
            if closed_success_settled::<H>(&cell, permit.clock, permit.admitted) =>
        {
            return;
        }
        (Role::Trial, None) => Report::Abandoned,
        (_, Some(report)) => report,
    };
    let (handler, clock, admitted) = (permit.handler, permit.clock, permit.admitted);
    // Emptied, the permit has nothing left to do when dropped; dropped before the call, it
    // needs no landing pad.
    #[cfg(not(feature = "metrics"))]
    drop(permit);
    settle_owned(handler, cell, clock, admitted, report);
}

/// Rate policy: counts a closed success in its bucket without a lock when the bucket's slot
/// is already counting for the call's closed period (`rules/window.rs`); false for every
/// other policy, and when the locked path must count it.
#[inline(always)]
fn rate_success_counted<H: CircuitBreaker>(cell: &Cell, clock: &Clock, admitted: Word) -> bool {
    let config = &H::CONFIG;
    let FailurePolicy::Rate { window, .. } = config.policy else {
        return false;
    };
    // The same clock as `settle_here` reads for a success.
    let now = if config.coarse_successes() {
        clock.coarse_now()
    } else {
        clock.now()
    };
    cell.count_success(now / bucket_width(window), admitted.generation())
}

/// What [`record_here`] still needs of a permit once it is emptied.
#[cfg(feature = "metrics")]
struct Emptied<'a, H> {
    handler: &'a H,
    clock: &'a Clock,
    admitted: Word,
}

/// Counts a recorded call: a cached handle's increment, no clock, no lookup. The emptied
/// permit is dropped first, so that the increment, a call, needs no landing pad for it.
#[cfg(feature = "metrics")]
#[inline(always)]
fn counted<'a, H: CircuitBreaker>(
    permit: Permit<'a, H>,
    cell: &Cell,
    role: Role,
    report: Option<Report>,
) -> Emptied<'a, H> {
    let emptied = Emptied {
        handler: permit.handler,
        clock: permit.clock,
        admitted: permit.admitted,
    };
    drop(permit);
    if role != Role::Unrecorded {
        cell.meters().recorded(report);
    }
    emptied
}

#[cold]
#[inline(never)]
fn settle_owned<H: CircuitBreaker>(
    handler: &H,
    cell: CellRef<'_>,
    clock: &Clock,
    admitted: Word,
    report: Report,
) {
    settle_here(handler, &cell, clock, admitted, report);
}

/// A permit dropped without an outcome: counted, and a trial in process memory given back
/// (shared storages lease permits, and the lease lapses by itself).
#[cfg(feature = "metrics")]
#[cold]
#[inline(never)]
fn dropped<H: CircuitBreaker>(handler: &H, cell: &Cell, clock: &Clock, admitted: Word, role: Role) {
    cell.meters().dropped();
    if role == Role::Trial && decided_here::<H::Storage>() {
        abandon(handler, cell, clock, admitted);
    }
}

/// Gives an unrecorded in-process trial permit back.
#[cold]
#[inline(never)]
fn abandon<H: CircuitBreaker>(handler: &H, cell: &Cell, clock: &Clock, admitted: Word) {
    settle_here(handler, cell, clock, admitted, Report::Abandoned);
}

/// Applies an outcome to an in-process breaker.
#[inline(always)]
fn settle_here<H: CircuitBreaker>(
    handler: &H,
    cell: &Cell,
    clock: &Clock,
    admitted: Word,
    report: Report,
) {
    let failed = matches!(report, Report::Failure { .. });
    // An operator's overrides decide failures and trials; a closed success needs none of
    // their settings, so it does not look.
    let overridden = if failed || admitted.phase() != State::Closed {
        cell.overridden(&H::CONFIG)
    } else {
        None
    };
    let config = overridden.as_ref().unwrap_or(&H::CONFIG);
    let in_window = admitted.phase() == State::Closed
        && match config.policy {
            FailurePolicy::Consecutive => false,
            FailurePolicy::CountInWindow { .. } => failed,
            FailurePolicy::Rate { .. } => report != Report::Abandoned,
        };
    // Consecutive-policy successes read no clock; rate-policy successes the coarse one when
    // its buckets are wide. A failure may open the breaker, so it reads the precise clock.
    let now = if failed || (in_window && !config.coarse_successes()) {
        clock.now()
    } else if in_window || admitted.phase() == State::HalfOpen {
        clock.coarse_now()
    } else {
        0
    };
    if admitted.phase() == State::HalfOpen
        && cell.lease(cell.load()).is_some_and(|lease| now >= lease)
    {
        // The round is over: nothing happened in it for a recovery timeout.
        return;
    }
    let report = if in_window {
        // Only while the breaker is still in the closed period the call was admitted in: an
        // outcome from before it last opened must not count towards the next trip. Checked
        // under the window's lock, which a phase change takes to clear the window.
        let trips = {
            let (mut window, calls) =
                cell.window(matches!(config.policy, FailurePolicy::Rate { .. }));
            let current = cell.load();
            if current.phase() == State::Closed && current.generation() == admitted.generation() {
                window.record(calls, config, now, failed, admitted.generation())
            } else {
                false
            }
        };
        if failed {
            Report::Failure { trips }
        } else {
            // A success counted in a window changes nothing else.
            return;
        }
    } else {
        report
    };
    let mut word = cell.load();
    let seed = if config.recovery_jitter > 0.0 {
        crate::rules::jitter_seed(cell.key.as_str())
    } else {
        0
    };
    while let Some(next) = settle(word, admitted, report, config, now, seed) {
        match cell.compare_exchange(word, next) {
            Ok(_) => {
                if next.phase() != word.phase() {
                    cell.clear_window(next);
                } else if next.phase() == State::HalfOpen {
                    // Something happened in the round: its leases run again.
                    cell.set_lease(next, now.saturating_add(nanos(config.recovery_timeout)));
                }
                notify(handler, cell, word, next);
                return;
            }
            Err(actual) => word = actual,
        }
    }
}

async fn record_shared<H: CircuitBreaker, B: Backend>(
    permit: &mut Permit<'_, H>,
    backend: &B,
    report: Option<Report>,
) {
    if let Some(sending) = to_send(permit, report) {
        send(permit, backend, sending).await;
    }
}

/// What a shared storage must be told of an outcome: the operation, and the role the call
/// was admitted in.
struct Sending {
    op: Op,
    role: Role,
}

/// The part of [`record_shared`] done here and now: this process's own breaker under a
/// quorum, the meters, a success local mode holds back; then what is left to send, if
/// anything. The permit is left recording nothing more when dropped.
fn to_send<H: CircuitBreaker>(
    permit: &mut Permit<'_, H>,
    report: Option<Report>,
) -> Option<Sending> {
    let config = &H::CONFIG;
    let role = std::mem::replace(&mut permit.role, Role::Unrecorded);
    // Under a quorum this process's own breaker counts the call first, by the word it
    // admitted the call under.
    if config.quorum > 1
        && role != Role::Unrecorded
        && let Some(cell) = permit.cell.as_deref()
    {
        let local = match report {
            None if permit.admitted.phase() == State::HalfOpen => Some(Report::Abandoned),
            report => report,
        };
        if let Some(local) = local {
            settle_here(
                permit.handler,
                cell.local(),
                permit.clock,
                permit.admitted,
                local,
            );
        }
    }
    #[cfg(feature = "metrics")]
    if role != Role::Unrecorded
        && let Some(cell) = permit.cell.as_deref()
    {
        cell.meters().recorded(report);
    }
    let op = match (role, report) {
        (Role::Closed, Some(Report::Success)) => {
            if let Some(interval) = config.sync_interval
                && hold_back_success(permit, interval)
            {
                return None;
            }
            Op::Success
        }
        (Role::Closed, Some(_)) => Op::Failure,
        (Role::Trial, Some(Report::Success)) => Op::TrialSuccess,
        (Role::Trial, Some(_)) => Op::TrialFailure,
        (Role::Trial, None) => Op::ReleaseTrial,
        _ => return None,
    };
    permit.cell.as_ref()?;
    Some(Sending { op, role })
}

/// The rest of [`record_shared`]: the outcome sent to the storage, and its reply adopted.
async fn send<H: CircuitBreaker, B: Backend>(
    permit: &Permit<'_, H>,
    backend: &B,
    Sending { op, role }: Sending,
) {
    let config = &H::CONFIG;
    let Some(cell) = permit.cell.as_deref() else {
        return;
    };
    let mut request = Request::new(cell.key.as_str(), op, config);
    if role == Role::Trial {
        request = request.in_round(permit.round);
    }
    let sent = cell.load();
    if op == Op::Success {
        request = request.having_seen(u64::from(sent.failures()));
        if config.sync_interval.is_some() {
            request = request.with_count(1 + u64::from(cell.held.swap(0, Ordering::Relaxed)));
        }
    }
    match round_trip(cell, backend.execute(&request)).await {
        Ok(snapshot) => adopt(permit.handler, cell, permit.clock.now(), sent, &snapshot),
        Err(error) => {
            cell.mark_failed(permit.clock.now(), &error);
            storage_error(permit.handler, cell.key.as_str(), &error);
        }
    }
}

/// Local mode: whether a closed success may go unreported for now. It may while the last
/// reply is younger than the interval and left no failure count that this success must
/// reset; the rate policy still needs it counted, so it is held back for the next report.
fn hold_back_success<H: CircuitBreaker>(permit: &Permit<'_, H>, interval: Duration) -> bool {
    let Some(cell) = permit.cell.as_deref() else {
        return false;
    };
    let word = cell.load();
    let policy = H::CONFIG.policy;
    if word.phase() != State::Closed
        || (policy == FailurePolicy::Consecutive && word.failures() != 0)
    {
        return false;
    }
    let fresh = cell
        .synced_at()
        .is_some_and(|at| permit.clock.coarse_now() < at.saturating_add(nanos(interval)));
    if fresh && matches!(policy, FailurePolicy::Rate { .. }) {
        // Past the most a view holds back, this success reports them all: the count stays
        // far from overflowing however many threads pass the check at once.
        if cell.held.fetch_add(1, Ordering::Relaxed) >= view::MAX_HELD {
            cell.held.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
    }
    fresh
}

/// The state of an in-process breaker as [`Breaker::state`](crate::Breaker::state) reports
/// it: an open breaker past its deadline reads half-open.
pub(crate) fn state_here(cell: &Cell, clock: &Clock) -> State {
    let word = cell.load();
    match word.deadline() {
        Some(deadline) if word.phase() == State::Open && clock.now() >= deadline => State::HalfOpen,
        _ => word.phase(),
    }
}

/// Forces or resets an in-process breaker.
pub(crate) fn control_here<H: CircuitBreaker>(handler: &H, cell: &Cell, op: Op, audit: Audit<'_>) {
    let (previous, state) = control_cell(cell, op, audit);
    if previous != state {
        changed(handler, cell, previous, state);
    }
}

/// Forces or resets an in-process breaker's cell, keeping the forcing's audit trail beside
/// it (a reset forgets it); the state before and after.
pub(crate) fn control_cell(cell: &Cell, op: Op, audit: Audit<'_>) -> (State, State) {
    let state = match op {
        Op::ForceOpen => State::ForcedOpen,
        Op::ForceClosed => State::ForcedClosed,
        _ => State::Closed,
    };
    let current = cell.load();
    let next = current.next(state, 0);
    let previous = cell.swap(next);
    cell.clear_window(next);
    cell.set_forced((state != State::Closed).then(|| crate::admin::Forced {
        at: Some(std::time::SystemTime::now()),
        by: audit.actor.map(str::to_owned),
        reason: audit.reason.map(str::to_owned),
    }));
    (previous.phase(), state)
}

/// Runs `op` (with its audit trail or overrides) on a shared storage and adopts the reply.
pub(crate) async fn control_shared<H: CircuitBreaker, B: Backend>(
    handler: &H,
    backend: &B,
    cell: &Cell,
    op: Op,
    audit: Audit<'_>,
    overrides: crate::Overrides,
) -> Result<State, StorageError> {
    let sent = cell.load();
    let clock = backend.clock();
    if H::CONFIG.quorum > 1 && op == Op::Reset {
        // A reset from this process closes its own breaker too.
        control_cell(cell.local(), Op::Reset, Audit::NONE);
    }
    let request = Request::new(cell.key.as_str(), op, &H::CONFIG)
        .with_audit(audit)
        .with_overrides(overrides);
    match round_trip(cell, backend.execute(&request)).await {
        Ok(snapshot) => {
            adopt(handler, cell, clock.now(), sent, &snapshot);
            Ok(snapshot.state)
        }
        Err(error) => {
            cell.mark_failed(clock.now(), &error);
            Err(error)
        }
    }
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
