use std::sync::LazyLock;
use std::time::Duration;

use circuitpy::{
    Breaker, CircuitBreaker, CircuitBreakerOpen, ManualClock, MemoryStorage, State, circuit_breaker,
};

static CLOCK: LazyLock<ManualClock> = LazyLock::new(ManualClock::new);
static STORAGE: LazyLock<MemoryStorage> =
    LazyLock::new(|| MemoryStorage::with_clock(CLOCK.clock()));

struct Smoke;
impl CircuitBreaker for Smoke {
    const FAILURE_THRESHOLD: u32 = 2;
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILURE_KEY: &'static str = "smoke";
    type Storage = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &STORAGE
    }
}

#[derive(Debug)]
enum E {
    Down,
    Open(CircuitBreakerOpen),
}
impl From<CircuitBreakerOpen> for E {
    fn from(o: CircuitBreakerOpen) -> Self {
        E::Open(o)
    }
}

#[circuit_breaker(handler = Smoke)]
fn flaky(ok: bool) -> Result<u32, E> {
    if ok { Ok(1) } else { Err(E::Down) }
}

#[circuit_breaker(handler = Smoke, key = host)]
async fn per_host(host: &str, ok: bool) -> Result<String, E> {
    if !ok {
        return Err(E::Down);
    }
    Ok(host.to_owned())
}

struct Client {
    calls: u32,
}
impl Client {
    #[circuit_breaker(handler = Smoke, key = "client", fallback = Self::cached)]
    fn get(&mut self, n: u32) -> Result<u32, E> {
        self.calls += 1;
        if n == 0 { Err(E::Down) } else { Ok(n) }
    }
    fn cached(&mut self, _n: u32) -> Result<u32, E> {
        Ok(999)
    }
}

#[test]
fn smoke() {
    assert_eq!(flaky(true).unwrap(), 1);
    assert!(matches!(flaky(false), Err(E::Down)));
    assert!(matches!(flaky(false), Err(E::Down)));
    let err = flaky(true).unwrap_err();
    let E::Open(open) = err else {
        panic!("not open")
    };
    println!("{open}");
    assert_eq!(Breaker::new(Smoke).state().unwrap(), State::Open);
    CLOCK.advance(Duration::from_secs(2));
    assert_eq!(flaky(true).unwrap(), 1);
    assert_eq!(Breaker::new(Smoke).state().unwrap(), State::Closed);

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(per_host("a", true).await.unwrap(), "a");
        assert!(per_host("a", false).await.is_err());
        assert!(per_host("a", false).await.is_err());
        assert!(matches!(per_host("a", true).await, Err(E::Open(_))));
        assert_eq!(per_host("b", true).await.unwrap(), "b");
    });

    let mut c = Client { calls: 0 };
    assert!(c.get(0).is_err());
    assert!(c.get(0).is_err());
    assert_eq!(c.get(5).unwrap(), 999);
    assert_eq!(c.calls, 2);
}
