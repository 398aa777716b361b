//! One breaker shared by several processes through one file: the test binary re-runs
//! `fleet_child` as child processes, which find the file in their environment.

use circuitpy::SqliteStorage;
use circuitpy::testing::processes;
use circuitpy_tests::sqlite::{PATH_VAR, fresh_database};
use circuitpy_tests::test_name;

#[test]
fn processes_share_one_breaker_through_the_file() {
    let path = fresh_database("fleet");
    let storage = SqliteStorage::open_with_table(&path, "fleet").unwrap();
    let path = path.to_str().unwrap();
    let report = processes::check_across_processes(
        &storage,
        &test_name!(fleet_child),
        4,
        &[(PATH_VAR, path)],
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        report.rules,
        [
            "processes-trip-at-exactly-the-threshold",
            "processes-share-exactly-k-trials-per-round"
        ]
    );
}

#[test]
#[ignore = "run by processes_share_one_breaker_through_the_file as a child process"]
fn fleet_child() {
    let path = std::env::var(PATH_VAR).expect("run as a child process");
    let storage = SqliteStorage::open_with_table(path, "fleet").unwrap();
    processes::run_child(&storage);
}

#[test]
fn a_sick_process_opens_only_its_own_view_and_a_quorum_trips_the_file() {
    let path = fresh_database("quorum");
    let storage: &'static SqliteStorage = Box::leak(Box::new(
        SqliteStorage::open_with_table(&path, "fleet").unwrap(),
    ));
    let path = path.to_str().unwrap();
    let report = processes::check_quorum_across_processes(
        storage,
        &test_name!(breaker_child),
        &[(PATH_VAR, path)],
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.rules.len(), 3);
}

#[test]
#[ignore = "run by the quorum and overrides tests as a child process"]
fn breaker_child() {
    let path = std::env::var(PATH_VAR).expect("run as a child process");
    let storage = SqliteStorage::open_with_table(path, "fleet").unwrap();
    processes::run_breaker_child(Box::leak(Box::new(storage)));
}

#[test]
fn an_operators_override_decides_in_another_process() {
    let path = fresh_database("tuned");
    let storage: &'static SqliteStorage = Box::leak(Box::new(
        SqliteStorage::open_with_table(&path, "fleet").unwrap(),
    ));
    let path = path.to_str().unwrap();
    let report = processes::check_overrides_across_processes(
        storage,
        &test_name!(breaker_child),
        &[(PATH_VAR, path)],
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.rules.len(), 2);
}
