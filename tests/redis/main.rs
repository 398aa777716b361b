//! The Redis storage against real `redis-server`s each test starts on a free port: the keys
//! it writes and the commands it sends, one scenario suite shared with the in-memory
//! storage, the conformance kit, faults (server killed, paused, restarted) and several
//! processes sharing one breaker.

mod admin;
mod faults;
mod fleet;
mod kit;
mod recovery;
mod scenarios;
mod storage;
mod trials;
