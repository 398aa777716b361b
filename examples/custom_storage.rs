//! A storage of your own: breaker state kept in "some external service", here an in-process
//! key-value server with network-like latency, reached through a text protocol.
//!
//! The storage implements only the three primitives; circuitpy composes every breaker
//! operation from them. `tests/kit_custom.rs` runs the conformance kit against it.
//!
//! Run with `cargo run --example custom_storage`.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, Storage, StorageError, circuit_breaker,
};

/// The remote service: a key-value store with counters and expiry, answering one text
/// command at a time after a simulated network delay.
pub struct KvService {
    latency: Duration,
    entries: HashMap<String, (u64, Instant)>,
}

impl KvService {
    /// Starts the service on its own thread; returns the channel to send it requests on.
    pub fn start(latency: Duration) -> Sender<(String, Sender<String>)> {
        let (requests, inbox) = channel::<(String, Sender<String>)>();
        std::thread::spawn(move || {
            let mut service = KvService {
                latency,
                entries: HashMap::new(),
            };
            service.serve(inbox);
        });
        requests
    }

    fn serve(&mut self, inbox: Receiver<(String, Sender<String>)>) {
        for (command, reply) in inbox {
            std::thread::sleep(self.latency);
            let _ = reply.send(self.handle(&command));
        }
    }

    /// `INCR key ttl_us` | `GET key` | `EXPIRE key ttl_us`; replies `OK n` or `ERR why`.
    fn handle(&mut self, command: &str) -> String {
        let now = Instant::now();
        let parts: Vec<&str> = command.split(' ').collect();
        let ttl = |text: &str| text.parse::<u64>().map(Duration::from_micros);
        match parts.as_slice() {
            ["INCR", key, ttl_us] => {
                let Ok(ttl) = ttl(ttl_us) else {
                    return "ERR bad ttl".into();
                };
                let entry = self.entries.entry((*key).to_owned()).or_insert((0, now));
                if entry.1 <= now {
                    *entry = (0, now + ttl);
                }
                entry.0 += 1;
                format!("OK {}", entry.0)
            }
            ["GET", key] => {
                let count = self
                    .entries
                    .get(*key)
                    .filter(|e| e.1 > now)
                    .map_or(0, |e| e.0);
                format!("OK {count}")
            }
            ["EXPIRE", key, ttl_us] => {
                let Ok(ttl) = ttl(ttl_us) else {
                    return "ERR bad ttl".into();
                };
                if ttl.is_zero() {
                    self.entries.remove(*key);
                } else if let Some(entry) = self.entries.get_mut(*key).filter(|e| e.1 > now) {
                    entry.1 = now + ttl;
                }
                "OK 0".into()
            }
            _ => "ERR unknown command".into(),
        }
    }
}

/// The client side: a circuitpy storage that speaks the service's protocol.
pub struct KvStorage {
    requests: Mutex<Sender<(String, Sender<String>)>>,
    timeout: Duration,
}

/// The service replied with an error, or not at all.
#[derive(Debug)]
pub struct KvError(pub String);

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KvError {}

impl KvStorage {
    /// A client of the service listening on `requests`.
    pub fn new(requests: Sender<(String, Sender<String>)>) -> Self {
        KvStorage {
            requests: Mutex::new(requests),
            timeout: Duration::from_secs(2),
        }
    }

    fn call(&self, key: &str, command: String) -> Result<u64, StorageError> {
        let (reply, answer) = channel();
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((command, reply))
            .map_err(|_| StorageError::backend(key, KvError("service is gone".into())))?;
        let text = answer
            .recv_timeout(self.timeout)
            .map_err(|_| StorageError::timeout(key, self.timeout))?;
        match text.strip_prefix("OK ") {
            Some(number) => number
                .parse()
                .map_err(|_| StorageError::invalid_data(key, format!("not a count: {text}"))),
            None => Err(StorageError::backend(key, KvError(text))),
        }
    }
}

impl Storage for KvStorage {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        self.call(key, format!("INCR {key} {}", ttl.as_micros()))
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        self.call(key, format!("GET {key}"))
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        self.call(key, format!("EXPIRE {key} {}", ttl.as_micros()))
            .map(drop)
    }
}

static STORAGE: LazyLock<KvStorage> =
    LazyLock::new(|| KvStorage::new(KvService::start(Duration::from_micros(300))));

/// The breaker guarding calls to a quote service.
pub struct QuotesBreaker;

impl CircuitBreaker for QuotesBreaker {
    const FAILURE_THRESHOLD: u32 = 3;
    const RECOVERY_TIMEOUT: Duration = Duration::from_millis(500);
    const FAILURE_KEY: &'static str = "quotes";
    const STORAGE_TIMEOUT: Duration = Duration::from_secs(1);
    type Storage = KvStorage;
    fn storage(&self) -> &KvStorage {
        &STORAGE
    }
}

/// What fetching a quote can end in.
#[derive(Debug)]
pub enum QuoteError {
    /// The quote service failed.
    Unavailable,
    /// The breaker did not let the call through.
    Open(CircuitBreakerOpen),
}

impl From<CircuitBreakerOpen> for QuoteError {
    fn from(open: CircuitBreakerOpen) -> Self {
        QuoteError::Open(open)
    }
}

#[circuit_breaker(handler = QuotesBreaker)]
fn fetch_quote(service_up: bool) -> Result<&'static str, QuoteError> {
    if service_up {
        Ok("Simple is better than complex.")
    } else {
        Err(QuoteError::Unavailable)
    }
}

fn main() {
    let start = Instant::now();
    let state = || {
        Breaker::new(QuotesBreaker)
            .state()
            .expect("storage answers")
    };
    let log = |what: &str, result: Result<&str, QuoteError>| {
        let outcome = match result {
            Ok(quote) => format!("ok: {quote}"),
            Err(QuoteError::Unavailable) => "failed: unavailable".to_owned(),
            Err(QuoteError::Open(open)) => format!("rejected: {open}"),
        };
        println!(
            "{:>6.1} ms  {what:<22} {outcome}  [breaker {}]",
            start.elapsed().as_secs_f64() * 1000.0,
            state()
        );
    };
    log("service up", fetch_quote(true));
    for _ in 0..3 {
        log("service down", fetch_quote(false));
    }
    log("service back up", fetch_quote(true));
    std::thread::sleep(QuotesBreaker::RECOVERY_TIMEOUT + Duration::from_millis(50));
    log("after recovery (trial)", fetch_quote(true));
    log("closed again", fetch_quote(true));
}
