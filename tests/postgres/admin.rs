//! Operating breakers on PostgreSQL: the shared admin scenario, with a second storage (its
//! own pool) as the other process.

use circuitpy::PostgresStorage;
use circuitpy_tests::admin::{check_admin, fresh_prefix};
use circuitpy_tests::postgres::{cleanup, fresh_table, options, raw_client, server};

#[test]
fn admin_shows_lists_and_forces_breakers() {
    let Some(url) = server() else { return };
    let table = fresh_table("admin");
    let _cleanup = cleanup(&url, &table);
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let other = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let prefix = fresh_prefix("pg");
    check_admin(&storage, &other, &prefix, || {
        // A row under the prefix whose key is not `{prefix}:{key}`.
        let junk = format!("{prefix}:{{junk");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = raw_client(&url).await;
            client
                .execute(
                    &format!("INSERT INTO {table} (key, expires_at) VALUES ($1, 9000000000000000)"),
                    &[&junk],
                )
                .await
                .unwrap();
        });
        junk
    });
}
