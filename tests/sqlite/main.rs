//! The SQLite storage, on fresh database files in the temporary directory.

mod fleet;
mod storage;
