//! `circuitpy serve` in a real browser (headless Chromium through chromedriver) and over
//! HTTP, against a Redis server of its own: the page follows a breaker the library trips
//! without a reload, forcing it closed needs the token, and the JSON API and `/metrics`
//! say what the storage holds.
//!
//! Needs `chromium` and `chromedriver` (Debian's `chromium` and `chromium-driver`; or
//! `CIRCUITPY_CHROMEDRIVER` / `CIRCUITPY_CHROMIUM`); without them it skips with a notice, or
//! fails under `CIRCUITPY_REQUIRE_SERVICES=1`. With `CIRCUITPY_SCREENSHOT=PATH` it also
//! saves the screenshot of the list it takes there.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use circuitpy::admin::Admin;
use circuitpy::{Breaker, CircuitBreaker, Config, Op, Request, State, Storage};
use circuitpy_tests::redis::RedisServer;
use circuitpy_tests::services::skip;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789abcdef";
const PREFIX: &str = "dash";

/// A handler on a Redis client, under the dashboard's prefix.
struct Payments(&'static redis::Client);

impl CircuitBreaker for Payments {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
    const FAILURE_KEY: &'static str = "payments";
    const KEY_PREFIX: &'static str = PREFIX;
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(5);
    type Storage = redis::Client;
    fn storage(&self) -> &redis::Client {
        self.0
    }
}

/// A child process killed when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `circuitpy serve` on a free port; returns it with its base URL.
fn serve(url: &str, extra: &[&str]) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_circuitpy"))
        .args(["--url", url, "--prefix", PREFIX, "serve"])
        .args(["--listen", "127.0.0.1:0", "--refresh", "300ms"])
        .args(extra)
        .env_remove("CIRCUITPY_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().expect("piped");
    let child = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the server says where it listens");
    let base = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    (child, base)
}

fn tool(var: &str, default: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.into()));
    path.is_file().then_some(path)
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser() -> Option<(Killed, Client)> {
    let Some(driver) = tool("CIRCUITPY_CHROMEDRIVER", "/usr/bin/chromedriver") else {
        return skip("chromedriver is not installed (Debian: chromium-driver)");
    };
    let Some(chromium) = tool("CIRCUITPY_CHROMIUM", "/usr/bin/chromium") else {
        return skip("chromium is not installed");
    };
    let port = free_port();
    let child = Killed(
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver does not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1200,640"],
        }),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ClientBuilder::rustls()
        .expect("a TLS provider")
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session");
    Some((child, client))
}

/// Waits for the element `css` names, up to 10 s (the page refreshes every 300 ms).
async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    match browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(error) => {
            let page = browser.source().await.unwrap_or_default();
            panic!("{css} never appeared ({error}); the page:\n{page}")
        }
    }
}

/// Fills the fields of the form `form` names and presses its button with `action`.
async fn submit(browser: &Client, form: &str, fields: &[(&str, &str)], action: &str) {
    let form = wait_for(browser, form).await;
    for (field, value) in fields {
        form.find(Locator::Css(&format!("input[name='{field}']")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    form.find(Locator::Css(&format!("button[value='{action}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The text of the element `css` names, once it is there; read again if the live region
/// replaced it in between (the page swaps it every 300 ms).
async fn text_of(browser: &Client, css: &str) -> String {
    for _ in 0..20 {
        let element = wait_for(browser, css).await;
        match element.text().await {
            Ok(text) => return text,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("{css} kept being replaced")
}

fn fail(storage: &redis::Client, key: &str, times: u32) {
    let config = Config::of::<Payments>();
    for _ in 0..times {
        storage
            .execute(&Request::new(key, Op::Failure, &config))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_a_trip_live_and_forcing_needs_the_token() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some((_driver, browser)) = browser().await else {
        return;
    };
    let storage: &'static redis::Client = Box::leak(Box::new(redis.client()));
    let (_server, base) = serve(&redis.url(), &["--token", TOKEN]);

    // One failure: listed, closed.
    let fail_in =
        |key: &'static str, times| tokio::task::spawn_blocking(move || fail(storage, key, times));
    fail_in("payments", 1).await.unwrap();
    browser.goto(&format!("{base}/")).await.unwrap();
    wait_for(&browser, "tr[data-key='payments'][data-state='closed']").await;
    // A mark that a reload would wipe.
    browser
        .execute("window.circuitpyMark = 42; return 1;", vec![])
        .await
        .unwrap();

    // The library trips it; the page shows it open without a reload.
    fail_in("payments", 2).await.unwrap();
    let row = text_of(&browser, "tr[data-key='payments'][data-state='open']").await;
    assert!(row.contains("next trial"), "{row}");
    let mark = browser
        .execute("return window.circuitpyMark;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!(42), "the page was reloaded");

    // Its page; "force closed" without the token is refused and changes nothing.
    browser
        .goto(&format!("{base}/breakers/payments"))
        .await
        .unwrap();
    wait_for(&browser, "dl[data-state='open']").await;
    submit(&browser, "form#control", &[("reason", "drill")], "close").await;
    assert!(
        text_of(&browser, ".outcome.refused")
            .await
            .contains("token")
    );
    wait_for(&browser, "dl[data-state='open']").await;
    let info = tokio::task::spawn_blocking(move || storage.inspect(PREFIX, "payments"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(info.state, State::Open);

    // With the token: forced closed, with the trail, and the library's next call runs.
    let fields = [("token", TOKEN), ("reason", "drill"), ("actor", "alice")];
    submit(&browser, "form#control", &fields, "close").await;
    assert_eq!(text_of(&browser, ".outcome.ok").await, "forced closed");
    let details = text_of(&browser, "dl[data-state='forced-closed']").await;
    assert!(details.contains("by alice (drill)"), "{details}");
    // Runtime overrides through the page's second form (the tab kept the token).
    submit(
        &browser,
        "form#overrides",
        &[("threshold", "7")],
        "override",
    )
    .await;
    // The outcome of this action, not the previous page's.
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(
            "//p[contains(@class, 'outcome') and text() = 'overrides set']",
        ))
        .await
        .expect("the overrides were set");
    let details = text_of(&browser, "dl.breaker").await;
    assert!(details.contains("threshold=7"), "{details}");
    let overridden = tokio::task::spawn_blocking(move || storage.inspect(PREFIX, "payments"))
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .overrides;
    assert_eq!(overridden.and_then(|o| o.failure_threshold), Some(7));

    let ran = tokio::task::spawn_blocking(move || {
        let breaker = Breaker::new(Payments(storage));
        breaker.call(|| Ok::<_, circuitpy::CircuitBreakerOpen>("ran"))
    })
    .await
    .unwrap();
    assert_eq!(ran.as_ref().ok(), Some(&"ran"), "{ran:?}");

    // Breakers in every state, for the README's screenshot.
    fail_in("search", 1).await.unwrap();
    fail_in("inventory", 3).await.unwrap();
    fail_in("email", 3).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let config = Config::of::<Payments>();
        // Past its open time by the server's clock: the next call takes a trial.
        let now = server_time(storage);
        let tripped = now - Payments::RECOVERY_TIMEOUT - Duration::from_secs(1);
        for _ in 0..3 {
            let request = Request::new("recommendations", Op::Failure, &config).at(tripped);
            storage.execute(&request).unwrap();
        }
        let trial = Request::new("recommendations", Op::AcquireTrial, &config).at(now);
        storage.execute(&trial).unwrap();
        storage
            .act(
                PREFIX,
                "email",
                circuitpy::admin::Action::ForceOpen,
                circuitpy::admin::Audit::by("bob").because("provider outage"),
            )
            .unwrap();
    })
    .await
    .unwrap();
    browser.goto(&format!("{base}/")).await.unwrap();
    for (key, state) in [
        ("search", "closed"),
        ("inventory", "open"),
        ("recommendations", "half-open"),
        ("email", "forced-open"),
        ("payments", "forced-closed"),
    ] {
        wait_for(
            &browser,
            &format!("tr[data-key='{key}'][data-state='{state}']"),
        )
        .await;
    }
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Ok(path) = std::env::var("CIRCUITPY_SCREENSHOT") {
        std::fs::write(&path, &png).unwrap();
    }
    browser.close().await.unwrap();
}

/// The Redis server's clock, as the breaker's script reads it.
fn server_time(storage: &redis::Client) -> Duration {
    let mut connection = storage.get_connection().unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post(base: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_metrics_say_what_the_storage_holds_and_control_needs_the_token() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let storage: &'static redis::Client = Box::leak(Box::new(redis.client()));
    tokio::task::spawn_blocking(move || {
        fail(storage, "payments", 3);
        fail(storage, "search", 1);
    })
    .await
    .unwrap();
    let (_server, base) = serve(&redis.url(), &["--token", TOKEN]);

    let (status, body) = get(&base, "/api/breakers?state=open").await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["breakers"][0]["key"], "payments");
    assert_eq!(listed["breakers"][0]["state"], "open");
    let (status, body) = get(&base, "/api/breakers?limit=1").await;
    assert_eq!(status, 200);
    let first: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (first["total"].clone(), first["next_offset"].clone()),
        (json!(2), json!(1))
    );
    let (status, _) = get(&base, "/api/breakers?state=ajar").await;
    assert_eq!(status, 400);
    // By name: a glob, or a part of the key.
    for (query, key) in [("match=pay*", "payments"), ("q=ear", "search")] {
        let (status, body) = get(&base, &format!("/api/breakers?{query}")).await;
        assert_eq!(status, 200, "{body}");
        let found: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(found["total"], 1, "{query}: {body}");
        assert_eq!(found["breakers"][0]["key"], key, "{query}");
    }

    let (status, body) = get(&base, "/api/breakers/search").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["failures"], 1);
    let (status, _) = get(&base, "/api/breakers/unknown").await;
    assert_eq!(status, 404);

    let (status, metrics) = get(&base, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("circuitbreaker_state{name=\"payments\",state=\"open\"} 1"));
    assert!(metrics.contains("circuitbreaker_state{name=\"payments\",state=\"closed\"} 0"));
    assert!(metrics.contains("circuitbreaker_failures{name=\"search\"} 1"));

    // No token, a wrong one, another site's page: refused, nothing changes.
    let bearer = format!("Bearer {TOKEN}");
    for (headers, expected) in [
        (vec![], 401),
        (
            vec![("authorization", "Bearer wrong-token-0123456789")],
            401,
        ),
        (
            vec![
                ("authorization", bearer.as_str()),
                ("origin", "https://elsewhere.example"),
            ],
            403,
        ),
    ] {
        let (status, body) = post(&base, "/api/breakers/payments/close", &headers, "").await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].as_str().unwrap().starts_with("refused"));
    }
    assert_eq!(
        storage.inspect(PREFIX, "payments").unwrap().unwrap().state,
        State::Open
    );

    // With the token: done, with the trail.
    let (status, body) = post(
        &base,
        "/api/breakers/payments/close",
        &[("authorization", &bearer)],
        r#"{"reason": "drill", "actor": "alice"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "forced_closed");
    assert_eq!(body["forced"]["by"], "alice");
    let info = storage.inspect(PREFIX, "payments").unwrap().unwrap();
    assert_eq!(info.state, State::ForcedClosed);
    assert_eq!(info.forced.unwrap().reason.as_deref(), Some("drill"));
    let (status, body) = post(
        &base,
        "/api/breakers/payments/reset",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!((status, body["state"].clone()), (200, json!("closed")));

    // Runtime overrides: set, refused out of bounds, cleared.
    let (status, body) = post(
        &base,
        "/api/breakers/payments/overrides",
        &[("authorization", &bearer)],
        r#"{"failure_threshold": 10, "recovery_timeout_ms": 30000}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["overrides"]["failure_threshold"], 10);
    assert_eq!(body["overrides"]["recovery_timeout_ms"], 30_000);
    let (status, body) = post(
        &base,
        "/api/breakers/payments/overrides",
        &[("authorization", &bearer)],
        r#"{"half_open_trials": 0}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("invalid override"));
    let (status, _) = post(&base, "/api/breakers/payments/overrides", &[], "{}").await;
    assert_eq!(status, 401);
    let (status, body) = post(
        &base,
        "/api/breakers/payments/overrides",
        &[("authorization", &bearer)],
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["overrides"].is_null(), "{body}");

    // The page's form outside a browser: the token is in the body, like any field.
    let form = reqwest::Client::new()
        .post(format!("{base}/breakers/search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=open&token=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 401);
    assert!(
        form.text()
            .await
            .unwrap()
            .contains("wrong or missing token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_dashboard_is_read_only_and_refuses_a_public_address() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (_server, base) = serve(&redis.url(), &[]);
    let (status, page) = get(&base, "/breakers/payments").await;
    assert_eq!(status, 200);
    assert!(page.contains("Read-only"), "{page}");
    assert!(!page.contains("form id=\"control\""));
    let (status, body) = post(
        &base,
        "/api/breakers/payments/open",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");

    let (_read_only_server, read_only) = serve(&redis.url(), &["--token", TOKEN, "--read-only"]);
    let (status, _) = post(
        &read_only,
        "/api/breakers/payments/open",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(status, 403);

    for (args, expected) in [
        (vec!["--listen", "0.0.0.0:0"], "without a token"),
        (vec!["--token", "short"], "at least 16 characters"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_circuitpy"))
            .args(["--url", &redis.url(), "serve"])
            .args(&args)
            .env_remove("CIRCUITPY_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// 10 000 breakers under one prefix: `list` and the page stay usable. Prints the times
/// (the closing figures in the README come from here); asserts only what is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_breakers_are_listed_and_paged() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some((_driver, browser)) = browser().await else {
        return;
    };
    let storage: &'static redis::Client = Box::leak(Box::new(redis.client()));
    tokio::task::spawn_blocking(move || {
        let config = Config::of::<Payments>();
        let keys: Vec<String> = (0..10_000).map(|n| format!("tenant-{n:05}")).collect();
        for (n, key) in keys.iter().enumerate() {
            let times = if n % 10 == 0 { 3 } else { 1 };
            for _ in 0..times {
                storage
                    .execute(&Request::new(key, Op::Failure, &config))
                    .unwrap();
            }
        }
    })
    .await
    .unwrap();

    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_circuitpy"))
        .args(["--url", &redis.url(), "--prefix", PREFIX, "list"])
        .output()
        .unwrap();
    let list_time = started.elapsed();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().count(),
        10_001
    );

    let (_server, base) = serve(&redis.url(), &["--token", TOKEN]);
    let started = Instant::now();
    let (status, body) = get(&base, "/api/breakers?state=open&limit=10000").await;
    let api_time = started.elapsed();
    assert_eq!(status, 200);
    let open: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(open["total"], 1000);

    browser.goto(&format!("{base}/?state=open")).await.unwrap();
    let rows = browser
        .find_all(Locator::Css("tr[data-state='open']"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 100, "a page holds 100 rows");
    let pager = text_of(&browser, "nav.pages").await;
    assert!(pager.contains("page 1 of 10"), "{pager}");
    let load = browser
        .execute(
            "return performance.getEntriesByType('navigation')[0].duration;",
            vec![],
        )
        .await
        .unwrap();
    let counts = text_of(&browser, "p.counts").await;
    assert!(counts.starts_with("10000 breakers"), "{counts}");
    browser.close().await.unwrap();
    println!(
        "10 000 breakers: `circuitpy list` {list_time:?} (whole process), \
         GET /api/breakers (1 000 open) {api_time:?}, the page in Chromium {load} ms"
    );
}
