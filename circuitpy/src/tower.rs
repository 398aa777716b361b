//! A tower [`Layer`] that guards any [`Service`] with a breaker (feature `tower`).
//!
//! [`CircuitBreakerLayer::new`] takes a handler, as `#[circuit_breaker]` does, so the
//! breaker keeps its state wherever the handler's storage keeps it: in this process, or in
//! Redis or PostgreSQL for a whole fleet. Each request is admitted or rejected in
//! [`Service::call`], never in [`Service::poll_ready`]: a service that is polled ready but
//! then not called holds no half-open trial permit. A rejected request never reaches the
//! inner service; its error is [`Error::Open`] with the [`CircuitBreakerOpen`] that says
//! why and until when.
//!
//! - [`key_by`](CircuitBreakerLayer::key_by) gives each request a per-call key, for one
//!   breaker per host, route or tenant ([`ByHost`] for HTTP requests);
//! - [`classify`](CircuitBreakerLayer::classify) decides what counts as a failure: by
//!   default an `Err` ([`ErrorsFail`]); for HTTP, [`ServerErrorsFail`] also counts 5xx
//!   responses.
//!
//! The handler's storage must be an [`AsyncStorage`]: [`MemoryStorage`](crate::MemoryStorage),
//! the async Redis connections (`redis::aio`, a cluster connection) and `redis::Client`,
//! `AsyncPostgresStorage`, `SqliteStorage`.
//!
//! ```
//! use std::sync::LazyLock;
//! use std::time::Duration;
//! use circuitpy::tower::{CircuitBreakerLayer, Error};
//! use circuitpy::{CircuitBreaker, MemoryStorage};
//! use tower::{Layer, Service, service_fn};
//!
//! static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
//! struct Inventory;
//! impl CircuitBreaker for Inventory {
//!     const FAILURE_THRESHOLD: u32 = 1;
//!     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
//!     const FAILURE_KEY: &'static str = "inventory";
//!     type Storage = MemoryStorage;
//!     fn storage(&self) -> &MemoryStorage { &STORAGE }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let mut service = CircuitBreakerLayer::new(Inventory)
//!     .layer(service_fn(|sku: u32| async move { if sku == 0 { Err("no such sku") } else { Ok(sku) } }));
//! assert_eq!(service.call(7).await.unwrap(), 7);
//! assert!(matches!(service.call(0).await, Err(Error::Inner("no such sku"))));
//! // One failure trips this breaker: the next request is rejected and never runs.
//! match service.call(7).await {
//!     Err(Error::Open(open)) => assert!(open.retry_at().is_some()),
//!     other => panic!("{other:?}"),
//! }
//! # });
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use ::tower::{Layer, Service};

use crate::breaker::Breaker;
use crate::clock::Clock;
use crate::engine::view::decided_here;
use crate::engine::{
    CallSpan, Entering, Outcome, Permit, Ticket, call_span, catch_async, in_span, instrument,
};
use crate::error::CircuitBreakerOpen;
use crate::handler::CircuitBreaker;
use crate::storage::AsyncStorage;

/// A [`Layer`] wrapping services in [`CircuitBreakerService`]s that share one handler's
/// breakers: every service made by one layer (and every clone of it) guards the same
/// breakers, and so does every other layer, guarded function or [`Breaker`] of the same
/// handler on the same storage.
pub struct CircuitBreakerLayer<H: CircuitBreaker, K = WholeService, C = ErrorsFail> {
    breaker: Arc<Breaker<H>>,
    key: K,
    classify: C,
}

impl<H: CircuitBreaker> CircuitBreakerLayer<H> {
    /// A layer guarding every request with `handler`'s own breaker, counting an `Err` as a
    /// failure.
    pub fn new(handler: H) -> Self {
        CircuitBreakerLayer {
            breaker: Arc::new(Breaker::new(handler)),
            key: WholeService,
            classify: ErrorsFail,
        }
    }
}

impl<H: CircuitBreaker, K, C> CircuitBreakerLayer<H, K, C> {
    /// Gives each request its own breaker under the handler's key, named by `key` (see
    /// [`RequestKey`]): a closure `Fn(&Request) -> Option<impl AsRef<str>>` or [`ByHost`].
    /// A request it gives no key (`None`) goes through the handler's own breaker.
    ///
    /// ```
    /// # use std::{sync::LazyLock, time::Duration};
    /// # use circuitpy::{CircuitBreaker, MemoryStorage};
    /// # static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
    /// # struct Tenants;
    /// # impl CircuitBreaker for Tenants {
    /// #   const FAILURE_THRESHOLD: u32 = 5;
    /// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    /// #   const FAILURE_KEY: &'static str = "tenants";
    /// #   type Storage = MemoryStorage;
    /// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
    /// # }
    /// struct Query { tenant: String }
    /// let layer = circuitpy::tower::CircuitBreakerLayer::new(Tenants)
    ///     .key_by(|query: &Query| Some(query.tenant.clone()));
    /// # let _ = layer;
    /// ```
    pub fn key_by<K2>(self, key: K2) -> CircuitBreakerLayer<H, K2, C> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            key,
            classify: self.classify,
        }
    }

    /// Decides the outcome of each answered request with `classify` (see [`Classify`]): a
    /// closure `Fn(&Result<Response, Error>) -> Outcome` or [`ServerErrorsFail`].
    pub fn classify<C2>(self, classify: C2) -> CircuitBreakerLayer<H, K, C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            key: self.key,
            classify,
        }
    }

    /// The handler's own breaker: its state, or force it open or closed.
    pub fn breaker(&self) -> &Breaker<H> {
        &self.breaker
    }
}

impl<H: CircuitBreaker, K: Clone, C: Clone> Clone for CircuitBreakerLayer<H, K, C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            breaker: self.breaker.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<H: CircuitBreaker, K, C> fmt::Debug for CircuitBreakerLayer<H, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, H: CircuitBreaker, K: Clone, C: Clone> Layer<S> for CircuitBreakerLayer<H, K, C> {
    type Service = CircuitBreakerService<S, H, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A [`Service`] that lets a request reach `S` only while its breaker admits it (see
/// [`CircuitBreakerLayer`]).
pub struct CircuitBreakerService<S, H: CircuitBreaker, K = WholeService, C = ErrorsFail> {
    inner: S,
    breaker: Arc<Breaker<H>>,
    key: K,
    classify: C,
}

impl<S: Clone, H: CircuitBreaker, K: Clone, C: Clone> Clone for CircuitBreakerService<S, H, K, C> {
    fn clone(&self) -> Self {
        CircuitBreakerService {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S: fmt::Debug, H: CircuitBreaker, K, C> fmt::Debug for CircuitBreakerService<S, H, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, H: CircuitBreaker, K, C> CircuitBreakerService<S, H, K, C> {
    /// The handler's own breaker.
    pub fn breaker(&self) -> &Breaker<H> {
        &self.breaker
    }

    /// The guarded service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, H, K, C, Request> Service<Request> for CircuitBreakerService<S, H, K, C>
where
    S: Service<Request> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
    K: RequestKey<Request>,
    C: Classify<S::Response, S::Error>,
    Request: Send + 'static,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future, H, C, S::Response, S::Error>;

    /// The inner service's readiness; takes no permit.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let key = self.key.key(&request);
        let entering = self
            .breaker
            .entering(key.as_ref().map(AsRef::as_ref), "call");
        let admission = match entering {
            Entering::Decided(admission) => admission,
            Entering::Asking(_) => {
                // The storage must be asked before the request may go: the ready service
                // goes with it, a clone waits for the next poll_ready.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let key = key.map(|key| key.as_ref().to_owned());
                return ResponseFuture::asking(
                    self.breaker.clone(),
                    key,
                    inner,
                    request,
                    self.classify.clone(),
                );
            }
        };
        let stage = match admission {
            Ok(permit) => {
                let span = call_span(permit.key(), permit.is_trial());
                Stage::Calling {
                    held: Held {
                        breaker: self.breaker.clone(),
                        ticket: Some(permit.into_ticket()),
                        clock: clock::<H>,
                    },
                    inner: in_span(&span, || self.inner.call(request)),
                    classify: Some(self.classify.clone()),
                    span,
                }
            }
            Err(open) => Stage::Rejected {
                open: Some(Box::new(open)),
            },
        };
        ResponseFuture { stage }
    }
}

type Panic = Box<dyn std::any::Any + Send>;
type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The permit of a request under way, with its breaker: dropped unrecorded (the request
/// was cancelled), it gives a trial permit back.
struct Held<H: CircuitBreaker> {
    breaker: Arc<Breaker<H>>,
    ticket: Option<Ticket>,
    /// The storage's clock (a function, so that dropping needs no bound on the storage).
    clock: for<'a> fn(&'a H) -> &'a Clock,
}

fn clock<H: CircuitBreaker>(handler: &H) -> &Clock
where
    H::Storage: AsyncStorage,
{
    AsyncStorage::clock(handler.storage())
}

impl<H: CircuitBreaker> Held<H>
where
    H::Storage: AsyncStorage,
{
    /// Records `outcome`: at once in memory, else through the returned future.
    #[inline]
    fn record(&mut self, outcome: Outcome) -> Option<Boxed<()>> {
        let ticket = self.ticket.take()?;
        if decided_here::<H::Storage>() {
            let (handler, family) = self.breaker.parts();
            Permit::from_ticket(handler, family, clock(handler), ticket).record_here(outcome);
            return None;
        }
        let breaker = self.breaker.clone();
        Some(Box::pin(async move {
            let (handler, family) = breaker.parts();
            let permit = Permit::from_ticket(handler, family, clock(handler), ticket);
            permit.record_async(outcome).await;
        }))
    }
}

impl<H: CircuitBreaker> Drop for Held<H> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let (handler, family) = self.breaker.parts();
            drop(Permit::from_ticket(
                handler,
                family,
                (self.clock)(handler),
                ticket,
            ));
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`CircuitBreakerService`]'s response.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, H: CircuitBreaker, C, T, E> {
        #[pin]
        stage: Stage<F, H, C, T, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProjection]
    enum Stage<F, H: CircuitBreaker, C, T, E> {
        // Admitted: the inner service's future runs.
        Calling {
            #[pin]
            inner: F,
            held: Held<H>,
            classify: Option<C>,
            span: CallSpan,
        },
        // The outcome goes to a shared storage; then the result (or the panic) is given.
        Recording {
            recording: Boxed<()>,
            result: Option<Result<Result<T, E>, Panic>>,
        },
        // The storage is asked first.
        Asking {
            future: Boxed<Result<T, Error<E>>>,
        },
        Rejected {
            open: Option<Box<CircuitBreakerOpen>>,
        },
    }
}

impl<F, H: CircuitBreaker, C, T, E> ResponseFuture<F, H, C, T, E>
where
    H::Storage: AsyncStorage,
    C: Classify<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    fn asking<S, Request>(
        breaker: Arc<Breaker<H>>,
        key: Option<String>,
        mut inner: S,
        request: Request,
        classify: C,
    ) -> Self
    where
        S: Service<Request, Response = T, Error = E, Future = F> + Send + 'static,
        F: Future<Output = Result<T, E>> + Send,
        Request: Send + 'static,
    {
        let future = Box::pin(async move {
            let admission = breaker.entering(key.as_deref(), "call").admission().await;
            let permit = admission.map_err(Error::Open)?;
            let span = call_span(permit.key(), permit.is_trial());
            let calling = in_span(&span, || inner.call(request));
            let result = match catch_async(instrument(calling, span)).await {
                Ok(result) => result,
                Err(panic) => {
                    permit.record_async(Outcome::Failure).await;
                    resume_unwind(panic)
                }
            };
            permit.record_async(classify.classify(&result)).await;
            result.map_err(Error::Inner)
        });
        ResponseFuture {
            stage: Stage::Asking { future },
        }
    }
}

impl<F, H, C, T, E> Future for ResponseFuture<F, H, C, T, E>
where
    F: Future<Output = Result<T, E>>,
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
    C: Classify<T, E>,
{
    type Output = Result<T, Error<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut stage = self.as_mut().project().stage;
            match stage.as_mut().project() {
                StageProjection::Calling {
                    inner,
                    held,
                    classify,
                    span,
                } => {
                    let polled =
                        catch_unwind(AssertUnwindSafe(|| in_span(span, || inner.poll(cx))));
                    let caught = match polled {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(result)) => Ok(result),
                        Err(panic) => Err(panic),
                    };
                    let outcome = match (&caught, classify.take()) {
                        (Ok(result), Some(classify)) => classify.classify(result),
                        _ => Outcome::Failure,
                    };
                    match held.record(outcome) {
                        None => return Poll::Ready(finish(caught)),
                        Some(recording) => stage.set(Stage::Recording {
                            recording,
                            result: Some(caught),
                        }),
                    }
                }
                StageProjection::Recording { recording, result } => {
                    if recording.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let result = result.take().expect("polled after completion");
                    return Poll::Ready(finish(result));
                }
                StageProjection::Asking { future } => return future.as_mut().poll(cx),
                StageProjection::Rejected { open } => {
                    let open = open.take().expect("polled after completion");
                    return Poll::Ready(Err(Error::Open(*open)));
                }
            }
        }
    }
}

/// The inner service's result, or its panic resumed.
fn finish<T, E>(caught: Result<Result<T, E>, Panic>) -> Result<T, Error<E>> {
    match caught {
        Ok(result) => result.map_err(Error::Inner),
        Err(panic) => resume_unwind(panic),
    }
}

/// Why a [`CircuitBreakerService`] did not answer: its breaker rejected the request, which
/// never reached the inner service, or the inner service failed.
#[derive(Debug)]
pub enum Error<E> {
    /// Rejected by the breaker.
    Open(CircuitBreakerOpen),
    /// The inner service's error.
    Inner(E),
}

impl<E> Error<E> {
    /// The rejection, if the breaker rejected the request.
    pub fn open(&self) -> Option<&CircuitBreakerOpen> {
        match self {
            Error::Open(open) => Some(open),
            Error::Inner(_) => None,
        }
    }

    /// The inner service's error, if it failed.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Error::Open(_) => None,
            Error::Inner(inner) => Some(inner),
        }
    }

    /// As tower's boxed error, for stacks whose services all fail with one: the rejection
    /// becomes a boxed [`CircuitBreakerOpen`] (`error.downcast_ref::<CircuitBreakerOpen>()`
    /// finds it), the inner error stays as it was.
    pub fn into_boxed(self) -> ::tower::BoxError
    where
        E: Into<::tower::BoxError>,
    {
        match self {
            Error::Open(open) => Box::new(open),
            Error::Inner(inner) => inner.into(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open(open) => open.fmt(f),
            Error::Inner(inner) => inner.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Open(open) => Some(open),
            Error::Inner(inner) => Some(inner),
        }
    }
}

/// Names the breaker of a request: `None` for the handler's own breaker, or a per-call key.
pub trait RequestKey<Request>: Clone + Send + Sync + 'static {
    /// The key's type.
    type Key: AsRef<str>;

    /// The per-call key of `request`.
    fn key(&self, request: &Request) -> Option<Self::Key>;
}

impl<Request, F, T> RequestKey<Request> for F
where
    F: Fn(&Request) -> Option<T> + Clone + Send + Sync + 'static,
    T: AsRef<str>,
{
    type Key = T;

    fn key(&self, request: &Request) -> Option<T> {
        self(request)
    }
}

/// One breaker for every request: the handler's own (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct WholeService;

impl<Request> RequestKey<Request> for WholeService {
    type Key = &'static str;

    #[inline]
    fn key(&self, _: &Request) -> Option<&'static str> {
        None
    }
}

/// One breaker per host for HTTP requests: the host of an absolute URI (a client's
/// request), else of the `Host` header (a server's), lowercased, with the port if one is
/// given. A request with neither goes through the handler's own breaker.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByHost;

impl<B> RequestKey<http::Request<B>> for ByHost {
    type Key = String;

    fn key(&self, request: &http::Request<B>) -> Option<String> {
        let authority = match request.uri().authority() {
            Some(authority) => Cow::Borrowed(authority.as_str()),
            None => Cow::Borrowed(request.headers().get(http::header::HOST)?.to_str().ok()?),
        };
        // Credentials never become part of a key.
        let host = authority.rsplit('@').next().unwrap_or_default();
        (!host.is_empty()).then(|| host.to_ascii_lowercase())
    }
}

/// Decides what an answered request's result says about the dependency.
pub trait Classify<T, E>: Clone + Send + Sync + 'static {
    /// [`Outcome::Success`], [`Outcome::Failure`], or [`Outcome::Ignored`] (nothing is
    /// recorded; a trial gives its permit back).
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// Every `Err` is a failure, every `Ok` a success (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsFail;

impl<T, E> Classify<T, E> for ErrorsFail {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// For HTTP: a `5xx` response is a failure as well as an `Err` (a transport error, or a
/// timeout from a timeout layer inside this one); any other response is a success.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerErrorsFail;

impl<B, E> Classify<http::Response<B>, E> for ServerErrorsFail {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if !response.status().is_server_error() => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}

/// `503 Service Unavailable` for a rejected request, with a `Retry-After` header (whole
/// seconds, rounded up) when the breaker knows its next trial: what a server answers while
/// a dependency it needs is cut off.
///
/// ```
/// # use circuitpy::{Breaker, CircuitBreaker, MemoryStorage};
/// # use std::{sync::LazyLock, time::Duration};
/// # static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
/// # struct Api;
/// # impl CircuitBreaker for Api {
/// #   const FAILURE_THRESHOLD: u32 = 1;
/// #   const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// #   const FAILURE_KEY: &'static str = "api";
/// #   type Storage = MemoryStorage;
/// #   fn storage(&self) -> &MemoryStorage { &STORAGE }
/// # }
/// #[derive(Debug)]
/// enum ApiError { Down, Open(circuitpy::CircuitBreakerOpen) }
/// impl From<circuitpy::CircuitBreakerOpen> for ApiError {
///     fn from(open: circuitpy::CircuitBreakerOpen) -> Self { ApiError::Open(open) }
/// }
/// let breaker = Breaker::new(Api);
/// let _ = breaker.call(|| Err::<(), _>(ApiError::Down));
/// let Err(ApiError::Open(open)) = breaker.call(|| Ok::<(), ApiError>(())) else { panic!() };
/// let response: http::Response<()> = circuitpy::tower::unavailable(&open);
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "30");
/// ```
pub fn unavailable<B: Default>(open: &CircuitBreakerOpen) -> http::Response<B> {
    let mut response = http::Response::new(B::default());
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    if let Some(seconds) = retry_after_seconds(open.retry_at(), SystemTime::now()) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    }
    response
}

/// Whole seconds from `now` to `retry_at`, rounded up, at least 1. A breaker keeps its
/// deadline rounded up to the millisecond: that millisecond adds no second.
fn retry_after_seconds(retry_at: Option<SystemTime>, now: SystemTime) -> Option<u64> {
    let wait = retry_at?.duration_since(now).unwrap_or_default();
    let wait = wait.saturating_sub(Duration::from_millis(1));
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Some(seconds.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_never_says_zero() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |millis| Some(now + Duration::from_millis(millis));
        assert_eq!(retry_after_seconds(at(2_000), now), Some(2));
        assert_eq!(retry_after_seconds(at(2_001), now), Some(2));
        assert_eq!(retry_after_seconds(at(2_002), now), Some(3));
        assert_eq!(retry_after_seconds(at(1), now), Some(1));
        assert_eq!(
            retry_after_seconds(Some(now - Duration::from_secs(5)), now),
            Some(1)
        );
        assert_eq!(retry_after_seconds(None, now), None);
    }

    #[test]
    fn a_host_key_is_lowercase_with_its_port_and_without_credentials() {
        let request = |uri: &str, host: Option<&str>| {
            let mut builder = http::Request::builder().uri(uri);
            if let Some(host) = host {
                builder = builder.header(http::header::HOST, host);
            }
            builder.body(()).unwrap()
        };
        let key = |r: &http::Request<()>| ByHost.key(r);
        assert_eq!(
            key(&request("http://API.example.com/x", None)).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            key(&request("http://user:pw@db:8080/x", None)).as_deref(),
            Some("db:8080")
        );
        assert_eq!(
            key(&request("/x", Some("Svc.Local:3000"))).as_deref(),
            Some("svc.local:3000")
        );
        assert_eq!(key(&request("/x", None)), None);
    }
}
