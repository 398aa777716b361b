//! The reqwest middleware in front of real HTTP servers on loopback that start failing, and
//! a port where nothing listens: one breaker per host, 5xx and transport errors fail, a
//! rejected request is never sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::routing::get;
use circuitpy::reqwest::CircuitBreakerMiddleware;
use circuitpy::{Breaker, CircuitBreaker, CircuitBreakerOpen, State};
use circuitpy_tests::handler;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

/// A server answering `GET /` with the status the test sets; counts what reaches it.
#[derive(Clone, Default)]
struct Server {
    status: Arc<AtomicU16>,
    reached: Arc<AtomicU32>,
}

impl Server {
    async fn start() -> (Server, String) {
        let server = Server::default();
        server.answer(200);
        let app = Router::new()
            .route(
                "/",
                get(|Shared(server): Shared<Server>| async move {
                    server.reached.fetch_add(1, Ordering::SeqCst);
                    StatusCode::from_u16(server.status.load(Ordering::SeqCst)).unwrap()
                }),
            )
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (server, address.to_string())
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn reached(&self) -> u32 {
        self.reached.load(Ordering::SeqCst)
    }
}

fn client<H: CircuitBreaker>(handler: H) -> ClientWithMiddleware
where
    H::Storage: circuitpy::AsyncStorage,
{
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    ClientBuilder::new(plain)
        .with(CircuitBreakerMiddleware::new(handler))
        .build()
}

/// The rejection a request failed with, if the breaker rejected it.
fn rejection(result: reqwest_middleware::Result<reqwest::Response>) -> Option<CircuitBreakerOpen> {
    match result {
        Err(reqwest_middleware::Error::Middleware(error)) => {
            error.downcast_ref::<CircuitBreakerOpen>().cloned()
        }
        _ => None,
    }
}

handler!(Hosts {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_starts_failing_is_cut_off_and_the_others_are_not() {
    let (failing, failing_host) = Server::start().await;
    let (healthy, healthy_host) = Server::start().await;
    let client = client(Hosts);
    let get = |host: &str| client.get(format!("http://{host}/")).send();

    assert_eq!(get(&failing_host).await.unwrap().status(), 200);
    failing.answer(503);
    for _ in 0..3 {
        assert_eq!(get(&failing_host).await.unwrap().status(), 503);
    }
    let open = rejection(get(&failing_host).await).expect("rejected");
    assert_eq!(open.key(), format!("Hosts:{failing_host}"));
    assert!(open.retry_at().is_some());
    assert_eq!(failing.reached(), 4, "a rejected request was sent");

    assert_eq!(get(&healthy_host).await.unwrap().status(), 200);
    assert_eq!(healthy.reached(), 1);
    assert_eq!(
        Breaker::keyed(Hosts, &failing_host).state().unwrap(),
        State::Open
    );
    assert_eq!(
        Breaker::keyed(Hosts, &healthy_host).state().unwrap(),
        State::Closed
    );

    // After the recovery timeout one trial finds the host back.
    failing.answer(200);
    Hosts::clock().advance(Duration::from_secs(30));
    assert_eq!(get(&failing_host).await.unwrap().status(), 200);
    assert_eq!(
        Breaker::keyed(Hosts, &failing_host).state().unwrap(),
        State::Closed
    );
}

handler!(Refused {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[tokio::test]
async fn refused_connections_count_as_failures() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens there now.
    let client = client(Refused);
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..2 {
        let result = client.get(&url).send().await;
        assert!(
            matches!(result, Err(reqwest_middleware::Error::Reqwest(_))),
            "{result:?}"
        );
    }
    let open = rejection(client.get(&url).send().await).expect("rejected");
    assert_eq!(open.key(), format!("Refused:127.0.0.1:{port}"));
}

handler!(Ignoring {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[tokio::test]
async fn client_errors_are_successes_for_the_breaker() {
    let (server, host) = Server::start().await;
    let client = client(Ignoring);
    server.answer(404);
    for _ in 0..3 {
        let response = client.get(format!("http://{host}/")).send().await.unwrap();
        assert_eq!(response.status(), 404);
    }
    assert_eq!(
        Breaker::keyed(Ignoring, &host).state().unwrap(),
        State::Closed
    );
}
