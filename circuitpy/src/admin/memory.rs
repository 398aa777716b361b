//! [`Admin`] for the in-memory storage: the breakers this process decided on it, read and
//! steered in place. Forcing here runs no handler hook: the admin does not know the
//! handler, only its breakers.

use std::time::{Duration, SystemTime};

use super::{Action, Admin, Audit, BreakerInfo, Listing, check_key};
use crate::engine::view::{Cell, Family};
use crate::engine::{control_cell, state_here};
use crate::error::StorageError;
use crate::handler::State;
use crate::storage::memory::MemoryStorage;

impl MemoryStorage {
    fn describe(&self, cell: &Cell) -> BreakerInfo {
        let clock = &self.breakers().clock;
        let word = cell.load();
        let state = state_here(cell, clock);
        let now = clock.now();
        let wall = SystemTime::now();
        let on_wall = |nanos: u64| {
            if nanos >= now {
                wall + Duration::from_nanos(nanos - now)
            } else {
                wall - Duration::from_nanos(now - nanos)
            }
        };
        BreakerInfo {
            key: cell.key.as_str().to_owned(),
            state,
            failures: u64::from(word.failures()),
            window: None,
            opened_at: None,
            next_trial_at: (state == State::Open)
                .then(|| word.deadline().map(on_wall))
                .flatten(),
            round: None,
            permits_out: u64::from(word.permits()),
            trials_passed: 0,
            failed_rounds: word.reopens(),
            // One process: no quorum to count towards.
            reporters: 0,
            overrides: cell.overrides(),
            forced: matches!(state, State::ForcedOpen | State::ForcedClosed)
                .then(|| cell.forced())
                .flatten(),
            expires_in: None,
            now: wall,
        }
    }

    fn families(&self, prefix: &str) -> Vec<std::sync::Arc<Family>> {
        let mut families = self.breakers().families();
        families.retain(|family| family.prefix == prefix);
        families
    }

    /// Runs `found` on the cell of `key`, a handler's key or `handler:per_call`.
    fn with_cell<T>(
        &self,
        prefix: &str,
        key: &str,
        found: impl FnOnce(&Cell) -> T,
    ) -> Result<Option<T>, StorageError> {
        check_key(prefix, key)?;
        for family in self.families(prefix) {
            if family.key() == key {
                return Ok(Some(found(&*family.cell(None)?)));
            }
            if let Some(per_call) = key
                .strip_prefix(family.key())
                .and_then(|rest| rest.strip_prefix(':'))
            {
                return Ok(Some(found(&*family.cell(Some(per_call))?)));
            }
        }
        Ok(None)
    }
}

impl Admin for MemoryStorage {
    fn list(&self, prefix: &str) -> Result<Listing, StorageError> {
        let mut breakers: Vec<BreakerInfo> = self
            .families(prefix)
            .iter()
            .flat_map(|family| {
                family
                    .cells()
                    .iter()
                    .map(|cell| self.describe(cell))
                    .collect::<Vec<_>>()
            })
            .collect();
        breakers.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing {
            breakers,
            invalid: Vec::new(),
        })
    }

    fn inspect(&self, prefix: &str, key: &str) -> Result<Option<BreakerInfo>, StorageError> {
        self.with_cell(prefix, key, |cell| self.describe(cell))
    }

    fn act(
        &self,
        prefix: &str,
        key: &str,
        action: Action,
        audit: Audit<'_>,
    ) -> Result<Option<BreakerInfo>, StorageError> {
        audit.check()?;
        action.check()?;
        let described = self.with_cell(prefix, key, |cell| {
            match action {
                Action::Override(overrides) => {
                    cell.set_overrides((!overrides.is_none()).then_some(overrides));
                }
                _ => {
                    control_cell(cell, action.op(), audit);
                }
            }
            self.describe(cell)
        })?;
        match described {
            Some(info) => Ok((action != Action::Reset).then_some(info)),
            None => Err(StorageError::InvalidKey {
                key: key.chars().take(64).collect(),
                detail: "no breaker of this process has this key on this storage",
            }),
        }
    }
}
