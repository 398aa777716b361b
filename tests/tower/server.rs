//! An axum app whose one route answers with a status the test sets, guarded by a
//! [`CircuitBreakerLayer`] whose rejections become `503` with `Retry-After`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use circuitpy::tower::{CircuitBreakerLayer, Error, RequestKey, ServerErrorsFail, unavailable};
use circuitpy::{AsyncStorage, CircuitBreaker};
use tokio::sync::RwLock;
use tower::ServiceBuilder;

/// What the guarded route answers, and how many requests reached it.
#[derive(Clone)]
pub struct Backend {
    status: Arc<AtomicU16>,
    reached: Arc<AtomicU32>,
    /// Held for writing, it keeps every request that reaches the route waiting.
    gate: Arc<RwLock<()>>,
}

impl Backend {
    pub fn answering(status: u16) -> Backend {
        Backend {
            status: Arc::new(AtomicU16::new(status)),
            reached: Arc::default(),
            gate: Arc::default(),
        }
    }

    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn reached(&self) -> u32 {
        self.reached.load(Ordering::SeqCst)
    }

    /// Requests that reach the route wait until the guard is dropped.
    pub async fn hold(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }
}

async fn answer(State(backend): State<Backend>) -> StatusCode {
    backend.reached.fetch_add(1, Ordering::SeqCst);
    let _open = backend.gate.read().await;
    StatusCode::from_u16(backend.status.load(Ordering::SeqCst)).unwrap()
}

async fn refuse(error: Error<Infallible>) -> Response {
    match error {
        Error::Open(open) => unavailable(&open),
        Error::Inner(never) => match never {},
    }
}

/// The app: `GET /` answers the backend's status through `layer`, 5xx counting as failures.
pub fn app<H, K>(layer: CircuitBreakerLayer<H, K>, backend: Backend) -> Router
where
    H: CircuitBreaker,
    H::Storage: AsyncStorage,
    K: RequestKey<Request> + Clone,
{
    let guarded = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(refuse))
        .layer(layer.classify(ServerErrorsFail));
    Router::new()
        .route("/", get(answer))
        .with_state(backend)
        .layer(guarded)
}

/// Serves `app` on a free loopback port until the runtime ends; its address.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// A plain HTTP client: no pool reuse surprises, no proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}
