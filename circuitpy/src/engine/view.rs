//! Each breaker's in-process state: one atomic word (see `rules/word.rs`), found once per
//! call site (or [`Breaker`](crate::Breaker)) and kept there.
//!
//! For the in-memory storage the word is the breaker. For a shared storage it is this
//! process's view of the shared state, refreshed by every storage reply, so that a closed
//! breaker is known to be closed, and an open one known to be open until its deadline,
//! without asking the storage.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use crate::clock::{Clock, Nanos};
use crate::error::StorageError;
use crate::handler::{CircuitBreaker, State};
use crate::key::{self, Key};
#[cfg(feature = "metrics")]
use crate::metrics::Meters;
use crate::policy::Config;
use crate::rules::nanos;
use crate::rules::window::{Calls, Window};
use crate::rules::word::{Word, deadline_ticks};
use crate::storage::Snapshot;
use crate::storage::memory::MemoryStorage;

/// The longest per-call key a breaker accepts, so a key computed from user input cannot
/// grow storage keys without bound.
pub(crate) const MAX_KEY_LEN: usize = crate::policy::MAX_KEY_BYTES;

/// The most per-call breakers (`key = ...`) one handler keeps in a process, per storage.
/// Past it, breakers not in use are dropped: the idle ones first (closed, nothing counted:
/// the same as a new one), then those not used since the previous sweep, then closed ones,
/// then any, until a quarter of the room is free. A dropped breaker that counted failures or
/// was open forgets it (a shared storage keeps its state: only this process's view goes);
/// keys computed from open-ended input (hosts, tenants) therefore never grow memory
/// without bound.
///
/// ```
/// assert_eq!(circuitpy::MAX_PER_CALL_BREAKERS, 65_536);
/// ```
pub const MAX_PER_CALL_BREAKERS: usize = 65_536;

/// The most successes a shared view in local mode holds back before it reports them.
pub(crate) const MAX_HELD: u32 = u32::MAX / 2;
const MAX_KEYED: usize = MAX_PER_CALL_BREAKERS;

/// Marks a shared view whose storage failed, in [`Cell::stamp`].
const FAILING: u64 = 1 << 63;
/// The generation of the round a lease belongs to, in the top bits of [`Cell::stamp`].
const LEASE_GENERATION_SHIFT: u32 = 48;
const LEASE_TICKS: u64 = (1 << LEASE_GENERATION_SHIFT) - 1;
const TICK: u64 = 1_000_000;

#[derive(Debug)]
pub(crate) struct Cell {
    word: AtomicU64,
    /// In-process breakers: when the current half-open round's leases lapse (the round's
    /// generation in the top 16 bits, the deadline in milliseconds below).
    /// Shared views: 0 before the storage first answered; otherwise when it last did
    /// (clock nanos), or, with [`FAILING`] set, when it last failed or was last probed.
    stamp: AtomicU64,
    /// Shared views in local mode: successes not yet reported (at most [`MAX_HELD`]; past
    /// it a success is reported at once).
    pub(crate) held: AtomicU32,
    /// Per-call breakers: the family's sweep in which it was last used.
    used: AtomicU32,
    /// Made on first use, by the windowed policies and by storage failures only; with the
    /// `metrics` feature also by the breaker's first recorded call, for its metric handles.
    extra: OnceLock<Box<Extra>>,
    pub(crate) key: Key,
}

#[derive(Debug)]
#[cfg_attr(not(feature = "metrics"), derive(Default))]
struct Extra {
    window: Mutex<Window>,
    /// The rate policy's calls, counted by successes without the window's lock: allocated
    /// by that policy's first call only (640 bytes), not by the other reasons for an extra
    /// part (the count-in-window policy, a storage failure, metric handles).
    calls: OnceLock<Box<Calls>>,
    /// The shared storage's last failure, reported to calls rejected while it lasts.
    failure: Mutex<Option<StorageError>>,
    /// In-process breakers: the audit trail of the last forcing, until a reset.
    forced: Mutex<Option<crate::admin::Forced>>,
    /// In-process breakers: an operator's runtime overrides, until cleared.
    overrides: Mutex<Option<crate::Overrides>>,
    /// Whether `overrides` holds any, written under its lock: a breaker without overrides
    /// (with `metrics`, every breaker that recorded a call has this extra part) is then
    /// admitted without taking the lock.
    overridden: AtomicBool,
    /// Shared views of a breaker with a quorum: this process's own breaker, deciding by its
    /// own calls alone (see [`Cell::local`]).
    local: OnceLock<Box<Cell>>,
    /// The breaker's metric handles, registered with the cell's first recorded call.
    #[cfg(feature = "metrics")]
    meters: Meters,
}

#[cfg(feature = "metrics")]
impl Extra {
    fn new(cell: &Cell) -> Self {
        Extra {
            window: Mutex::default(),
            calls: OnceLock::new(),
            failure: Mutex::default(),
            forced: Mutex::default(),
            overrides: Mutex::default(),
            overridden: AtomicBool::new(false),
            local: OnceLock::new(),
            meters: Meters::register(&cell.key, cell.load().phase()),
        }
    }
}

#[cold]
#[inline(never)]
fn overridden_by(extra: &Extra, config: &Config) -> Option<Config> {
    lock(&extra.overrides).map(|overrides| overrides.applied_to(config))
}

/// The ring of a breaker that never counted under the rate policy: always empty.
static NO_CALLS: std::sync::LazyLock<Calls> = std::sync::LazyLock::new(Calls::default);

impl Extra {
    /// The rate policy's calls, or the empty ring where that policy never counted.
    fn calls(&self) -> &Calls {
        self.calls.get().map_or(&NO_CALLS, |calls| calls)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave a half-written value.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cell {
    /// A cell in no registry, for a call whose key was unusable.
    pub(crate) fn detached(key: &'static str) -> Self {
        Cell::new(Key::Static(key))
    }

    fn new(key: Key) -> Self {
        Cell {
            word: AtomicU64::new(Word::CLOSED.0),
            stamp: AtomicU64::new(0),
            held: AtomicU32::new(0),
            used: AtomicU32::new(0),
            extra: OnceLock::new(),
            key,
        }
    }

    #[cfg(not(feature = "metrics"))]
    fn extra(&self) -> &Extra {
        self.extra.get_or_init(Box::default)
    }

    #[cfg(feature = "metrics")]
    fn extra(&self) -> &Extra {
        self.extra.get_or_init(|| Box::new(Extra::new(self)))
    }

    /// The breaker's metric handles: made with the cell's extra part, which a breaker
    /// then has from its first recorded call on.
    #[cfg(feature = "metrics")]
    #[inline(always)]
    pub(crate) fn meters(&self) -> &Meters {
        &self.extra().meters
    }

    /// Closed with nothing counted and nothing held back: the same as a new cell.
    fn is_idle(&self) -> bool {
        let word = self.load();
        word.phase() == State::Closed
            && word.failures() == 0
            && self.held.load(Ordering::Relaxed) == 0
            && self.extra.get().is_none_or(|extra| {
                extra
                    .window
                    .try_lock()
                    .is_ok_and(|window| window.is_empty(extra.calls()))
                    && extra.local.get().is_none_or(|local| local.is_idle())
            })
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

    /// The window, locked, and the rate policy's calls (made on first use when `rate`; the
    /// other policies get the shared empty ring, which nothing but zeros is ever written to).
    pub(crate) fn window(&self, rate: bool) -> (MutexGuard<'_, Window>, &Calls) {
        let extra = self.extra();
        let calls = if rate {
            extra.calls.get_or_init(Box::default)
        } else {
            extra.calls()
        };
        (lock(&extra.window), calls)
    }

    /// Rate policy: counts a closed success of the period of `generation` in `bucket`
    /// without a lock, when that bucket is already being counted; false when
    /// [`Cell::window`]'s locked path must count it.
    #[inline(always)]
    pub(crate) fn count_success(&self, bucket: u64, generation: u16) -> bool {
        self.extra
            .get()
            .and_then(|extra| extra.calls.get())
            .is_some_and(|calls| calls.count_success(bucket, generation))
    }

    /// Forgets the window's counts, if there is a window, after the breaker moved to
    /// `word`: all but the rate policy's calls already counted in `word`'s closed period.
    pub(crate) fn clear_window(&self, word: Word) {
        if let Some(extra) = self.extra.get() {
            lock(&extra.window).clear(extra.calls(), word.generation());
        }
    }

    /// Shared views under a quorum: this process's own breaker, an in-process one under the
    /// same key that counts only this process's calls by the handler's rules. When it
    /// opens, this process rejects its calls and runs its own trials while the fleet's
    /// breaker (which needs failures from `QUORUM` processes) may stay closed.
    pub(crate) fn local(&self) -> &Cell {
        self.extra()
            .local
            .get_or_init(|| Box::new(Cell::new(self.key.clone())))
    }

    /// This process's own breaker under a quorum, if it was ever made.
    pub(crate) fn local_if_made(&self) -> Option<&Cell> {
        self.extra
            .get()
            .and_then(|extra| extra.local.get())
            .map(|local| &**local)
    }

    /// In-process breakers: keeps (or with `None` forgets) an operator's runtime overrides.
    pub(crate) fn set_overrides(&self, overrides: Option<crate::Overrides>) {
        if overrides.is_some() || self.extra.get().is_some() {
            let extra = self.extra();
            let mut held = lock(&extra.overrides);
            *held = overrides;
            extra
                .overridden
                .store(overrides.is_some(), Ordering::Release);
        }
    }

    /// In-process breakers: the runtime overrides, if any.
    pub(crate) fn overrides(&self) -> Option<crate::Overrides> {
        self.extra.get().and_then(|extra| *lock(&extra.overrides))
    }

    /// In-process breakers: `config` with the runtime overrides, when there are any. Read on
    /// the paths that decide by the threshold, the recovery timeout or the trials: failures,
    /// trials and admissions of an open or half-open breaker, never a closed success.
    #[inline]
    pub(crate) fn overridden(&self, config: &Config) -> Option<Config> {
        match self.extra.get() {
            // Most breakers never make their extra part: one load and a branch.
            None => None,
            Some(extra) if extra.overridden.load(Ordering::Acquire) => overridden_by(extra, config),
            Some(_) => None,
        }
    }

    /// In-process breakers: keeps (or with `None` forgets) the last forcing's audit trail.
    pub(crate) fn set_forced(&self, forced: Option<crate::admin::Forced>) {
        if forced.is_some() || self.extra.get().is_some() {
            *lock(&self.extra().forced) = forced;
        }
    }

    /// The last forcing's audit trail, if one is kept.
    pub(crate) fn forced(&self) -> Option<crate::admin::Forced> {
        self.extra
            .get()
            .and_then(|extra| lock(&extra.forced).clone())
    }

    // In-process trial leases.

    /// When the half-open round of `word` lapses, if its lease is known.
    #[inline]
    pub(crate) fn lease(&self, word: Word) -> Option<Nanos> {
        let stamp = self.stamp.load(Ordering::Acquire);
        ((stamp >> LEASE_GENERATION_SHIFT) as u16 == word.generation())
            .then_some((stamp & LEASE_TICKS) * TICK)
    }

    /// The half-open round of `word` lapses at `deadline` unless something happens first.
    pub(crate) fn set_lease(&self, word: Word, deadline: Nanos) {
        let ticks = deadline_ticks(deadline).min(LEASE_TICKS);
        self.stamp.store(
            (u64::from(word.generation()) << LEASE_GENERATION_SHIFT) | ticks,
            Ordering::Release,
        );
    }

    // Shared views: how the storage has been answering.

    /// The storage answered since this view was made, and has not failed since.
    #[inline]
    pub(crate) fn synced(&self) -> bool {
        let stamp = self.stamp.load(Ordering::Relaxed);
        stamp != 0 && stamp & FAILING == 0
    }

    /// When the storage last answered; `None` before it first did or while it is failing.
    #[inline]
    pub(crate) fn synced_at(&self) -> Option<Nanos> {
        let stamp = self.stamp.load(Ordering::Relaxed);
        (stamp != 0 && stamp & FAILING == 0).then_some(stamp)
    }

    /// Whether the storage's last operation failed.
    #[inline]
    pub(crate) fn failing(&self) -> bool {
        self.stamp.load(Ordering::Relaxed) & FAILING != 0
    }

    pub(crate) fn mark_answered(&self, now: Nanos) {
        self.stamp
            .store(now.clamp(1, FAILING - 1), Ordering::Relaxed);
    }

    pub(crate) fn mark_failed(&self, now: Nanos, error: &StorageError) {
        *lock(&self.extra().failure) = Some(error.clone());
        self.stamp
            .store(FAILING | now.min(FAILING - 1), Ordering::Relaxed);
    }

    /// While the storage is failing: claims the next probe when `interval` has passed since
    /// the last one; one caller wins it.
    pub(crate) fn claim_probe(&self, now: Nanos, interval: Duration) -> bool {
        let stamp = self.stamp.load(Ordering::Relaxed);
        stamp & FAILING != 0
            && now >= (stamp & !FAILING).saturating_add(nanos(interval))
            && self
                .stamp
                .compare_exchange(
                    stamp,
                    FAILING | now.min(FAILING - 1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// While the storage answers: claims a re-read of an open view when `interval` has
    /// passed since the storage last answered; one caller wins it, the others keep
    /// rejecting without asking.
    pub(crate) fn claim_recheck(&self, now: Nanos, interval: Duration) -> bool {
        let stamp = self.stamp.load(Ordering::Relaxed);
        stamp != 0
            && stamp & FAILING == 0
            && now >= stamp.saturating_add(nanos(interval))
            && self
                .stamp
                .compare_exchange(
                    stamp,
                    now.clamp(1, FAILING - 1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The failure that made the storage fail, for rejections while it lasts.
    pub(crate) fn last_failure(&self) -> StorageError {
        self.extra
            .get()
            .and_then(|extra| lock(&extra.failure).clone())
            .unwrap_or_else(|| StorageError::timeout(self.key.as_str(), Duration::ZERO))
    }

    /// Adopts the state a shared storage replied with to a request sent when the view was
    /// `sent`; returns the change, if any.
    ///
    /// Replies can arrive out of order: a reply answered before the trip may come after the
    /// reply that says "open". A reply to a request sent while the view was what it still
    /// is comes after everything this view adopted, and is taken as it is. Otherwise the
    /// two are concurrent and cannot be ordered, and the view keeps the more restrictive of
    /// the two (open over half-open over closed): a closed reply never re-opens the gates
    /// another thread just closed; at worst the view stays open until its deadline and then
    /// asks again.
    pub(crate) fn adopt(
        &self,
        sent: Word,
        snapshot: &Snapshot,
        now: Nanos,
        config: &Config,
    ) -> Option<(Word, Word)> {
        let mut current = self.load();
        let change = loop {
            let next = view_of(current, snapshot, now, config);
            if next == current
                || (current != sent && restriction(next.phase()) < restriction(current.phase()))
            {
                break None;
            }
            match self.compare_exchange(current, next) {
                Ok(_) => break Some((current, next)),
                Err(actual) => current = actual,
            }
        };
        self.mark_answered(now);
        change
    }
}

/// How much a state holds calls back, for ordering concurrent replies.
fn restriction(state: State) -> u8 {
    match state {
        State::Closed | State::ForcedClosed => 0,
        State::HalfOpen => 1,
        State::Open => 2,
        State::ForcedOpen => 3,
    }
}

/// The view a reply makes of `current`: the same generation when the phase stays.
fn view_of(current: Word, snapshot: &Snapshot, now: Nanos, config: &Config) -> Word {
    let deadline = |wait: Option<Duration>| {
        deadline_ticks(now.saturating_add(nanos(wait.unwrap_or(config.recovery_timeout))))
    };
    let failures = snapshot.failures.min(u64::from(u32::MAX)) as u32;
    let phase = snapshot.state;
    let payload = match phase {
        State::Open => deadline(snapshot.retry_in),
        // A forced-open breaker is asked again after one recovery timeout, to see a reset.
        State::ForcedOpen => deadline(None),
        _ => 0,
    };
    match phase {
        State::Closed if current.phase() == State::Closed => current.with_failures(failures),
        State::Closed => current.next(State::Closed, 0).with_failures(failures),
        _ if current.phase() == phase => current.with_payload(payload),
        _ => current.next(phase, payload),
    }
}

/// A reference to a cell: borrowed from its family for the handler's own key, shared for a
/// key computed per call.
#[derive(Clone)]
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

/// A per-call breaker. The family's set finds it by its per-call key, the part of the
/// cell's key after the handler's (which holds no `:`), so the key is stored once, in the
/// cell, and the set's slot is one pointer.
#[derive(Debug)]
struct Keyed(Arc<Cell>);

impl Keyed {
    fn per_call(&self) -> &str {
        let key = self.0.key.as_str();
        key.split_once(':').map_or(key, |(_, per_call)| per_call)
    }
}

impl std::borrow::Borrow<str> for Keyed {
    fn borrow(&self) -> &str {
        self.per_call()
    }
}

impl std::hash::Hash for Keyed {
    fn hash<S: std::hash::Hasher>(&self, state: &mut S) {
        // As `str` hashes, so that a lookup by `&str` finds it.
        self.per_call().hash(state);
    }
}

impl PartialEq for Keyed {
    fn eq(&self, other: &Keyed) -> bool {
        self.per_call() == other.per_call()
    }
}

impl Eq for Keyed {}

/// All breakers of one handler on one storage instance: the handler's own key and every
/// per-call key under it.
#[derive(Debug)]
pub(crate) struct Family {
    /// The handler's key prefix, for listing.
    pub(crate) prefix: &'static str,
    cell: Cell,
    keyed: RwLock<HashSet<Keyed>>,
    /// Counts the sweeps of `keyed`; a breaker remembers the count when it was last used.
    sweeps: AtomicU32,
    /// The in-memory storage's clock (the system clock on a shared storage, unread), so
    /// that a closed breaker's call on it never looks up the storage.
    pub(crate) clock: Clock,
}

impl Family {
    fn new(prefix: &'static str, key: &'static str, clock: Clock) -> Family {
        Family {
            prefix,
            cell: Cell::new(Key::Static(key)),
            keyed: RwLock::default(),
            sweeps: AtomicU32::new(0),
            clock,
        }
    }

    /// The handler's key.
    pub(crate) fn key(&self) -> &str {
        self.cell.key.as_str()
    }

    /// Small enough to inline, so the handler's own key costs no call even where the same
    /// handler also guards calls with per-call keys.
    #[inline]
    pub(crate) fn cell<'a>(&'a self, per_call: Option<&str>) -> Result<CellRef<'a>, StorageError> {
        match per_call {
            None => Ok(CellRef::Borrowed(&self.cell)),
            Some(per_call) => self.keyed_cell(per_call),
        }
    }

    /// The handler's own breaker.
    #[cfg(feature = "tower")]
    pub(crate) fn own(&self) -> CellRef<'_> {
        CellRef::Borrowed(&self.cell)
    }

    /// The breakers of this family: the handler's own, then the per-call ones.
    pub(crate) fn cells(&self) -> Vec<CellRef<'_>> {
        let keyed = self.keyed.read().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(CellRef::Borrowed(&self.cell))
            .chain(keyed.iter().map(|keyed| CellRef::Shared(keyed.0.clone())))
            .collect()
    }

    /// How many per-call breakers this family holds.
    #[cfg(test)]
    pub(crate) fn keyed_len(&self) -> usize {
        self.keyed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn keyed_cell(&self, per_call: &str) -> Result<CellRef<'_>, StorageError> {
        let sweep = self.sweeps.load(Ordering::Relaxed);
        if let Some(keyed) = self
            .keyed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(per_call)
        {
            if keyed.0.used.load(Ordering::Relaxed) != sweep {
                keyed.0.used.store(sweep, Ordering::Relaxed);
            }
            return Ok(CellRef::Shared(keyed.0.clone()));
        }
        if per_call.is_empty() || per_call.len() > MAX_KEY_LEN {
            return Err(StorageError::InvalidKey {
                key: per_call.chars().take(64).collect(),
                detail: "a per-call key must be 1 to 512 bytes long",
            });
        }
        let mut keyed = self.keyed.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have made it since the read.
        if let Some(entry) = keyed.get(per_call) {
            return Ok(CellRef::Shared(entry.0.clone()));
        }
        if keyed.len() >= MAX_KEYED {
            self.sweep(&mut keyed);
        }
        let sweep = self.sweeps.load(Ordering::Relaxed);
        let cell = Arc::new(Cell::new(Key::Shared(key::join(
            self.cell.key.as_str(),
            per_call,
        ))));
        cell.used.store(sweep, Ordering::Relaxed);
        keyed.insert(Keyed(cell.clone()));
        Ok(CellRef::Shared(cell))
    }

    /// Drops breakers not in use until a quarter of the room is free: the idle ones, then
    /// those not used since the previous sweep, then the closed ones, then any.
    // A `Keyed` hashes by its cell's key, which never changes; the cell's atomics do not
    // take part.
    #[allow(clippy::mutable_key_type)]
    fn sweep(&self, keyed: &mut HashSet<Keyed>) {
        let previous = self.sweeps.fetch_add(1, Ordering::Relaxed);
        let target = MAX_KEYED / 4 * 3;
        let in_use = |entry: &Keyed| Arc::strong_count(&entry.0) > 1;
        keyed.retain(|entry| in_use(entry) || !entry.0.is_idle());
        let passes: [&dyn Fn(&Keyed) -> bool; 3] = [
            &|entry| entry.0.used.load(Ordering::Relaxed) != previous,
            &|entry| entry.0.load().phase() == State::Closed,
            &|_| true,
        ];
        for droppable in passes {
            if keyed.len() <= target {
                return;
            }
            let mut excess = keyed.len() - target;
            keyed.retain(|entry| {
                if excess > 0 && !in_use(entry) && droppable(entry) {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// Families by handler type and storage instance.
///
/// The in-memory storage owns one, so its breakers live and die with it; breakers on other
/// storages are this process's views of shared state, kept in one process-wide registry by
/// storage address. Every registry is listed in [`REGISTRIES`], so that the process can
/// enumerate all its breakers.
#[derive(Debug)]
pub(crate) struct Registry {
    families: Mutex<HashMap<(TypeId, usize), Arc<Family>>>,
    /// The clock its breakers' deadlines are read on.
    pub(crate) clock: Clock,
    /// Breakers decided here (the in-memory storage's), not views of shared ones.
    pub(crate) decides: bool,
}

/// Every registry of this process that still exists.
static REGISTRIES: Mutex<Vec<Weak<Registry>>> = Mutex::new(Vec::new());

static SHARED_VIEWS: LazyLock<Arc<Registry>> =
    LazyLock::new(|| Registry::new(Clock::system(), false));

impl Registry {
    /// A registry, listed for enumeration.
    pub(crate) fn new(clock: Clock, decides: bool) -> Arc<Registry> {
        let registry = Arc::new(Registry {
            families: Mutex::default(),
            clock,
            decides,
        });
        let mut all = lock(&REGISTRIES);
        all.retain(|registry| registry.strong_count() > 0);
        all.push(Arc::downgrade(&registry));
        registry
    }

    fn family<H: CircuitBreaker>(&self, address: usize, clock: Clock) -> Arc<Family> {
        lock(&self.families)
            .entry((TypeId::of::<H>(), address))
            .or_insert_with(|| Arc::new(Family::new(H::KEY_PREFIX, H::FAILURE_KEY, clock)))
            .clone()
    }

    /// Every family.
    pub(crate) fn families(&self) -> Vec<Arc<Family>> {
        lock(&self.families).values().cloned().collect()
    }
}

/// Every registry of this process.
pub(crate) fn registries() -> Vec<Arc<Registry>> {
    lock(&REGISTRIES).iter().filter_map(Weak::upgrade).collect()
}

/// The in-memory storage, when `storage` is one: its breakers are decided in this process.
/// The answer is a constant for each storage type.
#[inline(always)]
pub(crate) fn in_memory<S: 'static>(storage: &S) -> Option<&MemoryStorage> {
    (storage as &dyn std::any::Any).downcast_ref::<MemoryStorage>()
}

/// Whether breakers on storages of type `S` are decided in this process; a constant.
#[inline(always)]
pub(crate) fn decided_here<S: 'static>() -> bool {
    TypeId::of::<S>() == TypeId::of::<MemoryStorage>()
}

/// The registry that holds the views of breakers on `storage`.
pub(crate) fn registry<S: 'static>(storage: &S) -> &Registry {
    match in_memory(storage) {
        Some(memory) => memory.breakers(),
        None => &SHARED_VIEWS,
    }
}

/// The family of handler `H` on `storage`.
pub(crate) fn family<H: CircuitBreaker>(storage: &H::Storage) -> Arc<Family> {
    let (address, clock) = match in_memory(storage) {
        Some(memory) => (0, crate::Storage::clock(memory).clone()),
        None => (
            storage as *const H::Storage as *const () as usize,
            Clock::system(),
        ),
    };
    registry(storage).family::<H>(address, clock)
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
    /// whose storage is a `static`, so it never changes (and is not asked for again).
    #[inline]
    pub(crate) fn family<H: CircuitBreaker>(&self, handler: &H) -> &Family {
        self.family.get_or_init(|| family::<H>(handler.storage()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::word::Word;

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
        let family = Family::new("prefix", "family", Clock::system());
        // Kept for its state alone: no reference to it is held.
        family
            .cell(Some("open"))
            .unwrap()
            .swap(Word::CLOSED.opened(u64::MAX / 2, 0));
        let in_use = family.cell(Some("in use")).unwrap();
        for n in 0..MAX_KEYED + 10 {
            drop(family.cell(Some(&format!("host-{n}"))).unwrap());
        }
        let keyed = family.keyed.read().unwrap();
        assert!(keyed.len() < MAX_KEYED, "{} breakers kept", keyed.len());
        assert_eq!(keyed.get("open").unwrap().0.load().phase(), State::Open);
        assert!(Arc::ptr_eq(
            &keyed.get("in use").unwrap().0,
            match &in_use {
                CellRef::Shared(cell) => cell,
                CellRef::Borrowed(_) => unreachable!(),
            }
        ));
    }

    #[test]
    fn breakers_that_counted_are_dropped_too_past_the_bound_but_never_one_in_use() {
        let family = Family::new("prefix", "family", Clock::system());
        let in_use = family.cell(Some("held")).unwrap();
        in_use.swap(Word::CLOSED.with_failures(3));
        for n in 0..3 * MAX_KEYED {
            let cell = family.cell(Some(&format!("failing-{n}"))).unwrap();
            cell.swap(Word::CLOSED.with_failures(1));
        }
        assert!(family.keyed_len() <= MAX_KEYED, "{}", family.keyed_len());
        let again = family.cell(Some("held")).unwrap();
        assert_eq!(again.load().failures(), 3, "a breaker in use was dropped");
    }
}
