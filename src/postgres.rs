//! The PostgreSQL server the tests use: its URL (`CIRCUITPY_POSTGRES_URL`, by default the
//! local server), a probe that [skips](crate::services::skip) when it is unreachable, and a
//! table of its own for each test, dropped when the test ends.

use circuitpy::{PostgresOptions, PostgresStorage};

use crate::services;

/// The variable that names the server.
pub const URL_VAR: &str = "CIRCUITPY_POSTGRES_URL";

/// The server when [`URL_VAR`] is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The variable that tells a child process its parent's table.
pub const TABLE_VAR: &str = "CIRCUITPY_TEST_POSTGRES_TABLE";

/// The server's URL, reachable or not.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The server's URL, or `None` (after [`services::skip`]) when it is unreachable.
pub fn server() -> Option<String> {
    let url = url();
    match PostgresStorage::connect_with(&url, PostgresOptions::default().table("circuitpy_probe")) {
        Ok(_) => Some(url),
        Err(error) => services::skip(format!(
            "PostgreSQL at {url} is unreachable ({error}; {URL_VAR} names another server)"
        )),
    }
}

/// A table name of its own for one test: `cb_{name}_{pid}_{nanos}`.
pub fn fresh_table(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cb_{name}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// Storage options on `table`.
pub fn options(table: &str) -> PostgresOptions {
    PostgresOptions::default().table(table)
}

/// Drops a test's table, counts table and function when the test ends, pass or fail.
pub struct Cleanup {
    url: String,
    table: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let table = &self.table;
        let sql = format!(
            "DROP FUNCTION IF EXISTS {table}_op; DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_counts;"
        );
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&sql).await;
                }
            });
        }
    }
}

/// A [`Cleanup`] of `table` on the server at `url`; keep it alive for the whole test.
pub fn cleanup(url: &str, table: &str) -> Cleanup {
    Cleanup {
        url: url.to_owned(),
        table: table.to_owned(),
    }
}

/// A plain client, for looking at and planting rows and for killing connections; its
/// connection runs on the current tokio runtime.
pub async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}
