//! The `circuitpy` binary against real Redis, PostgreSQL and SQLite: what it prints, its
//! exit codes, and that what it does is what the library sees.

use std::process::{Command, Output};
use std::time::Duration;

use circuitpy::admin::Admin;
use circuitpy::{
    Breaker, CircuitBreaker, Config, Op, PostgresStorage, Request, SqliteStorage, State, Storage,
};
use circuitpy_tests::postgres::{cleanup, fresh_table, options, server};
use circuitpy_tests::redis::RedisServer;
use circuitpy_tests::sqlite::fresh_database;
use serde_json::Value;

/// A handler on any storage, under the default prefix.
struct Payments<S: 'static>(&'static S);

impl<S: Send + Sync + 'static> CircuitBreaker for Payments<S> {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    const FAILURE_KEY: &'static str = "payments";
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(5);
    type Storage = S;
    fn storage(&self) -> &S {
        self.0
    }
}

fn config() -> Config {
    Config::of::<Payments<redis::Client>>()
}

/// Two failures on `payments` (closed, counted) and three on `payments:eu` (open).
fn seed(storage: &impl Storage) {
    let config = config();
    for (key, failures) in [("payments", 2), ("payments:eu", 3)] {
        for _ in 0..failures {
            storage
                .execute(&Request::new(key, Op::Failure, &config))
                .unwrap();
        }
    }
}

fn circuitpy(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_circuitpy"))
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("CIRCUITPY_URL")
        .env_remove("NO_COLOR")
        .env("USER", "tester")
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

/// One line on stderr, starting with the program's name, and exit status 1.
fn assert_one_line_error(output: &Output, expected: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("circuitpy: "), "{text}");
    assert!(text.contains(expected), "expected {expected:?} in {text}");
}

/// The commands every storage answers alike; `storage` is the test's own handle on it.
fn scenario<S: Storage + Admin + 'static>(url: &str, extra: &[&str], storage: &'static S) {
    let with = |args: &[&str]| {
        let mut all: Vec<&str> = extra.to_vec();
        all.extend_from_slice(args);
        circuitpy(url, &all)
    };
    seed(storage);

    // The table: a header and a line per breaker, no colour when not on a terminal.
    let list = with(&["list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let text = stdout(&list);
    println!("{text}");
    assert!(!text.contains('\x1b'), "{text}");
    assert!(text.starts_with("KEY"), "{text}");
    assert!(
        text.contains("payments:eu") && text.contains("open"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3, "{text}");

    let listed = json(&with(&["list", "--json"]));
    assert_eq!(listed["prefix"], "circuitpy");
    let breakers = listed["breakers"].as_array().unwrap();
    assert_eq!(breakers.len(), 2);
    assert_eq!(breakers[0]["key"], "payments");
    assert_eq!(breakers[0]["state"], "closed");
    assert_eq!(breakers[0]["failures"], 2);
    assert_eq!(breakers[1]["state"], "open");
    assert!(breakers[1]["next_trial_at"].is_string());

    let only_open = json(&with(&["list", "--json", "--state", "open,half-open"]));
    assert_eq!(only_open["breakers"].as_array().unwrap().len(), 1);
    let matched = json(&with(&["list", "--json", "--match", "*:eu"]));
    assert_eq!(matched["breakers"][0]["key"], "payments:eu");

    let shown = json(&with(&["show", "payments:eu", "--json"]));
    assert_eq!(shown["state"], "open");
    assert!(shown["opened_at"].as_str().unwrap().ends_with('Z'));
    assert!(shown["now"].is_string());
    let details = with(&["show", "payments:eu"]);
    assert!(
        stdout(&details).contains("next trial at"),
        "{}",
        stdout(&details)
    );

    // Forcing through the binary; the library sees it, with its trail.
    let opened = with(&[
        "open",
        "payments",
        "--reason",
        "provider outage",
        "--actor",
        "alice",
    ]);
    assert!(opened.status.success(), "{}", stderr(&opened));
    assert!(stdout(&opened).contains("forced open by alice (provider outage)"));
    assert_eq!(with(&["check", "payments"]).status.code(), Some(2));
    assert_eq!(
        Breaker::new(Payments(storage)).state().unwrap(),
        State::ForcedOpen
    );
    let info = storage.inspect("circuitpy", "payments").unwrap().unwrap();
    let forced = info.forced.unwrap();
    assert_eq!(forced.by.as_deref(), Some("alice"));
    assert_eq!(forced.reason.as_deref(), Some("provider outage"));
    assert!(forced.at.is_some());

    // The actor defaults to $USER.
    let closed = with(&["close", "payments"]);
    assert!(
        stdout(&closed).contains("forced closed by tester"),
        "{}",
        stdout(&closed)
    );
    assert_eq!(with(&["check", "payments"]).status.code(), Some(0));

    // A glob acts on several breakers only with --yes.
    let refused = with(&["open", "payments*"]);
    assert_one_line_error(&refused, "--yes");
    assert_eq!(with(&["check", "payments:eu"]).status.code(), Some(2));
    let both = with(&["reset", "payments*", "--yes"]);
    assert!(both.status.success(), "{}", stderr(&both));
    assert_eq!(stdout(&both).lines().count(), 2);
    assert_eq!(with(&["check", "payments:eu"]).status.code(), Some(0));
    assert!(storage.list("circuitpy").unwrap().breakers.is_empty());

    // Nothing stored: `check` reads closed, `show` names the key.
    assert_eq!(with(&["check", "unknown"]).status.code(), Some(0));
    assert_one_line_error(&with(&["show", "unknown"]), "unknown key \"unknown\"");
    assert_one_line_error(&with(&["show", "bad{key}"]), "invalid breaker key");

    // The live table, twice.
    let watched = with(&["watch", "--interval", "100ms", "--count", "2"]);
    assert!(watched.status.success(), "{}", stderr(&watched));
    assert_eq!(stdout(&watched).matches("breakers under").count(), 2);

    overrides(&with, storage);
}

/// An operator's runtime override, set by the binary, decides in this other process at
/// once; a value out of bounds is refused; `unset` restores the handler's threshold.
fn overrides<S: Storage + Admin + 'static>(with: &dyn Fn(&[&str]) -> Output, storage: &'static S) {
    let breaker = Breaker::keyed(Payments(storage), "limits");
    let fail = || {
        let result: Result<(), Failed> = breaker.call(|| Err(Failed::Down));
        result
    };
    let set = with(&["set", "payments:limits", "threshold=5", "recovery=45s"]);
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(
        stdout(&set).contains("threshold=5 recovery=45s"),
        "{}",
        stdout(&set)
    );
    for _ in 0..4 {
        assert!(matches!(fail(), Err(Failed::Down)));
    }
    assert_eq!(breaker.state().unwrap(), State::Closed, "4 of 5 failures");
    assert!(matches!(fail(), Err(Failed::Down)));
    assert_eq!(breaker.state().unwrap(), State::Open, "the fifth trips it");
    let shown = json(&with(&["show", "payments:limits", "--json"]));
    assert_eq!(shown["overrides"]["failure_threshold"], 5);
    assert_eq!(shown["overrides"]["recovery_timeout_ms"], 45_000);
    let next_trial = shown["next_trial_at"].as_str().unwrap().to_owned();
    assert!(!next_trial.is_empty());

    assert_one_line_error(
        &with(&["set", "payments:limits", "threshold=0"]),
        "at least 1",
    );
    // A usage error, as clap reports them: exit 1, the reason first.
    let unknown = with(&["set", "payments:limits", "speed=3"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).starts_with("error: invalid value 'speed=3'"));
    assert!(stderr(&unknown).contains("unknown setting \"speed\""));

    let unset = with(&["unset", "payments:limits"]);
    assert!(unset.status.success(), "{}", stderr(&unset));
    assert!(with(&["reset", "payments:limits"]).status.success());
    // Through the storage itself: this process's view of the open breaker hears of the
    // reset only when it next asks (within a second).
    let config = config();
    let failure = Request::new("payments:limits", Op::Failure, &config);
    for _ in 0..2 {
        assert_eq!(storage.execute(&failure).unwrap().state, State::Closed);
    }
    assert_eq!(
        storage.execute(&failure).unwrap().state,
        State::Open,
        "the handler's 3 again"
    );
    assert!(with(&["reset", "payments:limits"]).status.success());
}

#[derive(Debug)]
enum Failed {
    Down,
    Open,
}

impl From<circuitpy::CircuitBreakerOpen> for Failed {
    fn from(_: circuitpy::CircuitBreakerOpen) -> Self {
        Failed::Open
    }
}

#[test]
fn cli_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client: &'static redis::Client = Box::leak(Box::new(server.client()));
    scenario(&server.url(), &[], client);
}

#[test]
fn cli_on_postgres() {
    let Some(url) = server() else { return };
    let table = fresh_table("cli");
    let _cleanup = cleanup(&url, &table);
    let storage: &'static PostgresStorage = Box::leak(Box::new(
        PostgresStorage::connect_with(&url, options(&table)).unwrap(),
    ));
    scenario(&url, &["--table", &table], storage);
}

#[test]
fn cli_on_sqlite() {
    let path = fresh_database("cli");
    let storage: &'static SqliteStorage = Box::leak(Box::new(SqliteStorage::open(&path).unwrap()));
    scenario(&format!("sqlite://{}", path.display()), &[], storage);
}

#[test]
fn non_breaker_data_is_one_line_and_exit_1() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut connection = server.connection();
    redis::cmd("SET")
        .arg("circuitpy:{junk}:state")
        .arg("not a breaker")
        .exec(&mut connection)
        .unwrap();
    let url = server.url();
    assert_one_line_error(&circuitpy(&url, &["show", "junk"]), "holds a string");
    assert_one_line_error(&circuitpy(&url, &["list"]), "circuitpy:{junk}:state");
    assert_eq!(circuitpy(&url, &["check", "junk"]).status.code(), Some(1));
}

#[test]
fn an_unreachable_server_is_one_line_and_exit_1_without_the_password() {
    for url in [
        "redis://ops:hunter2@127.0.0.1:1/",
        "postgres://ops:hunter2@127.0.0.1:1/app",
    ] {
        let output = circuitpy(url, &["list"]);
        assert_one_line_error(&output, "");
        let all = format!("{}{}", stdout(&output), stderr(&output));
        assert!(!all.contains("hunter2"), "{all}");
    }
    let missing = circuitpy("sqlite:///nonexistent/breakers.db", &["list"]);
    assert_one_line_error(&missing, "no SQLite database");
    assert_one_line_error(&circuitpy("http://x", &["list"]), "--url must start with");
}

#[test]
fn a_wrong_password_is_one_line_and_never_printed() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "right-one"]) else {
        return;
    };
    let url = format!("redis://:wrong-s3cret@127.0.0.1:{}/", server.port());
    let output = circuitpy(&url, &["list"]);
    assert_one_line_error(&output, "");
    let all = format!("{}{}", stdout(&output), stderr(&output));
    assert!(!all.contains("wrong-s3cret"), "{all}");
    println!("{all}");
    // And with the right one, it works.
    let good = format!("redis://:right-one@127.0.0.1:{}/", server.port());
    let output = circuitpy(&good, &["list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn cli_on_postgres_over_tls() {
    let ca = circuitpy_tests::postgres::TestCa::new("circuitpy CLI test CA");
    let Some(server) = circuitpy_tests::postgres::TlsServer::start(&ca) else {
        return;
    };
    let ca_file = server.ca_file();
    let url = server.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ));
    let table = fresh_table("clitls");
    let storage = PostgresStorage::connect_with(&url, options(&table)).unwrap();
    seed(&storage);
    let listed = json(&circuitpy(&url, &["--table", &table, "list", "--json"]));
    assert_eq!(
        listed["breakers"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    // The CA from libpq's variable.
    let output = Command::new(env!("CARGO_BIN_EXE_circuitpy"))
        .args(["--url", &server.url("sslmode=require"), "--table", &table])
        .args(["show", "payments:eu", "--json"])
        .env_remove("CIRCUITPY_URL")
        .env("PGSSLROOTCERT", &ca_file)
        .output()
        .unwrap();
    assert_eq!(json(&output)["state"], "open", "{}", stdout(&output));
    // No CA: the server's certificate is not trusted, said on one line.
    let output = circuitpy(&server.url("sslmode=require"), &["list"]);
    assert_one_line_error(&output, "does not chain to a trusted root");
}
