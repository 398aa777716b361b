//! Defects that once let a breaker switch itself off, each pinned by a test.

#[cfg(feature = "redis")]
#[allow(dead_code, unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod primitives;
mod proxy;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

use circuitpy::CircuitBreakerOpen;

#[derive(Debug)]
pub enum E {
    Down,
    Ignored,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for E {
    fn from(open: CircuitBreakerOpen) -> Self {
        E::Open(open)
    }
}

pub fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// A handler over any storage, given as a reference; `$body` holds its consts.
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
