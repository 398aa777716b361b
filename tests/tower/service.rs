//! The layer on the in-memory storage, behind a real server and client.

use std::time::Duration;

use circuitpy::tower::{ByHost, CircuitBreakerLayer, Error};
use circuitpy::{Breaker, CircuitBreaker, State};
use circuitpy_tests::handler;
use reqwest::StatusCode;
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::server::{Backend, app, client, serve};

handler!(Tripping {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_trip_the_breaker_and_then_requests_get_503_with_retry_after() {
    let backend = Backend::answering(500);
    let address = serve(app(CircuitBreakerLayer::new(Tripping), backend.clone())).await;
    let url = format!("http://{address}/");
    let client = client();
    for _ in 0..3 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(Breaker::new(Tripping).state().unwrap(), State::Open);

    backend.answer(200);
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The deadline is 30 s after the trip on the manual clock, which started at 1 s on the
    // process's clock: whole seconds from now, rounded up.
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (30..=31).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(backend.reached(), 3, "a rejected request reached the route");

    Tripping::clock().advance(Duration::from_secs(30));
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(backend.reached(), 4);
    assert_eq!(Breaker::new(Tripping).state().unwrap(), State::Closed);
}

handler!(Burst {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
    const HALF_OPEN_TRIALS: u32 = 3;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_requests_at_once_half_open_let_exactly_the_trials_through() {
    let backend = Backend::answering(500);
    let address = serve(app(CircuitBreakerLayer::new(Burst), backend.clone())).await;
    let url = format!("http://{address}/");
    let client = client();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(Breaker::new(Burst).state().unwrap(), State::Open);

    Burst::clock().advance(Duration::from_secs(30));
    backend.answer(200);
    let held = backend.hold().await;
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..32 {
        let (client, url, done) = (client.clone(), url.clone(), done.clone());
        tokio::spawn(async move {
            let status = client.get(&url).send().await.unwrap().status();
            done.send(status).unwrap();
        });
    }
    // The trials wait at the route; every other request is answered without it.
    let mut rejected = 0;
    while rejected < 32 - Burst::HALF_OPEN_TRIALS {
        let status = answers.recv().await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        rejected += 1;
    }
    assert_eq!(backend.reached(), 1 + Burst::HALF_OPEN_TRIALS);
    drop(held);
    for _ in 0..Burst::HALF_OPEN_TRIALS {
        assert_eq!(answers.recv().await.unwrap(), StatusCode::OK);
    }
    assert_eq!(backend.reached(), 1 + Burst::HALF_OPEN_TRIALS);
    assert_eq!(Breaker::new(Burst).state().unwrap(), State::Closed);
}

handler!(PerHost {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_has_a_breaker_of_its_own() {
    let backend = Backend::answering(502);
    let layer = CircuitBreakerLayer::new(PerHost).key_by(ByHost);
    let address = serve(app(layer, backend.clone())).await;
    let url = format!("http://{address}/");
    let client = client();
    let get = |host: &'static str| client.get(&url).header("host", host).send();

    assert_eq!(
        get("A.example").await.unwrap().status(),
        StatusCode::BAD_GATEWAY
    );
    backend.answer(200);
    assert_eq!(
        get("a.example").await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get("b.example").await.unwrap().status(), StatusCode::OK);
    assert_eq!(backend.reached(), 2);
    assert_eq!(
        Breaker::keyed(PerHost, "a.example").state().unwrap(),
        State::Open
    );
    assert_eq!(
        Breaker::keyed(PerHost, "b.example").state().unwrap(),
        State::Closed
    );
    assert_eq!(Breaker::new(PerHost).state().unwrap(), State::Closed);
}

handler!(Ready {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[tokio::test]
async fn readiness_takes_no_trial_permit() {
    let layer = CircuitBreakerLayer::new(Ready);
    let mut first = layer.layer(service_fn(|fail: bool| async move {
        if fail { Err("down") } else { Ok(()) }
    }));
    let mut second = first.clone();
    assert!(matches!(
        first.ready().await.unwrap().call(true).await,
        Err(Error::Inner("down"))
    ));
    Ready::clock().advance(Duration::from_secs(30));
    // Half-open with one trial: being polled ready many times reserves nothing.
    for _ in 0..5 {
        first.ready().await.unwrap();
    }
    second.ready().await.unwrap().call(false).await.unwrap();
    assert_eq!(layer.breaker().state().unwrap(), State::Closed);
}

handler!(Panicking {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[tokio::test]
async fn a_panicking_service_counts_as_a_failure_and_keeps_unwinding() {
    let layer = CircuitBreakerLayer::new(Panicking);
    let service = layer.layer(service_fn(|_: ()| async move {
        if true {
            panic!("the inner service panicked");
        }
        Ok::<(), &str>(())
    }));
    let unwound = tokio::spawn(service.oneshot(())).await;
    assert!(unwound.unwrap_err().is_panic());
    assert_eq!(layer.breaker().state().unwrap(), State::Open);
}

handler!(Cancelled {
    const FAILURE_THRESHOLD: u32 = 1;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
});

#[tokio::test]
async fn a_cancelled_trial_gives_its_permit_back() {
    let layer = CircuitBreakerLayer::new(Cancelled);
    let mut service = layer.layer(service_fn(|hang: bool| async move {
        if hang {
            std::future::pending::<()>().await;
        }
        Err::<(), _>("down")
    }));
    let _ = service.ready().await.unwrap().call(false).await;
    assert_eq!(layer.breaker().state().unwrap(), State::Open);
    Cancelled::clock().advance(Duration::from_secs(30));
    let hanging = service.ready().await.unwrap().call(true);
    // The one trial is out: another request is rejected.
    let rejected = service.ready().await.unwrap().call(false).await;
    assert!(matches!(rejected, Err(Error::Open(_))), "{rejected:?}");
    drop(hanging);
    // Given back: the next request is the trial, and its failure reopens the breaker.
    let trial = service.ready().await.unwrap().call(false).await;
    assert!(matches!(trial, Err(Error::Inner("down"))), "{trial:?}");
    assert_eq!(layer.breaker().state().unwrap(), State::Open);
}
