//! Time for breakers: a monotonic clock tests can drive by hand, and a coarse reading that
//! costs one atomic load so an open breaker can reject without reading the system clock.
//!
//! The coarse reading comes from a ticker thread that refreshes it every millisecond. The
//! thread starts the first time a coarse reading is asked for and stops by itself after a
//! second in which nobody asked, so a process whose breakers stay closed runs no thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

const TICK: Duration = Duration::from_millis(1);
const IDLE_TICKS_BEFORE_STOP: u32 = 1000;

/// Nanoseconds since [`EPOCH`].
pub(crate) type Nanos = u64;

struct Epoch {
    instant: Instant,
    wall: SystemTime,
}

static EPOCH: LazyLock<Epoch> = LazyLock::new(|| Epoch {
    instant: Instant::now(),
    wall: SystemTime::now(),
});
static COARSE_NOW: AtomicU64 = AtomicU64::new(0);
static TICKER_RUNNING: AtomicBool = AtomicBool::new(false);
static COARSE_READ: AtomicBool = AtomicBool::new(false);

fn precise_now() -> Nanos {
    EPOCH.instant.elapsed().as_nanos() as Nanos
}

#[inline]
fn coarse_now() -> Nanos {
    if !TICKER_RUNNING.load(Ordering::Relaxed) {
        return start_ticker();
    }
    // Written only when it changes, so readers on many threads keep the line shared.
    if !COARSE_READ.load(Ordering::Relaxed) {
        COARSE_READ.store(true, Ordering::Relaxed);
    }
    COARSE_NOW.load(Ordering::Relaxed)
}

/// Cannot panic (a failed spawn leaves the precise clock in charge), and is declared so:
/// unwinding out of an `extern "C"` function aborts, so the compiler knows that calls to
/// it never unwind, and a caller holding a permit needs no landing pad around the clock
/// reading, which would keep the permit in memory.
#[cold]
extern "C" fn start_ticker() -> Nanos {
    let now = precise_now();
    COARSE_NOW.fetch_max(now, Ordering::Relaxed);
    if TICKER_RUNNING
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        let spawned = std::thread::Builder::new()
            .name("circuitpy-clock".into())
            .spawn(|| {
                let mut idle = 0;
                loop {
                    COARSE_NOW.store(precise_now(), Ordering::Relaxed);
                    std::thread::sleep(TICK);
                    if COARSE_READ.swap(false, Ordering::Relaxed) {
                        idle = 0;
                    } else {
                        idle += 1;
                        if idle >= IDLE_TICKS_BEFORE_STOP {
                            TICKER_RUNNING.store(false, Ordering::Release);
                            return;
                        }
                    }
                }
            });
        // Without a ticker every coarse reading falls back to the precise clock.
        if spawned.is_err() {
            TICKER_RUNNING.store(false, Ordering::Release);
        }
    }
    now
}

/// The wall-clock time of a clock reading.
pub(crate) fn wall(at: Nanos) -> SystemTime {
    EPOCH.wall + Duration::from_nanos(at)
}

/// The time source of a storage's breakers.
///
/// [`Clock::system`] is the monotonic system clock. A [`ManualClock`] moves only when a test
/// advances it, so tests of timeouts never sleep.
///
/// ```
/// use circuitpy::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let manual = ManualClock::new();
/// let clock: Clock = manual.clock();
/// let before = clock.elapsed();
/// manual.advance(Duration::from_secs(5));
/// assert_eq!(clock.elapsed() - before, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The monotonic system clock.
    ///
    /// ```
    /// let clock = circuitpy::Clock::system();
    /// assert!(!clock.is_manual());
    /// ```
    pub const fn system() -> Self {
        Clock { manual: None }
    }

    /// True for a clock made by [`ManualClock::clock`].
    ///
    /// ```
    /// assert!(circuitpy::ManualClock::new().clock().is_manual());
    /// ```
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Time since the process's clock epoch (for the system clock) or since the manual clock
    /// was made (plus one second, so zero never occurs).
    ///
    /// ```
    /// let clock = circuitpy::Clock::system();
    /// assert!(clock.elapsed() <= clock.elapsed());
    /// ```
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now())
    }

    #[inline]
    pub(crate) fn now(&self) -> Nanos {
        match &self.manual {
            None => precise_now(),
            Some(nanos) => nanos.load(Ordering::Acquire),
        }
    }

    /// A reading at most a few milliseconds behind [`Clock::now`], never ahead of it.
    #[inline]
    pub(crate) fn coarse_now(&self) -> Nanos {
        match &self.manual {
            None => coarse_now(),
            Some(nanos) => nanos.load(Ordering::Acquire),
        }
    }
}

/// A clock that moves only when told to; share it with a storage through [`ManualClock::clock`].
///
/// ```
/// use circuitpy::{ManualClock, MemoryStorage};
/// let manual = ManualClock::new();
/// let storage = MemoryStorage::with_clock(manual.clock());
/// # let _ = storage;
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock standing at one second.
    ///
    /// ```
    /// let _ = circuitpy::ManualClock::new();
    /// ```
    pub fn new() -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(1_000_000_000)),
        }
    }

    /// Moves the clock forward.
    ///
    /// ```
    /// let manual = circuitpy::ManualClock::new();
    /// manual.advance(std::time::Duration::from_millis(1));
    /// ```
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::AcqRel);
    }

    /// A [`Clock`] that reads this manual clock.
    ///
    /// ```
    /// let manual = circuitpy::ManualClock::new();
    /// assert!(manual.clock().is_manual());
    /// ```
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.nanos.clone()),
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_reading_is_never_ahead_of_the_precise_one() {
        let clock = Clock::system();
        for _ in 0..1000 {
            let coarse = clock.coarse_now();
            assert!(coarse <= clock.now());
        }
    }
}
