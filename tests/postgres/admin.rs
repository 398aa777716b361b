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

#[test]
fn async_admin_forces_and_reads_without_blocking() {
    use circuitpy::admin::{Action, Admin, AsyncAdmin};
    use circuitpy::{AsyncPostgresStorage, Audit, State};
    let Some(url) = server() else { return };
    let table = fresh_table("admin_async");
    let _cleanup = cleanup(&url, &table);
    // Another pool, blocking, made and dropped outside the runtime.
    let blocking = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let prefix = fresh_prefix("pg_async");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let storage = AsyncPostgresStorage::connect_with(&url, options(&table))
            .await
            .unwrap();
        let audit = Audit::by("dora").because("reindex");
        let forced = storage
            .act(&prefix, "search", Action::ForceOpen, audit)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(forced.state, State::ForcedOpen);
        let listing = AsyncAdmin::list(&storage, &prefix).await.unwrap();
        assert_eq!(listing.breakers.len(), 1);
        let seen = tokio::task::block_in_place(|| Admin::inspect(&blocking, &prefix, "search"))
            .unwrap()
            .unwrap();
        assert_eq!(seen.forced.unwrap().reason.as_deref(), Some("reindex"));
        let reset = storage.act(&prefix, "search", Action::Reset, Audit::NONE);
        assert!(reset.await.unwrap().is_none());
        let gone = AsyncAdmin::inspect(&storage, &prefix, "search").await;
        assert!(gone.unwrap().is_none());
    });
}
