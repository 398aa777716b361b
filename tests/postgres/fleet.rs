//! One breaker shared by several processes through the server: the test binary re-runs
//! `fleet_child` as child processes, which find the server and table in their environment.

use circuitpy::PostgresStorage;
use circuitpy::testing::processes;
use circuitpy_tests::postgres::{TABLE_VAR, URL_VAR, cleanup, fresh_table, options, server, url};
use circuitpy_tests::test_name;

#[test]
fn processes_share_one_breaker_through_the_server() {
    let Some(url) = server() else { return };
    let table = fresh_table("fleet");
    let _cleanup = cleanup(&url, &table);
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    let report = processes::check_across_processes(
        &storage,
        &test_name!(fleet_child),
        4,
        &[(TABLE_VAR, &table), (URL_VAR, &url)],
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.rules.len(), 2);
}

#[test]
#[ignore = "run by processes_share_one_breaker_through_the_server as a child process"]
fn fleet_child() {
    let url = url();
    let table = std::env::var(TABLE_VAR).expect("run as a child process");
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    processes::run_child(&storage);
}

#[test]
fn a_sick_process_opens_only_its_own_view_and_a_quorum_trips_the_fleet() {
    let Some(url) = server() else { return };
    let table = fresh_table("quorum");
    let _cleanup = cleanup(&url, &table);
    let storage: &'static PostgresStorage = Box::leak(Box::new(
        PostgresStorage::connect_with(&url, options(&table)).unwrap(),
    ));
    let report = processes::check_quorum_across_processes(
        storage,
        &test_name!(breaker_child),
        &[(TABLE_VAR, &table), (URL_VAR, &url)],
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.rules.len(), 3);
}

#[test]
#[ignore = "run by the quorum and overrides tests as a child process"]
fn breaker_child() {
    let url = url();
    let table = std::env::var(TABLE_VAR).expect("run as a child process");
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    processes::run_breaker_child(Box::leak(Box::new(storage)));
}

#[test]
fn an_operators_override_decides_in_another_process() {
    let Some(url) = server() else { return };
    let table = fresh_table("tuned");
    let _cleanup = cleanup(&url, &table);
    let storage: &'static PostgresStorage = Box::leak(Box::new(
        PostgresStorage::connect_with(&url, options(&table)).unwrap(),
    ));
    let report = processes::check_overrides_across_processes(
        storage,
        &test_name!(breaker_child),
        &[(TABLE_VAR, &table), (URL_VAR, &url)],
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.rules.len(), 2);
}
