//! The SQLite storage, on fresh database files in the temporary directory.

mod admin;
mod faults;
mod fleet;
mod storage;
