//! The in-memory tests' handlers: [`handler!`](crate::handler) gives every handler its own
//! manual clock, in-memory storage and event log, and [`Error`] is the error of their
//! guarded calls.

use std::sync::{Mutex, PoisonError};

use circuitpy::{Breaker, CircuitBreaker, Storage};

use circuitpy::{CircuitBreakerOpen, Rejection, State};

/// What a handler's hooks saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Change { key: String, from: State, to: State },
    Rejected { key: String, reason: &'static str },
}

/// The short name of a rejection's reason.
pub fn reason(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::Open => "open",
        Rejection::TrialsInProgress => "trials",
        Rejection::ForcedOpen => "forced",
        Rejection::StorageFailed(_) => "storage",
        _ => "other",
    }
}

/// An append-only log of hook calls.
#[derive(Debug, Default)]
pub struct Log(Mutex<Vec<Event>>);

impl Log {
    pub const fn new() -> Self {
        Log(Mutex::new(Vec::new()))
    }
    pub fn push(&self, event: Event) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }
    /// Everything logged so far, leaving the log empty.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
    /// The state changes logged so far, leaving the log empty.
    pub fn changes(&self) -> Vec<(String, State, State)> {
        self.take()
            .into_iter()
            .filter_map(|event| match event {
                Event::Change { key, from, to } => Some((key, from, to)),
                Event::Rejected { .. } => None,
            })
            .collect()
    }
}

/// The error of the guarded functions in the tests.
#[derive(Debug)]
pub enum Error {
    /// Counts as a failure.
    Down,
    /// Does not count for handlers that narrow `is_failure`.
    NotFound,
    /// The breaker rejected the call.
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for Error {
    fn from(open: CircuitBreakerOpen) -> Self {
        Error::Open(open)
    }
}

impl Error {
    /// The rejection, or a panic naming what came instead.
    pub fn open(self) -> CircuitBreakerOpen {
        match self {
            Error::Open(open) => open,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

/// The reason of a rejected result, `None` for any other result.
pub fn rejected<T>(result: &Result<T, Error>) -> Option<&'static str> {
    match result {
        Err(Error::Open(open)) => Some(reason(open.reason())),
        _ => None,
    }
}

/// Defines a unit-struct handler on its own `MemoryStorage` driven by its own `ManualClock`,
/// whose hooks append to its own `Log`. The braces hold the handler's consts (and any
/// `is_failure`); `FAILURE_KEY` defaults to the struct's name.
///
/// `Name::clock()` is the manual clock, `Name::log()` the event log.
///
/// ```
/// use std::time::Duration;
///
/// circuitpy_tests::handler!(Payments {
///     const FAILURE_THRESHOLD: u32 = 2;
///     const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
/// });
///
/// let breaker = circuitpy::Breaker::new(Payments);
/// assert_eq!(breaker.state().unwrap(), circuitpy::State::Closed);
/// assert!(Payments::log().take().is_empty());
/// ```
#[macro_export]
macro_rules! handler {
    ($name:ident { $($body:tt)* }) => {
        struct $name;

        impl $name {
            #[allow(dead_code)]
            fn clock() -> &'static ::circuitpy::ManualClock {
                static CLOCK: ::std::sync::LazyLock<::circuitpy::ManualClock> =
                    ::std::sync::LazyLock::new(::circuitpy::ManualClock::new);
                &CLOCK
            }

            #[allow(dead_code)]
            fn log() -> &'static $crate::handlers::Log {
                static LOG: $crate::handlers::Log = $crate::handlers::Log::new();
                &LOG
            }
        }

        impl ::circuitpy::CircuitBreaker for $name {
            const FAILURE_KEY: &'static str = ::core::stringify!($name);
            type Storage = ::circuitpy::MemoryStorage;

            fn storage(&self) -> &::circuitpy::MemoryStorage {
                static STORAGE: ::std::sync::LazyLock<::circuitpy::MemoryStorage> =
                    ::std::sync::LazyLock::new(|| {
                        ::circuitpy::MemoryStorage::with_clock($name::clock().clock())
                    });
                &STORAGE
            }

            fn on_state_change(&self, key: &str, from: ::circuitpy::State, to: ::circuitpy::State) {
                $name::log().push($crate::handlers::Event::Change { key: key.to_owned(), from, to });
            }

            fn on_rejected(&self, rejection: &::circuitpy::CircuitBreakerOpen) {
                $name::log().push($crate::handlers::Event::Rejected {
                    key: rejection.key().to_owned(),
                    reason: $crate::handlers::reason(rejection.reason()),
                });
            }

            $($body)*
        }
    };
}

/// The error of tests that guard calls on any storage: a counted failure, an error the
/// handler does not count ([`shared_handler!`](crate::shared_handler) handlers that narrow `is_failure` use it), or
/// a rejection.
#[derive(Debug)]
pub enum Failed {
    Down,
    Ignored,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for Failed {
    fn from(open: CircuitBreakerOpen) -> Self {
        Failed::Open(open)
    }
}

/// A storage (or anything) for the rest of the test run, as handlers hold their storage.
pub fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// Defines a handler over any storage, held by reference: `Name(storage)`. The braces hold
/// the handler's consts; `FAILURE_KEY` is the struct's name.
#[macro_export]
macro_rules! shared_handler {
    ($name:ident { $($body:tt)* }) => {
        pub struct $name<S: 'static>(pub &'static S);
        impl<S: Send + Sync + 'static> ::circuitpy::CircuitBreaker for $name<S> {
            const FAILURE_KEY: &'static str = stringify!($name);
            type Storage = S;
            fn storage(&self) -> &S {
                self.0
            }
            $($body)*
        }
    };
}

/// A call through `breaker` on a thread of `scope`, held open until `release` is sent and
/// then ending with `outcome`. The receiver gets `true` when its body starts, `false` when
/// the breaker rejects it.
pub fn held_call<'s, H: CircuitBreaker>(
    scope: &'s std::thread::Scope<'s, '_>,
    breaker: &'s Breaker<H>,
    outcome: Result<(), Failed>,
) -> (
    std::sync::mpsc::Receiver<bool>,
    std::sync::mpsc::Sender<()>,
    std::thread::ScopedJoinHandle<'s, ()>,
)
where
    H::Storage: Storage,
{
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let started_for_reject = started_tx.clone();
    let handle = scope.spawn(move || {
        let result = breaker.call(|| {
            started_tx.send(true).unwrap();
            let _ = release_rx.recv();
            outcome
        });
        if matches!(result, Err(Failed::Open(_))) {
            let _ = started_for_reject.send(false);
        }
    });
    (started, release, handle)
}
