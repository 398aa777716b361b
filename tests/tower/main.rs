//! The tower layer in a real axum server, called by a real HTTP client over loopback: trips
//! on 5xx, answers 503 with `Retry-After` while open, lets exactly the half-open trials
//! through a burst, keeps one breaker per host, and shares one breaker between two server
//! processes through Redis.

mod fleet;
mod server;
mod service;
