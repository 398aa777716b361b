//! The PostgreSQL storages against a real server, `CIRCUITPY_POSTGRES_URL` (by default the
//! local one, `postgres://postgres@127.0.0.1:5432/test`); every test works in a table of
//! its own. An unreachable server skips the tests with a notice, or fails them under
//! `CIRCUITPY_REQUIRE_SERVICES=1`.

mod admin;
mod faults;
mod fleet;
mod storage;
#[cfg(feature = "postgres-tls")]
mod tls;
