//! A [`reqwest_middleware`] middleware: one breaker per host by default (feature `reqwest`).
//!
//! [`CircuitBreakerMiddleware::new`] takes a handler, as `#[circuit_breaker]` does, so the
//! breakers live wherever its storage keeps them; each host (with its port, if the URL
//! gives one) gets a breaker of its own under the handler's key. A `5xx` response or a
//! transport error (refused connection, timeout) is a failure; an error from another
//! middleware says nothing about the host and is not counted. A rejected request is never
//! sent: it fails with [`reqwest_middleware::Error::Middleware`] holding the
//! [`CircuitBreakerOpen`](crate::CircuitBreakerOpen), which `downcast_ref` finds.
//!
//! ```no_run
//! use std::sync::LazyLock;
//! use std::time::Duration;
//! use circuitpy::reqwest::CircuitBreakerMiddleware;
//! use circuitpy::{CircuitBreaker, CircuitBreakerOpen, MemoryStorage};
//!
//! static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(MemoryStorage::new);
//! struct Upstreams;
//! impl CircuitBreaker for Upstreams {
//!     const FAILURE_THRESHOLD: u32 = 5;
//!     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
//!     const FAILURE_KEY: &'static str = "upstreams";
//!     type Storage = MemoryStorage;
//!     fn storage(&self) -> &MemoryStorage { &STORAGE }
//! }
//!
//! # async fn run() -> Result<(), reqwest_middleware::Error> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(CircuitBreakerMiddleware::new(Upstreams))
//!     .build();
//! match client.get("http://inventory.internal/items").send().await {
//!     Err(reqwest_middleware::Error::Middleware(error)) => {
//!         if let Some(open) = error.downcast_ref::<CircuitBreakerOpen>() {
//!             println!("inventory cut off until {:?}", open.retry_at());
//!         }
//!     }
//!     other => { other?; }
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::breaker::Breaker;
use crate::engine::{Entering, Outcome, call_span, instrument};
use crate::handler::CircuitBreaker;
use crate::storage::AsyncStorage;

type KeyFn = dyn Fn(&Request) -> Option<String> + Send + Sync;
type ClassifyFn = dyn Fn(&reqwest_middleware::Result<Response>) -> Outcome + Send + Sync;

/// A middleware that sends a request only while its host's breaker admits it.
pub struct CircuitBreakerMiddleware<H: CircuitBreaker> {
    breaker: Breaker<H>,
    key: Box<KeyFn>,
    classify: Box<ClassifyFn>,
}

impl<H: CircuitBreaker> CircuitBreakerMiddleware<H> {
    /// One breaker per host under `handler`'s key; `5xx` and transport errors fail.
    pub fn new(handler: H) -> Self {
        CircuitBreakerMiddleware {
            breaker: Breaker::new(handler),
            key: Box::new(host),
            classify: Box::new(server_errors_fail),
        }
    }

    /// Names each request's breaker with `key` instead of its host; `None` is the
    /// handler's own breaker (`|_| None`: one breaker for every request).
    pub fn key_by(
        mut self,
        key: impl Fn(&Request) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Box::new(key);
        self
    }

    /// Decides what each request's result says about its host instead.
    pub fn classify(
        mut self,
        classify: impl Fn(&reqwest_middleware::Result<Response>) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        self.classify = Box::new(classify);
        self
    }

    /// The handler's own breaker ([`Breaker::keyed`] reaches a host's).
    pub fn breaker(&self) -> &Breaker<H> {
        &self.breaker
    }
}

impl<H: CircuitBreaker> fmt::Debug for CircuitBreakerMiddleware<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerMiddleware")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// The URL's host, with its port when the URL names one.
fn host(request: &Request) -> Option<String> {
    let url = request.url();
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

fn server_errors_fail(result: &reqwest_middleware::Result<Response>) -> Outcome {
    match result {
        Ok(response) if response.status().is_server_error() => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(reqwest_middleware::Error::Reqwest(_)) => Outcome::Failure,
        Err(_) => Outcome::Ignored,
    }
}

#[async_trait::async_trait]
impl<H> Middleware for CircuitBreakerMiddleware<H>
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
{
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let key = (self.key)(&request);
        let admission = match self.breaker.entering(key.as_deref(), "request") {
            Entering::Decided(admission) => admission,
            Entering::Asking(asking) => asking.await,
        };
        let permit = admission.map_err(reqwest_middleware::Error::middleware)?;
        let span = call_span(permit.key(), permit.is_trial());
        let result = instrument(next.run(request, extensions), span).await;
        permit.record_async((self.classify)(&result)).await;
        result
    }
}
