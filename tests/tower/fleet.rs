//! Two server processes guard their route with one breaker kept in Redis: failures seen by
//! one trip it for both.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use circuitpy::tower::CircuitBreakerLayer;
use circuitpy_tests::handlers::leak;
use circuitpy_tests::redis::RedisServer;
use circuitpy_tests::{shared_handler, test_name};
use reqwest::StatusCode;

use crate::server::{Backend, app, client, serve};

shared_handler!(Fleet {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
});

const URL_VAR: &str = "CIRCUITPY_TOWER_REDIS";

/// The child's side: a server whose route always fails, guarded through Redis. Prints its
/// address, then serves until its standard input closes.
#[test]
#[ignore = "run by the fleet test as a child process"]
fn fleet_server() {
    let Ok(url) = std::env::var(URL_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let storage = leak(redis::Client::open(url).unwrap());
        let layer = CircuitBreakerLayer::new(Fleet(storage));
        let address = serve(app(layer, Backend::answering(500))).await;
        println!("LISTENING {address}");
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count())
            .await
            .unwrap();
    });
}

/// A child server, killed when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(redis: &RedisServer) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &test_name!(fleet_server),
                "--nocapture",
                "--ignored",
            ])
            .env(URL_VAR, redis.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the test binary runs again");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let address = stdout
            .lines()
            .map(Result::unwrap)
            .find_map(|line| line.strip_prefix("LISTENING ").map(str::to_owned))
            .expect("the child server reports its address");
        Server { child, address }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.address)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn failures_in_one_process_open_the_breaker_for_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, other) = (Server::start(&redis), Server::start(&redis));
    let client = client();
    for _ in 0..3 {
        let response = client.get(one.url()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    // Open for both: the other process, which never saw a failure, asks Redis.
    for server in [&other, &one] {
        let response = client.get(server.url()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (29..=30).contains(&retry_after),
            "Retry-After: {retry_after}"
        );
    }
    let storage = leak(redis.client());
    let state = circuitpy::Breaker::new(Fleet(storage)).state_async().await;
    assert_eq!(state.unwrap(), circuitpy::State::Open);
}
