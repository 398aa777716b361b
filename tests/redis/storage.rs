//! The Redis storage against a real server: the keys it writes, bad data, prefixes, the
//! commands each call costs, credentials in errors, TLS, and the async flavours.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, FORCED_TTL, FailurePolicy, OnStorageFailure,
    Rejection, State, StorageError,
};
use circuitpy_tests::redis::RedisServer;

const RECOVERY: Duration = Duration::from_millis(300);

macro_rules! handler {
    ($name:ident { $($item:item)* }) => {
        struct $name<S: 'static>(&'static S);

        impl<S: Send + Sync + 'static> CircuitBreaker for $name<S> {
            const FAILURE_THRESHOLD: u32 = 2;
            const RECOVERY_TIMEOUT: Duration = RECOVERY;
            const FAILURE_KEY: &'static str = "svc";
            const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
            type Storage = S;
            fn storage(&self) -> &S {
                self.0
            }
            $($item)*
        }
    };
}

handler!(Plain {});
handler!(PrefixA {
    const KEY_PREFIX: &'static str = "app-a";
});
handler!(PrefixB {
    const KEY_PREFIX: &'static str = "app-b";
});
handler!(Rated {
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::Rate {
        rate: 0.5,
        window: Duration::from_secs(60),
        minimum_calls: 100,
    };
});
handler!(Rejecting {
    const ON_STORAGE_FAILURE: OnStorageFailure = OnStorageFailure::Reject;
});

static STORAGE_ERRORS: AtomicU32 = AtomicU32::new(0);

handler!(Counting {
    fn on_storage_error(&self, _key: &str, _error: &StorageError) {
        STORAGE_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
});

handler!(Trials {
    const HALF_OPEN_TRIALS: u32 = 1;
});

#[derive(Debug)]
enum E {
    Down,
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for E {
    fn from(open: CircuitBreakerOpen) -> Self {
        E::Open(open)
    }
}

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

const HASH: &str = "circuitpy:{svc}:state";

fn cmd(connection: &mut redis::Connection, args: &[&str]) -> redis::Value {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(connection).unwrap()
}

fn pttl(connection: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(connection).unwrap()
}

#[test]
fn every_key_is_written_with_an_expiry_and_a_reset_deletes_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = server.connection();
    let breaker = Breaker::new(Plain(leak(server.client())));
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    let day = 24 * 3600 * 1000;
    let ttl = pttl(&mut redis, HASH);
    assert!(ttl > day - 10_000 && ttl <= day, "retention, got {ttl}");
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    assert_eq!(breaker.state().unwrap(), State::Open);
    assert!(pttl(&mut redis, HASH) > day - 10_000);
    breaker.force_open().unwrap();
    let forced = FORCED_TTL.as_millis() as i64;
    assert!(pttl(&mut redis, HASH) > forced - 10_000);
    breaker.reset().unwrap();
    assert_eq!(pttl(&mut redis, HASH), -2, "a reset deletes the breaker");
    // A success on a closed breaker with nothing counted writes nothing.
    breaker.call(|| Ok::<(), E>(())).unwrap();
    assert_eq!(pttl(&mut redis, HASH), -2);
}

#[test]
fn a_breaker_whose_keys_vanish_while_open_reads_as_closed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = server.connection();
    let breaker = Breaker::new(Plain(leak(server.client())));
    for _ in 0..2 {
        let _ = breaker.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(breaker.state().unwrap(), State::Open);
    cmd(&mut redis, &["DEL", HASH]);
    assert_eq!(breaker.state().unwrap(), State::Closed);
    let ran = breaker.call(|| Ok::<_, E>(true)).unwrap();
    assert!(ran);
}

#[test]
fn values_the_breaker_did_not_write_are_invalid_data_naming_the_key() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = server.connection();
    let client = leak(server.client());

    // A key of the wrong type.
    cmd(&mut redis, &["SET", HASH, "surprise"]);
    let error = Breaker::new(Plain(client)).state().unwrap_err();
    assert!(
        matches!(&error, StorageError::InvalidData { key, .. } if key == HASH),
        "{error:?}"
    );

    // A field that is not a count.
    cmd(&mut redis, &["DEL", HASH]);
    cmd(&mut redis, &["HSET", HASH, "f", "abc"]);
    let error = Breaker::new(Plain(client)).state().unwrap_err();
    assert!(
        matches!(&error, StorageError::InvalidData { key, detail } if key == HASH && detail.contains("abc")),
        "{error:?}"
    );
    // An unknown state code.
    cmd(&mut redis, &["DEL", HASH]);
    cmd(&mut redis, &["HSET", HASH, "s", "9"]);
    assert!(matches!(
        Breaker::new(Plain(client)).state(),
        Err(StorageError::InvalidData { .. })
    ));

    // Under the Allow policy the call runs and the hook hears of it; under Reject it is
    // rejected with the cause.
    let before = STORAGE_ERRORS.load(Ordering::SeqCst);
    let breaker = Breaker::new(Counting(client));
    for _ in 0..3 {
        let _ = breaker.call(|| Err::<(), E>(E::Down));
    }
    assert!(STORAGE_ERRORS.load(Ordering::SeqCst) >= before + 3);
    // Forcing does not overwrite what it cannot read.
    let error = Breaker::new(Rejecting(client)).force_open().unwrap_err();
    assert!(matches!(&error, StorageError::InvalidData { key, .. } if key == HASH));
    // A reset clears it, whatever it holds.
    Breaker::new(Plain(client)).reset().unwrap();
    assert_eq!(Breaker::new(Plain(client)).state().unwrap(), State::Closed);
    cmd(&mut redis, &["SET", HASH, "surprise"]);
    Breaker::new(Plain(client)).reset().unwrap();
    assert_eq!(Breaker::new(Plain(client)).state().unwrap(), State::Closed);

    // The primitives name the key too.
    cmd(&mut redis, &["SET", "plain", "abc"]);
    let error = circuitpy::Storage::get_count(client, "plain").unwrap_err();
    assert!(matches!(&error, StorageError::InvalidData { key, .. } if key == "plain"));
    let error = circuitpy::Storage::increment(client, "plain", RECOVERY).unwrap_err();
    assert!(matches!(&error, StorageError::InvalidData { key, .. } if key == "plain"));
    cmd(&mut redis, &["HSET", "hash", "a", "1"]);
    let error = circuitpy::Storage::get_count(client, "hash").unwrap_err();
    assert!(matches!(&error, StorageError::InvalidData { key, .. } if key == "hash"));
}

#[test]
fn the_primitives_follow_the_storage_contract() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = server.connection();
    let client = server.client();
    use circuitpy::Storage;
    assert_eq!(client.get_count("c").unwrap(), 0);
    assert_eq!(client.increment("c", Duration::from_secs(10)).unwrap(), 1);
    let ttl = pttl(&mut redis, "c");
    assert!(ttl > 9_000 && ttl <= 10_000);
    // An existing key keeps its expiry.
    assert_eq!(client.increment("c", Duration::from_secs(1000)).unwrap(), 2);
    assert!(pttl(&mut redis, "c") <= 10_000);
    assert_eq!(client.get_count("c").unwrap(), 2);
    client.expire_after("c", Duration::from_secs(100)).unwrap();
    assert!(pttl(&mut redis, "c") > 10_000);
    client.expire_after("c", Duration::ZERO).unwrap();
    assert_eq!(client.get_count("c").unwrap(), 0);
    client
        .expire_after("absent", Duration::from_secs(1))
        .unwrap();
    assert_eq!(pttl(&mut redis, "absent"), -2);
}

#[test]
fn trial_permits_are_leases_and_late_outcomes_change_nothing() {
    use circuitpy::{Config, Op, Request, Storage};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = server.client();
    let config = Config::of::<Trials<redis::Client>>();
    let run = |op| client.execute(&Request::new("svc", op, &config)).unwrap();

    run(Op::Failure);
    let open = run(Op::Failure);
    assert_eq!(open.state, State::Open);
    let retry_in = open.retry_in.unwrap();
    assert!(
        retry_in > Duration::ZERO && retry_in <= RECOVERY,
        "{retry_in:?}"
    );
    assert!(open.open_since.unwrap() < RECOVERY);
    // Outcomes of calls admitted while closed, arriving now, change nothing.
    assert_eq!(run(Op::Failure).state, State::Open);
    assert_eq!(run(Op::TrialSuccess).state, State::Open);
    assert!(
        !run(Op::AcquireTrial).permit,
        "no permit before the deadline"
    );

    std::thread::sleep(RECOVERY + Duration::from_millis(50));
    assert_eq!(run(Op::Read).state, State::HalfOpen);
    assert!(run(Op::AcquireTrial).permit);
    assert!(!run(Op::AcquireTrial).permit, "one trial at a time");
    // Its holder never reports: after a recovery timeout the lease lapses.
    std::thread::sleep(RECOVERY + Duration::from_millis(50));
    assert!(run(Op::AcquireTrial).permit, "a new round");
    assert!(!run(Op::AcquireTrial).permit);
    assert_eq!(run(Op::TrialSuccess), circuitpy::Snapshot::closed(0));
    // A trial outcome arriving after it closed changes nothing.
    assert_eq!(run(Op::TrialFailure), circuitpy::Snapshot::closed(0));
    // Closed with nothing counted: the breaker is no hash at all.
    let mut redis = server.connection();
    let exists: bool = redis::Commands::exists(&mut redis, HASH).unwrap();
    assert!(!exists, "the late trial failure wrote to a closed breaker");
}

#[test]
fn two_prefixes_on_one_server_do_not_collide() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let a = Breaker::new(PrefixA(client));
    let b = Breaker::new(PrefixB(client));
    for _ in 0..2 {
        let _ = a.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(a.state().unwrap(), State::Open);
    assert_eq!(b.state().unwrap(), State::Closed);
    let mut redis = server.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis).unwrap();
    assert_eq!(keys, vec!["app-a:{svc}:state".to_owned()]);
}

/// Commands per command name, from `INFO commandstats`.
fn command_stats(redis: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(redis).unwrap();
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Counts the commands a client sends during `action`: every command but those the
/// script runs inside the server and this inspection's own INFO.
struct Counter {
    redis: redis::Connection,
    before: HashMap<String, u64>,
}

/// Commands the script runs inside the server, and the inspection's own INFO. (The script
/// also runs `HMGET`, but only for a reset, which nothing counted here sends; a client's
/// `HMGET` is the peek that settles a success.)
const NOT_SENT: [&str; 9] = [
    "exists", "type", "hgetall", "pttl", "time", "del", "hset", "pexpire", "info",
];

impl Counter {
    fn new(server: &RedisServer) -> Counter {
        let mut redis = server.connection();
        let before = command_stats(&mut redis);
        Counter { redis, before }
    }

    /// Commands sent since the last look.
    fn sent(&mut self) -> u64 {
        self.sent_by_name().values().sum()
    }

    /// Commands sent since the last look, per command name.
    fn sent_by_name(&mut self) -> HashMap<String, u64> {
        let now = command_stats(&mut self.redis);
        let sent = now
            .iter()
            .filter(|(name, _)| !NOT_SENT.contains(&name.as_str()))
            .map(|(name, calls)| {
                let before = self.before.get(name).copied().unwrap_or(0);
                (name.clone(), calls - before)
            })
            .filter(|(_, calls)| *calls > 0)
            .collect();
        self.before = now;
        sent
    }
}

handler!(Windowed {
    const FAILURE_POLICY: FailurePolicy = FailurePolicy::CountInWindow {
        window: Duration::from_secs(60),
    };
});

/// A success that changes nothing, as on a healthy breaker, is settled by one `HMGET` of the
/// state and the count (what a `GET` costs the server), not by the script; one with a
/// consecutive count to reset runs the script after it, and resets the count. Under the
/// count-in-window policy a success never changes the count: one `HMGET`, count kept.
#[test]
fn a_success_that_changes_nothing_is_one_hmget_and_runs_no_script() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let only = |name: &str| HashMap::from([(name.to_owned(), 1)]);
    let both = HashMap::from([("hmget".to_owned(), 1), ("evalsha".to_owned(), 1)]);

    let breaker = Breaker::new(Plain(client));
    // Loads the script and fills the connection pool.
    breaker.state().unwrap();
    let mut counter = Counter::new(&server);
    breaker.call(|| Ok::<(), E>(())).unwrap();
    assert_eq!(
        counter.sent_by_name(),
        only("hmget"),
        "a healthy breaker's success"
    );
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    assert_eq!(counter.sent_by_name(), only("evalsha"), "a failure");
    // This process saw the count: the script at once.
    breaker.call(|| Ok::<(), E>(())).unwrap();
    assert_eq!(
        counter.sent_by_name(),
        only("evalsha"),
        "a success with a count to reset"
    );
    // The count was reset: this failure is the first of two again.
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    counter.sent();
    assert_eq!(breaker.state().unwrap(), State::Closed);
    breaker.reset().unwrap();
    // A count another process made, which this one did not see: the peek, then the script.
    let elsewhere = Breaker::new(Plain(leak(server.client())));
    let _ = elsewhere.call(|| Err::<(), E>(E::Down));
    counter.sent();
    breaker.call(|| Ok::<(), E>(())).unwrap();
    assert_eq!(counter.sent_by_name(), both, "a count made elsewhere");
    let _ = elsewhere.call(|| Err::<(), E>(E::Down));
    assert_eq!(
        elsewhere.state().unwrap(),
        State::Closed,
        "the success reset it"
    );
    breaker.reset().unwrap();
    counter.sent();
    // Forced closed, a success changes nothing either.
    breaker.force_closed().unwrap();
    counter.sent();
    breaker.call(|| Ok::<(), E>(())).unwrap();
    assert_eq!(counter.sent_by_name(), only("hmget"), "forced closed");
    breaker.reset().unwrap();

    let windowed = Breaker::new(Windowed(client));
    let _ = windowed.call(|| Err::<(), E>(E::Down));
    counter.sent();
    windowed.call(|| Ok::<(), E>(())).unwrap();
    assert_eq!(counter.sent_by_name(), only("hmget"), "count in window");
    // The success kept the count: the second failure trips.
    let _ = windowed.call(|| Err::<(), E>(E::Down));
    assert_eq!(windowed.state().unwrap(), State::Open);
}

#[test]
fn the_commands_each_call_costs() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let breaker = Breaker::new(Trials(client));
    // Loads the script and fills the connection pool.
    breaker.state().unwrap();
    let mut counter = Counter::new(&server);

    breaker.call(|| Ok::<(), E>(())).unwrap();
    let closed_success = counter.sent();
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    let failure = counter.sent();
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    let tripping_failure = counter.sent();
    assert_eq!(breaker.state().unwrap(), State::Open);
    counter.sent();
    let rejected = breaker.call(|| Ok::<(), E>(()));
    assert!(matches!(rejected, Err(E::Open(_))));
    let rejected_before_deadline = counter.sent();
    std::thread::sleep(RECOVERY + Duration::from_millis(50));
    // The trial's own permit costs one command; a call rejected meanwhile costs one.
    let mut rejected_while_trial = None;
    let mut trial_admission = None;
    breaker
        .call(|| {
            trial_admission = Some(counter.sent());
            let inner = breaker.call(|| Ok::<(), E>(()));
            match inner {
                Err(E::Open(open)) => assert!(matches!(open.reason(), Rejection::TrialsInProgress)),
                other => panic!("{other:?}"),
            }
            rejected_while_trial = Some(counter.sent());
            Ok::<(), E>(())
        })
        .unwrap();
    let trial_success = counter.sent();
    assert_eq!(breaker.state().unwrap(), State::Closed);

    eprintln!(
        "commands per call: closed success {closed_success}, failure {failure}, tripping \
         failure {tripping_failure}, rejected before the deadline {rejected_before_deadline}, \
         trial admission {trial_admission:?}, rejected during a trial {rejected_while_trial:?}, \
         trial success {trial_success}"
    );
    assert_eq!(closed_success, 1);
    assert_eq!(failure, 1);
    assert_eq!(tripping_failure, 1);
    assert_eq!(rejected_before_deadline, 0);
    assert_eq!(trial_admission, Some(1));
    assert_eq!(rejected_while_trial, Some(1));
    assert_eq!(trial_success, 1);
}

#[test]
fn memory_used_by_one_breaker() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let mut redis = server.connection();
    let usage = |redis: &mut redis::Connection, key: &str| -> i64 {
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query(redis)
            .unwrap()
    };
    let plain = Breaker::new(Plain(client));
    let _ = plain.call(|| Err::<(), E>(E::Down));
    let counting = usage(&mut redis, HASH);
    let _ = plain.call(|| Err::<(), E>(E::Down));
    let open = usage(&mut redis, HASH);
    let rated = Breaker::new(Rated(client));
    plain.reset().unwrap();
    for _ in 0..50 {
        let _ = rated.call(|| Err::<(), E>(E::Down));
    }
    let rate = usage(&mut redis, HASH);
    eprintln!(
        "MEMORY USAGE of one breaker: counting failures {counting} B, open {open} B, \
         rate policy with buckets {rate} B"
    );
    assert!(counting > 0 && counting < 512);
    assert!(open > 0 && open < 512);
    assert!(rate > 0 && rate < 1024);
}

#[test]
fn a_password_never_appears_in_errors() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "right-secret-1"]) else {
        return;
    };
    let secret = "wrong-secret-7";
    let url = format!("redis://:{secret}@127.0.0.1:{}/", server.port());
    let client = leak(redis::Client::open(url).unwrap());
    let error = Breaker::new(Plain(client)).state().unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(matches!(error, StorageError::Backend { .. }), "{shown}");
    let source = std::error::Error::source(&error).expect("the client's error");
    assert!(!format!("{source} {source:?}").contains(secret));

    let async_error = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(Breaker::new(Plain(client)).state_async())
        .unwrap_err();
    let shown = format!("{async_error} {async_error:?}");
    assert!(!shown.contains(secret), "{shown}");

    // The right password works.
    let url = format!("redis://:right-secret-1@127.0.0.1:{}/", server.port());
    let client = leak(redis::Client::open(url).unwrap());
    assert_eq!(Breaker::new(Plain(client)).state().unwrap(), State::Closed);
}

#[test]
fn rediss_against_a_plain_port_fails_cleanly() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}/", server.port());
    let client = leak(redis::Client::open(url).expect("a TLS client builds"));
    let error = Breaker::new(Plain(client)).state().unwrap_err();
    assert!(
        matches!(
            error,
            StorageError::Backend { .. } | StorageError::Timeout { .. }
        ),
        "{error:?}"
    );
}

#[test]
fn a_breaker_over_tls() {
    let dir = std::env::temp_dir().join(format!("circuitpy-tls-{}", std::process::id()));
    let Some((server, ca)) = RedisServer::start_tls(&dir) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}/", server.port());
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca),
    };
    let client = leak(redis::Client::build_with_tls(url.as_str(), certificates).unwrap());
    let breaker = Breaker::new(Plain(client));
    for _ in 0..2 {
        let _ = breaker.call(|| Err::<(), E>(E::Down));
    }
    assert_eq!(breaker.state().unwrap(), State::Open);
    let state = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(breaker.state_async());
    assert_eq!(state.unwrap(), State::Open);
    // Without the CA the server's certificate is not trusted: a clean error.
    let untrusted = leak(redis::Client::open(url).unwrap());
    let error = Breaker::new(Plain(untrusted)).state().unwrap_err();
    assert!(matches!(error, StorageError::Backend { .. }), "{error:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `redis::Commands` and `circuitpy::Storage` in scope together: no ambiguous method.
#[test]
fn redis_commands_and_the_storage_trait_coexist() {
    use circuitpy::Storage;
    use redis::Commands;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = server.client();
    let mut connection = server.connection();
    let _: () = connection.set("k", 5).unwrap();
    let value: u64 = connection.get("k").unwrap();
    let _: bool = connection.expire("k", 100).unwrap();
    assert_eq!(value, 5);
    assert_eq!(client.get_count("k").unwrap(), 5);
    client.expire_after("k", Duration::ZERO).unwrap();
    let gone: Option<u64> = connection.get("k").unwrap();
    assert_eq!(gone, None);
}

mod asynchronous {
    use super::*;
    use circuitpy::circuit_breaker;
    use tokio::sync::OnceCell;

    static MANAGER: OnceCell<redis::aio::ConnectionManager> = OnceCell::const_new();

    struct Managed;

    impl CircuitBreaker for Managed {
        const FAILURE_THRESHOLD: u32 = 2;
        const RECOVERY_TIMEOUT: Duration = RECOVERY;
        const FAILURE_KEY: &'static str = "managed";
        const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
        type Storage = redis::aio::ConnectionManager;
        fn storage(&self) -> &redis::aio::ConnectionManager {
            MANAGER.get().expect("connected before use")
        }
        fn is_failure(&self, error: &dyn Any) -> bool {
            error
                .downcast_ref::<E>()
                .is_some_and(|e| matches!(e, E::Down))
        }
    }

    #[circuit_breaker(handler = Managed)]
    async fn fetch(ok: bool) -> Result<u32, E> {
        if ok { Ok(7) } else { Err(E::Down) }
    }

    async fn scenario<S: circuitpy::AsyncStorage + 'static>(storage: &'static S) {
        let breaker = Breaker::new(Plain(storage));
        breaker.call_async(async { Ok::<(), E>(()) }).await.unwrap();
        for _ in 0..2 {
            let _ = breaker.call_async(async { Err::<(), E>(E::Down) }).await;
        }
        assert_eq!(breaker.state_async().await.unwrap(), State::Open);
        let rejected = breaker.call_async(async { Ok::<(), E>(()) }).await;
        assert!(matches!(rejected, Err(E::Open(_))));
        tokio::time::sleep(RECOVERY + Duration::from_millis(50)).await;
        breaker.call_async(async { Ok::<(), E>(()) }).await.unwrap();
        assert_eq!(breaker.state_async().await.unwrap(), State::Closed);
        breaker.reset_async().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_async_flavour_shares_the_breaker() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let client = leak(server.client());
        scenario(client).await;
        let multiplexed = leak(client.get_multiplexed_async_connection().await.unwrap());
        scenario(multiplexed).await;
        let manager = leak(
            redis::aio::ConnectionManager::new(client.clone())
                .await
                .unwrap(),
        );
        scenario(manager).await;

        // A handler with the manager in a static, through the attribute.
        MANAGER
            .get_or_init(|| async {
                redis::aio::ConnectionManager::new(client.clone())
                    .await
                    .unwrap()
            })
            .await;
        assert_eq!(fetch(true).await.unwrap(), 7);
        let _ = fetch(false).await;
        let _ = fetch(false).await;
        assert!(matches!(fetch(true).await, Err(E::Open(_))));
        // The blocking client sees the same breaker.
        let blocking = Breaker::new(Managed);
        assert_eq!(blocking.state_async().await.unwrap(), State::Open);
        let mut redis = server.connection();
        let state: u8 =
            redis::Commands::hget(&mut redis, "circuitpy:{managed}:state", "s").unwrap();
        assert_eq!(state, 1, "every flavour sees the one open breaker");
    }

    /// On a shared storage the call's future catches a panic in the body, records the
    /// failure on the storage, then resumes it: in the first poll and after a yield.
    #[tokio::test]
    async fn a_panic_in_an_async_call_is_recorded_on_the_storage_and_keeps_unwinding() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let client = leak(server.client());
        let breaker = leak(Breaker::new(Plain(client)));
        let at_once = tokio::spawn(async {
            breaker
                .call_async(async { panic!("gave up at once") as Result<(), E> })
                .await
        });
        let later = tokio::spawn(async {
            breaker
                .call_async(async {
                    tokio::task::yield_now().await;
                    panic!("gave up later") as Result<(), E>
                })
                .await
        });
        for (task, message) in [(at_once, "gave up at once"), (later, "gave up later")] {
            let panic = task.await.unwrap_err().into_panic();
            assert_eq!(panic.downcast_ref::<&str>(), Some(&message));
        }
        let mut redis = server.connection();
        let state: u8 = redis::Commands::hget(&mut redis, HASH, "s").unwrap();
        assert_eq!(state, 1, "two failures recorded on the server: open");
        assert!(matches!(
            breaker.call_async(async { Ok::<(), E>(()) }).await,
            Err(E::Open(_))
        ));
    }

    #[tokio::test]
    async fn the_commands_an_async_call_costs() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let client = leak(server.client());
        let multiplexed = leak(client.get_multiplexed_async_connection().await.unwrap());
        for breaker in [
            Breaker::new(Trials(client)),
            Breaker::keyed(Trials(client), "x"),
        ] {
            breaker.state_async().await.unwrap();
            let mut counter = Counter::new(&server);
            breaker.call_async(async { Ok::<(), E>(()) }).await.unwrap();
            let peeked = HashMap::from([("hmget".to_owned(), 1)]);
            assert_eq!(
                counter.sent_by_name(),
                peeked,
                "a healthy breaker's success"
            );
            let _ = breaker.call_async(async { Err::<(), E>(E::Down) }).await;
            assert_eq!(counter.sent(), 1);
        }
        // The same breaker as the first above, which counts a failure, as read.
        let breaker = Breaker::new(Trials(multiplexed));
        breaker.state_async().await.unwrap();
        let mut counter = Counter::new(&server);
        breaker.call_async(async { Ok::<(), E>(()) }).await.unwrap();
        let reset = HashMap::from([("evalsha".to_owned(), 1)]);
        assert_eq!(
            counter.sent_by_name(),
            reset,
            "a success with a count to reset, which this process saw: the script"
        );
        let _ = breaker.call_async(async { Err::<(), E>(E::Down) }).await;
        assert_eq!(counter.sent(), 1);
        let _ = breaker.call_async(async { Err::<(), E>(E::Down) }).await;
        assert_eq!(counter.sent(), 1);
        assert!(matches!(
            breaker.call_async(async { Ok::<(), E>(()) }).await,
            Err(E::Open(_))
        ));
        assert_eq!(
            counter.sent(),
            0,
            "rejected before the deadline without a command"
        );
    }

    #[tokio::test]
    async fn the_async_primitives_follow_the_storage_contract() {
        use circuitpy::AsyncStorage;
        let Some(server) = RedisServer::start() else {
            return;
        };
        let client = server.client();
        let multiplexed = client.get_multiplexed_async_connection().await.unwrap();
        let manager = redis::aio::ConnectionManager::new(client.clone())
            .await
            .unwrap();
        let mut redis = server.connection();
        async fn check<S: AsyncStorage>(storage: &S, key: &str, redis: &mut redis::Connection) {
            assert_eq!(storage.get_count(key).await.unwrap(), 0);
            assert_eq!(
                storage
                    .increment(key, Duration::from_secs(10))
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(
                storage
                    .increment(key, Duration::from_secs(99))
                    .await
                    .unwrap(),
                2
            );
            let ttl = pttl(redis, key);
            assert!(ttl > 9_000 && ttl <= 10_000, "{ttl}");
            storage
                .expire_after(key, Duration::from_secs(100))
                .await
                .unwrap();
            assert!(pttl(redis, key) > 10_000);
            storage.expire_after(key, Duration::ZERO).await.unwrap();
            assert_eq!(storage.get_count(key).await.unwrap(), 0);
            cmd(redis, &["SET", key, "abc"]);
            let error = storage.get_count(key).await.unwrap_err();
            assert!(matches!(&error, StorageError::InvalidData { key: k, .. } if k == key));
            let error = storage.increment(key, RECOVERY).await.unwrap_err();
            assert!(matches!(&error, StorageError::InvalidData { key: k, .. } if k == key));
        }
        check(&client, "a", &mut redis).await;
        check(&multiplexed, "b", &mut redis).await;
        check(&manager, "c", &mut redis).await;
    }

    /// The client's cached connection belongs to the runtime that made it; a new runtime
    /// gets a working connection without a failed call.
    #[test]
    fn the_client_survives_its_runtime() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let client = leak(server.client());
        for _ in 0..3 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let state = runtime.block_on(Breaker::new(Plain(client)).state_async());
            assert_eq!(state.unwrap(), State::Closed);
        }
    }
}

/// Connections the application made carry its password too; when they fail (the server
/// restarted with another password, or went away), no error text shows it.
#[test]
fn a_password_never_appears_in_errors_of_given_connections() {
    let Some(mut server) = RedisServer::start_with(&["--requirepass", "first-secret-3"]) else {
        return;
    };
    let secret = "first-secret-3";
    let url = format!("redis://:{secret}@127.0.0.1:{}/", server.port());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (multiplexed, manager) = runtime.block_on(async {
        let client = redis::Client::open(url.as_str()).unwrap();
        let multiplexed = client.get_multiplexed_async_connection().await.unwrap();
        let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
        (leak(multiplexed), leak(manager))
    });
    let mut shown = String::new();
    runtime.block_on(async {
        assert_eq!(
            Breaker::new(Plain(multiplexed))
                .state_async()
                .await
                .unwrap(),
            State::Closed
        );
        assert_eq!(
            Breaker::new(Plain(manager)).state_async().await.unwrap(),
            State::Closed
        );
    });
    server.restart();
    runtime.block_on(async {
        for _ in 0..3 {
            for error in [
                Breaker::new(Plain(multiplexed)).state_async().await.err(),
                Breaker::new(Plain(manager)).state_async().await.err(),
            ]
            .into_iter()
            .flatten()
            {
                shown.push_str(&format!("{error} {error:?} "));
                if let Some(source) = std::error::Error::source(&error) {
                    shown.push_str(&format!("{source} {source:?} "));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(!shown.is_empty(), "the connections never failed");
    assert!(!shown.contains(secret), "{shown}");
}
