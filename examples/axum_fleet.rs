//! An axum service whose calls to a dependency go through one breaker shared by every copy
//! of the service through Redis; while it is open, requests get `503 Service Unavailable`
//! with a `Retry-After` header, `/ready` reports the service degraded, and `/metrics` serves
//! the breakers' metrics in Prometheus's text format.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum_fleet --features tower
//! ```
//!
//! The example starts two copies of itself as servers on loopback ports, then acts as their
//! client: requests for a broken item through the first server fail until the shared
//! breaker opens; the second server, which saw none of the failures, then answers 503 at
//! once, and its readiness endpoint says why, until a trial after the recovery timeout
//! finds the dependency working. Each server alone is started with
//! `AXUM_FLEET_SERVE=127.0.0.1:3000`.

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use circuitpy::tower::{CircuitBreakerLayer, Error, ServerErrorsFail, unavailable};
use circuitpy::{Breaker, CircuitBreaker, health};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::ServiceBuilder;

static REDIS: LazyLock<redis::Client> = LazyLock::new(|| {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url).expect("REDIS_URL is a valid Redis URL")
});

/// The breaker in front of the inventory service, kept in Redis.
struct Inventory;

impl CircuitBreaker for Inventory {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(2);
    const FAILURE_KEY: &'static str = "inventory";
    const KEY_PREFIX: &'static str = "circuitpy-example";
    const STORAGE_TIMEOUT: Duration = Duration::from_millis(200);
    type Storage = redis::Client;

    fn storage(&self) -> &redis::Client {
        &REDIS
    }
}

/// The dependency, simulated: item "broken" fails as a sick upstream would.
async fn stock(Path(item): Path<String>) -> Response {
    if item == "broken" {
        (StatusCode::BAD_GATEWAY, "inventory failed\n").into_response()
    } else {
        format!("{item}: 42 in stock\n").into_response()
    }
}

/// A rejection becomes 503 with `Retry-After`; the inner router never fails.
async fn rejected(error: Error<Infallible>) -> Response {
    match error {
        Error::Open(open) => unavailable(&open),
        Error::Inner(never) => match never {},
    }
}

/// Ready while every breaker of this process is closed; lists them either way.
async fn ready() -> (StatusCode, String) {
    let report = health::report();
    let lines: String = report
        .breakers
        .iter()
        .map(|breaker| format!("{} {}\n", breaker.key, breaker.state.name()))
        .collect();
    if report.ready() {
        (StatusCode::OK, format!("ready\n{lines}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded\n{lines}"),
        )
    }
}

fn app(prometheus: PrometheusHandle) -> Router {
    let guarded = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(rejected))
        .layer(CircuitBreakerLayer::new(Inventory).classify(ServerErrorsFail));
    Router::new()
        .route("/stock/{item}", get(stock))
        .layer(guarded)
        .route("/ready", get(ready))
        .route("/metrics", get(move || async move { prometheus.render() }))
}

async fn serve(address: &str) {
    // Installed before the first guarded call, so that every breaker reports to it.
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder is installed");
    circuitpy::metrics::describe();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("the address is free");
    println!("LISTENING {}", listener.local_addr().unwrap());
    axum::serve(listener, app(prometheus))
        .await
        .expect("serves");
}

/// A copy of this program serving on a free port, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Server {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("AXUM_FLEET_SERVE", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the example runs again");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let address = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("LISTENING ").map(str::to_owned))
            .expect("the server starts");
        Server {
            child,
            url: format!("http://{address}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_and_show(client: &reqwest::Client, server: &str, url: &str) -> reqwest::StatusCode {
    let response = client.get(url).send().await.expect("the server answers");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| format!(" (Retry-After: {})", value.to_str().unwrap_or("?")))
        .unwrap_or_default();
    let body = response.text().await.unwrap_or_default();
    println!("{server} GET {url} -> {status}{retry_after}");
    for line in body.lines() {
        println!("    {line}");
    }
    status
}

#[tokio::main]
async fn main() {
    if let Ok(address) = std::env::var("AXUM_FLEET_SERVE") {
        serve(&address).await;
        return;
    }
    // Start from a closed breaker.
    Breaker::new(Inventory)
        .reset_async()
        .await
        .expect("Redis answers at REDIS_URL");
    let (one, two) = (Server::start(), Server::start());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    for _ in 0..Inventory::FAILURE_THRESHOLD {
        let status = get_and_show(&client, "one", &format!("{}/stock/broken", one.url)).await;
        assert_eq!(status, 502);
    }
    // The second server saw none of those failures; the breaker they share is open.
    let status = get_and_show(&client, "two", &format!("{}/stock/widget", two.url)).await;
    assert_eq!(status, 503);
    let status = get_and_show(&client, "two", &format!("{}/ready", two.url)).await;
    assert_eq!(status, 503);
    let scrape = client
        .get(format!("{}/metrics", two.url))
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .expect("the metrics are served");
    let scrape = scrape.text().await.unwrap_or_default();
    println!("two GET {}/metrics (the breaker's lines):", two.url);
    for line in scrape
        .lines()
        .filter(|line| line.starts_with("circuitbreaker_"))
    {
        println!("    {line}");
    }
    assert!(scrape.contains(
        r#"circuitbreaker_calls_total{circuitbreaker_name="inventory",outcome="rejected"} 1"#
    ));

    // After the recovery timeout, one request is the trial; the item it asks for is fine.
    tokio::time::sleep(Inventory::RECOVERY_TIMEOUT).await;
    let status = get_and_show(&client, "two", &format!("{}/stock/widget", two.url)).await;
    assert_eq!(status, 200);
    let status = get_and_show(&client, "two", &format!("{}/ready", two.url)).await;
    assert_eq!(status, 200);
}
