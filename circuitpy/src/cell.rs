//! Each breaker's in-process state: one atomic word (see `machine.rs`), found once per call
//! site and cached there.
//!
//! For the in-memory storage the word is the breaker. For a shared storage it is this
//! process's view of the shared state, refreshed by every storage reply, so that a closed
//! breaker is known to be closed, and an open one known to be open until its deadline,
//! without asking the storage.

use std::any::TypeId;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use crate::clock::Nanos;
use crate::error::StorageError;
use crate::handler::{CircuitBreaker, State};
use crate::key::{self, Key};
use crate::machine::{Window, Word, deadline_ticks};
use crate::policy::Config;
use crate::storage::Snapshot;

/// The longest per-call key a breaker accepts, so a key computed from user input cannot
/// grow storage keys without bound.
pub(crate) const MAX_KEY_LEN: usize = 512;

/// How many per-call breakers a handler keeps before it drops the idle ones (closed, nothing
/// counted, not in use): an idle breaker is the same as a new one, so dropping it loses
/// nothing, and keys computed from open-ended input (hosts, tenants) cannot grow memory
/// without bound.
pub(crate) const KEYED_SWEEP_AT: usize = 65_536;

#[derive(Debug)]
pub(crate) struct Cell {
    word: AtomicU64,
    /// Counts for the windowed policies, made on first use (most breakers count
    /// consecutive failures and never need one); locked only by calls that record into it.
    window: OnceLock<Box<Mutex<Window>>>,
    pub(crate) key: Key,
    /// Shared storages in local mode: when the storage last replied (clock nanos), and
    /// successes not yet reported.
    pub(crate) synced_at: AtomicU64,
    pub(crate) unreported_successes: AtomicU64,
}

impl Cell {
    /// A cell in no registry, for a call whose key was unusable.
    pub(crate) fn detached(key: &'static str) -> Self {
        Cell::new(Key::Static(key))
    }

    fn new(key: Key) -> Self {
        Cell {
            word: AtomicU64::new(Word::CLOSED.0),
            window: OnceLock::new(),
            key,
            synced_at: AtomicU64::new(0),
            unreported_successes: AtomicU64::new(0),
        }
    }

    /// Closed with nothing counted and nothing held back: the same as a new cell.
    fn is_idle(&self) -> bool {
        let word = self.load();
        word.phase() == State::Closed
            && word.failures() == 0
            && self.unreported_successes.load(Ordering::Relaxed) == 0
            && self
                .window
                .get()
                .is_none_or(|window| window.try_lock().is_ok_and(|window| window.is_empty()))
    }

    #[inline]
    pub(crate) fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    #[inline]
    pub(crate) fn compare_exchange(&self, current: Word, new: Word) -> Result<Word, Word> {
        self.word
            .compare_exchange(current.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .map(Word)
            .map_err(Word)
    }

    pub(crate) fn swap(&self, new: Word) -> Word {
        Word(self.word.swap(new.0, Ordering::AcqRel))
    }

    pub(crate) fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window
            .get_or_init(Box::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the window's counts, if there is a window.
    pub(crate) fn clear_window(&self) {
        if let Some(window) = self.window.get() {
            window
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    /// Adopts the state a shared storage reported; returns the previous word.
    pub(crate) fn mirror(&self, snapshot: &Snapshot, now: Nanos, config: &Config) -> (Word, Word) {
        let current = self.load();
        let refresh = |wait: Option<Duration>| {
            deadline_ticks(now.saturating_add(nanos(wait.unwrap_or(config.recovery_timeout))))
        };
        let next = match snapshot.state {
            State::Closed if current.phase() == State::Closed => {
                current.with_failures(snapshot.failures.min(u64::from(u32::MAX)) as u32)
            }
            State::Closed => current
                .next(State::Closed, 0)
                .with_failures(snapshot.failures.min(u64::from(u32::MAX)) as u32),
            State::Open => current.next(State::Open, refresh(snapshot.retry_in)),
            // A forced-open breaker is asked again after one recovery timeout, to see a reset.
            State::ForcedOpen => current.next(State::ForcedOpen, refresh(None)),
            state => current.next(state, 0),
        };
        self.synced_at.store(now.max(1), Ordering::Relaxed);
        (self.swap(next), next)
    }
}

pub(crate) fn nanos(duration: Duration) -> Nanos {
    duration.as_nanos().min(u128::from(u64::MAX)) as Nanos
}

/// A reference to a cell: borrowed from a call site for the handler's own key, shared for a
/// key computed per call.
pub(crate) enum CellRef<'a> {
    Borrowed(&'a Cell),
    Shared(Arc<Cell>),
}

impl Deref for CellRef<'_> {
    type Target = Cell;
    #[inline]
    fn deref(&self) -> &Cell {
        match self {
            CellRef::Borrowed(cell) => cell,
            CellRef::Shared(cell) => cell,
        }
    }
}

/// All breakers of one handler on one storage instance: the handler's own key and every
/// per-call key under it.
#[derive(Debug)]
pub(crate) struct Family {
    cell: Cell,
    keyed: RwLock<HashMap<Box<str>, Arc<Cell>>>,
    /// The map size at which the next sweep of idle per-call breakers runs; doubled when a
    /// sweep frees too little, so sweeps stay rare when most breakers are busy.
    sweep_at: AtomicUsize,
}

impl Family {
    /// Small enough to inline, so the handler's own key costs no call even where the same
    /// handler also guards calls with per-call keys.
    #[inline]
    pub(crate) fn cell<'a>(&'a self, per_call: Option<&str>) -> Result<CellRef<'a>, StorageError> {
        match per_call {
            None => Ok(CellRef::Borrowed(&self.cell)),
            Some(per_call) => self.keyed_cell(per_call),
        }
    }

    fn keyed_cell(&self, per_call: &str) -> Result<CellRef<'_>, StorageError> {
        if let Some(cell) = self
            .keyed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(per_call)
        {
            return Ok(CellRef::Shared(cell.clone()));
        }
        if per_call.is_empty() || per_call.len() > MAX_KEY_LEN {
            return Err(StorageError::InvalidKey {
                key: per_call.chars().take(64).collect(),
                detail: "a per-call key must be 1 to 512 bytes long",
            });
        }
        let mut keyed = self.keyed.write().unwrap_or_else(PoisonError::into_inner);
        if keyed.len() >= self.sweep_at.load(Ordering::Relaxed) && !keyed.contains_key(per_call) {
            keyed.retain(|_, cell| Arc::strong_count(cell) > 1 || !cell.is_idle());
            self.sweep_at
                .store(KEYED_SWEEP_AT.max(keyed.len() * 2), Ordering::Relaxed);
        }
        let cell = keyed.entry(per_call.into()).or_insert_with(|| {
            Arc::new(Cell::new(Key::Shared(key::join(
                self.cell.key.as_str(),
                per_call,
            ))))
        });
        Ok(CellRef::Shared(cell.clone()))
    }
}

/// Families by handler type and storage instance.
///
/// The in-memory storage owns one, so its breakers live and die with it; breakers on other
/// storages are this process's views of shared state, kept in one process-wide registry by
/// storage address.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<HashMap<(TypeId, usize), Arc<Family>>>,
}

static SHARED_VIEWS: LazyLock<Registry> = LazyLock::new(Registry::default);

impl Registry {
    fn family<H: CircuitBreaker>(&self, address: usize) -> Arc<Family> {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        families
            .entry((TypeId::of::<H>(), address))
            .or_insert_with(|| {
                Arc::new(Family {
                    cell: Cell::new(Key::Static(H::FAILURE_KEY)),
                    keyed: RwLock::default(),
                    sweep_at: AtomicUsize::new(KEYED_SWEEP_AT),
                })
            })
            .clone()
    }
}

/// The family of handler `H` on `storage`, which may own its registry.
pub(crate) fn family<H: CircuitBreaker>(
    storage: &H::Storage,
    own: Option<&Registry>,
) -> Arc<Family> {
    match own {
        Some(registry) => registry.family::<H>(0),
        None => SHARED_VIEWS.family::<H>(storage as *const H::Storage as *const () as usize),
    }
}

/// A call site's cache of its family; a `static` in the code `#[circuit_breaker]` generates.
#[doc(hidden)]
#[derive(Debug)]
pub struct Site {
    family: OnceLock<Arc<Family>>,
}

impl Site {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Site {
            family: OnceLock::new(),
        }
    }

    /// The family, looked up on the first call only: a call site's handler is a unit struct
    /// whose storage is a `static`, so it never changes.
    #[inline]
    pub(crate) fn family<H: CircuitBreaker>(
        &self,
        storage: &H::Storage,
        own: Option<&Registry>,
    ) -> &Family {
        self.family.get_or_init(|| family::<H>(storage, own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Word;

    fn family() -> Family {
        Family {
            cell: Cell::new(Key::Static("family")),
            keyed: RwLock::default(),
            sweep_at: AtomicUsize::new(KEYED_SWEEP_AT),
        }
    }

    #[test]
    fn a_breaker_fits_in_a_cache_line() {
        // The window of the windowed policies is allocated on first use, not carried inline.
        assert!(
            std::mem::size_of::<Cell>() <= 64,
            "{} bytes",
            std::mem::size_of::<Cell>()
        );
    }

    #[test]
    fn idle_per_call_breakers_are_dropped_and_busy_ones_kept() {
        let family = family();
        // Kept for its state alone: no reference to it is held.
        family
            .cell(Some("open"))
            .unwrap()
            .swap(Word::CLOSED.opened(u64::MAX / 2));
        let in_use = family.cell(Some("in use")).unwrap();
        for n in 0..KEYED_SWEEP_AT + 10 {
            drop(family.cell(Some(&format!("host-{n}"))).unwrap());
        }
        let keyed = family.keyed.read().unwrap();
        assert!(
            keyed.len() < KEYED_SWEEP_AT,
            "{} breakers kept",
            keyed.len()
        );
        assert_eq!(keyed.get("open").unwrap().load().phase(), State::Open);
        assert!(Arc::ptr_eq(
            keyed.get("in use").unwrap(),
            match &in_use {
                CellRef::Shared(cell) => cell,
                CellRef::Borrowed(_) => unreachable!(),
            }
        ));
    }

    #[test]
    fn a_sweep_that_frees_little_waits_for_twice_the_size() {
        let family = family();
        let mut held = Vec::new();
        for n in 0..KEYED_SWEEP_AT + 1 {
            held.push(family.cell(Some(&format!("busy-{n}"))).unwrap());
        }
        assert_eq!(family.sweep_at.load(Ordering::Relaxed), KEYED_SWEEP_AT * 2);
        assert_eq!(family.keyed.read().unwrap().len(), KEYED_SWEEP_AT + 1);
    }
}
