//! Database files for the SQLite tests.

use std::path::PathBuf;

/// The variable that tells a child process its parent's database file.
pub const PATH_VAR: &str = "CIRCUITPY_TEST_SQLITE_PATH";

/// A fresh database file for one test, `{name}.db` in a new temporary directory.
pub fn fresh_database(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "circuitpy-sqlite-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.db"))
}
