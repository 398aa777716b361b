//! Redis faults a breaker must survive without switching itself off: storage failures on a
//! closed view, dead pooled connections, replies lost with their connection, bad data,
//! replies that arrive out of order.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use circuitpy::{Breaker, OnStorageFailure, Rejection, State, StorageError};

use circuitpy_tests::handlers::{Failed as E, leak};
use circuitpy_tests::redis::RedisServer;
use circuitpy_tests::shared_handler;

fn storage_failed(result: &Result<(), E>) -> bool {
    matches!(result, Err(E::Open(open)) if matches!(open.reason(), Rejection::StorageFailed(_)))
}

static REJECT_ERRORS: AtomicU32 = AtomicU32::new(0);

shared_handler!(RejectWhenDown {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(100);
    const ON_STORAGE_FAILURE: OnStorageFailure = OnStorageFailure::Reject;
    fn on_storage_error(&self, _key: &str, _error: &StorageError) {
        REJECT_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
});

/// 80 calls against a failed storage: how many bodies ran, how many were rejected with the
/// storage's failure.
fn eighty_calls<H: circuitpy::CircuitBreaker>(breaker: &Breaker<H>) -> (u32, u32)
where
    H::Storage: circuitpy::Storage,
{
    let (mut ran, mut rejected) = (0, 0);
    for _ in 0..80 {
        let result = breaker.call(|| {
            ran += 1;
            Ok::<(), E>(())
        });
        if storage_failed(&result) {
            rejected += 1;
        }
    }
    (ran, rejected)
}

/// with `Reject`, a closed, synced view stops admitting calls once the storage fails.
#[test]
fn reject_stops_a_closed_view_once_redis_is_paused_killed_or_garbled() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());

    // Paused.
    let paused = Breaker::keyed(RejectWhenDown(client), "paused");
    paused.call(|| Ok::<(), E>(())).unwrap();
    paused.call(|| Ok::<(), E>(())).unwrap();
    server.pause();
    let (ran, rejected) = eighty_calls(&paused);
    server.resume();
    assert!(ran <= 1, "{ran} of 80 bodies ran while Redis was paused");
    assert!(
        rejected >= 79,
        "{rejected} of 80 rejected with the storage failure"
    );
    // Once the storage answers again, a probe finds it and calls run.
    let started = Instant::now();
    while paused.call(|| Ok::<(), E>(())).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "never recovered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Garbage in the key.
    let garbled = Breaker::keyed(RejectWhenDown(client), "garbled");
    garbled.call(|| Ok::<(), E>(())).unwrap();
    let mut redis = server.connection();
    let _: () = redis::cmd("SET")
        .arg("circuitpy:{RejectWhenDown:garbled}:state")
        .arg("garbage")
        .query(&mut redis)
        .unwrap();
    let (ran, rejected) = eighty_calls(&garbled);
    assert!(ran <= 1, "{ran} of 80 bodies ran with garbage in the key");
    assert!(rejected >= 79, "{rejected} rejected");

    // Killed.
    let killed = Breaker::keyed(RejectWhenDown(client), "killed");
    killed.call(|| Ok::<(), E>(())).unwrap();
    server.kill();
    let (ran, rejected) = eighty_calls(&killed);
    assert!(ran <= 1, "{ran} of 80 bodies ran with Redis dead");
    assert!(rejected >= 79, "{rejected} rejected");
}

/// The same, async.
#[test]
fn reject_stops_a_closed_async_view_once_redis_is_paused() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = leak(server.client());
    runtime.block_on(async {
        let breaker = Breaker::keyed(RejectWhenDown(client), "async");
        breaker.call_async(async { Ok::<(), E>(()) }).await.unwrap();
        breaker.call_async(async { Ok::<(), E>(()) }).await.unwrap();
        server.pause();
        let ran = AtomicU32::new(0);
        let mut rejected = 0;
        for _ in 0..80 {
            let result = breaker
                .call_async(async {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), E>(())
                })
                .await;
            if storage_failed(&result) {
                rejected += 1;
            }
        }
        server.resume();
        let ran = ran.into_inner();
        assert!(
            ran <= 1,
            "{ran} of 80 async bodies ran while Redis was paused"
        );
        assert!(rejected >= 79, "{rejected} rejected");
    });
}

static RESTART_ERRORS: AtomicU32 = AtomicU32::new(0);

shared_handler!(Restarted {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(200);
    fn on_storage_error(&self, _key: &str, _error: &StorageError) {
        RESTART_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
});

/// a pooled connection to a server that restarted is discarded and the operation
/// retried on a fresh one.
#[test]
fn a_restarted_server_costs_idle_blocking_callers_nothing() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let breaker = Breaker::new(Restarted(client));
    assert_eq!(breaker.state().unwrap(), State::Closed);
    breaker.call(|| Ok::<(), E>(())).unwrap();
    server.restart();
    assert_eq!(
        breaker.state().expect("a read after a restart"),
        State::Closed
    );
    server.restart();
    let before = RESTART_ERRORS.load(Ordering::SeqCst);
    breaker.call(|| Ok::<(), E>(())).unwrap();
    assert_eq!(
        RESTART_ERRORS.load(Ordering::SeqCst),
        before,
        "a healthy call raised on_storage_error after a restart"
    );
}

shared_handler!(Crowd {
    const FAILURE_THRESHOLD: u32 = 1_000_000;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(500);
});

fn connected_clients(redis: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(redis).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// the blocking pool bounds the connections it opens, not only the idle ones.
#[test]
fn many_threads_share_a_bounded_number_of_connections() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let breaker = Breaker::new(Crowd(client));
    let mut watcher = server.connection();
    let stop = AtomicBool::new(false);
    let most = std::thread::scope(|scope| {
        for _ in 0..96 {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let _ = breaker.state();
                }
            });
        }
        let mut most = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            most = most.max(connected_clients(&mut watcher));
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        most
    });
    // The watcher's own connection is one of them.
    assert!(
        most - 1 <= circuitpy::redis::POOL_SIZE as u64,
        "{} connections open at once",
        most - 1
    );
}

static RETRIED_ERRORS: AtomicU32 = AtomicU32::new(0);

shared_handler!(Retried {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(500);
    fn on_storage_error(&self, _key: &str, _error: &StorageError) {
        RETRIED_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
});

fn failures_recorded(redis: &mut redis::Connection, key: &str) -> (String, u64) {
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(key)
        .query(redis)
        .unwrap_or_default();
    let state = fields.get("s").cloned().unwrap_or_else(|| "0".into());
    let failures = fields.get("f").and_then(|f| f.parse().ok()).unwrap_or(0);
    (state, failures)
}

/// a failure whose reply is lost with the connection is not run a second time.
#[test]
fn a_failure_whose_reply_was_lost_counts_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = circuitpy_tests::proxy::Proxy::start(server.port());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = leak(redis::Client::open(proxy.url()).unwrap());
    let mut redis = server.connection();
    runtime.block_on(async {
        let breaker = Breaker::keyed(Retried(client), "async");
        breaker.call_async(async { Ok::<(), E>(()) }).await.unwrap();
        proxy.drop_next_reply();
        let _ = breaker.call_async(async { Err::<(), E>(E::Down) }).await;
    });
    let (state, failures) = failures_recorded(&mut redis, "circuitpy:{Retried:async}:state");
    assert_eq!(
        (state.as_str(), failures),
        ("0", 1),
        "one failure whose reply was lost was counted twice"
    );

    // Blocking, likewise.
    let breaker = Breaker::keyed(Retried(client), "blocking");
    breaker.call(|| Ok::<(), E>(())).unwrap();
    proxy.drop_next_reply();
    let _ = breaker.call(|| Err::<(), E>(E::Down));
    let (state, failures) = failures_recorded(&mut redis, "circuitpy:{Retried:blocking}:state");
    assert_eq!((state.as_str(), failures), ("0", 1));
}

shared_handler!(Strict {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
});

/// the script accepts only the integers it writes; any inconsistent hash is
/// `InvalidData` naming the key.
#[test]
fn the_script_accepts_only_what_it_writes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let mut redis = server.connection();
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("hex", &[("s", "0"), ("f", "0x1")]),
        ("exponent", &[("s", "0"), ("f", "1e3")]),
        ("infinite", &[("s", "0"), ("f", "inf")]),
        ("negative", &[("s", "0"), ("f", "-1")]),
        ("open-without-deadline", &[("s", "1"), ("o", "5")]),
        ("half-open-without-permits", &[("s", "2")]),
        ("unknown-field", &[("s", "0"), ("zz", "1")]),
    ];
    for (name, fields) in cases {
        let breaker = Breaker::keyed(Strict(client), name);
        let key = format!("circuitpy:{{Strict:{name}}}:state");
        let mut command = redis::cmd("HSET");
        command.arg(&key);
        for (field, value) in *fields {
            command.arg(*field).arg(*value);
        }
        let _: () = command.query(&mut redis).unwrap();
        let _: () = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(60_000)
            .query(&mut redis)
            .unwrap();
        for (what, result) in [
            ("read", breaker.state().map(drop)),
            ("failure", {
                let mut seen = Ok(());
                let _ = breaker.call(|| Err::<(), E>(E::Down));
                if let Err(error) = breaker.state() {
                    seen = Err(error);
                }
                seen
            }),
        ] {
            match result {
                Err(StorageError::InvalidData { key: named, .. }) => {
                    assert_eq!(named, key, "{name}: {what}")
                }
                other => panic!("{name}: {what} gave {other:?}"),
            }
        }
    }
    // A hash the script would read as a valid closed breaker but that carries no expiry
    // was not written by it.
    let breaker = Breaker::keyed(Strict(client), "no-expiry");
    let key = "circuitpy:{Strict:no-expiry}:state";
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg("s")
        .arg("0")
        .query(&mut redis)
        .unwrap();
    assert!(
        matches!(breaker.state(), Err(StorageError::InvalidData { .. })),
        "a hash without an expiry passed as a breaker"
    );
}

static TRANSITIONS: Mutex<Vec<(State, State)>> = Mutex::new(Vec::new());

shared_handler!(OutOfOrder {
    const FAILURE_THRESHOLD: u32 = 20;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(500);
    fn on_state_change(&self, _key: &str, from: State, to: State) {
        TRANSITIONS.lock().unwrap().push((from, to));
    }
});

/// eight threads failing on one shared breaker; a reply answered before the trip
/// must never re-close the view after another thread adopted the trip.
#[test]
fn replies_that_arrive_out_of_order_never_reopen_the_view() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = leak(server.client());
    let breaker = Breaker::new(OutOfOrder(client));
    let mut late_bodies = 0;
    for _round in 0..20 {
        breaker.reset().unwrap();
        TRANSITIONS.lock().unwrap().clear();
        let late = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    let mut rejected = false;
                    for _ in 0..40 {
                        let result = breaker.call(|| {
                            if rejected {
                                late.fetch_add(1, Ordering::SeqCst);
                            }
                            Err::<(), E>(E::Down)
                        });
                        if matches!(result, Err(E::Open(_))) {
                            rejected = true;
                        }
                    }
                });
            }
        });
        let transitions = TRANSITIONS.lock().unwrap().clone();
        assert!(
            !transitions.contains(&(State::Open, State::Closed)),
            "the view went open -> closed: {transitions:?}"
        );
        late_bodies += late.into_inner();
    }
    assert_eq!(
        late_bodies, 0,
        "bodies ran on threads that had been rejected while the breaker was open"
    );
}
