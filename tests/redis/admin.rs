//! Operating breakers on Redis: every state as `inspect` shows it, forcing with an audit
//! trail, listing under a prefix (and 10 000 breakers), foreign data as invalid data.

use std::time::{Duration, Instant};

use circuitpy::admin::Admin;
use circuitpy::{Op, Request, Storage};
use circuitpy_tests::admin::{check_admin, config, fresh_prefix};
use circuitpy_tests::redis::RedisServer;

#[test]
fn admin_shows_lists_and_forces_breakers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (storage, other) = (server.client(), server.client());
    let prefix = fresh_prefix("redis");
    check_admin(&storage, &other, &prefix, || {
        // A hash under the prefix with a field circuitpy never writes.
        let junk = format!("{prefix}:{{junk}}:state");
        let mut connection = server.connection();
        redis::cmd("HSET")
            .arg(&junk)
            .arg("owner")
            .arg("someone else")
            .exec(&mut connection)
            .unwrap();
        redis::cmd("PEXPIRE")
            .arg(&junk)
            .arg(60_000)
            .exec(&mut connection)
            .unwrap();
        junk
    });
}

#[test]
fn admin_reports_a_key_of_another_type_as_invalid_data() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = server.client();
    let mut connection = server.connection();
    redis::cmd("SET")
        .arg("circuitpy:{plain}:state")
        .arg("hello")
        .exec(&mut connection)
        .unwrap();
    let error = client.inspect("circuitpy", "plain").unwrap_err();
    assert!(error.to_string().contains("holds a string"), "{error}");
    let listing = client.list("circuitpy").unwrap();
    assert_eq!((listing.breakers.len(), listing.invalid.len()), (0, 1));
}

#[test]
fn admin_lists_ten_thousand_breakers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = server.client();
    let many = config("many");
    // One failure each, through the breaker's own script.
    for n in 0..10_000 {
        let key = format!("svc-{n:05}");
        client
            .execute(&Request::new(&key, Op::Failure, &many))
            .unwrap();
    }
    let elsewhere = config("manyx");
    // And breakers under other prefixes that the listing must skip.
    for n in 0..100 {
        client
            .execute(&Request::new(&format!("x{n}"), Op::Failure, &elsewhere))
            .unwrap();
    }
    let started = Instant::now();
    let listing = client.list("many").unwrap();
    let took = started.elapsed();
    println!(
        "redis: listed {} breakers in {took:?}",
        listing.breakers.len()
    );
    circuitpy_tests::services::notice(&format!(
        "redis admin: listed {} breakers in {took:?}",
        listing.breakers.len()
    ));
    assert_eq!(listing.breakers.len(), 10_000);
    assert!(listing.invalid.is_empty());
    assert!(listing.breakers.iter().all(|b| b.failures == 1));
    assert!(took < Duration::from_secs(60));
}
